"""GEMM launcher: picks the kernel family for the device, the layout of the operands, and the
kernel parameters (tuned by `clnet-tune` where the tuning cache has them, else defaults)."""

import os
from dataclasses import dataclass
from math import prod

from ..tuning import Case, lookup, record

GEMM_FILE = "gemm.cl"
# Parameters as the kernels' -D options; SLICES (gemm_tiled) is the host's: split-K slices.
TILED = {"TILE_M": 64, "TILE_N": 64, "TILE_K": 16, "WPT_M": 4, "WPT_N": 4, "PREFETCH": 1, "VECTOR": 0, "SLICES": 1}
TILED_BIG = {**TILED, "TILE_M": 128, "TILE_N": 128, "WPT_M": 8, "WPT_N": 8}  # 8 x 8 outputs per work-item
CPU = {"CPU_ROWS": 12}  # gemm_cpu: rows x 16 columns per work-item (mnist-cnn trained 1-7% faster than
                        # with 8 on a 2-core EPYC, under PoCL 3.1 (AVX-512) and PoCL 3.0 (AVX2) alike)
CPU_DOT = {"DOT_ROWS": 4, "DOT_COLS": 4}  # gemm_cpu_dot: the block of dot products per work-item
DEFAULTS = {"gemm_tiled": TILED, "gemm_cpu": CPU, "gemm_cpu_dot": CPU_DOT}
SWITCHES = {"PREFETCH": (0, 1, 2), "VECTOR": (0, 1)}  # gemm_tiled's parameters that are choices
SPLIT_MIN = 128    # shortest K slice worth its own work-groups


class Matrix:
    """A rows x cols row-major matrix inside a tensor, with leading dimension ld.

    As the output, `image_cols=P` says that column n is pixel n % P of image n // P of an NCHW
    tensor whose channels are the rows; ld is then the stride between images.
    """

    def __init__(self, tensor, rows, cols, ld=None, image_cols=None):
        self.tensor, self.shape = tensor, (int(rows), int(cols))
        self.ld = int(ld if ld is not None else cols)
        self.image_cols = image_cols


@dataclass(frozen=True)
class Call:
    """What the tuner needs to record the same GEMM again on fresh operands: the kernel and the
    fixed options it was given, the size, and each operand's span, leading dimension and layout."""
    kernel: str
    defines: tuple
    shape: tuple
    a: tuple    # (elements spanned, ld)
    b: tuple
    c: tuple    # (elements spanned, ld, image_cols)
    bias: int   # elements, 0 without a bias


def _matrix(x):
    return x if isinstance(x, Matrix) else Matrix(x, *x.shape)


def family(device):
    """"tiled" (local-memory tiles) on GPUs and accelerators, "cpu" on CPUs; CLNET_GEMM overrides."""
    chosen = os.environ.get("CLNET_GEMM") or ("cpu" if device.info.type == "CPU" else "tiled")
    if chosen not in ("tiled", "cpu"):
        raise ValueError(f"CLNET_GEMM must be 'tiled' or 'cpu', not {chosen!r}")
    return chosen


def layout(defines):
    """The operand layout of a GEMM as the tuning cache names it, e.g. "NT" or "NN+conv"."""
    name = ("T" if defines.get("TRANS_A") else "N") + ("T" if defines.get("TRANS_B") else "N")
    return name + ("+conv" if defines.get("CONV_B") else "+conv-dx" if defines.get("CONV_DX") else "")


def split_k(device, m, n, k, params=TILED):
    """Slices of K for gemm_tiled: enough work-groups to fill the device when the output has few
    tiles (weight gradients: K is the batch, or batch x pixels), each slice at least SPLIT_MIN long."""
    wanted = -(-4 * device.info.compute_units // _tiles(m, n, params))
    return max(1, min(wanted, k // SPLIT_MIN))


def _tiles(m, n, params):
    return -(-m // params["TILE_M"]) * -(-n // params["TILE_N"])


def default_params(device, kernel, m, n, k, trans_b=False):
    """Without tuning: gemm_tiled splits K where the output has few tiles; otherwise it takes the
    largest tiles (the fewest loads per multiply-add) of which there are enough for every compute
    unit: 128 x 128, 64 x 64, else 64 x 32 (32 x 64 when B is not transposed), the shapes clnet-tune
    picks most often on an H200 for outputs too small to fill it."""
    if kernel != "gemm_tiled":
        return dict(DEFAULTS[kernel])
    slices = split_k(device, m, n, k)
    if slices > 1:
        return {**TILED, "SLICES": slices}
    narrow = {**TILED, "TILE_M": 64, "TILE_N": 32, "WPT_M": 4, "WPT_N": 2} if trans_b else \
        {**TILED, "TILE_M": 32, "TILE_N": 64, "WPT_M": 2, "WPT_N": 4}
    for params in (TILED_BIG, TILED):
        if min(m, n) >= params["TILE_M"] and _tiles(m, n, params) >= device.info.compute_units:
            return dict(params)
    return narrow


def valid_params(kernel, params):
    """Parameters the kernel can take: every name it knows, switches at one of their values, sizes
    positive, tiles divisible into work-items (into float4 runs with VECTOR)."""
    if not isinstance(params, dict) or set(params) != set(DEFAULTS[kernel]):
        return False
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in params.values()):
        return False
    if not all(params[key] in SWITCHES[key] if key in SWITCHES else params[key] > 0 for key in params):
        return False
    if kernel != "gemm_tiled":
        return True
    step = 4 if params["VECTOR"] else 1
    return params["WPT_M"] % step == 0 and params["WPT_N"] % step == 0 \
        and params["TILE_M"] % params["WPT_M"] == 0 and params["TILE_N"] % params["WPT_N"] == 0


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
                   BIAS_PER_ROW=bias_per_row, ACCUMULATE=accumulate)
    if family(plan.device) == "tiled":
        kernel = "gemm_tiled"
    elif not trans_b:
        kernel = "gemm_cpu"
    elif not trans_a:
        kernel = "gemm_cpu_dot"
    else:
        raise ValueError("gemm with both operands transposed is not supported by the CPU family")
    return record_gemm(plan, kernel, defines, (m, n, k), a, b, c, bias)


def _span(x):
    """The elements a Matrix spans as the kernels index it (a view with a leading dimension reaches
    past its own shape), at least its tensor's size (a gathered convolution operand)."""
    rows, cols = x.shape
    if x.image_cols:
        span = (cols - 1) // x.image_cols * x.ld + rows * x.image_cols
    else:
        span = (rows - 1) * x.ld + cols
    return max(span, prod(x.tensor.shape))


def record_gemm(plan, kernel, defines, shape, a, b, c, bias=None, params=None):
    """Record one launch of `kernel` (gemm_tiled, gemm_cpu or gemm_cpu_dot, with its fixed options
    `defines`) computing the (M, N, K) product of Matrix operands. `params` (the tuner's candidates)
    overrides the tuned or default parameters."""
    m, n, k = shape
    case = Case(kernel, layout(defines), m, n, k)
    record(case, Call(kernel, tuple(sorted(defines.items())), shape, (_span(a), a.ld), (_span(b), b.ld),
                      (_span(c), c.ld, c.image_cols), 0 if bias is None else prod(bias.shape)))
    defines = {**defines, "C_IMAGE_COLS": c.image_cols}
    if params is None:
        params = lookup(plan.device, case)
        if not valid_params(kernel, params):
            params = default_params(plan.device, kernel, m, n, k, bool(defines.get("TRANS_B")))
    args = (m, n, k, a.tensor, a.ld, b.tensor, b.ld, c.tensor, c.ld, bias if bias is not None else c.tensor)
    if kernel == "gemm_cpu":
        program = plan.kernel(GEMM_FILE, kernel, **defines, **params)
        return plan.launch(program, (-(-n // 16), -(-m // params["CPU_ROWS"])), None, *args)
    if kernel == "gemm_cpu_dot":
        program = plan.kernel(GEMM_FILE, kernel, **defines, **params)
        return plan.launch(program, (-(-n // params["DOT_COLS"]), -(-m // params["DOT_ROWS"])), None, *args)
    params = dict(params)
    slices = params.pop("SLICES")
    local = (params["TILE_N"] // params["WPT_N"], params["TILE_M"] // params["WPT_M"])
    grid = (-(-n // params["TILE_N"]) * local[0], -(-m // params["TILE_M"]) * local[1])
    if slices == 1:
        program = plan.kernel(GEMM_FILE, kernel, **defines, **params)
        return plan.launch(program, grid, local, *args)
    # Partial products of K slices in one 3-D launch, then their sum in slice order (deterministic).
    partial = plan.value((slices, m, n), "split-K partial sums")
    epilogue = {key: defines[key] for key in ("ACCUMULATE", "HAS_BIAS", "BIAS_PER_ROW", "ACT", "C_IMAGE_COLS")}
    products = {key: value for key, value in defines.items() if key not in epilogue}
    program = plan.kernel(GEMM_FILE, kernel, **products, SPLIT_K=True, **params)
    plan.launch(program, (*grid, slices), (*local, 1), m, n, k, a.tensor, a.ld, b.tensor, b.ld, partial, n, partial)
    total = plan.kernel(GEMM_FILE, "sum_slices", **epilogue)
    return plan.launch(total, (m * n,), (64,), m, n, slices, partial, c.tensor, c.ld, args[-1])
