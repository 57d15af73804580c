"""ReLU6, LeakyReLU, SiLU and Identity: their kernels against float64 references (tensors at odd
offsets in NaN-guarded buffers, as test_ops.py), in the GEMM epilogues of both kernel families
(split K included), against torch.nn.functional, which of them the compiler fuses, and the
gradients of small networks using them, fused and unfused, against finite differences."""

import numpy as np
import pytest
from conftest import Slot, execute, new_plan

import clnet
from clnet import layers as L
from clnet import ops
from clnet.ops import conv as conv_ops
from clnet.network import Network

from test_gradients import _check

# (kind, negative slope): LeakyReLU of positive, zero and negative slopes
CASES = [("relu6", None), ("leaky_relu", 0.01), ("leaky_relu", 0.2), ("leaky_relu", 0.0), ("leaky_relu", -0.3),
         ("silu", None)]
IDS = [kind if slope is None else f"{kind}({slope})" for kind, slope in CASES]
# the kinks, both sides of them, and where exp over- and underflows
SPECIAL = [-1000.0, -100.0, -88.0, -20.0, -1.5, -1e-3, 0.0, 1e-3, 0.7, 5.999, 6.0, 6.001, 20.0, 88.0, 100.0, 1000.0]


def f64(a):
    return np.asarray(a, np.float64)


def forward_ref(kind, slope, x):
    x = f64(x)
    if kind == "relu6":
        return np.clip(x, 0.0, 6.0)
    if kind == "leaky_relu":
        return np.where(x > 0, x, np.float32(slope) * x)  # the kernel's slope is the float32
    return x * 0.5 * (1.0 + np.tanh(0.5 * x))  # silu: x * sigmoid(x) without overflow


def derivative_ref(kind, slope, x):
    """torch's: ReLU6 (hardtanh) 1 strictly inside (0, 6); LeakyReLU 1 for x > 0, else the slope."""
    x = f64(x)
    if kind == "relu6":
        return ((x > 0) & (x < 6)).astype(np.float64)
    if kind == "leaky_relu":
        return np.where(x > 0, 1.0, np.float32(slope))
    s = 0.5 * (1.0 + np.tanh(0.5 * x))
    return s * (1.0 + x * (1.0 - s))


def _inputs(rng, n):
    x = rng.normal(0, 4, n)
    x[:min(n, len(SPECIAL))] = SPECIAL[:n]
    return np.asarray(rng.permutation(x) if n > 1 else x, np.float32)


def _layer(kind, slope):
    return {"relu6": L.ReLU6, "silu": L.SiLU}[kind]() if slope is None else L.LeakyReLU(slope)


@pytest.mark.parametrize("kind,slope", CASES, ids=IDS)
def test_forward_and_backward_match_float64_references(device, gemm_family, kind, slope):
    """Forward, and backward by the path the layer takes: from the output where the derivative is a
    function of it, else from the input; with each family's work-group (the CPU family's is 1024:
    2500 values end in a part of one)."""
    layer, act = _layer(kind, slope), ops.activation(kind, slope)
    assert layer.kernel_options() == act
    assert layer.grad_from_output == (kind == "relu6" or (kind == "leaky_relu" and slope >= 0))
    rng = np.random.default_rng(11)
    plan, cases = new_plan(device), []
    for i, n in enumerate((1, 16, 67, 300, 2500)):
        x = _inputs(rng, n)
        y = np.float32(forward_ref(kind, slope, x))  # what a correct forward gives backward
        dy = np.float32(rng.normal(size=n))
        sx, sy_in, sdy = Slot(device, x, 5 + i), Slot(device, y, 17 * i + 1), Slot(device, dy, 3)
        sy, sdx = Slot.output(device, (n,), 11 * i + 1), Slot.output(device, (n,), 2)
        ops.activation_forward(plan, act, sx.tensor, sy.tensor)
        if layer.grad_from_output:
            ops.activation_backward(plan, act, sy_in.tensor, sdy.tensor, sdx.tensor)
        else:
            ops.activation_backward_from_input(plan, act, sx.tensor, sdy.tensor, sdx.tensor)
        cases.append((x, dy, sy, sdx))
    execute(plan)
    for x, dy, sy, sdx in cases:
        np.testing.assert_allclose(sy.read(), forward_ref(kind, slope, x), rtol=2e-6, atol=1e-7, err_msg="forward")
        np.testing.assert_allclose(sdx.read(), dy * derivative_ref(kind, slope, x), rtol=2e-6, atol=1e-7,
                                   err_msg="backward")


@pytest.mark.parametrize("kind,slope", [case for case in CASES if _layer(*case).grad_from_output],
                         ids=[i for i, case in zip(IDS, CASES) if _layer(*case).grad_from_output])
def test_the_gemm_epilogue_and_the_fused_backward(device, gemm_family, kind, slope):
    """act(A B^T + bias) in both families' epilogues, also where K is split and the sum of the
    slices stores it; dpre = dy * act'(y) of a Dense and of a Conv2D from y."""
    rng = np.random.default_rng(12)
    act, plan, cases = ops.activation(kind, slope), new_plan(device), []
    for m, n, k in ((67, 35, 19), (5, 70, 3001)):  # the second splits K in both families
        a, b = np.float32(rng.uniform(-1, 1, (m, k))), np.float32(rng.uniform(-1, 1, (n, k)))
        bias = np.float32(rng.uniform(-8, 8, n))  # beyond 6 and below 0
        sa, sb, sbias = Slot(device, a, 3), Slot(device, b, 41), Slot(device, bias, 9)
        sc = Slot.output(device, (m, n), 17)
        ops.gemm(plan, sa.tensor, sb.tensor, sc.tensor, trans_b=True, bias=sbias.tensor, act=act)
        cases.append((sc, forward_ref(kind, slope, f64(a) @ f64(b).T + bias), k))
    pre = rng.normal(0, 5, (2, 3, 7))
    y, dy = np.float32(forward_ref(kind, slope, pre)), np.float32(rng.normal(size=pre.shape))
    s_y, s_dy = Slot(device, y, 5), Slot(device, dy, 7)
    dense_dpre, dense_db = Slot.output(device, (2, 21), 3), Slot.output(device, (21,), 1)
    conv_dpre = Slot.output(device, (2, 3, 7) if gemm_family == "tiled" else (3, 14), 9)  # as its GEMMs read it
    conv_db = Slot.output(device, (3,), 2)
    ops.bias_act_backward(plan, act, s_dy.tensor.view((2, 21)), s_y.tensor.view((2, 21)), dense_dpre.tensor,
                          dense_db.tensor)
    conv_ops.conv_bias_act_backward(plan, act, s_dy.tensor, s_y.tensor, conv_dpre.tensor, conv_db.tensor)
    execute(plan)
    for sc, expected, k in cases:
        np.testing.assert_allclose(sc.read(), expected, rtol=1e-5, atol=1e-6 * (k + 1), err_msg=f"{gemm_family} K={k}")
    dpre = dy * derivative_ref(kind, slope, pre)
    np.testing.assert_allclose(dense_dpre.read(), dpre.reshape(2, 21), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dense_db.read(), dpre.reshape(2, 21).sum(axis=0), rtol=1e-5, atol=1e-6)
    conv_expected = dpre if gemm_family == "tiled" else dpre.transpose(1, 0, 2).reshape(3, 14)
    np.testing.assert_allclose(conv_dpre.read(), conv_expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(conv_db.read(), dpre.sum(axis=(0, 2)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind,slope", CASES, ids=IDS)
def test_the_same_as_torch_functional(device, kind, slope):
    """The device's forward and input gradient against torch.nn.functional's in float32, by autograd."""
    torch = pytest.importorskip("torch")
    functional = {"relu6": torch.nn.functional.relu6, "silu": torch.nn.functional.silu,
                  "leaky_relu": lambda t: torch.nn.functional.leaky_relu(t, slope)}[kind]
    rng = np.random.default_rng(13)
    x, dy = _inputs(rng, 300), np.float32(rng.normal(size=300))
    layer, act = _layer(kind, slope), ops.activation(kind, slope)
    sx, sdy = Slot(device, x, 3), Slot(device, dy, 5)
    sy, sdx = Slot.output(device, x.shape, 7), Slot.output(device, x.shape, 1)
    plan = new_plan(device)
    ops.activation_forward(plan, act, sx.tensor, sy.tensor)
    if layer.grad_from_output:
        ops.activation_backward(plan, act, sy.tensor, sdy.tensor, sdx.tensor)
    else:
        ops.activation_backward_from_input(plan, act, sx.tensor, sdy.tensor, sdx.tensor)
    execute(plan)
    tx = torch.tensor(x, requires_grad=True)
    ty = functional(tx)
    ty.backward(torch.tensor(dy))
    np.testing.assert_allclose(sy.read(), ty.detach().numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(sdx.read(), tx.grad.numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind,slope", CASES, ids=IDS)
def test_onnx_export_matches_the_device_across_the_kinks(device, kind, slope, tmp_path):
    """As test_layers.py's, on inputs that reach ReLU6's upper bound and exp's overflow."""
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from clnet.export import to_onnx

    model = clnet.Sequential([_layer(kind, slope)], device=device)
    x = _inputs(np.random.default_rng(15), 60).reshape(6, 10)
    to_onnx(model, tmp_path / "act.onnx", input_shape=(10,))
    session = ort.InferenceSession(str(tmp_path / "act.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"input": x})[0], model.predict(x), rtol=1e-6, atol=1e-6)


def test_only_activations_whose_gradient_needs_the_output_fuse():
    """ReLU6 and LeakyReLU of a slope >= 0 run in their producer's epilogue, with their options;
    SiLU and LeakyReLU of a negative slope run on their own; Identity is a layer of its own (a view)."""
    layers = [L.Dense(4, 5), L.ReLU6(), L.Dense(5, 5), L.LeakyReLU(0.1), L.Dense(5, 5), L.SiLU(), L.Dense(5, 5),
              L.LeakyReLU(-0.3), L.Dense(5, 5), L.Identity(), L.LeakyReLU(0.0)]
    stages = Network.chain(layers).stages((4,))
    assert [(s.name, s.act) for s in stages] == [
        ("0", {"ACT": 4}), ("2", {"ACT": 5, "ACT_SLOPE": "0.1f"}), ("4", None), ("5", None), ("6", None),
        ("7", None), ("8", None), ("9", None), ("10", None)]


# the networks: activations fused into Dense and Conv2D epilogues, and unfused (after a layer that
# cannot fuse them, or unfusable); inputs spread so that ReLU6 reaches 6
NETS = {
    "dense-fused": lambda: [L.Dense(4, 5), L.ReLU6(), L.Dense(5, 6), L.LeakyReLU(0.1), L.Dense(6, 3)],
    "dense-unfused": lambda: [L.Dense(4, 5), L.SiLU(), L.Dense(5, 4), L.LeakyReLU(-0.3), L.Identity(), L.ReLU6(),
                              L.Dense(4, 3)],
    "conv-fused": lambda: [L.Conv2D(2, 3, 3, padding=1), L.LeakyReLU(0.2), L.Conv2D(3, 2, 3), L.ReLU6(),
                           L.Flatten(), L.Dense(2 * 3 * 2, 3)],
    "conv-unfused": lambda: [L.Conv2D(2, 3, 3, padding=1), L.SiLU(), L.Identity(), L.Conv2D(3, 2, 3),
                             L.Identity(), L.LeakyReLU(0.05), L.Flatten(), L.Dense(2 * 3 * 2, 3)],
}
SHAPES = {"dense": (4,), "conv": (2, 5, 4)}


@pytest.mark.parametrize("net", sorted(NETS))
def test_network_gradients_match_finite_differences(device, gemm_family, net):
    rng = np.random.default_rng(14)
    x = rng.normal(0, 6, (5, *SHAPES[net.split("-")[0]]))
    model = _check(device, NETS[net](), "cross_entropy", x, rng.integers(0, 3, 5))
    assert model.predict(x).shape == (5, 3)


def test_leaky_relu_slope_survives_a_model_file(device, tmp_path):
    model = clnet.Sequential([L.Dense(3, 4), L.LeakyReLU(0.3), L.Dense(4, 2)], device=device, seed=2)
    model.save(tmp_path / "m.clnet")
    loaded = clnet.load(tmp_path / "m.clnet", device=device)
    assert loaded.layers[1].negative_slope == 0.3
    x = np.random.default_rng(0).normal(size=(4, 3))
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))


def test_leaky_relu_refuses_a_slope_that_is_not_finite():
    with pytest.raises(ValueError, match="finite negative_slope"):
        L.LeakyReLU(float("nan"))
