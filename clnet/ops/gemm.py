"""GEMM launcher: picks the kernel of the device's family, the layout of the operands, and the
kernel parameters (tuned by `clnet-tune` where the tuning cache has them, else defaults)."""

import logging
from dataclasses import dataclass, replace
from math import prod
from types import SimpleNamespace

from ..tuning import Case, lookup, record
from .elementwise import activation, sum_slices

log = logging.getLogger(__name__)

SPLIT_MIN = 128    # shortest K slice worth its own work-groups
PANEL = 16         # columns of a B panel (gemm_packed, gemm_direct)
CPU_GATHER_K = 4096  # rows of a panel of B in local memory at most (256 KiB): gemm_packed's gathered
                     # ones, and gemm_direct's
CPU_GATHER_ITEMS = 64  # work-items wanted for a gathered B at least
PACK_RUN = 256    # pack_a_runs: columns of A per work-item (a multiple of PANEL)
CPU_SLICE = 512    # gemm_packed: K steps per slice when the output is one work-group's worth
CPU_GROUP = 1024   # work-items of that work-group at most
CPU_SHARED_B = 8   # gemm_packed: A panels at most for work-groups of one B panel (9-25% faster
                   # convolutions with 32-64 output channels on a 2-core EPYC; slower for 288-576)
CPU_LOCAL = 4      # gemm_packed's work-groups otherwise, up to CPU_SMALL_GRID work-items: 4 x 1.
CPU_SMALL_GRID = 8192  # PoCL 5's own choice made squares of 512 / 1024 1.9x / 1.7x slower on a
                       # 16-core Xeon; 4 x 4 and 16 x 1 made them 2x slower on a 2-core EPYC. At
                       # 2048 (21,888 work-items) PoCL's choice is as fast on the Xeon and 1.3x
                       # faster on the EPYC
CPU_DIRECT_BYTES = 4 << 20  # gemm_direct (one launch, no panels in global memory) where A and B take
                            # at most this together, about a core's L2 and its share of L3: on a
                            # 2-core EPYC, the mlp's products at batch 128 and 1024 (up to 4.0 MiB)
                            # ran 1.0-3x faster than packing them, the smallest the most; larger ones
                            # measured from 10% slower to 25% faster (1024^3 and 256 x 784 x 1024
                            # about even), so packing, built to stream from memory, keeps them


class Matrix:
    """A rows x cols row-major matrix inside a tensor, with leading dimension ld.

    As the output, `image_cols=P` says that column n is pixel n % P of image n // P of an NCHW
    tensor whose channels are the rows; ld is then the stride between images. gemm_tiled and
    gemm_packed's packing also read an operand A (not transposed) so (A_IMAGE_COLS), and gemm_tiled
    the dY of an implicit input gradient (CONV_DX) always so: the convolution's output gradient where
    it lies.

    In a grouped product (`groups` > 1), an operand A or B is the first group's, and `group_stride`
    the elements between the operands of consecutive groups; the output C is the first group's
    rows, which the other groups' follow.
    """

    def __init__(self, tensor, rows, cols, ld=None, image_cols=None, group_stride=0):
        self.tensor, self.shape = tensor, (int(rows), int(cols))
        self.ld = int(ld if ld is not None else cols)
        self.image_cols = image_cols
        self.group_stride = int(group_stride)


@dataclass(frozen=True)
class Call:
    """What the tuner needs to record the same GEMM again on fresh operands: the kernel and the
    fixed options it was given, the size, and each operand's span, leading dimension and layout."""
    kernel: str
    defines: tuple
    shape: tuple
    a: tuple    # (elements spanned, ld, image_cols)
    b: tuple
    c: tuple
    bias: int   # elements, 0 without a bias
    groups: int = 1
    group_strides: tuple = (0, 0)  # A's and B's


def _matrix(x):
    return x if isinstance(x, Matrix) else Matrix(x, *x.shape)


def _gather_slices(k):
    """The fewest K slices of a gathered B (gemm_packed's implicit convolutions): panels of at most
    CPU_GATHER_K rows in local memory."""
    return -(-k // CPU_GATHER_K)


def layout(defines, groups=1):
    """The operand layout of a GEMM as the tuning cache names it, e.g. "NT", "NN+conv", or "NN+conv+g4"
    for 4 groups (a grouped product is tuned apart from a plain one of its groups' size). A's images
    (A_IMAGE_COLS) add nothing: gemm_tiled reads every convolution's output gradient so, and its
    "NT+conv" (the weight gradient) and "NN+conv-dx" are those products and no other; gemm_packed
    multiplies A's panels, however A lay before its packing."""
    name = ("T" if defines.get("TRANS_A") else "N") + ("T" if defines.get("TRANS_B") else "N")
    name += "+conv" if defines.get("CONV_B") else "+conv-dx" if defines.get("CONV_DX") else ""
    return name + (f"+g{groups}" if groups > 1 else "")


class GemmSpec:
    """A tunable GEMM kernel's parameters, for the launcher and clnet-tune alike: their names and
    `defaults` (the kernel's -D options, plus SLICES: the host's split of K into slices), the
    `switches` among them (name -> settings), which sets the kernel can take, the parameters a
    product gets without tuning, and the sets the tuner times."""
    kernel = file = None
    defaults = {}
    switches = {}
    splits = ()  # the parameters by which the defaults divide a product's work among the compute units

    def valid(self, params):
        """Parameters the kernel can take: every name it knows, switches at one of their settings,
        sizes positive, and what the kernel itself needs (`_fits_kernel`)."""
        if not isinstance(params, dict) or set(params) != set(self.defaults):
            return False
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in params.values()):
            return False
        if not all(params[key] in self.switches[key] if key in self.switches else params[key] > 0 for key in params):
            return False
        return self._fits_kernel(params)

    def _fits_kernel(self, params):
        return True

    def default(self, device, m, n, k, defines):
        """The parameters of an (M, N, K) product without tuning (`defines`: its fixed options, and
        GROUPS for a grouped product of GROUPS such products)."""
        raise NotImplementedError

    def candidates(self, device, call):
        """The parameter sets clnet-tune times first for a recorded `Call`, the default first."""
        default = self.default(device, *call.shape, {**dict(call.defines), "GROUPS": call.groups})
        return [default] + [p for p in self._alternatives(device, call.shape, default, call.groups) if p != default]

    def _alternatives(self, device, shape, default, groups):
        raise NotImplementedError

    def variants(self, device, params):
        """`params` with the other settings of the switches that the device takes, which clnet-tune
        times on the fastest of the candidates."""
        return []

    def rebalance(self, device, m, n, k, defines, params, units_then):
        """`params` tuned (for this product or a near one) on a device of the class with `units_then`
        compute units, for this device: each parameter by which the defaults divide the work among
        the compute units (`splits`) keeps its ratio to the default, the two counts' defaults being
        what differs; the tiles and row blocks are kept. A value at the other device's default thus
        becomes this one's, and twice it (where the tuner found more work-items faster) twice this
        one's; rounded half up, and at most what the kernel makes use of (`_split_limits`)."""
        if not self.splits:
            return params
        now = self.default(device, m, n, k, defines)
        then = self.default(_with_units(device, units_then), m, n, k, defines)
        limits = self._split_limits(m, k, params)
        return {**params, **{key: min(limits[key], max(1, int(params[key] * now[key] / then[key] + 0.5)))
                             for key in self.splits}}

    def _split_limits(self, m, k, params):
        """The largest value of each of `splits` that the kernel makes use of."""
        return {}


class TiledSpec(GemmSpec):
    """gemm_tiled (the GPU family): TILE_M x TILE_N of C per work-group, WPT_M x WPT_N per
    work-item, tiles TILE_K deep staged in local memory; PREFETCH, VECTOR (float4 reads of the
    local tiles) and VLOAD (float4 reads of the global operands) are switches."""
    kernel, file = "gemm_tiled", "gemm_tiled.cl"
    defaults = {"TILE_M": 64, "TILE_N": 64, "TILE_K": 16, "WPT_M": 4, "WPT_N": 4, "PREFETCH": 1, "VECTOR": 0,
                "VLOAD": 0, "SLICES": 1}
    big = {**defaults, "TILE_M": 128, "TILE_N": 128, "WPT_M": 8, "WPT_N": 8}  # 8 x 8 outputs per work-item
    switches = {"PREFETCH": (0, 1, 2), "VECTOR": (0, 1), "VLOAD": (0, 1)}
    splits = ("SLICES",)
    # the tile shapes clnet-tune tries, (TILE_M, TILE_N, TILE_K, WPT_M, WPT_N): work-groups of 8 x 8 to 16 x 16
    tiles = [(64, 64, 16, 4, 4), (128, 128, 16, 8, 8), (128, 128, 8, 8, 8), (128, 128, 32, 8, 8),
             (128, 64, 16, 8, 4), (64, 128, 16, 4, 8), (64, 64, 32, 4, 4), (32, 64, 16, 2, 4),
             (64, 32, 16, 4, 2), (32, 32, 16, 4, 4), (32, 128, 16, 4, 8), (64, 128, 16, 8, 8),
             (128, 256, 8, 8, 16), (256, 128, 8, 16, 8),  # 128 outputs per work-item: the large squares
             (16, 128, 16, 2, 8), (16, 64, 16, 2, 4),  # 16 rows: convolutions of 16 channels (resnet20's first stage)
             (16, 144, 16, 2, 9), (16, 48, 16, 2, 3), (32, 144, 16, 4, 9)]  # their weight gradients: 9 x 16 columns

    def _fits_kernel(self, params):
        """Tiles divisible into work-items (into float4 runs with VECTOR, and with VLOAD their sides)."""
        step = 4 if params["VECTOR"] else 1
        runs = not params["VLOAD"] or all(params[side] % 4 == 0 for side in ("TILE_M", "TILE_N", "TILE_K"))
        return params["WPT_M"] % step == 0 and params["WPT_N"] % step == 0 and runs \
            and params["TILE_M"] % params["WPT_M"] == 0 and params["TILE_N"] % params["WPT_N"] == 0

    def fits(self, device, params):
        """The work-group size and the local tiles (with their padding, in one or two stages) fit the device."""
        pad, stages = 4 if params["VECTOR"] else 1, 2 if params["PREFETCH"] == 2 else 1
        local = 4 * stages * params["TILE_K"] * (params["TILE_M"] + params["TILE_N"] + 2 * pad)
        threads = (params["TILE_M"] // params["WPT_M"]) * (params["TILE_N"] // params["WPT_N"])
        return threads <= device.max_work_group_size and local <= device.info.local_mem

    @staticmethod
    def _tile_count(m, n, params, groups=1):
        return groups * -(-m // params["TILE_M"]) * -(-n // params["TILE_N"])

    def split_k(self, device, m, n, k, params=None, groups=1):
        """Slices of K: enough work-groups to fill the device when the output (of all the groups)
        has few tiles (weight gradients: K is the batch, or batch x pixels), each slice at least
        SPLIT_MIN long."""
        wanted = -(-4 * device.info.compute_units // self._tile_count(m, n, params or self.defaults, groups))
        return max(1, min(wanted, k // SPLIT_MIN))

    def default(self, device, m, n, k, defines):
        """K split where the output has few tiles; otherwise the largest tiles (the fewest loads per
        multiply-add) of which there are enough for every compute unit: 128 x 128, 64 x 64, else
        64 x 32 (32 x 64 when B is not transposed), the shapes clnet-tune picks most often on an
        H200 for outputs too small to fill it."""
        groups = defines.get("GROUPS", 1)
        slices = self.split_k(device, m, n, k, groups=groups)
        if slices > 1:
            return {**self.defaults, "SLICES": slices}
        narrow = {**self.defaults, "TILE_M": 64, "TILE_N": 32, "WPT_M": 4, "WPT_N": 2} if defines.get("TRANS_B") \
            else {**self.defaults, "TILE_M": 32, "TILE_N": 64, "WPT_M": 2, "WPT_N": 4}
        for params in (self.big, self.defaults):
            if min(m, n) >= params["TILE_M"] and self._tile_count(m, n, params, groups) >= device.info.compute_units:
                return dict(params)
        return narrow

    def tile_params(self, device):
        """The tile shapes the device can take, unsplit, with the default switches."""
        tiles = [{**self.defaults, "TILE_M": tm, "TILE_N": tn, "TILE_K": tk, "WPT_M": wm, "WPT_N": wn}
                 for tm, tn, tk, wm, wn in self.tiles]
        return [params for params in tiles if self.fits(device, params)]

    def _alternatives(self, device, shape, default, groups):
        """Every tile shape, with its K splits where K may be split: none, half, as many and twice
        as many (on an H100, 2048^3 in 128 x 128 tiles ran 13% faster unsplit than in the 3 slices
        that fill the device 4 groups deep, and 1024^3 11% faster in 4 slices than in 8)."""
        found = []
        for tile in self.tile_params(device):
            slices = self.split_k(device, *shape, tile, groups)
            found += [{**tile, "SLICES": s}
                      for s in (sorted({1, slices // 2, slices, 2 * slices}) if slices > 1 else [1])]
        return found

    def _split_limits(self, m, k, params):
        return {"SLICES": max(1, k // SPLIT_MIN)}  # as split_k bounds them

    def variants(self, device, params):
        found = [{**params, "PREFETCH": prefetch, "VECTOR": vector, "VLOAD": vload}
                 for prefetch in (1, 2, 0) for vector in (0, 1) for vload in (0, 1)]
        return [v for v in found if v != params and self.valid(v) and self.fits(device, v)]


class PackedSpec(GemmSpec):
    """gemm_packed (the CPU family): CPU_ROWS x 16 of C per work-item."""
    kernel, file = "gemm_packed", "gemm_packed.cl"  # with pack_a and pack_b
    # (no `splits`: its defaults divide the work by the output's panels, whatever the compute units)
    defaults = {"CPU_ROWS": 12, "SLICES": 1}
    # the row blocks clnet-tune tries; 16 float16 accumulators would take all 32 vector registers,
    # as PoCL splits them into 256-bit halves
    rows = (4, 6, 8, 10, 12, 14)

    def default(self, device, m, n, k, defines):
        """12 rows per work-item (4 or 8 for smaller M); K split into CPU_SLICE steps when the whole
        output is one work-group's worth, so that each work-group multiplies one slice of the panels
        while it is in cache rather than every work-item streaming all of K. A gathered B (an
        implicit convolution's, CONV_B) is split into slices of at most CPU_GATHER_K rows, and
        shorter ones (down to CPU_SLICE) where its panels are too few to share out
        (CPU_GATHER_ITEMS work-items)."""
        rows, groups = 12 if m >= 12 else -(-m // 4) * 4, defines.get("GROUPS", 1)
        if defines.get("CONV_B"):
            wanted = -(-CPU_GATHER_ITEMS // (groups * -(-n // PANEL)))
            return {"CPU_ROWS": rows, "SLICES": max(_gather_slices(k), min(wanted, k // CPU_SLICE))}
        panels = groups * -(-n // PANEL) * -(-m // rows)
        slices = k // CPU_SLICE if panels <= CPU_GROUP and k >= 2 * CPU_SLICE else 1
        return {"CPU_ROWS": rows, "SLICES": slices}

    def _alternatives(self, device, shape, default, groups):
        """Every row block, unsplit and with the default's K slices, twice and half as many."""
        slices = {1, default["SLICES"], 2 * default["SLICES"], max(1, default["SLICES"] // 2)}
        return [{"CPU_ROWS": r, "SLICES": s} for r in self.rows for s in sorted(slices)]


class DirectSpec(GemmSpec):
    """gemm_direct (the CPU family's small products, CPU_DIRECT_BYTES): CPU_ROWS x 16 of C at a time,
    as gemm_packed, over A read in place; each of CHUNKS work-items per panel of B loads the panel
    and multiplies its share of the row blocks by it."""
    kernel, file = "gemm_direct", "gemm_packed.cl"
    splits = ("CHUNKS",)  # (its defaults never split K)
    defaults = {"CPU_ROWS": 8, "CHUNKS": 1, "SLICES": 1}
    rows = PackedSpec.rows

    def default(self, device, m, n, k, defines):
        """8 rows per work-item (4 for M up to 4: from 4 to 12 rows, the mlp's products ran within 10%
        of one another on a 2-core EPYC), and enough chunks of them for every compute unit to have a
        work-item; K unsplit."""
        rows = 8 if m > 4 else 4
        chunks = -(-device.info.compute_units // -(-n // PANEL))
        return {"CPU_ROWS": rows, "CHUNKS": max(1, min(chunks, -(-m // rows))), "SLICES": 1}

    def _alternatives(self, device, shape, default, groups):
        """Every row block, with the default's chunks, one and twice as many; K unsplit and, where it
        is long enough, split into CPU_SLICE steps."""
        chunks = sorted({1, default["CHUNKS"], 2 * default["CHUNKS"]})
        slices = sorted({1, max(1, shape[2] // CPU_SLICE)})
        return [{"CPU_ROWS": r, "CHUNKS": c, "SLICES": s} for r in self.rows for c in chunks for s in slices]

    def _split_limits(self, m, k, params):
        return {"CHUNKS": -(-m // params["CPU_ROWS"])}  # a work-item per block of rows


GEMM_TILED, GEMM_PACKED, GEMM_DIRECT = TiledSpec(), PackedSpec(), DirectSpec()
SPECS = {spec.kernel: spec for spec in (GEMM_TILED, GEMM_PACKED, GEMM_DIRECT)}


def gemm(plan, a, b, c, trans_a=False, trans_b=False, bias=None, act=None, bias_per_row=False, groups=1):
    """Record C = act(op(A) op(B) + bias) where op transposes when asked.

    a, b, c are 2-D tensors (plan values or device tensors) or `Matrix` views, in their stored
    shapes: A is (M, K), or (K, M) with trans_a; B is (K, N), or (N, K) with trans_b; C is (M, N).
    The bias has one value per column of C, or per row with bias_per_row; `act` is the activation's
    options (`activation(...)`), None for none. With `groups` > 1, `groups` such products in one
    launch: a and b are the first group's operands, with their `group_stride`s, and c the first
    group's rows, which the others' follow (see `Matrix`).
    """
    a, b, c = _matrix(a), _matrix(b), _matrix(c)
    m, k = a.shape[::-1] if trans_a else a.shape
    n, kb = b.shape if trans_b else b.shape[::-1]
    if kb != k or c.shape != (m, n):
        raise ValueError(f"gemm shapes: A{a.shape}{'^T' if trans_a else ''} B{b.shape}{'^T' if trans_b else ''} "
                         f"C{c.shape}")
    defines = dict(TRANS_A=int(trans_a), TRANS_B=int(trans_b), HAS_BIAS=bias is not None,
                   BIAS_PER_ROW=bias_per_row, **(act or activation()))
    if plan.device.family == "tiled":
        kernel = "gemm_tiled"
    else:
        kernel = "gemm_direct" if groups == 1 and direct(m, n, k) else "gemm_packed"
    return record_gemm(plan, kernel, defines, (m, n, k), a, b, c, bias, groups=groups)


def direct(m, n, k):
    """Whether the CPU family's (M, N, K) product runs gemm_direct: operands small enough
    (CPU_DIRECT_BYTES) and a panel of B that local memory takes whole (CPU_GATHER_K)."""
    return k <= CPU_GATHER_K and 4 * k * (m + n) <= CPU_DIRECT_BYTES


def _span(x, groups=1):
    """The elements a Matrix spans as the kernels index it (a view with a leading dimension reaches
    past its own shape; the operands of every group), at least its tensor's size (a gathered
    convolution operand)."""
    rows, cols = x.shape
    if x.image_cols:
        span = (cols - 1) // x.image_cols * x.ld + rows * x.image_cols
    else:
        span = (rows - 1) * x.ld + cols
    return max(span + (groups - 1) * x.group_stride, prod(x.tensor.shape))


def record_gemm(plan, kernel, defines, shape, a, b, c, bias=None, params=None, groups=1):
    """Record one launch of `kernel` (gemm_tiled or gemm_packed, with its fixed options `defines`)
    computing the (M, N, K) product of Matrix operands, or `groups` of them (a grouped convolution:
    see `Matrix`). `params` (the tuner's candidates) overrides the tuned or default parameters."""
    m, n, k = shape
    if (a.image_cols and kernel == "gemm_direct") or bool(b.image_cols) != bool(defines.get("CONV_DX")):
        raise ValueError(f"{kernel}: an operand A of images is gemm_tiled's or gemm_packed's, and a B of images is "
                         "CONV_DX's dY, always")
    spec, case = SPECS[kernel], Case(kernel, layout(defines, groups), m, n, k)
    c_all = Matrix(c.tensor, groups * m, n, c.ld, c.image_cols)  # the rows of every group
    record(case, Call(kernel, tuple(sorted(defines.items())), shape, (_span(a, groups), a.ld, a.image_cols),
                      (_span(b, groups), b.ld, b.image_cols), (_span(c_all), c.ld, c.image_cols),
                      0 if bias is None else prod(bias.shape), groups, (a.group_stride, b.group_stride)))
    defines = {**defines, "A_IMAGE_COLS": a.image_cols, "C_IMAGE_COLS": c.image_cols}
    if params is None:
        params = _tuned(plan.device, spec, case, {**defines, "GROUPS": groups})
        if not spec.valid(params):
            params = spec.default(plan.device, m, n, k, {**defines, "GROUPS": groups})
    params = dict(params)
    slices = params.pop("SLICES")
    epilogue = {key: defines.get(key) for key in ("HAS_BIAS", "BIAS_PER_ROW", "ACT", "ACT_SLOPE", "C_IMAGE_COLS")}
    grouping = {"GROUPS": groups} if groups > 1 else {}
    if kernel == "gemm_packed":
        a, b, product, grid, local, slices = _packed_operands(plan, defines, shape, a, b, params, slices, groups)
    elif kernel == "gemm_direct":  # a work-group (its own panel of B) per chunk of each panel's rows
        if groups > 1:
            raise ValueError("gemm_direct multiplies one group: grouped products are packed")
        product = {"TRANS_A": defines["TRANS_A"], "TRANS_B": defines["TRANS_B"], "CPU_ROWS": params["CPU_ROWS"],
                   "DIRECT_K": -(-k // slices)}
        grid, local = (-(-n // PANEL), params["CHUNKS"]), (1, 1)
    else:
        product = {**{key: value for key, value in defines.items() if key not in epilogue}, **params}
        if groups > 1:
            grouping.update(GROUP_A=a.group_stride, GROUP_B=b.group_stride)
        local = (params["TILE_N"] // params["WPT_N"], params["TILE_M"] // params["WPT_M"])
        grid = (-(-n // params["TILE_N"]) * local[0], -(-m // params["TILE_M"]) * local[1])
    bias = bias if bias is not None else c.tensor
    depth = groups * slices  # the third dimension: (slice, group)
    if depth > 1:
        grid, local = (*grid, depth), local and (*local, 1)
    if slices == 1:
        program = plan.kernel(spec.file, kernel, **product, **grouping, **epilogue)
        return plan.launch(program, grid, local, m, n, k, a.tensor, a.ld, b.tensor, b.ld, c.tensor, c.ld, bias)
    # Partial products of K slices in one 3-D launch, then their sum in a fixed order (deterministic).
    partial = plan.value((slices, groups * m, n), "split-K partial sums")
    program = plan.kernel(spec.file, kernel, **product, **grouping, SPLIT_K=True)
    plan.launch(program, grid, local, m, n, k, a.tensor, a.ld, b.tensor, b.ld, partial, n, partial)
    return sum_slices(plan, partial, slices, groups * m, n, c.tensor, c.ld, bias, epilogue)


def _with_units(device, units):
    """`device` as though it had `units` compute units, for the defaults another device of its class
    gets (the specs' `default` reads nothing else of the device)."""
    return SimpleNamespace(info=replace(device.info, compute_units=units))


def _tuned(device, spec, case, defines):
    """The case's tuned parameters (`lookup`) if the kernel takes them, else None; those of a shipped
    table tuned on a device of another compute-unit count rebalanced for this one (`spec.rebalance`)."""
    found = lookup(device, case)
    if found is None or not spec.valid(found.params):
        return None
    units = device.info.compute_units
    if found.units is None or found.units == units:
        return found.params
    params = spec.rebalance(device, case.m, case.n, case.k, defines, found.params, found.units)
    changed = [f"{key} {found.params[key]} -> {value}" for key, value in params.items() if value != found.params[key]]
    if changed:
        log.debug("%s: parameters from %s (tuned on %d compute units) rebalanced for %d: %s", case.key,
                  found.origin, found.units, units, ", ".join(changed))
    return params


def _packed_operands(plan, defines, shape, a, b, params, slices, groups):
    """Record the copies of the operands into gemm_packed's panels (B's only where it is not an
    implicit convolution's, which gemm_packed gathers itself; every group's, one after another); the
    panels as operands, gemm_packed's options, its grid, work-group size and K slices."""
    m, n, k = shape
    rows = params["CPU_ROWS"]
    grid = (-(-n // PANEL), -(-m // rows))
    grouped = {"GROUPS": groups} if groups > 1 else {}
    packed_a = plan.value((groups * grid[1], k, rows), "A panels")
    options = dict(CPU_ROWS=rows, **grouped, GROUP_A=a.group_stride or None, A_IMAGE_COLS=a.image_cols)
    z, z_local = ((groups,), (1,)) if groups > 1 else ((), ())  # a third dimension for the groups
    if defines["TRANS_A"] or defines.get("CONV_FLIP") or (a.image_cols or PANEL) % PANEL:  # no runs of 16
        pack = plan.kernel(GEMM_PACKED.file, "pack_a", TRANS_A=defines["TRANS_A"], CONV_FLIP=defines.get("CONV_FLIP"),
                           **options)
        plan.launch(pack, (k, grid[1], *z), (PANEL, 1, *z_local), m, k, a.tensor, a.ld, packed_a)
    else:  # rows along K: runs of them
        pack = plan.kernel(GEMM_PACKED.file, "pack_a_runs", PACK_RUN=PACK_RUN, **options)
        plan.launch(pack, (-(-k // PACK_RUN), grid[1], *z), (1, 1, *z_local), m, k, a.tensor, a.ld, packed_a)
    packed_a = Matrix(packed_a, m, k, ld=0)
    if defines.get("CONV_B"):  # one work-item per panel of B (or slice of it): every panel of A
        slices = max(slices, _gather_slices(k))  # (a tuned or forced split may not know the limit)
        gather = {key: value for key, value in defines.items() if key == "TRANS_B" or key.startswith("CONV_")}
        options = {"CPU_ROWS": rows, "PANEL_K": -(-k // slices), **gather, "GROUP_B": b.group_stride or None}
        return packed_a, b, options, (grid[0], 1), (1, 1), slices
    packed_b = plan.value((groups * grid[0], k, PANEL), "B panels")
    plan.launch(plan.kernel(GEMM_PACKED.file, "pack_b", TRANS_B=defines["TRANS_B"], **grouped,
                            GROUP_B=b.group_stride or None), (k, grid[0], *z), (PANEL, 1, *z_local),
                k, n, b.tensor, b.ld, packed_b)
    if slices > 1 and prod(grid) <= CPU_GROUP:
        local = grid
    elif grid[1] <= CPU_SHARED_B:  # few panels of A: a work-group multiplies one panel of B by all of them
        local = (1, grid[1])
    elif prod(grid) <= CPU_SMALL_GRID:  # small work-groups, which the driver's threads share out evenly
        local = (CPU_LOCAL, 1)
    else:
        local = None
    return packed_a, Matrix(packed_b, k, n, ld=0), {"CPU_ROWS": rows}, grid, local, slices
