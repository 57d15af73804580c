"""BatchNorm1d / BatchNorm2d and Dropout against float64 numpy references (the layers' own, and this
file's for the backward pass, the running statistics and the dropout mask).

Op-level tests drive the layers directly on a plan (a LayerContext over tensors placed at odd offsets
inside NaN-filled buffers, so a kernel that ignores an offset or reads a padded row poisons its own
result); model-level tests go through clnet.Sequential: finite-difference gradients, padded last
batches, state_dict layout, evaluation mode, seeded dropout.
"""

from math import prod

import numpy as np
import pytest
from conftest import GUARD, Slot, execute, new_plan

import clnet
from clnet import layers as L
from clnet.errors import InputError, ShapeError
from clnet.layers.base import LayerContext
from clnet.layers.dropout import Dropout
from clnet.layers.norm import BatchNorm1d, BatchNorm2d
from clnet.ops import dropout as dropout_ops
from clnet.ops import norm as norm_ops
from clnet.ops.elementwise import activation
from clnet.ops.random import step_arg

from reference import forward, loss, numeric_gradients, philox4x32_10, softmax


def f64(a):
    return np.asarray(a, np.float64)


# ------------------------------------------------------------------------------ references

def bn_running_ref(running_mean, running_var, count, mean, var, m, momentum):
    """torch's update: momentum (or 1 / (count + 1) when None), unbiased variance, count + 1."""
    factor = 1.0 / (count + 1.0) if momentum is None else momentum
    rm = (1 - factor) * f64(running_mean) + factor * mean
    rv = (1 - factor) * f64(running_var) + factor * var * m / (m - 1) if m > 1 else f64(running_var)
    return rm, rv, count + 1.0


def bn_backward_ref(x, dy, n_valid, weight, eps):
    """dx (zero on rows >= n_valid), dweight, dbias of training-mode batch norm, from the textbook
    formulas: dx = w / sigma * (dy - mean(dy) - xhat * mean(dy * xhat))."""
    xv, dyv = f64(x[:n_valid]), f64(dy[:n_valid])
    c = x.shape[1]
    xr, dr = xv.reshape(n_valid, c, -1), dyv.reshape(n_valid, c, -1)
    mean, var = xr.mean(axis=(0, 2), keepdims=True), xr.var(axis=(0, 2), keepdims=True)
    invstd = 1.0 / np.sqrt(var + eps)
    xhat = (xr - mean) * invstd
    db, dw = dr.sum(axis=(0, 2)), (dr * xhat).sum(axis=(0, 2))
    w = f64(weight)[None, :, None] if weight is not None else 1.0
    m = xr.shape[0] * xr.shape[2]
    dxr = w * invstd * (dr - db[None, :, None] / m - xhat * dw[None, :, None] / m)
    dx = np.zeros(x.shape)
    dx[:n_valid] = dxr.reshape(xv.shape)
    return dx, dw, db


def keep_ref(n, seed, step, p):
    """The dropout keep mask of n elements: element i takes word i % 4 of counter (i // 4, step, 0, 0)
    under the key (low, high 32 bits of the seed) and is kept when that word >= round(p * 2^32)."""
    seed = int(seed) % 2 ** 64
    groups = np.arange(-(-n // 4))
    words = philox4x32_10((groups, step, 0, 0), (seed & 0xFFFFFFFF, seed >> 32)).reshape(-1)[:n]
    return words >= min(round(p * 2 ** 32), 2 ** 32 - 1)


def layer_seed(model, index):
    """The seed the compiler hands layer `index` of a model (LayerContext.seed)."""
    return model.seed * 1000 + index


def dropout_keep(model, step=1):
    """reference.forward's dropout_keep: the masks `model` draws at `step`."""
    return lambda i, layer, shape: keep_ref(prod(shape), layer_seed(model, i), step, layer.p).reshape(shape)


# ------------------------------------------------------------------- batch norm, op level

def _bn_layer(shape, affine=True, momentum=0.1, eps=1e-5):
    cls = BatchNorm2d if len(shape) == 4 else BatchNorm1d
    return cls(shape[1], eps=eps, momentum=momentum, affine=affine)


def _bn_context(device, layer, rng, training, offset=3):
    """A LayerContext over random parameters and running statistics at odd offsets, with the slots."""
    c = layer.num_features
    slots = {"running_mean": Slot(device, rng.normal(0, 1, c), offset + 1, fill=GUARD),
             "running_var": Slot(device, rng.uniform(0.5, 2.0, c), offset + 2, fill=GUARD),
             "num_batches_tracked": Slot(device, np.array(4.0), offset + 3, fill=GUARD)}
    params, grads = {}, {}
    if layer.affine:
        slots["weight"] = Slot(device, rng.uniform(0.5, 1.5, c) * rng.choice([-1, 1], c), offset)
        slots["bias"] = Slot(device, rng.normal(0, 1, c), offset + 5)
        slots["dweight"], slots["dbias"] = Slot.output(device, (c,), offset + 7), Slot.output(device, (c,), 1)
        params = {"weight": slots["weight"].tensor, "bias": slots["bias"].tensor}
        grads = {"weight": slots["dweight"].tensor, "bias": slots["dbias"].tensor}
    buffers = {k: slots[k].tensor for k in ("running_mean", "running_var", "num_batches_tracked")}
    plan = new_plan(device)
    return LayerContext(plan, params, grads, buffers, training=training, seed=0), slots


def _bn_input(rng, shape, n_valid):
    x = rng.normal(2.0, 3.0, shape).astype(np.float32)
    x[n_valid:] = np.nan  # padded rows: if they reach a statistic, it is NaN
    return x


def _bn_train_step(ctx, layer, x, dy, n_valid, need_dx=True):
    """A training forward and backward of `layer` in ctx's plan over x and dy (in slots at odd
    offsets), run with the plan's n_valid set: (dy's slot, y, dx)."""
    sx, sdy = Slot(ctx.plan.device, x, 13), Slot(ctx.plan.device, dy, 2)
    y = layer.forward(ctx, sx.tensor)
    dx = layer.backward(ctx, sx.tensor, y, sdy.tensor, need_dx)
    ctx.plan.finalize(ctx.plan.place())
    ctx.plan.set_dynamic("n_valid", n_valid)
    ctx.plan.run()
    return sdy, y, dx


# (input shape, valid rows): batch 1 with H*W > 1; batch 3; 1, 3, 5 channels; 7 x 5 images; odd
# feature counts; (F, L) sequences; more values per channel than work-items; padded last batches;
# channels of several slices (ops.norm.BN_SLICE values each, or BLOCK // S rows on the CPU family),
# the padding inside the last one, or the valid rows ending on a slice's end (empty slices after
# it); planes of more values than a CPU work-item's block, and not a multiple of its LANES; the
# CPU family's element-wise blocks of several channels, the last one short (500 = 455 + 45); the
# GPU family's applying work-groups (ops.norm.APPLY_LOCAL) in several chunks of a channel (ending
# inside a row, or inside the valid rows), in blocks of several channels (short planes), the last
# block short and with fewer chunks than the others (300 = 256 + 44; 40 = 28 + 12 planes of 9).
BN_CASES = [((1, 3, 7, 5), 1), ((3, 5, 4, 4), 3), ((4, 1, 7, 5), 2), ((2, 3, 20, 20), 2),
            ((5, 7), 5), ((6, 7), 3), ((4, 3, 9), 4), ((300, 5), 257),
            ((3, 2, 50, 50), 2), ((40, 3, 16, 16), 37), ((9000, 3), 8999),
            ((70, 4, 8, 8), 64), ((2, 2, 70, 70), 1), ((3, 500, 9), 2),
            ((4500, 300), 4400), ((60, 40, 3, 3), 50)]
BN_IDS = [f"{'x'.join(map(str, s))}-valid{v}" for s, v in BN_CASES]


@pytest.mark.parametrize("affine,momentum", [(True, 0.1), (False, 0.3), (True, None)])
@pytest.mark.parametrize("shape,n_valid", BN_CASES, ids=BN_IDS)
def test_batchnorm_forward_training_and_running_stats(device, gemm_family, shape, n_valid, affine, momentum):
    """Three steps with new inputs: y, the saved statistics, running mean/var and the batch count,
    with each kernel family's kernels."""
    rng = np.random.default_rng(prod(shape) + n_valid)
    layer = _bn_layer(shape, affine, momentum)
    ctx, slots = _bn_context(device, layer, rng, training=True)
    sx = Slot(device, _bn_input(rng, shape, n_valid), 9)
    y = layer.forward(ctx, sx.tensor)
    mean_v, invstd_v = ctx.saved["stats"]
    ctx.plan.finalize(ctx.plan.place())
    ctx.plan.set_dynamic("n_valid", n_valid)  # as the runner sets it for a padded last batch
    rm, rv = slots["running_mean"].read(), slots["running_var"].read()
    count = float(slots["num_batches_tracked"].read())
    params = {k: slots[k].read() for k in layer.param_shapes()}
    for step in range(3):
        x = _bn_input(rng, shape, n_valid)
        sx.tensor.upload(x)
        ctx.plan.run()
        y_ref = layer.reference(params, x[:n_valid], training=True)
        mean, var, m = layer.reference_statistics(x[:n_valid])
        rm, rv, count = bn_running_ref(rm, rv, count, mean, var, m, momentum)
        got = y.tensor().download()
        np.testing.assert_allclose(got[:n_valid], y_ref, rtol=1e-5, atol=2e-5, err_msg=f"y, step {step}")
        np.testing.assert_allclose(mean_v.tensor().download(), mean, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(invstd_v.tensor().download(), 1 / np.sqrt(var + layer.eps), rtol=1e-5)
        np.testing.assert_allclose(slots["running_mean"].read(), rm, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(slots["running_var"].read(), rv, rtol=1e-5, atol=1e-6)
        assert slots["num_batches_tracked"].read() == count
    np.testing.assert_array_equal(sx.read()[:n_valid], x[:n_valid])  # the input is left alone
    if affine:
        assert np.isnan(slots["dweight"].read()).all()  # forward writes no gradient


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape", [(1, 3, 7, 5), (3, 5, 2, 6), (1, 7), (6, 5), (2, 3, 4), (3, 500, 9), (2, 2, 70, 70)])
def test_batchnorm_forward_evaluation(device, gemm_family, shape, affine):
    """Evaluation uses the running statistics and changes nothing."""
    rng = np.random.default_rng(11)
    layer = _bn_layer(shape, affine, eps=1e-3)
    ctx, slots = _bn_context(device, layer, rng, training=False)
    x = rng.normal(1.0, 2.0, shape)
    sx = Slot(device, x, 5)
    before = {k: s.read().copy() for k, s in slots.items()}
    y = layer.forward(ctx, sx.tensor)
    execute(ctx.plan)
    ref = layer.reference(before, x.astype(np.float32))
    np.testing.assert_allclose(y.tensor().download(), ref, rtol=1e-5, atol=1e-5)
    for k, s in slots.items():
        np.testing.assert_array_equal(s.read(), before[k], err_msg=k)


@pytest.mark.parametrize("affine,need_dx", [(True, True), (False, True), (True, False)])
@pytest.mark.parametrize("shape,n_valid", BN_CASES, ids=BN_IDS)
def test_batchnorm_backward(device, gemm_family, shape, n_valid, affine, need_dx):
    """dx (zero on padded rows), dweight and dbias against the float64 formulas; padded rows of x
    and dy are NaN and must not matter."""
    rng = np.random.default_rng(prod(shape) * 7 + n_valid)
    layer = _bn_layer(shape, affine)
    ctx, slots = _bn_context(device, layer, rng, training=True)
    x = _bn_input(rng, shape, n_valid)
    dy = rng.normal(0, 1, shape).astype(np.float32)
    dy[n_valid:] = np.nan
    sdy, y, dx = _bn_train_step(ctx, layer, x, dy, n_valid, need_dx)
    assert (dx is None) != need_dx
    w = slots["weight"].read() if affine else None
    dx_ref, dw_ref, db_ref = bn_backward_ref(x, dy, n_valid, w, layer.eps)
    if need_dx:
        got = dx.tensor().download()
        scale = np.abs(dx_ref).max()
        np.testing.assert_allclose(got, dx_ref, rtol=1e-4, atol=1e-5 * scale)
        assert (got[n_valid:] == 0).all()
    if affine:
        m = n_valid * prod(shape[2:])
        np.testing.assert_allclose(slots["dweight"].read(), dw_ref, rtol=1e-4, atol=1e-5 * np.sqrt(m))
        np.testing.assert_allclose(slots["dbias"].read(), db_ref, rtol=1e-4, atol=1e-5 * np.sqrt(m))
    np.testing.assert_array_equal(sdy.read()[:n_valid], dy[:n_valid])


ACTIVATIONS = {"relu": (activation("relu"), lambda v: np.maximum(v, 0.0), lambda y: (y > 0) * 1.0),
               "sigmoid": (activation("sigmoid"), lambda v: 1 / (1 + np.exp(-v)), lambda y: y * (1 - y)),
               "leaky_relu": (activation("leaky_relu", 0.1), lambda v: np.where(v > 0, v, 0.1 * v),
                              lambda y: np.where(y > 0, 1.0, 0.1))}


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
@pytest.mark.parametrize("shape,n_valid", [((6, 3, 5, 7), 4), ((40, 3, 16, 16), 37), ((9, 20), 8)])
def test_batchnorm_fused_activation(device, gemm_family, shape, n_valid, act):
    """An activation fused after the normalisation: forward writes act(y), backward takes the
    gradient of that output and applies act'(y) as it reads it."""
    options, forward_ref, grad_from_output = ACTIVATIONS[act]
    rng = np.random.default_rng(prod(shape) + n_valid)
    layer = _bn_layer(shape)
    ctx, slots = _bn_context(device, layer, rng, training=True)
    ctx.act = options
    x = _bn_input(rng, shape, n_valid)
    dy = rng.normal(0, 1, shape).astype(np.float32)
    dy[n_valid:] = np.nan
    _, y, dx = _bn_train_step(ctx, layer, x, dy, n_valid)
    params = {k: slots[k].read() for k in layer.param_shapes()}
    y_ref = forward_ref(layer.reference(params, x[:n_valid], training=True))
    got = y.tensor().download()
    np.testing.assert_allclose(got[:n_valid], y_ref, rtol=1e-5, atol=2e-5)
    g = dy.astype(np.float64)
    g[:n_valid] *= grad_from_output(f64(got[:n_valid]))
    dx_ref, dw_ref, db_ref = bn_backward_ref(x, g, n_valid, params["weight"], layer.eps)
    got = dx.tensor().download()
    np.testing.assert_allclose(got, dx_ref, rtol=1e-4, atol=1e-5 * np.abs(dx_ref).max())
    m = n_valid * prod(shape[2:])
    np.testing.assert_allclose(slots["dweight"].read(), dw_ref, rtol=1e-4, atol=1e-5 * np.sqrt(m))
    np.testing.assert_allclose(slots["dbias"].read(), db_ref, rtol=1e-4, atol=1e-5 * np.sqrt(m))


@pytest.mark.parametrize("shape,n_valid", [((40, 3, 16, 16), 37), ((9000, 3), 8999), ((5, 2, 70, 70), 3)])
def test_batchnorm_padded_batch_equals_the_unpadded_one(device, gemm_family, shape, n_valid):
    """A batch padded after n_valid rows gives the statistics, output and gradients of a batch of
    those rows alone, bit for bit: which slice and lane takes a value does not depend on the batch."""
    rng = np.random.default_rng(n_valid)
    x = _bn_input(rng, shape, n_valid)
    dy = rng.normal(0, 1, shape).astype(np.float32)
    results = []
    for rows in (shape[0], n_valid):
        layer = _bn_layer(shape)
        ctx, slots = _bn_context(device, layer, np.random.default_rng(5), training=True)
        _, y, dx = _bn_train_step(ctx, layer, x[:rows], dy[:rows], n_valid)
        results.append([y.tensor().download()[:n_valid], dx.tensor().download()[:n_valid],
                        *(v.tensor().download() for v in ctx.saved["stats"]),
                        *(slots[k].read() for k in ("dweight", "dbias", "running_mean", "running_var"))])
    for padded, alone in zip(*results):
        np.testing.assert_array_equal(padded, alone)


def _bn_rows_applied(ctx, layer, x, dy, n_valid):
    """_bn_train_step with the slices of ctx.plan's device family combined and applied by the CPU
    family's element-wise kernels, a work-item over a block of rows and channels each
    (bn_rows_normalize, bn_rows_input_gradient): (y, dx, saved mean, saved 1/std)."""
    plan, buffers, act = ctx.plan, ctx.buffers, ctx.act or activation()
    (n, c), s = x.shape[:2], prod(x.shape[2:])
    sx, sdy = Slot(plan.device, x, 13), Slot(plan.device, dy, 2)
    y, dx = plan.value(x.shape, "y"), plan.value(x.shape, "dx")
    mean, invstd = plan.value((c,), "mean"), plan.value((c,), "invstd")
    cumulative = layer.momentum is None
    reduce, partial, slices, values = norm_ops._reduce(plan, "statistics", n, c, s, (sx.tensor,), "statistics")
    defines, grid = norm_ops._blocks(n, c, s)
    kernel = plan.kernel(norm_ops.FILE, "bn_rows_normalize", **defines, BN_SLICE=values, AFFINE=True,
                         CUMULATIVE=cumulative, **act)
    normalize = plan.launch(kernel, grid, (1, 1), n, n, c, slices, layer.eps, layer.momentum or 0.0, sx.tensor, y,
                            sx.tensor, ctx.params["weight"], ctx.params["bias"], partial, buffers["running_mean"],
                            buffers["running_var"], buffers["num_batches_tracked"], mean, invstd)
    if cumulative:
        plan.launch(plan.kernel(norm_ops.FILE, "bn_count_batch"), (1,), (1,), buffers["num_batches_tracked"])
    sums = norm_ops._reduce(plan, "gradient_sums", n, c, s, (sx.tensor, y, sdy.tensor, mean), "sums", **act)
    kernel = plan.kernel(norm_ops.FILE, "bn_rows_input_gradient", **defines, BN_SLICE=values, AFFINE=True, **act)
    apply = plan.launch(kernel, grid, (1, 1), n, n, c, slices, sx.tensor, y, sdy.tensor, dx, ctx.params["weight"],
                        mean, invstd, sums[1], ctx.grads["weight"], ctx.grads["bias"])
    plan.finalize(plan.place())
    for launch in (reduce, normalize, sums[0], apply):
        launch.set("n_valid", n_valid)
    plan.run()
    return [v.tensor().download() for v in (y, dx, mean, invstd)]


# (an activation keeps y alive through the backward pass: without one, dx may take its memory)
@pytest.mark.parametrize("stage", [norm_ops.STAGE, norm_ops.APPLY_LOCAL])
@pytest.mark.parametrize("shape,n_valid,act,momentum", [((40, 3, 16, 16), 37, "relu", 0.1),
                                                        ((4500, 300), 4400, "leaky_relu", None)])
def test_batchnorm_families_apply_the_same_slices_alike(device, monkeypatch, shape, n_valid, act, momentum, stage):
    """The GPU family's normalising and input-gradient work-groups and the CPU family's work-items
    both combine a channel's slices themselves: given the same slices (the GPU family's), outputs,
    saved and running statistics, batch count and gradients are bit for bit the same. Staged in
    local memory APPLY_LOCAL pairs at a time, the second shape's block of 256 channels takes its two
    slices in two rounds."""
    monkeypatch.setattr(device, "family", "tiled")
    monkeypatch.setattr(norm_ops, "STAGE", stage)
    rng = np.random.default_rng(n_valid)
    x = _bn_input(rng, shape, n_valid)
    dy = rng.normal(0, 1, shape).astype(np.float32)
    results = []
    for run in (_bn_train_step, _bn_rows_applied):
        layer = _bn_layer(shape, momentum=momentum)
        ctx, slots = _bn_context(device, layer, np.random.default_rng(5), training=True)
        ctx.act = ACTIVATIONS[act][0]
        if run is _bn_train_step:
            _, y, dx = run(ctx, layer, x, dy, n_valid)
            outputs = [y.tensor().download(), dx.tensor().download(), *(v.tensor().download() for v in ctx.saved["stats"])]
        else:
            outputs = run(ctx, layer, x, dy, n_valid)
        results.append(outputs + [slots[k].read() for k in ("dweight", "dbias", "running_mean", "running_var",
                                                            "num_batches_tracked")])
    names = ("y", "dx", "mean", "invstd", "dweight", "dbias", "running_mean", "running_var", "num_batches_tracked")
    for name, groups, items in zip(names, *results):
        np.testing.assert_array_equal(groups, items, err_msg=name)


def test_batchnorm_shape_checks_and_arguments():
    assert BatchNorm2d(3).output_shape((3, 7, 5)) == (3, 7, 5)
    assert BatchNorm1d(5).output_shape((5,)) == (5,) and BatchNorm1d(5).output_shape((5, 4)) == (5, 4)
    for layer, shape in ((BatchNorm2d(3), (4, 7, 5)), (BatchNorm2d(3), (3, 5)), (BatchNorm1d(5), (4,)),
                         (BatchNorm1d(5), (5, 2, 2))):
        with pytest.raises(ShapeError, match="expects input"):
            layer.output_shape(shape)
    for kwargs in (dict(num_features=0), dict(num_features=3, eps=0.0), dict(num_features=3, momentum=1.5)):
        with pytest.raises(ValueError):
            BatchNorm2d(**kwargs)
    assert repr(BatchNorm1d(4, momentum=None, affine=False)) == "BatchNorm1D(4, momentum=None, affine=False)"


# ------------------------------------------------------------------------- dropout, op level

def _dropout_run(device, n, p, seed, steps, offset=7):
    """One dropout launch over x at an offset, replayed for each step; returns (x, [y per step])."""
    rng = np.random.default_rng(n)
    x = rng.uniform(0.5, 2.0, n).astype(np.float32) * rng.choice([-1, 1], n).astype(np.float32)
    sx, sy = Slot(device, x, offset), Slot.output(device, (n,), offset + 3)
    plan = new_plan(device)
    launch = dropout_ops.dropout(plan, sx.tensor, sy.tensor, p, seed)
    plan.bind_dynamic("step", launch, "step", step_arg)
    plan.finalize(plan.place())
    outs = []
    for step in steps:
        plan.set_dynamic("step", step)
        plan.run()
        outs.append(sy.read())
    np.testing.assert_array_equal(sx.read(), x)
    return x, outs


def test_philox_reference_known_answers():
    """The numpy reference is Philox4x32-10: the known-answer vectors of Random123."""
    cases = [((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
             ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
             ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
              (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1))]
    for counter, key, expected in cases:
        assert [int(v) for v in philox4x32_10(counter, key)] == list(expected)


@pytest.mark.parametrize("n,p,seed", [(1, 0.5, 0), (7, 0.2, 12345), (4099, 0.5, -1), (4096, 0.7, 2 ** 40 + 7)])
def test_dropout_mask_is_the_seeded_counter_based_draw(device, n, p, seed):
    """y = x * keep / (1 - p) exactly, with keep the reference Philox mask of (seed, step, element);
    the step comes from the plan's dynamic argument."""
    steps = [1, 2, 1, 1000]
    x, outs = _dropout_run(device, n, p, seed, steps)
    scale = np.float32(1.0 / (1.0 - p))
    for step, y in zip(steps, outs):
        np.testing.assert_array_equal(y, np.where(keep_ref(n, seed, step, p), x * scale, np.float32(0)),
                                      err_msg=f"step {step}")
    np.testing.assert_array_equal(outs[0], outs[2])  # the same step gives the same mask


@pytest.mark.parametrize("first", [1, 2, 3, 4, 4097])
def test_dropout_counts_elements_from_its_offset(device, first):
    """A launch whose elements are counted from `first` (a replica's shard) draws the masks of those
    elements of the whole tensor, also where they do not start a group of four draws."""
    n, p, seed, step = 4099, 0.5, 9, 3
    x = np.random.default_rng(0).uniform(0.5, 2.0, n).astype(np.float32)
    sx, sy = Slot(device, x, 5), Slot.output(device, (n,), 2)
    plan = new_plan(device)
    dropout_ops.dropout(plan, sx.tensor, sy.tensor, p, seed, step, offset=first)
    plan.finalize(plan.place())
    plan.run()
    keep = keep_ref(first + n, seed, step, p)[first:]
    np.testing.assert_array_equal(sy.read(), np.where(keep, x * np.float32(1 / (1 - p)), np.float32(0)))


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_dropout_mask_statistics(device, p):
    """The keep rate is 1 - p; masks of different steps, of neighbouring elements and of
    neighbouring seeds are independent (joint keep rates (1 - p)^2), within 5 binomial sigmas."""
    n = 1 << 18
    _, (y1, y2) = _dropout_run(device, n, p, 42, [1, 2])
    _, (z1,) = _dropout_run(device, n, p, 43, [1])
    k1, k2, j1 = y1 != 0, y2 != 0, z1 != 0

    def close(fraction, expected, count):
        sigma = np.sqrt(expected * (1 - expected) / count)
        assert abs(fraction - expected) < 5 * sigma, (fraction, expected)

    q = 1 - p
    close(k1.mean(), q, n)
    close(k2.mean(), q, n)
    close((k1 & k2).mean(), q * q, n)        # step to step
    close((k1 & j1).mean(), q * q, n)        # seed to seed
    close((k1[:-1] & k1[1:]).mean(), q * q, n - 1)  # element to element (within and across draws)
    close((k1[:-4] & k1[4:]).mean(), q * q, n - 4)  # same word of neighbouring counters
    assert not np.array_equal(k1, k2)


def test_dropout_layer_backward_uses_the_forward_mask(device):
    """Layer level on an NCHW tensor: dx = dy * keep / (1 - p) with the forward's keep."""
    rng = np.random.default_rng(5)
    shape, p = (2, 3, 5, 7), 0.4
    layer = Dropout(p)
    x = rng.uniform(0.5, 2.0, shape).astype(np.float32)
    dy = rng.normal(0, 1, shape).astype(np.float32)
    sx, sdy = Slot(device, x, 3), Slot(device, dy, 10)
    # Forward alone, then forward and backward (there dx may reuse y's memory once y is dead).
    plans = [new_plan(device), new_plan(device)]
    contexts = [LayerContext(plan, {}, {}, {}, training=True, seed=77) for plan in plans]
    y = layer.forward(contexts[0], sx.tensor)
    y1 = layer.forward(contexts[1], sx.tensor)
    dx = layer.backward(contexts[1], sx.tensor, y1, sdy.tensor, need_dx=True)
    assert layer.backward(contexts[1], sx.tensor, y1, sdy.tensor, need_dx=False) is None
    assert y.shape == dx.shape == shape
    for plan in plans:
        plan.finalize(plan.place())
    scale = np.float32(1 / (1 - p))
    for step in (3, 4):
        for plan in plans:
            plan.set_dynamic("step", step)
            plan.run()
        keep = keep_ref(x.size, 77, step, p).reshape(shape)
        np.testing.assert_array_equal(y.tensor().download(), np.where(keep, x * scale, 0))
        np.testing.assert_array_equal(dx.tensor().download(), np.where(keep, dy * scale, 0))


def test_dropout_inactive_and_arguments(device):
    """Evaluation and p = 0 record nothing and pass the value through; 0 <= p < 1 is enforced."""
    plan = new_plan(device)
    x = plan.value((4, 3, 2, 2), "x")
    for layer, training in ((Dropout(0.5), False), (Dropout(0.0), True), (Dropout(0), False)):
        ctx = LayerContext(plan, {}, {}, {}, training=training, seed=1)
        y = layer.forward(ctx, x)
        assert y.root is x.root and y.shape == x.shape and y.relative == x.relative
        dx = layer.backward(ctx, x, y, x, need_dx=True)
        assert dx.root is x.root
    assert not plan.launches
    assert Dropout(0.25).output_shape((3, 7, 5)) == (3, 7, 5)
    for p in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="0 <= p < 1"):
            Dropout(p)
        with pytest.raises(ValueError, match="0 <= p < 1"):
            dropout_ops.dropout(plan, x, x, p, 0)
    assert not plan.launches


# ------------------------------------------------------------------------------ model level

def _randomize_affine(model, rng):
    """BatchNorm weight / bias away from their (1, 0) start, so gradient checks see them act."""
    state = model.state_dict()
    for i, layer in enumerate(model.layers):
        if isinstance(layer, (BatchNorm1d, BatchNorm2d)) and layer.affine:
            c = layer.num_features
            state[f"{i}.weight"] = (1 + 0.3 * rng.normal(size=c)).astype(np.float32)
            state[f"{i}.bias"] = (0.2 * rng.normal(size=c)).astype(np.float32)
    model.load_state_dict(state)
    return model.state_dict()


GRAD_NETS = {
    "bn1d": (lambda: [L.Dense(4, 6), BatchNorm1d(6), L.Tanh(), L.Dense(6, 3)], (5, 4)),
    "bn2d-7x5": (lambda: [BatchNorm2d(3), L.Tanh(), L.Flatten(), L.Dense(105, 4),
                          BatchNorm1d(4, affine=False), L.Dense(4, 3)], (3, 3, 7, 5)),
    "bn2d-batch1": (lambda: [BatchNorm2d(2, momentum=None), L.Flatten(), L.Dense(30, 3)], (1, 2, 3, 5)),
    "bn-fused-activations": (lambda: [BatchNorm2d(3), L.Sigmoid(), L.Flatten(), L.Dense(105, 4), BatchNorm1d(4),
                                      L.LeakyReLU(0.1), L.Dense(4, 3)], (3, 3, 7, 5)),
    "dropout": (lambda: [L.Dense(4, 6), L.Tanh(), Dropout(0.4), L.Dense(6, 3)], (5, 4)),
}


@pytest.mark.parametrize("net", sorted(GRAD_NETS))
def test_network_gradients_match_finite_differences(device, net):
    """train_on_batch's loss and gradients against central differences of the float64 training-mode
    network; the running statistics and batch count after the step against the reference update."""
    make, x_shape = GRAD_NETS[net]
    rng = np.random.default_rng(17)
    layers = make()
    model = clnet.Sequential(layers, device=device, seed=3)
    model.compile("cross_entropy", clnet.optim.SGD(lr=1e-3))
    state = _randomize_affine(model, rng)
    x, labels = rng.normal(0.5, 1.5, x_shape), rng.integers(0, 3, x_shape[0])
    device_loss = model.train_on_batch(x, labels)
    stats = {}
    out = forward(layers, state, x, training=True, dropout_keep=dropout_keep(model), stats=stats)
    assert device_loss == pytest.approx(loss("cross_entropy_logits", out, labels), rel=1e-5, abs=1e-6)
    grads, expected = model.gradients(), numeric_gradients(layers, state, x, labels, "cross_entropy_logits",
                                                           training=True, dropout_keep=dropout_keep(model))
    assert list(grads) == list(expected)
    for key in expected:
        np.testing.assert_allclose(grads[key], expected[key], rtol=2e-3, atol=2e-5, err_msg=key)
    after = model.state_dict()
    for i, (mean, var, m) in stats.items():
        rm, rv, count = bn_running_ref(state[f"{i}.running_mean"], state[f"{i}.running_var"],
                                       float(state[f"{i}.num_batches_tracked"]), mean, var, m, layers[i].momentum)
        np.testing.assert_allclose(after[f"{i}.running_mean"], rm, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(after[f"{i}.running_var"], rv, rtol=1e-5, atol=1e-6)
        assert after[f"{i}.num_batches_tracked"] == count == 1


def test_batchnorm_applies_the_activation_after_it():
    """BatchNorm runs a following activation (of a gradient from its output) as it writes, in
    training and evaluation: the "bn-fused-activations" network above is five stages."""
    network = clnet.network.Network.chain(GRAD_NETS["bn-fused-activations"][0]())
    stages = network.stages((3, 7, 5))
    assert [(s.name, s.act and s.act["ACT"]) for s in stages] == [("0", 2), ("2", None), ("3", None), ("4", 5),
                                                                  ("6", None)]


def test_batchnorm1d_batch_of_one_fails_in_training_only(device):
    model = clnet.Sequential([L.Dense(3, 4), BatchNorm1d(4)], device=device)
    model.compile("mean_squared_error", "sgd")
    before = model.state_dict()
    with pytest.raises(InputError, match="more than one value per channel"):
        model.train_on_batch(np.ones((1, 3)), np.zeros((1, 4)))
    assert model.predict(np.ones((1, 3))).shape == (1, 4)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[key])


def _padding_net():
    return [BatchNorm2d(3), L.Flatten(), L.Dense(60, 6), L.ReLU(), BatchNorm1d(6), Dropout(0.3), L.Dense(6, 3)]


def test_padded_last_batch_trains_like_an_unpadded_one(device):
    """fit with batch 4 on 7 samples (the second batch is padded) equals train_on_batch on the
    4 and then the 3 samples (graphs of batch 4 and 3, nothing padded): parameters, running
    statistics and batch counts. Statistics of a padded batch that counted its zero rows would differ."""
    rng = np.random.default_rng(23)
    x, labels = rng.normal(1.0, 2.0, (7, 3, 4, 5)), rng.integers(0, 3, 7)
    models = []
    for _ in range(2):
        model = clnet.Sequential(_padding_net(), device=device, seed=8)
        model.compile("cross_entropy", clnet.optim.SGD(lr=0.1, momentum=0.9))
        models.append(model)
    models[0].fit(x, labels, epochs=1, batch_size=4, shuffle=False, verbose=0)
    models[1].train_on_batch(x[:4], labels[:4])
    models[1].train_on_batch(x[4:], labels[4:])
    a, b = models[0].state_dict(), models[1].state_dict()
    assert a["0.num_batches_tracked"] == b["0.num_batches_tracked"] == 2
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6, err_msg=key)
    # ... and evaluation (running statistics) does not depend on the batch size either.
    e4, e7 = models[0].evaluate(x, labels, batch_size=4), models[0].evaluate(x, labels, batch_size=7)
    assert e4["loss"] == pytest.approx(e7["loss"], rel=1e-5) and e4["accuracy"] == e7["accuracy"]


def test_state_dict_matches_torch_modules(device):
    """Keys, order and shapes of torch.nn.Sequential(BatchNorm2d(3), Flatten(), Linear(12, 5),
    BatchNorm1d(5, affine=False), ReLU(), Dropout(0.5), Linear(5, 2)), with torch's initial values."""
    model = clnet.Sequential([BatchNorm2d(3), L.Flatten(), L.Dense(12, 5), BatchNorm1d(5, affine=False),
                              L.ReLU(), Dropout(0.5), L.Dense(5, 2)], device=device)
    expected = [("0.weight", (3,)), ("0.bias", (3,)), ("0.running_mean", (3,)), ("0.running_var", (3,)),
                ("0.num_batches_tracked", ()), ("2.weight", (5, 12)), ("2.bias", (5,)),
                ("3.running_mean", (5,)), ("3.running_var", (5,)), ("3.num_batches_tracked", ()),
                ("6.weight", (2, 5)), ("6.bias", (2,))]
    state = model.state_dict()
    assert [(k, v.shape) for k, v in state.items()] == expected
    assert (state["0.weight"] == 1).all() and (state["0.bias"] == 0).all()
    for i in (0, 3):
        assert (state[f"{i}.running_mean"] == 0).all() and (state[f"{i}.running_var"] == 1).all()
        assert state[f"{i}.num_batches_tracked"] == 0
    assert model.count_params() == 3 + 3 + 60 + 5 + 10 + 2  # buffers are not parameters
    model.compile("cross_entropy", "sgd")
    model.train_on_batch(np.ones((2, 3, 2, 2)), np.array([0, 1]))
    assert list(model.gradients()) == ["0.weight", "0.bias", "2.weight", "2.bias", "6.weight", "6.bias"]
    # torch's num_batches_tracked is an int64 0-d tensor; loading one (as numpy) round-trips.
    torch_like = {k: (np.array(7, np.int64) if k.endswith("num_batches_tracked") else v) for k, v in state.items()}
    model.load_state_dict(torch_like)
    assert model.state_dict()["3.num_batches_tracked"] == 7


def test_evaluation_mode_uses_running_statistics(device):
    """predict: batch norm with the running statistics (folded into the Conv2D and the Dense before
    them), dropout the identity; nothing is updated."""
    rng = np.random.default_rng(29)
    layers = [BatchNorm2d(3), L.Conv2D(3, 3, 1, bias=False), BatchNorm2d(3, affine=False), L.ReLU6(), L.Flatten(),
              L.Dense(12, 4), BatchNorm1d(4), Dropout(0.5), L.Dense(4, 2)]
    model = clnet.Sequential(layers, device=device, seed=2)
    stages = model.network.stages((3, 2, 2), fold_norms=True)
    assert [(s.name, s.folded and s.folded.name, s.output) for s in stages][:4] == [
        ("0", None, "0"), ("1", "2", "3"), ("4", None, "4"), ("5", "6", "6")]
    state = model.state_dict()
    for i in (0, 2, 6):
        c = len(state[f"{i}.running_mean"])
        state[f"{i}.running_mean"] = rng.normal(0, 1, c).astype(np.float32)
        state[f"{i}.running_var"] = rng.uniform(0.3, 3, c).astype(np.float32)
    model.load_state_dict(_randomize_affine(model, rng) | {k: v for k, v in state.items() if "running" in k})
    state = model.state_dict()
    x = rng.normal(0, 2, (5, 3, 2, 2))
    for batch_size in (5, 2):
        np.testing.assert_allclose(model.predict(x, batch_size=batch_size), forward(layers, state, x),
                                   rtol=1e-5, atol=1e-5)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, state[key], err_msg=key)
    # After training steps, predict follows the updated running statistics.
    model.compile("cross_entropy", clnet.optim.SGD(lr=0.05))
    model.fit(x, rng.integers(0, 2, 5), epochs=2, batch_size=5, verbose=0)
    trained = model.state_dict()
    assert trained["6.num_batches_tracked"] == 2 and not np.allclose(trained["6.running_var"], state["6.running_var"])
    np.testing.assert_allclose(model.predict(x), softmax(forward(layers, trained, x)), rtol=1e-5, atol=1e-6)


def _dropout_net():
    return [L.Dense(6, 16), L.ReLU(), Dropout(0.5), L.Dense(16, 3)]


def test_dropout_training_is_seeded(device):
    """Same seed: identical weights after training. Same initial weights but another seed: other
    masks, other weights. The masks change from step to step (two steps on one batch differ from
    the reference that keeps the first step's mask)."""
    rng = np.random.default_rng(31)
    x, labels = rng.normal(size=(12, 6)), rng.integers(0, 3, 12)

    def trained(seed, initial=None):
        model = clnet.Sequential(_dropout_net(), device=device, seed=seed)
        if initial is not None:
            model.load_state_dict(initial)
        model.compile("cross_entropy", clnet.optim.SGD(lr=0.1))
        model.fit(x, labels, epochs=3, batch_size=5, verbose=0)
        return model.state_dict()

    first, again = trained(4), trained(4)
    for key in first:
        np.testing.assert_array_equal(first[key], again[key], err_msg=key)
    initial = clnet.Sequential(_dropout_net(), device=device, seed=4).state_dict()
    other = trained(5, initial)
    assert not np.allclose(other["3.weight"], first["3.weight"])

    # Two steps on one batch: the second step's gradient uses the mask of step 2.
    model = clnet.Sequential(_dropout_net(), device=device, seed=6)
    model.compile("cross_entropy", clnet.optim.SGD(lr=0.5))
    layers = model.layers
    model.train_on_batch(x, labels)
    state = model.state_dict()
    loss2 = model.train_on_batch(x, labels)

    def reference_loss(step):
        out = forward(layers, state, x, training=True, dropout_keep=dropout_keep(model, step))
        return loss("cross_entropy_logits", out, labels)

    assert loss2 == pytest.approx(reference_loss(step=2), rel=1e-5)
    assert loss2 != pytest.approx(reference_loss(step=1), rel=1e-5)
