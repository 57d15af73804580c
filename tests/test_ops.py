"""Every kernel against a float64 numpy reference, on awkward sizes and at non-zero buffer offsets.

Each tensor a kernel sees lives inside a larger buffer (a `Slot`): inputs are surrounded by NaN, so
a kernel that ignores an offset or reads past its tensor poisons its own result, and outputs are
surrounded by GUARD, which must survive every launch (nothing is written outside the tensor).
Outputs start as NaN, so an element a kernel forgets to write is caught as well.
"""

import importlib
from copy import copy
from dataclasses import replace

import numpy as np
import pytest
from conftest import GUARD, Slot, SlotPlan, execute, force_gemm_params, new_plan, upload

import clnet
from clnet import layers as L, losses, ops, optim
from clnet.ops import dense_chain as chain_ops
from clnet.ops.gemm import GEMM_PACKED, GEMM_TILED

gemm_module = importlib.import_module("clnet.ops.gemm")  # clnet.ops.gemm is also the function's name


LEAKY_SLOPE = 0.125  # (exact in float32)


def act_ref(act, x):
    x = np.asarray(x, np.float64)
    return {"none": lambda: x, "relu": lambda: np.maximum(x, 0.0),
            "sigmoid": lambda: 0.5 * (1.0 + np.tanh(0.5 * x)),  # = 1 / (1 + exp(-x)), no overflow
            "tanh": lambda: np.tanh(x), "relu6": lambda: np.clip(x, 0.0, 6.0),
            "leaky_relu": lambda: np.where(x > 0, x, LEAKY_SLOPE * x)}[act]()


def act_grad_ref(act, y):
    y = np.asarray(y, np.float64)
    return {"none": lambda: np.ones_like(y), "relu": lambda: (y > 0).astype(np.float64),
            "sigmoid": lambda: y * (1.0 - y), "tanh": lambda: 1.0 - y * y,
            "relu6": lambda: ((y > 0) & (y < 6)).astype(np.float64),
            "leaky_relu": lambda: np.where(y > 0, 1.0, LEAKY_SLOPE)}[act]()


def softmax_ref(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def f32(a):
    return np.asarray(a, np.float32)


# ----------------------------------------------------------------------------------------- GEMM

LAYOUTS = {"NN": (False, False), "TN": (True, False), "NT": (False, True), "TT": (True, True)}
# (M, N, K): batch 1, K = 1, K < 16, N and M not multiples of 4, 16 or 64, exact 16-blocks, K > 16
# with a remainder, several 64 x 64 tiles with partial edges, and 128 x 128 tiles (outputs of 256+).
GEMM_SHAPES = [(1, 1, 1), (1, 19, 3), (7, 5, 1), (13, 17, 9), (9, 16, 32), (66, 71, 17), (130, 33, 70),
               (257, 300, 33)]  # the last takes 128 x 128 tiles where there are enough for the device


def _gemm_case(device, rng, plan, m, n, k, layout, offsets, has_bias=False, act="none"):
    """Records one GEMM on random operands; returns (output slot, float64 reference)."""
    trans_a, trans_b = LAYOUTS[layout]
    a = f32(rng.uniform(-1, 1, (k, m) if trans_a else (m, k)))
    b = f32(rng.uniform(-1, 1, (n, k) if trans_b else (k, n)))
    bias = f32(rng.uniform(-1, 1, n))
    oa, ob, oc, obias = offsets
    sa, sb, sbias = Slot(device, a, oa), Slot(device, b, ob), Slot(device, bias, obias)
    sc = Slot.output(device, (m, n), oc)
    ops.gemm(plan, sa.tensor, sb.tensor, sc.tensor, trans_a=trans_a, trans_b=trans_b,
             bias=sbias.tensor if has_bias else None, act=ops.activation(act))
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    pre = (a64.T if trans_a else a64) @ (b64.T if trans_b else b64)
    if has_bias:
        pre = pre + bias
    return sc, act_ref(act, pre), pre


@pytest.fixture(params=["gemm_tiled", "gemm_packed", "gemm_direct"])
def gemm_kernel(request, device, monkeypatch):
    """Runs a test with each GEMM kernel on the test's device (every one runs anywhere): the CPU
    family's two whatever the size rule would choose for the test's products."""
    monkeypatch.setattr(device, "family", "tiled" if request.param == "gemm_tiled" else "cpu")
    monkeypatch.setattr(gemm_module, "direct", lambda m, n, k: request.param == "gemm_direct")
    return request.param


def _check_gemm(sc, ref, k, what):
    got = sc.read()
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6 * (k + 1), err_msg=what)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_gemm_layouts(device, gemm_kernel, layout):
    """C = op(A) op(B) for every layout on every awkward shape, operands at odd offsets."""
    rng = np.random.default_rng(1)
    plan = new_plan(device)
    cases = []
    for i, (m, n, k) in enumerate(GEMM_SHAPES):
        offsets = (0, 0, 0, 0) if i == 0 else (7 * i + 1, 3 * i, 64 * i, 5)
        cases.append(((m, n, k), _gemm_case(device, rng, plan, m, n, k, layout, offsets)))
    execute(plan)
    for (m, n, k), (sc, ref, _) in cases:
        _check_gemm(sc, ref, k, f"{gemm_kernel} {layout} M={m} N={n} K={k}")
    assert {launch.kernel.function_name for launch in plan.launches} >= {gemm_kernel}


@pytest.mark.parametrize("layout", ["NN", "TN", "NT"])
def test_gemm_split_k(device, gemm_family, layout, monkeypatch):
    """Few output tiles and a long K: both families split K over work-groups and sum the slices
    (the CPU family's packed kernel: gemm_direct splits where tuned to, as every candidate is below)."""
    monkeypatch.setattr(gemm_module, "direct", lambda m, n, k: False)
    rng = np.random.default_rng(5)
    plan = new_plan(device)
    m, n, k = 5, 70, 3001
    assert GEMM_TILED.split_k(device, m, n, k) > 1 and GEMM_TILED.split_k(device, 300, 300, 100) == 1
    cpu_slices = lambda m, n, k: GEMM_PACKED.default(device, m, n, k, {})["SLICES"]
    assert cpu_slices(m, n, k) > 1 and cpu_slices(300, 300, 100) == 1
    sc, ref, _ = _gemm_case(device, rng, plan, m, n, k, layout, (3, 5, 64, 0))
    # into a matrix whose leading dimension is wider than its columns, which stay as they were
    a, b = f32(rng.uniform(-1, 1, (m, k))), f32(rng.uniform(-1, 1, (k, n)))
    wide = f32(rng.uniform(-1, 1, (m, n + 3)))
    sa, sb, sw = Slot(device, a, 1), Slot(device, b, 2), Slot(device, wide, 7)
    ops.gemm(plan, sa.tensor, sb.tensor, ops.Matrix(sw.tensor, m, n, ld=n + 3))
    assert [launch.kernel.function_name for launch in plan.launches].count("sum_slices") == 2
    execute(plan)
    _check_gemm(sc, ref, k, f"split-K {layout}")
    expected = wide.astype(np.float64)
    expected[:, :n] = a.astype(np.float64) @ b.astype(np.float64)
    np.testing.assert_allclose(sw.read(), expected, rtol=1e-5, atol=1e-6 * k)


@pytest.mark.parametrize("rows, cols, slices, wanted, lanes, vector", [
    (3, 8, 37, 1024, 32, 1),      # few outputs, many slices: every lane walks some
    (2, 5, 3, 1024, 2, 1),        # fewer slices than lanes could be: a power of two no more than them
    (1, 7, 40, 100000, 32, 1),    # the most lanes, whatever the wanted work-items ask
    (5, 12, 6, 1, 1, 4),          # many outputs: four a work-item, and every slice in one
    (3, 10, 4, 1, 1, 1)])         # a row not a multiple of four: one a work-item
def test_sum_slices_in_lanes_and_fours(device, monkeypatch, rows, cols, slices, wanted, lanes, vector):
    """The GPU family's sum of slices shares an output's slices among lanes, or takes four outputs
    a work-item: out = act(sum + bias) in the order the kernel says (each lane's slices in order,
    then the lanes in order), bit for bit, into a matrix wider than its columns."""
    monkeypatch.setattr(device, "family", "tiled")
    elementwise = importlib.import_module("clnet.ops.elementwise")
    monkeypatch.setattr(device, "info", replace(device.info, compute_units=1))
    monkeypatch.setattr(elementwise, "SUM_ITEMS_PER_UNIT", wanted)  # the work-items wanted in all
    rng = np.random.default_rng(rows * cols + slices)
    parts, bias = f32(rng.uniform(-1, 1, (slices, rows, cols))), f32(rng.uniform(-1, 1, cols))
    sp, sbias = Slot(device, parts, 3), Slot(device, bias, 5)
    out = Slot.output(device, (rows, cols + 2), 9)
    plan, built = new_plan(device), []
    kernel = plan.kernel
    monkeypatch.setattr(plan, "kernel", lambda *args, **defines: built.append(defines) or kernel(*args, **defines))
    elementwise.sum_slices(plan, sp.tensor, slices, rows, cols, out.tensor, cols + 2, sbias.tensor,
                           {"HAS_BIAS": True, **ops.activation("relu")})
    assert (built[-1]["SUM_LANES"], built[-1]["SUM_VECTOR"]) == (lanes, vector)
    execute(plan)
    lane_sums = [np.float32(0)] * lanes
    for z in range(slices):
        lane_sums[z % lanes] = lane_sums[z % lanes] + parts[z]
    total = lane_sums[0]
    for extra in lane_sums[1:]:
        total = total + extra
    got = out.read()
    np.testing.assert_array_equal(got[:, :cols], np.maximum(total + bias, 0))
    assert np.isnan(got[:, cols:]).all()  # the columns past the matrix's are not written


def test_gemm_packed_slices_whatever_the_work_groups(device, monkeypatch):
    """gemm_packed finds its K slice from its global index: a driver free to choose the work-groups
    of a split launch may make them more than one slice deep (PoCL 5 did, on a 16-core Xeon)."""
    monkeypatch.setattr(device, "family", "cpu")
    monkeypatch.setattr(gemm_module, "direct", lambda m, n, k: False)
    force_gemm_params(monkeypatch, {"CPU_ROWS": 4, "SLICES": 4})
    rng = np.random.default_rng(8)
    plan = new_plan(device)
    sc, ref, _ = _gemm_case(device, rng, plan, 9, 40, 103, "NN", (0, 0, 0, 0), True, "relu")
    split = [launch for launch in plan.launches if launch.kernel.function_name == "gemm_packed"]
    assert len(split) == 1 and split[0].global_size[2] == 4
    split[0].local_size = (1, 1, 2)
    execute(plan)
    _check_gemm(sc, ref, 103, "slices in work-groups two deep")


def _tuning_candidates(device, kernel):
    """The tuner's parameter space (gemm_tiled's with VLOAD off: test_gemm_tiled_float4_global_loads
    takes VLOAD's runs on their own, at the edges they meet), a third of it splitting K."""
    if kernel == "gemm_packed":
        found = [{"CPU_ROWS": r} for r in gemm_module.GEMM_PACKED.rows]
    elif kernel == "gemm_direct":
        found = [{"CPU_ROWS": r, "CHUNKS": c} for r in gemm_module.GEMM_DIRECT.rows for c in (1, 2, 5)]
    else:
        tiled = gemm_module.GEMM_TILED
        found = [params for tile in tiled.tile_params(device)
                 for params in [tile] + [v for v in tiled.variants(device, tile) if not v["VLOAD"]]]
    return [{**params, "SLICES": 3 if i % 3 == 0 else 1} for i, params in enumerate(found)]


# (TILE_M, TILE_N, TILE_K, WPT_M, WPT_N, PREFETCH, VECTOR, SLICES) with VLOAD on
VLOAD_PARAMS = [(64, 64, 16, 4, 4, 1, 0, 1), (128, 128, 8, 8, 8, 2, 1, 3), (32, 64, 16, 4, 4, 0, 1, 1),
                (64, 32, 32, 4, 2, 2, 0, 3)]


@pytest.mark.parametrize("tile", VLOAD_PARAMS, ids=lambda t: "x".join(map(str, t)))
def test_gemm_tiled_float4_global_loads(device, monkeypatch, tile):
    """VLOAD's float4 runs, on every layout: operands whose offset and leading dimension are
    multiples of 4 (the float4 loads) or not (one by one), rows longer than the product reads (NaN
    beyond them: a run may not read past its row's end, where it holds fewer than 4), K split."""
    monkeypatch.setattr(device, "family", "tiled")
    keys = ("TILE_M", "TILE_N", "TILE_K", "WPT_M", "WPT_N", "PREFETCH", "VECTOR", "SLICES")
    params = {**dict(zip(keys, tile)), "VLOAD": 1}
    assert GEMM_TILED.valid(params)
    force_gemm_params(monkeypatch, params)
    rng, plan, cases = np.random.default_rng(5), new_plan(device), []
    for i, layout in enumerate(LAYOUTS):
        trans_a, trans_b = LAYOUTS[layout]
        for m, n, k, offset, pad in ((37, 45, 41, 8, 3), (64, 68, 40, 4, 0), (30, 9, 70, 3, 1)):
            operands = []
            for rows, cols in (((k, m) if trans_a else (m, k)), ((n, k) if trans_b else (k, n))):
                ld = cols + pad  # 41 + 3, 40 + 0: multiples of 4; 70 + 1 is not
                stored = np.full((rows, ld), np.nan, np.float32)
                stored[:, :cols] = rng.uniform(-1, 1, (rows, cols))
                operands.append((Slot(device, stored, offset + 4 * i), rows, cols, ld, stored[:, :cols]))
            (sa, *a_shape, a), (sb, *b_shape, b) = operands
            sc = Slot.output(device, (m, n), 0)
            ops.gemm(plan, ops.Matrix(sa.tensor, *a_shape), ops.Matrix(sb.tensor, *b_shape), sc.tensor,
                     trans_a=trans_a, trans_b=trans_b)
            a64, b64 = a.astype(np.float64), b.astype(np.float64)
            cases.append((sc, (a64.T if trans_a else a64) @ (b64.T if trans_b else b64), k, f"{layout} {m}x{n}x{k}"))
    execute(plan)
    for sc, ref, k, what in cases:
        _check_gemm(sc, ref, k, f"VLOAD {params} {what}")


@pytest.mark.parametrize("kernel", ["gemm_tiled", "gemm_packed", "gemm_direct"])
def test_gemm_every_tuning_candidate(device, monkeypatch, kernel):
    """Whatever clnet-tune may pick computes the same products: every parameter set of the tuner's
    space (a third of them splitting K), each on one of the layouts the kernel serves in turn, with
    and without a bias and activation, at awkward shapes and offsets."""
    monkeypatch.setattr(device, "family", "tiled" if kernel == "gemm_tiled" else "cpu")
    monkeypatch.setattr(gemm_module, "direct", lambda m, n, k: kernel == "gemm_direct")
    layouts = list(LAYOUTS)
    rng = np.random.default_rng(3)
    for i, params in enumerate(_tuning_candidates(device, kernel)):
        force_gemm_params(monkeypatch, params)
        plan, cases, layout = new_plan(device), [], layouts[i % len(layouts)]
        # gemm_packed: the last shape has more panels than one work-group takes (CPU_GROUP), so
        # that split K runs in work-groups of the driver's choosing
        shapes = ((13, 17, 9), (66, 131, 17), (130, 33, 300)) + (((200, 1300, 20),) if kernel == "gemm_packed" else ())
        for m, n, k in shapes:
            epilogue = (True, "relu") if i % 2 else (False, "none")
            cases.append((k, _gemm_case(device, rng, plan, m, n, k, layout, (3, 5, 64, 0), *epilogue)))
        launched = [launch for launch in plan.launches if launch.kernel.function_name == kernel]
        if kernel == "gemm_tiled":  # the parameters were taken: work-groups of the tiles' shape
            local = (params["TILE_N"] // params["WPT_N"], params["TILE_M"] // params["WPT_M"])
            assert launched and all(launch.local_size[:2] == local for launch in launched)
        assert launched
        execute(plan)
        for k, (sc, ref, _) in cases:
            _check_gemm(sc, ref, k, f"{kernel} {layout} {params}")


# Every activation with and without bias, through both families, on several layouts.
EPILOGUES = [("none", True, "NT"), ("none", True, "TN"),
             ("relu", True, "TN"), ("relu", False, "NT"),
             ("sigmoid", True, "NN"), ("sigmoid", False, "NT"),
             ("tanh", True, "NT"), ("tanh", False, "TN")]


@pytest.mark.parametrize("act,has_bias,layout", EPILOGUES)
def test_gemm_bias_activation(device, gemm_kernel, act, has_bias, layout):
    """The fused epilogue act(op(A) op(B) + bias)."""
    rng = np.random.default_rng(2)
    plan = new_plan(device)
    shapes = ((67, 35, 19), (1, 35, 19), (5, 3, 1))
    cases = [_gemm_case(device, rng, plan, m, n, k, layout, (3, 41, 17, 9), has_bias, act) for m, n, k in shapes]
    execute(plan)
    for (sc, ref, pre), (m, n, k) in zip(cases, shapes):
        _check_gemm(sc, ref, k, f"{gemm_kernel} {layout} {act} bias={has_bias} M={m} N={n} K={k}")
    # The inputs reach where the activation is far from the identity, so ignoring ACT would fail.
    ref, pre = cases[0][1], cases[0][2]
    assert act == "none" or np.abs(ref - pre).max() > 0.5


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_gemm_leading_dimensions(device, gemm_kernel, layout):
    """Operands inside wider rows (NaN beyond their columns, at odd offsets) and C inside a wider
    matrix (whose other columns stay as they were), with and without the epilogue, on sizes 1, 3,
    17, 129 in every position."""
    trans_a, trans_b = LAYOUTS[layout]
    rng, plan, cases = np.random.default_rng(6), new_plan(device), []
    for i, (m, n, k) in enumerate(((1, 1, 1), (3, 17, 129), (17, 3, 1), (129, 33, 17), (20, 129, 3))):
        stored = []
        for rows, cols, offset in (((k, m) if trans_a else (m, k)) + (2 * i + 1,),
                                   ((n, k) if trans_b else (k, n)) + (3 * i + 5,)):
            full = np.full((rows, cols + 1 + i), np.nan, np.float32)
            full[:, :cols] = rng.uniform(-1, 1, (rows, cols))
            stored.append((Slot(device, full, offset), rows, cols, full.shape[1], full[:, :cols]))
        (sa, a_rows, a_cols, lda, a), (sb, b_rows, b_cols, ldb, b) = stored
        wide, bias = f32(rng.uniform(-1, 1, (m, n + 2))), f32(rng.uniform(-1, 1, n))
        sc, sbias = Slot(device, wide, 7 * i), Slot(device, bias, i)
        epilogue = i % 2 == 1
        ops.gemm(plan, ops.Matrix(sa.tensor, a_rows, a_cols, ld=lda), ops.Matrix(sb.tensor, b_rows, b_cols, ld=ldb),
                 ops.Matrix(sc.tensor, m, n, ld=n + 2), trans_a=trans_a, trans_b=trans_b,
                 bias=sbias.tensor if epilogue else None, act=ops.activation("tanh" if epilogue else "none"))
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        expected = wide.astype(np.float64)
        product = (a64.T if trans_a else a64) @ (b64.T if trans_b else b64)
        expected[:, :n] = np.tanh(product + bias) if epilogue else product
        cases.append((sc, expected, k, f"{gemm_kernel} {layout} {m}x{n}x{k}"))
    assert {launch.kernel.function_name for launch in plan.launches} >= {gemm_kernel}
    execute(plan)
    for sc, expected, k, what in cases:
        _check_gemm(sc, expected, k, what)


def test_gemm_direct_size_rule(device, monkeypatch):
    """The CPU family multiplies in place up to CPU_DIRECT_BYTES of operands and CPU_GATHER_K rows
    of B, and packs beyond either; both sides of each bound compute the product."""
    monkeypatch.setattr(device, "family", "cpu")
    k_long = gemm_module.CPU_GATHER_K
    side = gemm_module.CPU_DIRECT_BYTES // (4 * k_long) // 2  # M = N = side: exactly CPU_DIRECT_BYTES
    shapes = {(side, side, k_long): "gemm_direct", (side, side + 1, k_long): "gemm_packed",
              (3, 17, k_long): "gemm_direct", (3, 17, k_long + 1): "gemm_packed"}
    rng = np.random.default_rng(7)
    for (m, n, k), kernel in shapes.items():
        plan = new_plan(device)
        sc, ref, _ = _gemm_case(device, rng, plan, m, n, k, "NT", (1, 2, 3, 4), True, "relu")
        assert kernel in {launch.kernel.function_name for launch in plan.launches}, (m, n, k)
        assert gemm_module.direct(m, n, k) == (kernel == "gemm_direct")
        execute(plan)
        _check_gemm(sc, ref, k, f"{kernel} {m}x{n}x{k}")


def test_gemm_direct_is_for_one_group(device, monkeypatch):
    """A grouped product, however small, is packed: gemm_direct refuses groups rather than ignore them."""
    monkeypatch.setattr(device, "family", "cpu")
    plan = new_plan(device)
    a, b, c = plan.value((2 * 3, 5), "a"), plan.value((5, 2 * 4), "b"), plan.value((2 * 3, 4), "c")
    operands = ops.Matrix(a, 3, 5, group_stride=15), ops.Matrix(b, 5, 4, ld=8, group_stride=4), ops.Matrix(c, 3, 4)
    ops.gemm(plan, *operands, groups=2)
    assert gemm_module.direct(3, 4, 5) and "gemm_direct" not in {launch.kernel.function_name for launch in plan.launches}
    with pytest.raises(ValueError, match="one group"):
        gemm_module.record_gemm(plan, "gemm_direct", dict(TRANS_A=0, TRANS_B=0), (3, 4, 5), *operands, groups=2)


# (rows, widths, activations, biases): one row; K past whole 16s and N past whole 4s; rows not whole
# 4s; every activation; 4 + 1 layers (the last a GEMM of its own).
CHAIN_CASES = [(1, (5, 3, 2), ("relu", "none"), (True, True)),
               (13, (19, 7, 33, 4), ("tanh", "leaky_relu", "none"), (True, False, True)),
               (130, (70, 16, 17, 9, 3), ("sigmoid", "relu6", "relu", "none"), (False, True, True, True)),
               (6, (10, 8, 8, 8, 8, 5), ("relu", "relu", "relu", "relu", "none"), (True,) * 5)]


@pytest.mark.parametrize("units", [1, 3, 16])
@pytest.mark.parametrize("rows, widths, acts, biases", CHAIN_CASES)
def test_dense_chain(device, units, rows, widths, acts, biases):
    """ops.dense_chain: Dense layers each reading the one before, forward in one launch (at most 4
    layers a launch; 5 are 3 + 2), backward in two, every value stored whole (the plan's values at
    odd offsets, guarded); work-items by rows, as many as the compute units (the last one's rows
    fewer), and by blocks of the parameters' gradients. Each layer against a float64 reference from
    the kernel's own values: forward from its input, backward from its output's gradient."""
    device = copy(device)
    device.info = replace(device.info, compute_units=units)
    rng, plan = np.random.default_rng(11), SlotPlan(device)
    x = f32(rng.uniform(-1, 1, (rows, widths[0])))
    layers, slots = [], []
    for i, (k, n, act, has_bias) in enumerate(zip(widths, widths[1:], acts, biases)):
        weight, bias = f32(rng.uniform(-1, 1, (n, k))), f32(rng.uniform(-1, 1, n))
        out, dweight = Slot.output(device, (rows, n), 5 + 3 * i), Slot.output(device, (n, k), 2 + i)
        dbias = Slot.output(device, (n,), 1 + 2 * i) if has_bias else None
        options = ops.activation(act, LEAKY_SLOPE) if act == "leaky_relu" else ops.activation(act)
        layers.append((Slot(device, weight, 2 * i + 1).tensor, Slot(device, bias, i).tensor if has_bias else None,
                       options, out.tensor, dweight.tensor, dbias and dbias.tensor))
        slots.append((out, dweight, dbias, weight, bias if has_bias else 0.0, act))
    sx = Slot(device, x, 9)
    chain_ops.forward(plan, sx.tensor, [layer[:4] for layer in layers])
    dy = f32(rng.uniform(-1, 1, (rows, widths[-1])))
    dx = chain_ops.backward(plan, sx.tensor, layers, Slot(device, dy, 4).tensor, need_dx=True)
    kernels = [launch.kernel.function_name for launch in plan.launches]
    launches = 1 + (len(layers) > 4)
    assert kernels == ["dense_chain"] * launches + ["dense_chain_back", "dense_chain_weights"] * launches
    execute(plan)
    inputs = [x] + [out.read() for out, *_ in slots]
    for i, (out, dweight, dbias, weight, bias, act) in enumerate(slots):
        pre = inputs[i].astype(np.float64) @ weight.T.astype(np.float64) + bias
        np.testing.assert_allclose(inputs[i + 1], act_ref(act, pre), rtol=1e-5, atol=1e-6 * (widths[i] + 1),
                                   err_msg=f"layer {i}")
        assert act in ("none", "relu") or np.abs(act_ref(act, pre) - pre).max() > 0.1  # the activation applied
    grad = dy.astype(np.float64)
    for i in reversed(range(len(slots))):
        out, dweight, dbias, weight, bias, act = slots[i]
        pre = grad * act_grad_ref(act, inputs[i + 1])
        np.testing.assert_allclose(dweight.read(), pre.T @ inputs[i], rtol=1e-5, atol=1e-5 * rows, err_msg=f"dW{i}")
        if dbias is not None:
            np.testing.assert_allclose(dbias.read(), pre.sum(axis=0), rtol=1e-5, atol=1e-5 * rows, err_msg=f"db{i}")
        got = plan.read(dx) if i == 0 else None
        grad = pre @ weight.astype(np.float64)
        if got is not None:
            np.testing.assert_allclose(got, grad, rtol=1e-5, atol=1e-5 * widths[i + 1], err_msg="dx")


def _dense_graph(kind):
    """An mlp ("stack"); a chain whose last output two readers share, so that their gradients' sum
    applies its activation's derivative ("shared output"); a chain whose first output has another
    reader, so that its backward is not chained ("shared inside")."""
    if kind == "stack":
        return [L.Flatten(), L.Dense(12, 9), L.ReLU(), L.Dense(9, 7), L.Tanh(), L.Dense(7, 3)]
    x = clnet.Input((3, 4))
    a = L.ReLU()(L.Dense(12, 8)(L.Flatten()(x)))
    b = L.Sigmoid()(L.Dense(8, 8)(a))
    merged = L.Add()([b, b]) if kind == "shared output" else L.Add()([a, b])
    return x, L.Dense(8, 3)(merged)


@pytest.mark.parametrize("kind, forward, backward", [("stack", ["dense_chain"], ["dense_chain_back"]),
                                                     ("shared output", ["dense_chain"], ["dense_chain_back"]),
                                                     ("shared inside", ["dense_chain"], [])])
def test_dense_chain_in_plans(device, monkeypatch, kind, forward, backward):
    """The CPU family runs consecutive Dense layers each reading the one before as dense_chains in
    training and inference plans (CLNET_DENSE_CHAIN=1; 0: a GEMM each, as the GPU family), backward
    too where only the last layer's output has other readers, with the same predictions, loss and
    step."""
    rng = np.random.default_rng(3)
    x, y = f32(rng.uniform(-1, 1, (10, 3, 4))), rng.integers(0, 3, 10).astype(np.int32)
    results = {}
    for family, mode in (("cpu", "1"), ("cpu", "0"), ("tiled", "1")):
        monkeypatch.setattr(device, "family", family)
        monkeypatch.setenv("CLNET_DENSE_CHAIN", mode)
        graph = _dense_graph(kind)
        model = (clnet.Sequential(graph, device=device, seed=4) if kind == "stack" else
                 clnet.Model(*graph, device=device, seed=4))
        model.compile("cross_entropy", optim.SGD(0.1))
        predicted, loss = model.predict(x, batch_size=10), model.train_on_batch(x, y)
        results[family, mode] = predicted, loss, model.state_dict()
        kernels = {names[0]: names for names in ([launch.kernel.function_name for launch in runner.plan.launches]
                                                 for runner in model._runners.values())}
        chained = (family, mode) == ("cpu", "1")
        for names in kernels.values():
            assert [name for name in names if name == "dense_chain"] == (forward if chained else [])
            assert names[0] == ("dense_chain" if chained else "gather_batch")  # the chain takes the gather in
            assert ("gather_batch" in names) != chained
            assert ("gemm_direct" in names) == (family == "cpu" and (not chained or kind != "stack"))
        trained = [names for names in kernels.values() if "sgd_step" in names][0]
        assert [name for name in trained if name == "dense_chain_back"] == (backward if chained else [])
    for key in (("cpu", "0"), ("tiled", "1")):
        np.testing.assert_allclose(results[key][0], results["cpu", "1"][0], rtol=1e-5, atol=1e-6)
        assert results[key][1] == pytest.approx(results["cpu", "1"][1], rel=1e-5)
        for name, value in results[key][2].items():
            np.testing.assert_allclose(value, results["cpu", "1"][2][name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_a_chain_takes_the_input_stage_in(device, monkeypatch):
    """A chain that reads the input gathers its own rows (and targets) in its first launch, as
    gather_batch would: 8-bit images normalised, cropped and flipped from a dataset held on the
    device (order and start bound each step), the same images normalised alone with labels for the
    metrics, and staged float features, normalised, with float targets."""
    (x, y), _ = clnet.datasets.load_mnist_5k()
    x, y = x[:80], y[:80]
    features = f32(np.random.default_rng(7).uniform(0, 2, (48, 3, 5, 7)))  # planes of 35: past whole vectors
    targets = np.eye(4, dtype=np.float32)[np.arange(48) % 4]
    results = {}
    for mode in ("1", "0"):
        monkeypatch.setattr(device, "family", "cpu")
        monkeypatch.setenv("CLNET_DENSE_CHAIN", mode)
        model = clnet.models.mlp(device=device, seed=5).compile("cross_entropy", optim.SGD(0.05, momentum=0.9))
        model.fit(x, y, epochs=2, batch_size=24, augment="crop=2,flip", normalize=True, verbose=0)
        evaluated = model.evaluate(x, y, batch_size=32)
        regression = clnet.models.mlp(device=device, seed=6, input_shape=(3, 5, 7), classes=4)
        regression.compile("mse", optim.SGD(0.05))
        regression.normalization = ((0.5, 1.0, 1.5), (0.5, 2.0, 1.0))  # as fit(normalize=...) sets it
        losses = [regression.train_on_batch(features[i:i + 16], targets[i:i + 16]) for i in range(0, 48, 16)]
        results[mode] = model.state_dict(), evaluated, losses, regression.state_dict()
        firsts = {runner.plan.launches[0].kernel.function_name for m in (model, regression)
                  for runner in m._runners.values()}
        assert firsts == ({"dense_chain"} if mode == "1" else {"gather_batch"})
    (chained, evaluated, losses, regressed), (reference, evaluated_ref, losses_ref, regressed_ref) = results.values()
    for name in reference:
        np.testing.assert_allclose(chained[name], reference[name], rtol=1e-4, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(regressed[name], regressed_ref[name], rtol=1e-4, atol=1e-6, err_msg=name)
    assert evaluated == pytest.approx(evaluated_ref, rel=1e-5)
    assert losses == pytest.approx(losses_ref, rel=1e-5)


def test_dense_chains_need_8_compute_units_by_default(device, monkeypatch):
    """Chains where launches cost more than their arithmetic does: CPU-family devices of 8 compute
    units or more, unless CLNET_DENSE_CHAIN says otherwise (0 or 1; anything else is refused)."""
    cpu = copy(device)
    cpu.family = "cpu"
    shapes = [(784, 256), (256, 10)]
    for units, mode, chained in ((8, "", True), (7, "", False), (2, "1", True), (16, "0", False)):
        cpu.info = replace(device.info, compute_units=units)
        monkeypatch.setenv("CLNET_DENSE_CHAIN", mode)
        assert chain_ops.chains(cpu, 128, shapes) == chained, (units, mode)
    assert not chain_ops.chains(cpu, 128, [(784, 256)])  # one layer: no chain
    monkeypatch.setenv("CLNET_DENSE_CHAIN", "1")
    assert not chain_ops.chains(cpu, 128, [(4096, 4096), (4096, 10)])  # products gemm_direct would not take
    cpu.family = "tiled"
    assert not chain_ops.chains(cpu, 128, shapes)
    monkeypatch.setenv("CLNET_DENSE_CHAIN", "yes")
    with pytest.raises(ValueError, match="CLNET_DENSE_CHAIN must be 0 or 1"):
        chain_ops.chains(cpu, 128, shapes)


@pytest.mark.parametrize("a_shape,b_shape,c_shape,trans_a,trans_b", [
    ((3, 4), (5, 6), (3, 6), False, False),   # K of A (4) != K of B (5)
    ((3, 4), (4, 6), (3, 5), False, False),   # C has the wrong width
    ((3, 4), (4, 6), (4, 6), False, False),   # C has the wrong height
    ((4, 3), (5, 6), (3, 6), True, False),    # A^T is 3 x 4, B is 5 x 6
    ((3, 4), (6, 5), (3, 6), False, True),    # B^T is 5 x 6
    ((3, 4), (6, 4), (6, 3), False, True),    # C transposed
    ((4, 3), (6, 5), (3, 6), True, True),
])
def test_gemm_shape_mismatch_raises(gemm_family, a_shape, b_shape, c_shape, trans_a, trans_b):
    plan = new_plan(None)  # nothing may be built or allocated: the check comes first
    a, b, c = (plan.value(s, n) for s, n in ((a_shape, "a"), (b_shape, "b"), (c_shape, "c")))
    with pytest.raises(ValueError, match="gemm shapes"):
        ops.gemm(plan, a, b, c, trans_a=trans_a, trans_b=trans_b)
    assert not plan.launches


# ---------------------------------------------------------------------------------- activations

EXTREMES = [-1000.0, -100.0, -88.0, -20.0, -1.5, -1e-3, 0.0, 1e-3, 0.7, 20.0, 88.0, 100.0, 1000.0]


def _activation_inputs(rng, n):
    x = rng.normal(0, 3, n)
    x[:min(n, len(EXTREMES))] = EXTREMES[:min(n, len(EXTREMES))]
    return f32(rng.permutation(x) if n > 1 else x)


@pytest.mark.parametrize("act", ["none", "relu", "sigmoid", "tanh"])
def test_activation_forward_backward(device, act):
    rng = np.random.default_rng(3)
    plan = new_plan(device)
    cases = []
    for i, n in enumerate((1, 13, 67, 300)):
        x = _activation_inputs(rng, n)
        y = f32(act_ref(act, x))     # what a correct forward produces, fed to backward
        dy = f32(rng.normal(size=n))
        sx, sy_in, sdy = Slot(device, x, 5 + i), Slot(device, y, 17 * i), Slot(device, dy, 3)
        sy, sdx = Slot.output(device, (n,), 11 * i + 1), Slot.output(device, (n,), 2)
        ops.activation_forward(plan, ops.activation(act), sx.tensor, sy.tensor)
        ops.activation_backward(plan, ops.activation(act), sy_in.tensor, sdy.tensor, sdx.tensor)
        cases.append((x, y, dy, sy, sdx))
    execute(plan)
    for x, y, dy, sy, sdx in cases:
        got_y = sy.read()
        assert np.isfinite(got_y).all()
        np.testing.assert_allclose(got_y, act_ref(act, x), rtol=2e-6, atol=1e-7, err_msg=f"{act} forward")
        np.testing.assert_allclose(sdx.read(), dy * act_grad_ref(act, y), rtol=2e-6, atol=1e-7,
                                   err_msg=f"{act} backward")
    if act in ("sigmoid", "tanh"):  # saturated, not NaN, at +-1000
        x, _, _, sy, _ = cases[-1]
        got = sy.read()
        low = 0.0 if act == "sigmoid" else -1.0
        assert abs(got[x == 1000.0][0] - 1.0) <= 1e-6 and abs(got[x == -1000.0][0] - low) <= 1e-6


@pytest.mark.parametrize("act,has_bias", [("none", True), ("relu", True), ("relu", False),
                                          ("sigmoid", True), ("sigmoid", False), ("tanh", True),
                                          ("tanh", False)])
def test_bias_act_backward(device, gemm_family, act, has_bias):
    """dpre = dy * act'(y), db = column sums of dpre; for "none" dpre is dy itself (not written). The
    CPU family's work-items take 16 columns: fewer, 16 and then more, and 48 exactly."""
    rng = np.random.default_rng(4)
    plan = new_plan(device)
    cases = []
    for i, (rows, cols) in enumerate(((1, 5), (37, 70), (300, 3), (9, 48))):
        pre = rng.normal(0, 2, (rows, cols))
        pre[0, 0] = 0.0  # relu: y == 0 has gradient 0
        y = f32(act_ref(act, pre))
        dy = f32(rng.normal(size=(rows, cols)))
        sdy, sy = Slot(device, dy, 9 + i), Slot(device, y, 23)
        sdpre = Slot.output(device, (rows, cols), 4 * i + 1)
        sdb = Slot.output(device, (cols,), 13) if has_bias else None
        ops.bias_act_backward(plan, ops.activation(act), sdy.tensor, sy.tensor, sdpre.tensor,
                              sdb.tensor if has_bias else None)
        cases.append((dy, y, sdy, sdpre, sdb))
    execute(plan)
    for dy, y, sdy, sdpre, sdb in cases:
        dpre = dy * act_grad_ref(act, y)
        np.testing.assert_array_equal(sdy.read(), dy)
        if act == "none":
            assert np.isnan(sdpre.read()).all(), "dpre is written although it is dy itself"
        else:
            np.testing.assert_allclose(sdpre.read(), dpre, rtol=2e-6, atol=1e-7)
        if has_bias:
            np.testing.assert_allclose(sdb.read(), dpre.sum(axis=0), rtol=1e-5,
                                       atol=1e-6 * np.sqrt(dy.shape[0]))


def test_bias_act_backward_in_place_none(device, gemm_family):
    """Dense without activation passes dy as dpre: only db is written, dy is left alone."""
    rng = np.random.default_rng(5)
    dy = f32(rng.normal(size=(45, 66)))
    sdy, sdb = Slot(device, dy, 31, fill=GUARD), Slot.output(device, (66,), 7)
    plan = new_plan(device)
    ops.bias_act_backward(plan, None, sdy.tensor, sdy.tensor, sdy.tensor, sdb.tensor)
    execute(plan)
    np.testing.assert_array_equal(sdy.read(), dy)
    np.testing.assert_allclose(sdb.read(), dy.astype(np.float64).sum(axis=0), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("act", ["none", "relu"])
@pytest.mark.parametrize("rows, cols", [(1000, 3), (257, 130), (40, 7)])
def test_bias_act_backward_in_slices(device, gemm_family, act, rows, cols):
    """On the GPU family the bias gradient of many rows and few columns is summed in slices of rows
    (of unequal length where they do not divide the rows), whose sums sum_slices adds in a fixed
    order; the CPU family sums all the rows in one work-item per 16 columns."""
    rng = np.random.default_rng(7)
    dy, y = f32(rng.normal(size=(rows, cols))), f32(np.abs(rng.normal(size=(rows, cols))))
    y[::3] = 0.0  # ReLU's gradient is 0 there
    sdy, sy = Slot(device, dy, 3), Slot(device, y, 5)
    sdpre, sdb = Slot.output(device, (rows, cols), 1), Slot.output(device, (cols,), 2)
    plan = new_plan(device)
    ops.bias_act_backward(plan, ops.activation(act), sdy.tensor, sy.tensor, sdpre.tensor, sdb.tensor)
    execute(plan)
    dpre = dy.astype(np.float64) * (y > 0) if act == "relu" else dy.astype(np.float64)
    if act == "relu":
        np.testing.assert_allclose(sdpre.read(), dpre, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(sdb.read(), dpre.sum(axis=0), rtol=1e-5, atol=1e-6 * np.sqrt(rows))
    sliced = any(launch.kernel.function_name == "sum_slices" for launch in plan.launches)
    groups = -(-cols // ops.elementwise.LOCAL)
    assert sliced == (gemm_family == "tiled" and rows >= 2 * ops.elementwise.ROWS_PER_SLICE
                      and groups < 4 * device.info.compute_units)


# -------------------------------------------------------------------------------------- softmax

def _softmax_inputs(rng, rows, cols):
    z = f32(rng.normal(0, 3, (rows, cols)))
    if cols >= 3 and rows >= 4:
        z[0, :3] = (1000.0, 999.0, 0.0)        # exp(1000) overflows float32 unless shifted
        z[1, :] = -1000.0
        z[1, -1] = -1001.0
        z[2, :] = 5.0                          # a uniform row
        z[3, :3] = (88.0, 89.0, -1000.0)
    return z


@pytest.mark.parametrize("rows,cols", [(1, 1), (1, 10), (5, 3), (70, 130), (300, 7)])
def test_softmax_forward_backward(device, rows, cols):
    rng = np.random.default_rng(6)
    z = _softmax_inputs(rng, rows, cols)
    y = f32(softmax_ref(z))
    dy = f32(rng.normal(size=(rows, cols)))
    sz, sy_in, sdy = Slot(device, z, 19), Slot(device, y, 4), Slot(device, dy, 1)
    sy, sdx = Slot.output(device, (rows, cols), 33), Slot.output(device, (rows, cols), 6)
    plan = new_plan(device)
    ops.softmax_forward(plan, sz.tensor, sy.tensor)
    ops.softmax_backward(plan, sy_in.tensor, sdy.tensor, sdx.tensor)
    execute(plan)
    got = sy.read()
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, softmax_ref(z), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-5)
    y64, dy64 = y.astype(np.float64), dy.astype(np.float64)
    dx = y64 * (dy64 - (dy64 * y64).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(sdx.read(), dx, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------- losses

LOSS_KINDS = {"ce": losses.CrossEntropy, "bce": losses.BinaryCrossEntropy,
              "mse": losses.MeanSquaredError, "mse_labels": losses.MeanSquaredError}
LABELS = ("ce", "mse_labels")


def _targets(kind, rng, rows, cols):
    if kind in LABELS:
        return rng.integers(0, cols, rows).astype(np.int32)
    if kind == "bce":
        return f32(rng.choice([0.0, 1.0, 0.25, 0.5, 0.8], size=(rows, cols)))
    return f32(rng.normal(size=(rows, cols)))


def loss_reference(kind, z, t, n_valid):
    """Float64 PyTorch "mean" reduction over the first n_valid rows: per-row losses (their sum is
    mean loss * n_valid), the gradient of the mean loss (zero on padded rows), correct count, link."""
    rows, cols = z.shape
    z = z[:n_valid].astype(np.float64)
    t = t[:n_valid]
    grad = np.zeros((rows, cols))
    if kind == "ce":
        zmax = z.max(axis=1, keepdims=True)
        lse = (zmax + np.log(np.exp(z - zmax).sum(axis=1, keepdims=True)))[:, 0]
        onehot = np.eye(cols)[t]
        probs = np.exp(z - lse[:, None])
        row_loss = lse - z[np.arange(n_valid), t]
        grad[:n_valid] = (probs - onehot) / n_valid
        correct = np.sum(z.argmax(axis=1) == t)
    elif kind == "bce":
        t = t.astype(np.float64)
        probs = act_ref("sigmoid", z)
        row_loss = (np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z)))).mean(axis=1)
        grad[:n_valid] = (probs - t) / (n_valid * cols)
        correct = ((z >= 0) == (t >= 0.5)).mean(axis=1).sum()
    else:
        target = np.eye(cols)[t] if kind == "mse_labels" else t.astype(np.float64)
        probs = z
        row_loss = ((z - target) ** 2).mean(axis=1)
        grad[:n_valid] = 2 * (z - target) / (n_valid * cols)
        correct = np.sum(z.argmax(axis=1) == target.argmax(axis=1))
    return dict(loss=row_loss.sum(), grad=grad, correct=correct, probs=probs, scale=1.0 / n_valid
                if kind == "ce" else 1.0 / (n_valid * cols))


def _loss_slots(device, kind, z, t, i=0):
    tdtype = np.int32 if kind in LABELS else np.float32
    rows, cols = z.shape
    return (Slot(device, z, 11 + i), Slot(device, t, 5 + 2 * i, dtype=tdtype, fill=0 if kind in LABELS else np.nan),
            Slot.output(device, (rows, cols), 19 + i), Slot.output(device, (rows, cols), 3 + i))


def run_loss(device, kind, z, t, n_valid, flags, metrics0=(0.0, 0.0, 0.0, 0.0), runs=1):
    """One loss launch with n_valid set as the runner sets it; returns (grad, probs, metrics)."""
    loss = LOSS_KINDS[kind]()
    rows, cols = z.shape
    sz, st, sgrad, sprobs = _loss_slots(device, kind, z, t)
    smetrics = Slot(device, metrics0, 7, fill=GUARD)
    plan = new_plan(device)
    launch = loss.record(plan, sz.tensor, st.tensor, sgrad.tensor, sprobs.tensor, smetrics.tensor, flags)
    plan.finalize(plan.place())
    launch.set("n_valid", n_valid)
    launch.set("scale", loss.grad_scale(n_valid, cols))
    for _ in range(runs):
        plan.run()
    device.finish()
    np.testing.assert_array_equal(sz.read(), z)
    return sgrad.read(), sprobs.read(), smetrics.read().astype(np.float64)


def _loss_inputs(kind, rng, rows, cols, n_valid):
    z = f32(rng.normal(0, 2, (rows, cols)))
    t = _targets(kind, rng, rows, cols)
    z[n_valid:] = np.nan  # padded rows hold garbage: they must not count
    if kind not in LABELS:
        t[n_valid:] = np.nan
    else:
        t[n_valid:] = cols - 1
    return z, t


def _check_metrics(metrics, ref, n_valid, runs=1):
    assert np.isfinite(metrics).all()
    np.testing.assert_allclose(metrics[0], runs * ref["loss"], rtol=1e-5, atol=1e-5 * n_valid)
    np.testing.assert_allclose(metrics[2], runs * ref["correct"], rtol=1e-6)
    assert metrics[3] == runs * n_valid


def _check_grad(grad, ref, n_valid):
    np.testing.assert_allclose(grad, ref["grad"], rtol=1e-5, atol=1e-6 * ref["scale"])
    assert (grad[n_valid:] == 0).all()


LOSS_CASES = [(kind, rows, cols, n_valid) for kind in LOSS_KINDS
              for rows, cols, n_valid in ((1, 2, 1), (7, 10, 5), (300, 3, 300), (600, 4, 517))] + [
    ("bce", 5, 1, 3), ("mse", 5, 1, 5), ("ce", 257, 33, 256)]


@pytest.mark.parametrize("kind,rows,cols,n_valid", LOSS_CASES)
def test_loss_gradient_and_metrics(device, kind, rows, cols, n_valid):
    """GRAD | METRICS: the mean-loss gradient (zero on padded rows) and {loss sum, _, correct, rows}."""
    rng = np.random.default_rng(rows * 31 + cols)
    z, t = _loss_inputs(kind, rng, rows, cols, n_valid)
    grad, probs, metrics = run_loss(device, kind, z, t, n_valid, losses.GRAD | losses.METRICS)
    ref = loss_reference(kind, z, t, n_valid)
    _check_grad(grad, ref, n_valid)
    _check_metrics(metrics, ref, n_valid)
    assert np.isnan(probs).all(), "probabilities written without PROBS"


@pytest.mark.parametrize("kind", list(LOSS_KINDS))
def test_loss_probs(device, kind):
    """PROBS alone writes the link's output and nothing else; with GRAD | METRICS as well, all three."""
    rng = np.random.default_rng(8)
    rows, cols, n_valid = 9, 6, 7
    z, t = _loss_inputs(kind, rng, rows, cols, n_valid)
    ref = loss_reference(kind, z, t, n_valid)
    grad, probs, metrics = run_loss(device, kind, z, t, n_valid, losses.PROBS)
    np.testing.assert_allclose(probs[:n_valid], ref["probs"], rtol=1e-5, atol=1e-7)
    assert np.isnan(grad).all(), "gradient written without GRAD"
    assert (metrics == 0).all(), "metrics changed without METRICS"
    grad, probs, metrics = run_loss(device, kind, z, t, n_valid, losses.PROBS | losses.GRAD | losses.METRICS)
    np.testing.assert_allclose(probs[:n_valid], ref["probs"], rtol=1e-5, atol=1e-7)
    _check_grad(grad, ref, n_valid)
    _check_metrics(metrics, ref, n_valid)


@pytest.mark.parametrize("kind", list(LOSS_KINDS))
def test_loss_extreme_logits(device, kind):
    """Logits of +-100: finite, exact losses (a naive log(softmax) or log(sigmoid) gives inf)."""
    rows, cols = 6, 4
    z = np.full((rows, cols), -100.0, np.float32)
    z[np.arange(rows), np.arange(rows) % cols] = 100.0
    z[5] = (100.0, -100.0, 100.0, -100.0) if kind == "bce" else (100.0, -100.0, 0.0, -100.0)
    if kind in LABELS:
        t = np.array([0, 0, 2, 3, 1, 2], np.int32)  # right, wrong by 200, right, right, wrong by 200, by 100
    else:
        t = np.where(np.random.default_rng(9).random((rows, cols)) < 0.5, 0.0, 1.0).astype(np.float32)
    grad, probs, metrics = run_loss(device, kind, z, t, rows, losses.GRAD | losses.PROBS | losses.METRICS)
    ref = loss_reference(kind, z, t, rows)
    assert np.isfinite(grad).all() and np.isfinite(probs).all() and np.isfinite(metrics).all()
    _check_grad(grad, ref, rows)
    _check_metrics(metrics, ref, rows)
    np.testing.assert_allclose(probs, ref["probs"], rtol=1e-6, atol=1e-30)
    if kind == "ce":  # rows 1 and 4 miss by 200, row 5 by 100 (its label's logit is 0)
        np.testing.assert_allclose(metrics[0], 500.0, atol=1e-3)
        assert metrics[2] == 3


@pytest.mark.parametrize("kind", list(LOSS_KINDS))
def test_loss_metrics_accumulate(device, kind):
    """Two launches into one metrics buffer, replayed twice: everything adds up."""
    rng = np.random.default_rng(10)
    loss = LOSS_KINDS[kind]()
    plan = new_plan(device)
    smetrics = Slot(device, np.zeros(4), 66, fill=GUARD)
    cases, launches = [], []
    for i, (rows, cols, n_valid) in enumerate(((300, 5, 300), (40, 5, 33))):
        z, t = _loss_inputs(kind, rng, rows, cols, n_valid)
        sz, st, sgrad, sprobs = _loss_slots(device, kind, z, t, i)
        launches.append((loss.record(plan, sz.tensor, st.tensor, sgrad.tensor, None, smetrics.tensor,
                                     losses.GRAD | losses.METRICS), n_valid, cols))
        cases.append((loss_reference(kind, z, t, n_valid), sgrad, n_valid))
    plan.finalize(plan.place())
    for launch, n_valid, cols in launches:
        launch.set("n_valid", n_valid)
        launch.set("scale", loss.grad_scale(n_valid, cols))
    plan.run()
    plan.run()
    metrics = smetrics.read().astype(np.float64)
    total = dict(loss=sum(r["loss"] for r, _, _ in cases), correct=sum(r["correct"] for r, _, _ in cases))
    _check_metrics(metrics, total, 333, runs=2)
    for ref, sgrad, n_valid in cases:
        _check_grad(sgrad.read(), ref, n_valid)  # the gradient is overwritten, not accumulated


def test_loss_metrics_kahan(device):
    """The loss sum is compensated: 20 losses of 0.049 added to 2**20 (float32 spacing 0.125) are
    lost by a plain float sum but kept by the Kahan sum."""
    z, t = np.array([[3.0, 0.0]], np.float32), np.array([0], np.int32)
    _, _, metrics = run_loss(device, "ce", z, t, 1, losses.METRICS, metrics0=(2.0 ** 20, 0, 0, 0), runs=20)
    true = 2.0 ** 20 + 20 * np.log1p(np.exp(-3.0))
    assert abs(metrics[0] - true) <= 0.125
    assert abs((metrics[0] - metrics[1]) - true) < 1e-2
    assert metrics[2] == 20 and metrics[3] == 20


# ----------------------------------------------------------------------------------- optimizers

def sgd_reference(p, grads, lrs, momentum=0.0, nesterov=False, weight_decay=0.0):
    """torch.optim.SGD (dampening 0), from its documented algorithm."""
    p, buf = p.astype(np.float64), None
    for g, lr in zip(grads, lrs):
        g = g.astype(np.float64) + weight_decay * p
        if momentum:
            buf = g if buf is None else momentum * buf + g
            g = g + momentum * buf if nesterov else buf
        p = p - lr * g
    return p


def adam_reference(p, grads, lrs, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decoupled=False):
    """torch.optim.Adam (L2 weight decay added to the gradient) and AdamW (decoupled decay)."""
    p = p.astype(np.float64)
    m, v = np.zeros_like(p), np.zeros_like(p)
    b1, b2 = betas
    for step, (g, lr) in enumerate(zip(grads, lrs), start=1):
        g = g.astype(np.float64)
        if decoupled:
            p = p * (1 - lr * weight_decay)
        else:
            g = g + weight_decay * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1 ** step), v / (1 - b2 ** step)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p


def run_optimizer(device, opt, p0, grads, lrs, replan_at=None):
    """Steps as the runner takes them (new gradients, prepare, run), params at an odd offset; at
    `replan_at` the update is recorded again in a new plan (optimizer state must carry over)."""
    sp = Slot(device, p0, 13, fill=GUARD)
    sg = Slot(device, np.zeros_like(p0), 21)
    state = [upload(device, np.zeros_like(p0)) for _ in range(opt.slots)]
    plan = launch = None
    for step, (g, lr) in enumerate(zip(grads, lrs)):
        if plan is None or step == replan_at:
            plan = new_plan(device)
            launch = opt.record(plan, sp.tensor, sg.tensor, state)
            plan.finalize(plan.place())
        opt.lr = lr
        sg.tensor.upload(g)
        opt.prepare(launch, step + 1)
        plan.run()
    device.finish()
    np.testing.assert_array_equal(sg.read(), grads[-1])  # gradients are read, never written
    return sp.read()


OPTIMIZER_CASES = [
    ("sgd", dict(lr=0.1), {}),
    ("sgd", dict(lr=0.1, momentum=0.9), dict(momentum=0.9)),
    ("sgd", dict(lr=0.1, momentum=0.9, nesterov=True), dict(momentum=0.9, nesterov=True)),
    ("sgd", dict(lr=0.1, weight_decay=0.05), dict(weight_decay=0.05)),
    ("sgd", dict(lr=0.05, momentum=0.5, nesterov=True, weight_decay=0.1),
     dict(momentum=0.5, nesterov=True, weight_decay=0.1)),
    ("adam", dict(lr=0.01), {}),
    ("adam", dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1), dict(betas=(0.8, 0.99), weight_decay=0.1)),
    ("adam", dict(lr=0.01, eps=1e-3), dict(eps=1e-3)),  # tiny gradients: eps outside the sqrt matters
    ("adamw", dict(lr=0.05), dict(weight_decay=0.01, decoupled=True)),
    ("adamw", dict(lr=0.05, betas=(0.5, 0.9), weight_decay=0.3), dict(betas=(0.5, 0.9), weight_decay=0.3,
                                                                     decoupled=True)),
]


@pytest.mark.parametrize("name,kwargs,ref_kwargs", OPTIMIZER_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(OPTIMIZER_CASES)])
@pytest.mark.parametrize("n", [1, 67])
def test_optimizer_steps(device, name, kwargs, ref_kwargs, n):
    rng = np.random.default_rng(11 + n)
    p0 = f32(rng.normal(size=n))
    grad_scale = 1e-3 if kwargs.get("eps") == 1e-3 else 1.0
    grads = [f32(rng.normal(size=n) * grad_scale) for _ in range(6)]
    lr = kwargs["lr"]
    lrs = [lr, lr, lr, lr / 2, lr / 2, lr * 1.5]  # a schedule: prepare must pass the current lr
    opt = optim.get(name, **kwargs)
    got = run_optimizer(device, opt, p0, grads, lrs, replan_at=4)
    reference = sgd_reference if name == "sgd" else adam_reference
    want = reference(p0, grads, lrs, **ref_kwargs)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert np.abs(want - p0).max() > 1e-3  # the steps moved the parameters well beyond the tolerance


@pytest.mark.parametrize("act", ["none", "relu", "sigmoid"])
@pytest.mark.parametrize("n", [1, 67, 1000, 2500])
def test_add(device, gemm_family, n, act):
    """out = act(a + b) at odd offsets in NaN-guarded buffers; also into one of its operands; and
    the gradients' sum through the activation, (a + b) * act'(y), also in place. Each family's
    work-group (the CPU family's is 1024: 2500 ends in a part of one)."""
    from clnet.ops.elementwise import add, add_act_backward
    rng = np.random.default_rng(n)
    a, b = _activation_inputs(rng, n), f32(rng.normal(size=(n, 1)))
    y = f32(act_ref(act, rng.normal(0, 2, n)))  # a made activation's output, read by its derivative
    sa, sb, sy = Slot(device, a, 5), Slot(device, b, 11), Slot(device, y, 3)
    out, grad = Slot.output(device, (n,), 7), Slot.output(device, (n,), 2)
    options = ops.activation(act)
    plan = new_plan(device)
    add(plan, sa.tensor, sb.tensor, out.tensor)
    add(plan, out.tensor, sb.tensor, out.tensor, act=options)  # in place: out = act(a + 2 b)
    add_act_backward(plan, options, sa.tensor, sb.tensor, sy.tensor, grad.tensor)
    add_act_backward(plan, options, grad.tensor, sb.tensor, sy.tensor, grad.tensor)  # in place
    execute(plan)
    a64, b64 = a.astype(np.float64), b[:, 0].astype(np.float64)
    np.testing.assert_allclose(out.read(), act_ref(act, f32(a64 + b64) + b64), rtol=2e-6, atol=1e-6)
    slope = act_grad_ref(act, y)
    np.testing.assert_allclose(grad.read(), ((a64 + b64) * slope + b64) * slope, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="add of"):
        add(new_plan(device), sa.tensor, sb.tensor.view((n - 1,)) if n > 1 else sa.tensor.view((0,)), out.tensor)
    with pytest.raises(ValueError, match="add_act_backward of"):
        add_act_backward(new_plan(device), options, sa.tensor, sb.tensor, sy.tensor.view((n - 1,)) if n > 1
                         else sa.tensor.view((0,)), grad.tensor)


@pytest.mark.parametrize("rows, cols, src_stride, dst_stride",
                         [(1, 1, 1, 1), (3, 5, 5, 13), (2, 67, 70, 67), (4, 9, 9, 9), (1, 130, 131, 200)])
def test_copy_rows(device, rows, cols, src_stride, dst_stride):
    """A block of rows between strided layouts, at odd offsets in guarded buffers: the NaN between
    the rows of src is not read, the elements between the rows of dst are left as they were."""
    from clnet.ops.elementwise import copy_rows
    rng = np.random.default_rng(rows * cols)
    src = np.full((rows - 1) * src_stride + cols, np.nan, np.float32)
    for r in range(rows):
        src[r * src_stride:r * src_stride + cols] = rng.normal(size=cols)
    before = f32(rng.normal(size=(rows - 1) * dst_stride + cols))
    ssrc, sdst = Slot(device, src, 9), Slot(device, before, 3, fill=GUARD)
    plan = new_plan(device)
    copy_rows(plan, ssrc.tensor, sdst.tensor, rows, cols, src_stride, dst_stride)
    execute(plan)
    expected = before.copy()
    for r in range(rows):
        expected[r * dst_stride:r * dst_stride + cols] = src[r * src_stride:r * src_stride + cols]
    np.testing.assert_array_equal(sdst.read(), expected)
    with pytest.raises(ValueError, match="do not fit in dst"):
        copy_rows(new_plan(device), ssrc.tensor, sdst.tensor.view((sdst.size - 1,)), rows, cols, src_stride,
                  dst_stride)
