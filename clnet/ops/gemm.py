"""GEMM launcher: picks the kernel family for the device and the layout of the operands."""

import os

GEMM_FILE = "gemm.cl"
TILE = 64          # TILE_M = TILE_N of gemm_tiled (its defaults, 4 x 4 outputs per work-item)
BIG_TILE = 128     # large outputs: 8 x 8 per work-item
WORK_GROUP = 16    # gemm_tiled's work-group is 16 x 16 either way
CPU_ROWS = 8      # gemm_cpu's rows per work-item (its CPU_ROWS)
DOT_ROWS = DOT_COLS = 4  # gemm_cpu_dot's block per work-item
SPLIT_MIN = 256    # shortest K slice worth its own work-groups


class Matrix:
    """A rows x cols row-major matrix inside a tensor, with leading dimension ld.

    As the output, `image_cols=P` says that column n is pixel n % P of image n // P of an NCHW
    tensor whose channels are the rows; ld is then the stride between images.
    """

    def __init__(self, tensor, rows, cols, ld=None, image_cols=None):
        self.tensor, self.shape = tensor, (int(rows), int(cols))
        self.ld = int(ld if ld is not None else cols)
        self.image_cols = image_cols


def _matrix(x):
    return x if isinstance(x, Matrix) else Matrix(x, *x.shape)


def family(device):
    """"tiled" (local-memory tiles) on GPUs and accelerators, "cpu" on CPUs; CLNET_GEMM overrides."""
    chosen = os.environ.get("CLNET_GEMM") or ("cpu" if device.info.type == "CPU" else "tiled")
    if chosen not in ("tiled", "cpu"):
        raise ValueError(f"CLNET_GEMM must be 'tiled' or 'cpu', not {chosen!r}")
    return chosen


def split_k(device, m, n, k):
    """Slices of K for gemm_tiled: enough work-groups to fill the device when the output has few
    tiles (weight gradients: K is the batch, or batch x pixels), each slice at least SPLIT_MIN long."""
    tiles = -(-m // TILE) * -(-n // TILE)
    wanted = -(-4 * device.info.compute_units // tiles)
    return max(1, min(wanted, k // SPLIT_MIN))


def _big_tiles(device, m, n):
    """128 x 128 tiles (8 x 8 outputs per work-item, half the loads per multiply-add) when there
    are enough of them for every compute unit; otherwise more, smaller tiles keep it busier."""
    return min(m, n) >= BIG_TILE and -(-m // BIG_TILE) * -(-n // BIG_TILE) >= device.info.compute_units


def _gemm_split_k(plan, a, b, c, m, n, k, grid, slices, defines):
    """Partial products of K slices in one 3-D launch, then their sum in slice order (deterministic)."""
    partial = plan.value((slices, m, n), "split-K partial sums")
    kernel = plan.kernel(GEMM_FILE, "gemm_tiled", **{**defines, "SPLIT_K": True, "ACCUMULATE": False})
    plan.launch(kernel, (*grid, slices), (WORK_GROUP, WORK_GROUP, 1),
                m, n, k, a.tensor, a.ld, b.tensor, b.ld, partial, n, partial)
    total = plan.kernel(GEMM_FILE, "sum_slices", ACCUMULATE=defines["ACCUMULATE"])
    return plan.launch(total, (m * n,), (64,), m, n, slices, partial, c.tensor, c.ld)


def gemm(plan, a, b, c, trans_a=False, trans_b=False, bias=None, act=0, bias_per_row=False, accumulate=False):
    """Record C = act(op(A) op(B) + bias) where op transposes when asked, or C += op(A) op(B).

    a, b, c are 2-D tensors (plan values or device tensors) or `Matrix` views, in their stored
    shapes: A is (M, K), or (K, M) with trans_a; B is (K, N), or (N, K) with trans_b; C is (M, N).
    The bias has one value per column of C, or per row with bias_per_row.
    """
    a, b, c = _matrix(a), _matrix(b), _matrix(c)
    m, k = a.shape[::-1] if trans_a else a.shape
    n, kb = b.shape if trans_b else b.shape[::-1]
    if kb != k or c.shape != (m, n):
        raise ValueError(f"gemm shapes: A{a.shape}{'^T' if trans_a else ''} B{b.shape}{'^T' if trans_b else ''} "
                         f"C{c.shape}")
    if accumulate and (bias is not None or act):
        raise ValueError("an accumulating gemm takes no bias or activation")
    defines = dict(TRANS_A=int(trans_a), TRANS_B=int(trans_b), HAS_BIAS=bias is not None, ACT=act,
                   BIAS_PER_ROW=bias_per_row, ACCUMULATE=accumulate, C_IMAGE_COLS=c.image_cols)
    args = (m, n, k, a.tensor, a.ld, b.tensor, b.ld, c.tensor, c.ld, bias if bias is not None else c.tensor)
    if family(plan.device) == "tiled":
        slices = split_k(plan.device, m, n, k) if bias is None and not act and c.image_cols is None else 1
        if slices > 1:
            grid = (-(-n // TILE) * WORK_GROUP, -(-m // TILE) * WORK_GROUP)
            return _gemm_split_k(plan, a, b, c, m, n, k, grid, slices, defines)
        tile = BIG_TILE if _big_tiles(plan.device, m, n) else TILE
        if tile != TILE:
            defines.update(TILE_M=tile, TILE_N=tile, WPT_M=tile // WORK_GROUP, WPT_N=tile // WORK_GROUP)
        kernel = plan.kernel(GEMM_FILE, "gemm_tiled", **defines)
        grid = (-(-n // tile) * WORK_GROUP, -(-m // tile) * WORK_GROUP)
        return plan.launch(kernel, grid, (WORK_GROUP, WORK_GROUP), *args)
    if trans_b:
        if trans_a:
            raise ValueError("gemm with both operands transposed is not supported by the CPU family")
        kernel = plan.kernel(GEMM_FILE, "gemm_cpu_dot", **defines)
        return plan.launch(kernel, (-(-n // DOT_COLS), -(-m // DOT_ROWS)), None, *args)
    kernel = plan.kernel(GEMM_FILE, "gemm_cpu", **defines)
    return plan.launch(kernel, (-(-n // 16), -(-m // CPU_ROWS)), None, *args)
