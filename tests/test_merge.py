"""The merge layers Add and Concatenate: forward and backward passes on the device against float64
references, on awkward shapes (unequal channel counts, odd heights and widths, three inputs, batch
1, feature vectors), with inputs at odd offsets surrounded by NaN and outputs in guarded buffers
(`SlotPlan`), on both kernel families, and an activation fused into Add; the references against
each other (backward is the adjoint of forward); shapes, errors, flops and configuration.
"""

import json

import numpy as np
import pytest
from conftest import Slot, SlotPlan, execute

from clnet import layers as L
from clnet.errors import ShapeError

# (input shapes per sample, batch size)
CONCATENATE_CASES = [
    ([(3, 7, 5), (5, 7, 5)], 2),              # unequal channel counts, odd height and width
    ([(2, 3, 9), (1, 3, 9), (4, 3, 9)], 3),   # three inputs, one of one channel
    ([(3, 5, 3), (5, 5, 3)], 1),              # batch 1
    ([(70, 3, 5), (1, 3, 5)], 2),             # a block wider than a work-group, one narrower
    ([(1, 1, 1), (1, 1, 1)], 1),
    ([(7,), (2,), (5,)], 4),                  # feature vectors
]
ADD_CASES = [
    ([(3, 7, 5), (3, 7, 5)], 2),
    ([(2, 3, 9)] * 3, 1),                     # three inputs, batch 1
    ([(9,)] * 4, 3),
]


def ids(cases):
    return ["+".join("x".join(map(str, (batch, *shape))) for shape in shapes) for shapes, batch in cases]


def concatenate_backward_ref(dy, shapes):
    """Each input's channel range of dy."""
    return np.split(np.asarray(dy, np.float64), np.cumsum([shape[0] for shape in shapes])[:-1], axis=1)


def run_layer(device, layer, xs, dy, need_dx, act=None):
    """The layer's forward and backward on the device: (y, the gradients, the plan, dy's tensor);
    inputs and dy lie in NaN-filled buffers at odd offsets, values the layer makes in guarded ones.
    `act`: the activation fused into the layer."""
    plan = SlotPlan(device)
    ctx = L.LayerContext(plan, {}, {}, {}, act=act.kernel_options() if act else None, training=True)
    inputs = tuple(Slot(device, x, 7 + 6 * i).tensor for i, x in enumerate(xs))
    dy_tensor = Slot(device, dy, 11).tensor
    y = layer.forward(ctx, *inputs)
    dxs = layer.backward(ctx, inputs, y, dy_tensor, need_dx)
    execute(plan)
    return y, dxs, plan, dy_tensor


def random_case(shapes, batch, seed):
    rng = np.random.default_rng(seed)
    xs = [rng.normal(size=(batch, *shape)).astype(np.float32) for shape in shapes]
    return xs, rng


@pytest.mark.parametrize("case", CONCATENATE_CASES, ids=ids(CONCATENATE_CASES))
def test_concatenate_forward_and_backward(device, gemm_family, case):
    shapes, batch = case
    layer = L.Concatenate()
    xs, rng = random_case(shapes, batch, CONCATENATE_CASES.index(case))
    out_shape = (batch, *layer.output_shape(*shapes))
    dy = rng.normal(size=out_shape).astype(np.float32)
    y, dxs, plan, _ = run_layer(device, layer, xs, dy, (True,) * len(xs))
    assert y.shape == out_shape
    np.testing.assert_array_equal(plan.read(y), layer.reference({}, *xs))
    assert len(dxs) == len(xs)
    for dx, x, expected in zip(dxs, xs, concatenate_backward_ref(dy, shapes)):
        assert dx.shape == x.shape
        np.testing.assert_array_equal(plan.read(dx), expected)


def test_concatenate_backward_skips_the_inputs_that_need_no_gradient(device, gemm_family):
    shapes, batch = [(2, 3, 5), (3, 3, 5), (1, 3, 5)], 2
    layer = L.Concatenate()
    xs, rng = random_case(shapes, batch, 99)
    dy = rng.normal(size=(batch, 6, 3, 5)).astype(np.float32)
    y, dxs, plan, _ = run_layer(device, layer, xs, dy, (False, True, False))
    assert dxs[0] is None and dxs[2] is None
    np.testing.assert_array_equal(plan.read(dxs[1]), concatenate_backward_ref(dy, shapes)[1])
    assert len(plan.launches) == len(xs) + 1  # a copy per input forward, one backward


@pytest.mark.parametrize("case", ADD_CASES, ids=ids(ADD_CASES))
def test_add_forward_and_backward(device, gemm_family, case):
    """The sum in input order; every input's gradient is dy itself, the very value (no copy)."""
    shapes, batch = case
    layer = L.Add()
    xs, rng = random_case(shapes, batch, 50 + ADD_CASES.index(case))
    dy = rng.normal(size=(batch, *shapes[0])).astype(np.float32)
    need_dx = (True, False) + (True,) * (len(xs) - 2)
    y, dxs, plan, dy_tensor = run_layer(device, layer, xs, dy, need_dx)
    assert y.shape == (batch, *shapes[0])
    np.testing.assert_allclose(plan.read(y), layer.reference({}, *xs), rtol=1e-6, atol=1e-6)
    assert [dx is dy_tensor if need else dx is None for dx, need in zip(dxs, need_dx)] == [True] * len(xs)
    assert len(plan.launches) == len(xs) - 1  # a chain of adds; backward launches nothing


@pytest.mark.parametrize("act", [L.ReLU(), L.Sigmoid()], ids=repr)
@pytest.mark.parametrize("case", ADD_CASES, ids=ids(ADD_CASES))
def test_add_with_a_fused_activation(device, gemm_family, case, act):
    """act(x0 + x1 + ...), applied by the chain's last add; backward hands on dy, the gradient
    before the activation (the compiler takes it through act'), launching nothing."""
    shapes, batch = case
    layer = L.Add()
    xs, rng = random_case(shapes, batch, 60 + ADD_CASES.index(case))
    dy = rng.normal(size=(batch, *shapes[0])).astype(np.float32)
    y, dxs, plan, dy_tensor = run_layer(device, layer, xs, dy, (True,) * len(xs), act)
    np.testing.assert_allclose(plan.read(y), act.reference({}, layer.reference({}, *xs)), rtol=1e-6, atol=1e-6)
    assert all(dx is dy_tensor for dx in dxs) and len(plan.launches) == len(xs) - 1


def test_add_sums_in_input_order(device):
    """((x0 + x1) + x2) in float32, which differs from (x0 + (x1 + x2)) on these values."""
    xs = [np.array([[1.0]], np.float32), np.array([[1e8]], np.float32), np.array([[-1e8]], np.float32)]
    y, _, plan, _ = run_layer(device, L.Add(), xs, np.zeros((1, 1), np.float32), (False,) * 3)
    assert plan.read(y)[0, 0] == (np.float32(1.0) + np.float32(1e8)) + np.float32(-1e8) == 0.0


@pytest.mark.parametrize("layer, cases", [(L.Add(), ADD_CASES), (L.Concatenate(), CONCATENATE_CASES)])
def test_backward_references_are_the_adjoints_of_the_forward_references(layer, cases):
    """<dy, f(x_1, ..., x_n)> = sum_i <dx_i, x_i> for these linear layers: the backward references
    the device is checked against agree with the layers' forward references."""
    for shapes, batch in cases:
        xs, rng = random_case(shapes, batch, 7)
        dy = rng.normal(size=(batch, *layer.output_shape(*shapes)))
        dxs = [dy] * len(xs) if isinstance(layer, L.Add) else concatenate_backward_ref(dy, shapes)
        np.testing.assert_allclose(np.vdot(dy, layer.reference({}, *xs)),
                                   sum(np.vdot(dx, x) for dx, x in zip(dxs, xs)), rtol=1e-12)


@pytest.mark.parametrize("shapes, message", [
    ([(3, 7, 5)], "two or more inputs, got inputs \\(3, 7, 5\\) per sample"),
    ([(3, 7, 5), (3, 6, 5)], "inputs \\(C_i, H, W\\) of one height and width, got inputs \\(3, 7, 5\\), \\(3, 6, 5\\)"),
    ([(3, 7, 5), (3, 7, 4), (1, 7, 5)], "of one height and width"),
    ([(3, 7, 5), (35,)], "all of one rank"),
    ([(3, 7), (2, 7)], "all of one rank"),   # neither images nor vectors
])
def test_concatenate_refuses_inputs_it_cannot_join(shapes, message):
    with pytest.raises(ShapeError, match=message):
        L.Concatenate().output_shape(*shapes)


@pytest.mark.parametrize("shapes, message", [
    ([(9,)], "two or more inputs"),
    ([(3, 7, 5), (3, 7, 5), (4, 7, 5)], "inputs of one shape, got inputs \\(3, 7, 5\\), \\(3, 7, 5\\), \\(4, 7, 5\\)"),
    ([(6,), (2, 3)], "inputs of one shape"),
])
def test_add_refuses_inputs_of_different_shapes(shapes, message):
    with pytest.raises(ShapeError, match=message):
        L.Add().output_shape(*shapes)


def test_shapes_flops_arity_and_config():
    add, concatenate = L.Add(), L.Concatenate()
    assert add.output_shape((4, 3, 3), (4, 3, 3), (4, 3, 3)) == (4, 3, 3)
    assert add.flops((4, 3, 3), (4, 3, 3), (4, 3, 3)) == 2 * 36
    assert concatenate.output_shape((3, 7, 5), (5, 7, 5), (1, 7, 5)) == (9, 7, 5)
    assert concatenate.output_shape((7,), (2,)) == (9,)
    assert concatenate.flops((3, 7, 5), (5, 7, 5)) == 0
    assert add.arity is concatenate.arity is None and L.Dense(2, 3).arity == 1
    for layer in (add, concatenate):
        assert json.loads(json.dumps(layer.config())) == layer.config() == {}
        assert repr(type(layer)(**layer.config())) == repr(layer) == f"{type(layer).__name__}()"
