"""The model API end to end: training on real data, transfers per step, padding of the last batch,
determinism, weights in PyTorch's layout, and clear failures on bad input."""

import numpy as np
import pyopencl as cl
import pytest

import clnet
from clnet import layers as L
from clnet.text import format_bytes

from reference import forward


@pytest.fixture(scope="module")
def mnist():
    return clnet.datasets.load_mnist_5k()


def small_mlp(device, seed=0, classes=3, features=6):
    return clnet.Sequential([L.Dense(features, 8), L.ReLU(), L.Dense(8, classes)], device=device, seed=seed)


def test_mlp_learns_bundled_mnist(device, mnist):
    """The default MLP reaches at least 90% test accuracy on the 1000 held-out images in 5 epochs:
    about 90.5-92.5% from PyTorch's initialisation, as the same recipe in PyTorch (six seeds: 90.5
    to 92.4%); 4000 training images are few for an MLP."""
    (x, y), (x_test, y_test) = mnist
    model = clnet.models.mlp(device=device, seed=1)
    model.compile("cross_entropy", clnet.optim.SGD(lr=0.05, momentum=0.9))
    history = model.fit(x, y, epochs=5, batch_size=64, validation_split=0.1, verbose=0)
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy", "lr"}
    assert history.history["loss"][-1] < history.history["loss"][0] / 4
    result = model.evaluate(x_test, y_test)
    assert result["accuracy"] >= 0.90
    probs = model.predict(x_test)
    assert probs.shape == (1000, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert np.mean(probs.argmax(axis=1) == y_test) == pytest.approx(result["accuracy"])


def test_adam_and_nesterov_train(device, mnist):
    (x, y), (x_test, y_test) = mnist
    for optimizer in (clnet.optim.Adam(lr=1e-3), clnet.optim.AdamW(lr=1e-3),
                      clnet.optim.SGD(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4)):
        model = clnet.models.mlp(device=device, seed=0)
        model.compile("cross_entropy", optimizer)
        model.fit(x, y, epochs=2, batch_size=100, verbose=0)
        assert model.evaluate(x_test, y_test)["accuracy"] > 0.85, optimizer  # 88.1-88.8% seen (seeds 0-2)


class CopyCounter:
    """Counts every host<->device copy and map pyopencl is asked for."""

    def __init__(self, monkeypatch):
        self.copies = self.maps = 0
        real_copy, real_map = cl.enqueue_copy, cl.enqueue_map_buffer

        def copy(*args, **kwargs):
            self.copies += 1
            return real_copy(*args, **kwargs)

        def map_buffer(*args, **kwargs):
            self.maps += 1
            return real_map(*args, **kwargs)

        monkeypatch.setattr(cl, "enqueue_copy", copy)
        monkeypatch.setattr(cl, "enqueue_map_buffer", map_buffer)


def test_training_step_transfers_only_the_batch(device, monkeypatch):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(100, 6)), rng.integers(0, 3, 100)
    model = small_mlp(device)
    model.compile("cross_entropy", clnet.optim.Adam())
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)  # compiles the plan
    runner = model._runner(32, (6,), True, np.int32, model._spec(x.astype(np.float32)))
    counter = CopyCounter(monkeypatch)
    for start in range(0, 96, 32):
        runner.train(x[start:start + 32].astype(np.float32), y[start:start + 32].astype(np.int32))
    runner.sync()
    assert (counter.copies, counter.maps) == (2 * 3, 0)  # images and labels, nothing else

    # The NaN guard reads the weights once before the first epoch and once after each: parameters,
    # layer buffers and Adam's two moments (4 reads), between steps.
    guard = lambda epochs: 4 * (epochs + 1)
    counter.copies = 0
    model.fit(x, y, epochs=2, batch_size=32, verbose=0, resident=False)  # 4 steps an epoch, metrics read
    assert (counter.copies, counter.maps) == (2 * (2 * 4 + 1) + guard(2), 0)

    counter.copies = 0  # the training set on the device: its upload, then per epoch the order and metrics
    model.fit(x, y, epochs=3, batch_size=32, verbose=0, resident=True)
    assert (counter.copies, counter.maps) == (2 + 3 * 2 + guard(3), 0)


def test_an_inference_batch_wanting_no_output_ends_at_the_logits(device):
    """A batch that asks for neither outputs nor metrics (the benchmark's inference) queues the forward
    pass only: the loss launch, last in the plan, would write nothing. One that asks for outputs
    after it still gets the model's probabilities."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(16, 6)).astype(np.float32)
    model = small_mlp(device)
    model.compile("cross_entropy", "sgd")
    runner = model._runner(16, (6,), False)
    assert runner.plan.launches[-1] is runner.compiled.loss_launch
    runner.infer(x, want_output=False)
    assert len(runner.last_events) == len(runner.plan.launches) - 1
    probs = runner.infer(x)
    assert len(runner.last_events) == len(runner.plan.launches)
    np.testing.assert_allclose(probs, model.predict(x), rtol=1e-6, atol=1e-7)


def test_resident_and_streamed_training_agree(device, mnist):
    """Batches gathered from the dataset on the device, or uploaded into alternating staging
    buffers while the previous step computes: the same steps and augmentation, the same weights,
    every time (a staging buffer refilled before the step that reads it has run would show here)."""
    (x, y), _ = mnist
    x, y = (x[:2000] * 255).round().astype(np.uint8), y[:2000]
    states, evaluations = [], []
    for resident in (True, False, False):
        model = clnet.models.mlp(device=device, seed=1)
        model.compile("cross_entropy", clnet.optim.SGD(lr=0.05, momentum=0.9))
        model.fit(x, y, epochs=1, batch_size=64, verbose=0, resident=resident, augment="crop=2,flip")
        states.append(model.state_dict())
        evaluations.append(model.evaluate(x, y, batch_size=64))
    for state in states[1:]:
        for key in states[0]:
            np.testing.assert_array_equal(state[key], states[0][key], err_msg=key)
    assert evaluations[1] == evaluations[0] == evaluations[2]


def test_partial_last_batch_counts_only_real_samples(device):
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(10, 6)), rng.integers(0, 3, 10)
    model = small_mlp(device)
    model.compile("cross_entropy", "sgd")
    whole = model.evaluate(x, y, batch_size=10)
    padded = model.evaluate(x, y, batch_size=4)  # batches of 4, 4 and 2
    assert padded["loss"] == pytest.approx(whole["loss"], rel=1e-5)
    assert padded["accuracy"] == whole["accuracy"]
    np.testing.assert_allclose(model.predict(x, batch_size=3), model.predict(x), rtol=1e-6)

    # Training on 10 samples in batches of 4: the last step sees 2 real samples and zero padding.
    a, b = small_mlp(device, seed=2), small_mlp(device, seed=2)
    a.compile("cross_entropy", clnet.optim.SGD(lr=0.1))
    b.compile("cross_entropy", clnet.optim.SGD(lr=0.1))
    a.fit(x, y, epochs=1, batch_size=4, shuffle=False, verbose=0)
    for start in (0, 4, 8):
        b.train_on_batch(x[start:start + 4], y[start:start + 4])
    for key, value in a.state_dict().items():
        np.testing.assert_allclose(value, b.state_dict()[key], rtol=1e-5, atol=1e-7)


def test_validation_split_is_stratified_and_seeded():
    from clnet.model import _split
    labels = np.repeat(np.arange(4, dtype=np.int32), [100, 50, 30, 20])
    val, train = _split(np.random.default_rng(0), labels, 0.1)
    assert np.bincount(labels[val]).tolist() == [10, 5, 3, 2]
    assert len(np.intersect1d(val, train)) == 0 and len(val) + len(train) == 200
    again, _ = _split(np.random.default_rng(0), labels, 0.1)
    other, _ = _split(np.random.default_rng(1), labels, 0.1)
    assert np.array_equal(val, again) and not np.array_equal(val, other)
    assert len(_split(np.random.default_rng(0), np.zeros((3, 2), np.float32), 0.1)[0]) == 1


def test_same_seed_same_weights(device, mnist):
    (x, y), _ = mnist
    weights = []
    for _ in range(2):
        model = clnet.models.mlp(device=device, seed=5)
        model.compile("cross_entropy", clnet.optim.SGD(lr=0.05, momentum=0.9))
        model.fit(x[:1000], y[:1000], epochs=2, batch_size=50, validation_split=0.1, verbose=0)
        weights.append(model.state_dict())
    for key in weights[0]:
        np.testing.assert_array_equal(weights[0][key], weights[1][key])
    other = clnet.models.mlp(device=device, seed=6).state_dict()
    assert not np.array_equal(other["1.weight"], weights[0]["1.weight"])


def test_state_dict_uses_pytorch_keys_and_layouts(device):
    model = clnet.Sequential([L.Flatten(), L.Dense(12, 5), L.ReLU(), L.Dense(5, 2, bias=False)], device=device)
    state = model.state_dict()
    assert list(state) == ["1.weight", "1.bias", "3.weight"]
    assert state["1.weight"].shape == (5, 12) and state["3.weight"].shape == (2, 5)
    rng = np.random.default_rng(3)
    new = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in state.items()}
    model.load_state_dict(new)
    for key in new:
        np.testing.assert_array_equal(model.state_dict()[key], new[key])
    x = rng.normal(size=(4, 3, 2, 2))
    np.testing.assert_allclose(model.predict(x), forward(model.layers, new, x), rtol=1e-5, atol=1e-6)


def test_auto_init_is_he_before_relu_and_glorot_otherwise(device):
    model = clnet.Sequential([L.Dense(400, 300, init="auto"), L.ReLU(), L.Dense(300, 200, init="auto"), L.Tanh()],
                             device=device)
    state = model.state_dict()
    assert np.abs(state["0.weight"]).max() == pytest.approx(np.sqrt(6 / 400), rel=0.01)
    assert np.abs(state["2.weight"]).max() == pytest.approx(np.sqrt(6 / 500), rel=0.01)
    assert not state["0.bias"].any()


# (clnet layer, its torch twin's constructor and arguments): many weights, and many biases
TORCH_INIT_CASES = [(L.Dense(1000, 2000, init="torch"), "Linear", (1000, 2000)),
                    (L.Dense(50, 5000, init="torch"), "Linear", (50, 5000)),
                    (L.Conv2D(3, 2000, 5, init="torch"), "Conv2d", (3, 2000, 5)),
                    (L.Conv2D(16, 4000, (1, 2), init="torch"), "Conv2d", (16, 4000, (1, 2)))]


@pytest.mark.parametrize("case", TORCH_INIT_CASES, ids=lambda case: repr(case[0]))
def test_torch_init_is_pytorchs(case):
    """init="torch" as torch.nn's reset_parameters: weight and bias uniform within 1 / sqrt(fan_in),
    drawn weight first; the empirical bounds and spreads of torch's own."""
    torch = pytest.importorskip("torch")
    layer, name, args = case
    torch.manual_seed(0)
    twin = getattr(torch.nn, name)(*args)
    params = layer.init_params(np.random.default_rng(3))
    fan_in = np.prod(params["weight"].shape[1:])
    drawn = np.random.default_rng(3).uniform(-1, 1, params["weight"].size + params["bias"].size) / np.sqrt(fan_in)
    np.testing.assert_array_equal(np.concatenate([params["weight"].ravel(), params["bias"]]), np.float32(drawn))
    for key in ("weight", "bias"):
        ours, theirs = params[key].astype(np.float64), getattr(twin, key).detach().numpy().astype(np.float64)
        assert ours.shape == theirs.shape
        assert np.abs(ours).max() <= 1 / np.sqrt(fan_in) and np.abs(theirs).max() <= 1 / np.sqrt(fan_in)
        assert np.abs(ours).max() == pytest.approx(np.abs(theirs).max(), rel=0.01), key
        assert ours.std() == pytest.approx(theirs.std(), rel=0.05), key
        assert abs(ours.mean()) < 0.05 * ours.std(), key


def test_summary_lists_layers_totals_and_planned_memory(device):
    model = clnet.models.mlp(device=device)
    quiet = open("/dev/null", "w")
    text = model.summary(input_shape=(1, 28, 28), stream=quiet)
    assert "Dense(784, 256)" in text and "200,960" in text and "235,146" in text
    assert "401,408" in text and "3.1 KiB" in text  # FLOPs and activation memory of one sample
    assert "inference at batch size 32" in text
    model.compile("cross_entropy", clnet.optim.Adam())
    text = model.summary(input_shape=(1, 28, 28), batch_size=64, stream=quiet)
    arena = model._runner(64, (1, 28, 28), True, np.int32).plan.arena_bytes
    assert "training at batch size 64" in text and f"{format_bytes(arena)} activations" in text


# ---------------------------------------------------------------- failures that must be clear

def test_wrong_input_shape_names_the_layer(device):
    model = clnet.Sequential([L.Flatten(), L.Dense(784, 10)], device=device)
    model.compile("cross_entropy", "sgd")
    with pytest.raises(clnet.ShapeError, match=r"layer 1 \(Dense\(784, 10\)\) expects input \(784,\).*got \(3,\)"):
        model.fit(np.zeros((4, 3)), np.zeros(4, int), verbose=0)
    with pytest.raises(clnet.ShapeError, match="add a Flatten layer"):
        clnet.Sequential([L.Dense(4, 2)], device=device).predict(np.zeros((2, 2, 2)))


@pytest.mark.parametrize("labels, message", [
    (np.array([0, 1, 3, 0]), "label 3 at index 2 is out of range.*0..2"),
    (np.array([0, 1, -1, 0]), "label -1 at index 2 is out of range"),
    (np.array([0, 1, 1]), "x has 4 samples but y has 3"),
    (np.array([[0, 1], [1, 0], [1, 0], [0, 1]]), r"shape \(4,\)"),
    (np.array([0.5, 1, 1, 0]), "whole class indices"),
    (np.array(["a", "b", "c", "d"]), "integers"),
])
def test_bad_labels_fail_clearly(device, labels, message):
    model = small_mlp(device)
    model.compile("cross_entropy", "sgd")
    with pytest.raises(clnet.InputError, match=message):
        model.fit(np.zeros((4, 6)), labels, verbose=0)


def test_nan_in_data_fails_clearly_and_changes_nothing(device):
    model = small_mlp(device)
    model.compile("cross_entropy", "sgd")
    before = model.state_dict()
    x = np.zeros((4, 6))
    x[2, 3] = np.nan
    with pytest.raises(clnet.InputError, match=r"NaN or infinity \(first at index \(2, 3\)\)"):
        model.fit(x, np.zeros(4, int), verbose=0)
    with pytest.raises(clnet.InputError, match="NaN"):
        model.predict(x)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[key])


def test_other_misuse_fails_clearly(device):
    model = small_mlp(device)
    with pytest.raises(clnet.InputError, match="compile"):
        model.fit(np.zeros((4, 6)), np.zeros(4, int))
    model.compile("binary_cross_entropy", "sgd")
    with pytest.raises(clnet.InputError, match="targets must have shape"):
        model.fit(np.zeros((4, 6)), np.zeros(4), verbose=0)
    bce = clnet.Sequential([L.Dense(6, 1), L.Sigmoid()], device=device).compile("bce", "sgd")
    with pytest.raises(clnet.InputError, match=r"\[0, 1\]"):
        bce.fit(np.zeros((4, 6)), np.array([0, 1, 2, 0]), verbose=0)
    with pytest.raises(clnet.InputError, match="samples"):
        bce.fit(np.zeros((4, 6)), np.zeros(3), verbose=0)
    with pytest.raises(ValueError, match="unknown loss"):
        model.compile("hinge", "sgd")
    with pytest.raises(ValueError, match="unknown optimizer"):
        model.compile("cross_entropy", "rmsprop")
    with pytest.raises(clnet.ShapeError, match=r"0.weight.*\(6, 8\).*\(8, 6\)"):
        model.load_state_dict({**model.state_dict(), "0.weight": np.zeros((6, 8))})
    with pytest.raises(clnet.InputError, match="missing keys"):
        model.load_state_dict({"0.weight": np.zeros((8, 6))})


def test_a_batch_too_large_for_the_device_says_what_fits(device):
    model = clnet.Sequential([L.Dense(4096, 4096)], device=device)
    model.compile("mse", "sgd")
    too_many = device.info.global_mem // (4096 * 4) + 1
    with pytest.raises(clnet.OutOfDeviceMemoryError, match="use a batch size of"):
        model._runner(too_many, (4096,), True, np.float32)


@pytest.mark.parametrize("chain", ["0", "1"])
def test_no_gradient_is_computed_for_the_network_input(device, monkeypatch, chain):
    """Flatten first: the first Dense must not compute d(loss)/d(input), which nobody reads (nor, on
    the CPU family, the Dense layers' chain)."""
    monkeypatch.setenv("CLNET_DENSE_CHAIN", chain)
    model = clnet.models.mlp(device=device)
    model.compile("cross_entropy", "sgd")
    launches = model._runner(8, (1, 28, 28), True, np.int32).plan.launches
    kernels = [launch.kernel.function_name for launch in launches]
    backward = kernels[kernels.index("softmax_cross_entropy") + 1:]
    if "dense_chain_back" in backward:
        launch = launches[kernels.index("dense_chain_back")]
        assert launch.args[launch.kernel.names.index("need_dx")] == 0
    else:
        assert sum(name.startswith("gemm") for name in backward) == 3 + 2  # weight gradients, input gradients of 3, 5
    assert ("dense_chain_back" in backward) == (chain == "1" and device.family == "cpu")


@pytest.mark.parametrize("call, name", [
    (lambda m, x, y: m.predict(x, batch_size=0), "batch_size"),
    (lambda m, x, y: m.predict(x, batch_size=-5), "batch_size"),
    (lambda m, x, y: m.evaluate(x, y, batch_size=0), "batch_size"),
    (lambda m, x, y: m.evaluate(x, y, batch_size=2.5), "batch_size"),
    (lambda m, x, y: m.fit(x, y, batch_size=0, verbose=0), "batch_size"),
    (lambda m, x, y: m.fit(x, y, epochs=1.5, verbose=0), "epochs"),
    (lambda m, x, y: m.fit(x, y, epochs=True, verbose=0), "epochs"),
])
def test_bad_counts_name_the_argument(device, call, name):
    model = small_mlp(device).compile("cross_entropy", "sgd")
    x, y = np.zeros((4, 6), np.float32), np.zeros(4, int)
    with pytest.raises(clnet.InputError, match=rf"^{name} must be a whole number >= \d, got [^\n]*$"):
        call(model, x, y)


def test_a_batch_size_beyond_the_data_is_clamped_to_it(device):
    """A plan of 2**40 rows would not fit any device (nor int32 indices); 5 rows need a plan of 5."""
    model = small_mlp(device).compile("cross_entropy", "sgd")
    x, y = np.random.default_rng(0).random((5, 6), np.float32), np.arange(5) % 3
    np.testing.assert_allclose(model.predict(x, batch_size=2 ** 40), model.predict(x, batch_size=2), rtol=1e-6)
    assert model.evaluate(x, y, batch_size=2 ** 40)["loss"] == pytest.approx(model.evaluate(x, y, batch_size=2)["loss"])


@pytest.mark.parametrize("value", [np.full((8, 6), "a"), {"a": 1}], ids=["strings", "dict"])
def test_a_value_that_is_not_numeric_names_its_key(device, value):
    """(A wrong shape names it too: test_other_misuse_fails_clearly.)"""
    model = small_mlp(device)
    with pytest.raises(clnet.InputError, match=r"^state_dict\['0.weight'\] is not a numeric array"):
        model.load_state_dict({**model.state_dict(), "0.weight": value})
