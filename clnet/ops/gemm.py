"""GEMM launcher: picks the kernel family for the device and the layout of the operands."""

import os

GEMM_FILE = "gemm.cl"
TILE = 64          # TILE_M = TILE_N of gemm_tiled (its defaults)
WORK_GROUP = 16    # TILE / WPT: gemm_tiled's work-group is 16 x 16
CPU_ROWS = CPU_COLS = 4


def family(device):
    """"tiled" (local-memory tiles) on GPUs and accelerators, "cpu" on CPUs; CLNET_GEMM overrides."""
    chosen = os.environ.get("CLNET_GEMM") or ("cpu" if device.info.type == "CPU" else "tiled")
    if chosen not in ("tiled", "cpu"):
        raise ValueError(f"CLNET_GEMM must be 'tiled' or 'cpu', not {chosen!r}")
    return chosen


def gemm(plan, a, b, c, trans_a=False, trans_b=False, bias=None, act=0):
    """Record C = act(op(A) op(B) + bias) where op transposes when asked.

    a, b, c are 2-D tensors (plan values or device tensors) in their stored shapes:
    A is (M, K), or (K, M) with trans_a; B is (K, N), or (N, K) with trans_b; C is (M, N).
    """
    m, k = a.shape[::-1] if trans_a else a.shape
    n, kb = b.shape if trans_b else b.shape[::-1]
    if kb != k or tuple(c.shape) != (m, n):
        raise ValueError(f"gemm shapes: A{a.shape}{'^T' if trans_a else ''} B{b.shape}{'^T' if trans_b else ''} "
                         f"C{c.shape}")
    defines = dict(TRANS_A=int(trans_a), TRANS_B=int(trans_b), HAS_BIAS=bias is not None, ACT=act)
    args = (m, n, k, a, a.shape[1], b, b.shape[1], c, n, bias if bias is not None else c)
    if family(plan.device) == "tiled":
        kernel = plan.kernel(GEMM_FILE, "gemm_tiled", **defines)
        tiles = (-(-n // TILE) * WORK_GROUP, -(-m // TILE) * WORK_GROUP)
        return plan.launch(kernel, tiles, (WORK_GROUP, WORK_GROUP), *args)
    if trans_b:
        if trans_a:
            raise ValueError("gemm with both operands transposed is not supported by the CPU family")
        kernel = plan.kernel(GEMM_FILE, "gemm_cpu_dot", **defines)
        return plan.launch(kernel, (-(-n // CPU_COLS), -(-m // CPU_ROWS)), None, *args)
    kernel = plan.kernel(GEMM_FILE, "gemm_cpu", **defines)
    return plan.launch(kernel, (-(-n // 16), -(-m // CPU_ROWS)), None, *args)
