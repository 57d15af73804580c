"""The preset networks: their sizes match PyTorch's twins, the convolutional ones train, training
is deterministic for a seed, and clnet-train offers every one."""

import numpy as np
import pytest
from click.testing import CliRunner

import clnet
from clnet import layers as L
from clnet.cli import train
from clnet.models import INPUT_SHAPES, PRESETS

# parameter counts of the same networks built with torch.nn; resnet18/34/50 are torchvision's with
# conv1 3x3 (the CIFAR stem, 7680 fewer than torchvision's 7x7): the presets of 224x224 images run
# here on 32x32 ones, quickly. The VGGs, whose first Dense layer alone has 100M parameters whatever
# the image size, are counted and trained once each in test_torchvision_presets.py.
TORCH_PARAMETERS = {"mlp": 235_146, "mnist-cnn": 1_199_882, "cifar-cnn": 2_168_362, "lenet5": 61_706,
                    "resnet20": 272_474, "resnet32": 466_906, "resnet56": 855_770, "resnet18": 11_173_962,
                    "resnet18-cifar": 11_173_962,
                    "resnet34": 21_282_122, "resnet50": 23_520_842, "mobilenet-v2": 2_236_682}
SHAPES = {name: (3, 32, 32) if shape == (3, 224, 224) else shape for name, shape in INPUT_SHAPES.items()}


def test_every_preset_is_tested():
    assert set(PRESETS) == set(INPUT_SHAPES) == set(TORCH_PARAMETERS) | {"vgg11-bn", "vgg16-bn"}


def test_clnet_train_offers_every_preset():
    result = CliRunner().invoke(train, ["--model", "nothing"])
    assert result.exit_code == 2
    offered = result.output.split("'nothing' is neither a preset (")[1].split(")")[0].split(", ")
    assert offered == sorted(PRESETS), offered


@pytest.mark.parametrize("name", sorted(TORCH_PARAMETERS))
def test_preset_shapes_and_sizes(device, name):
    model = PRESETS[name](device=device, input_shape=SHAPES[name])
    assert model.count_params() == TORCH_PARAMETERS[name]
    model.compile("cross_entropy", "sgd")
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(3, *SHAPES[name]))
    loss = model.train_on_batch(x, rng.integers(0, 10, 3))
    assert np.isfinite(loss) and 1.0 < loss < 6.0  # about ln(10) for a fresh network, more for deep ResNets
    assert model.predict(x, batch_size=3).shape == (3, 10)


def test_mnist_cnn_learns_bundled_mnist(device):
    """Two epochs of mnist-cnn with Adam on the 4000 training images reach 93.0-94.3% on the 1000
    test images (PoCL 3.1, seeds 0-2, PyTorch's initialisation); 92.5% is the floor."""
    (x, y), (x_test, y_test) = clnet.datasets.load_mnist_5k()
    model = clnet.models.mnist_cnn(device=device, seed=0)
    model.compile("cross_entropy", clnet.optim.Adam(lr=1e-3))
    model.fit(x, y, epochs=2, batch_size=64, verbose=0)
    assert model.evaluate(x_test, y_test)["accuracy"] > 0.925


def test_conv_training_is_deterministic(device):
    def train(seed):
        model = clnet.Sequential([L.Conv2D(1, 4, 3, padding=1), L.BatchNorm2d(4), L.ReLU(), L.MaxPool2D(2),
                                  L.Dropout(0.3), L.Flatten(), L.Dense(4 * 7 * 7, 10)], device=device, seed=seed)
        model.compile("cross_entropy", clnet.optim.Adam(lr=1e-3))
        model.fit(x, y, epochs=2, batch_size=32, verbose=0)
        return model.state_dict()

    (x, y), _ = clnet.datasets.load_mnist_5k()
    x, y = x[:200, :, 7:21, 7:21], y[:200]  # 14x14 crops keep this quick
    first, second, other = train(3), train(3), train(4)
    for key in first:
        np.testing.assert_array_equal(first[key], second[key], err_msg=key)
    assert not np.array_equal(first["0.weight"], other["0.weight"])
