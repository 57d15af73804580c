"""The command-line tools through click's runner, and once each as a real process."""

import json
import shutil
import subprocess

import pytest
from click.testing import CliRunner

import clnet
from clnet import bench, tune, tuning
from clnet.cli import devices, evaluate, pack, train


def test_devices_lists_every_device():
    result = CliRunner().invoke(devices, [])
    assert result.exit_code == 0, result.output
    for info in clnet.list_devices():
        assert f"[{info.index}] platform {info.platform_index}, device {info.device_index}: {info.name}" in result.output
    for field in ("compute units", "global memory", "max allocation", "local memory", "fp64 / fp16",
                  "OpenCL C", "driver", "tuned params"):
        assert field in result.output
    listed = json.loads(CliRunner().invoke(devices, ["--json"]).output)
    for entry, info in zip(listed, clnet.list_devices()):
        assert entry["compute_units"] == info.compute_units
        assert entry["tuning"]["class"] == tuning.device_class(info)


def test_devices_default_is_the_device_a_run_opens(monkeypatch):
    """clnet-devices' "Default:" line names the device clnet.device() opens under the same
    environment (CLNET_DEVICE, PYOPENCL_CTX), and a device that matches nothing is the same error
    as a run's."""
    for name in ("CLNET_PLATFORM", "CLNET_DEVICE", "PYOPENCL_CTX"):
        monkeypatch.delenv(name, raising=False)
    last = clnet.list_devices()[-1]
    for name, value in (("CLNET_DEVICE", str(last.index)), ("CLNET_DEVICE", last.type.lower()),
                        ("PYOPENCL_CTX", f"{last.platform_index}:{last.device_index}")):
        monkeypatch.setenv(name, value)
        opened = clnet.device().info
        result = CliRunner().invoke(devices, [])
        assert result.exit_code == 0, result.output
        assert f"Default: [{opened.index}] {opened.label}\nUnder mpirun, every rank takes the same" in result.output
        monkeypatch.delenv(name)
    monkeypatch.setenv("CLNET_DEVICE", "no-such-device")
    with pytest.raises(clnet.DeviceNotFoundError) as error:
        clnet.device()
    result, run = CliRunner().invoke(devices, []), CliRunner().invoke(train, ["--model", "mlp", "--epochs", "1"])
    assert str(error.value).startswith("CLNET_DEVICE='no-such-device': No OpenCL device matches")
    assert result.exit_code == run.exit_code == 1 and "Default:" not in result.output
    assert result.output.endswith(f"Error: {error.value}\n") and run.output.endswith(f"Error: {error.value}\n")


def test_train_runs_and_reports_test_accuracy():
    result = CliRunner().invoke(train, ["--device", "0", "--platform", str(clnet.list_devices()[0].platform_index),
                                       "--epochs", "2", "--batch-size", "32", "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert "Epoch 2/2" in result.output and "val_accuracy" in result.output
    accuracy = float(result.output.split("Test accuracy ")[1].split()[0])
    assert accuracy > 0.85


def test_train_with_label_smoothing():
    result = CliRunner().invoke(train, ["--device", "0", "--model", "mlp", "--epochs", "1", "--label-smoothing", "0.1"])
    assert result.exit_code == 0, result.output
    assert "cross_entropy(label_smoothing=0.1)" in result.output
    bad = CliRunner().invoke(train, ["--device", "0", "--label-smoothing", "1"])
    assert bad.exit_code == 2 and "--label-smoothing" in bad.output


def test_train_and_eval_on_replicas(tmp_path):
    """--device 0,0: two replicas on one device, as two GPUs would be; the model saved from them loads."""
    path = tmp_path / "mlp.clnet"
    result = CliRunner().invoke(train, ["--device", "0,0", "--model", "mlp", "--epochs", "1", "--save", str(path)])
    assert result.exit_code == 0, result.output
    label = clnet.list_devices()[0].label
    assert f"Device:    {label}; {label}" in result.output
    accuracy = float(result.output.split("Test accuracy ")[1].split()[0])
    assert accuracy > 0.5  # learns (79% after this epoch)
    evaluated = CliRunner().invoke(evaluate, [str(path), "--device", "0,0", "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.output)["accuracy"] == pytest.approx(accuracy, abs=1e-4)
    missing = CliRunner().invoke(train, ["--device", "0,99", "--model", "mlp"])
    assert missing.exit_code == 1 and "No OpenCL device matches '99'" in missing.output


def test_train_saves_the_model(tmp_path):
    path = tmp_path / "lenet.clnet"
    result = CliRunner().invoke(train, ["--device", "0", "--epochs", "1", "--quiet", "--save", str(path)])
    assert result.exit_code == 0, result.output
    accuracy = float(result.output.split("Test accuracy ")[1].split()[0])
    model = clnet.load(path, device=clnet.device(device=0))
    assert model.classes == [str(d) for d in range(10)]
    assert model.evaluate(clnet.datasets.load("mnist-5k")[1])["accuracy"] == pytest.approx(accuracy, abs=1e-4)


def test_train_resumes_a_run_folder(tmp_path):
    run = tmp_path / "run"
    straight = CliRunner().invoke(train, ["--device", "0", "--quiet", "--model", "mlp", "--epochs", "3"])
    first = CliRunner().invoke(train, ["--device", "0", "--quiet", "--model", "mlp", "--epochs", "2",
                                       "--checkpoint-dir", str(run)])
    assert first.exit_code == 0, first.output
    options = json.loads((run / "options.json").read_text())
    options["epochs"] = 3  # as if the first run had been stopped after two of its three epochs
    del options["label_smoothing"]  # as a run folder made before --label-smoothing
    (run / "options.json").write_text(json.dumps(options))
    resumed = CliRunner().invoke(train, ["--resume", str(run), "--quiet"])
    assert straight.exit_code == resumed.exit_code == 0, resumed.output
    accuracy = lambda result: result.output.split("Test accuracy ")[1].split()[:4]
    assert accuracy(resumed) == accuracy(straight)
    assert [line.split(",")[0] for line in (run / "metrics.csv").read_text().split()] == ["epoch", "1", "2", "3"]
    assert {p.name for p in run.iterdir()} == {"options.json", "checkpoint.clnet", "best.clnet", "model.clnet",
                                               "metrics.csv"}
    best = clnet.load(run / "best.clnet", device=clnet.device(device=0))
    assert best.classes == [str(d) for d in range(10)]
    missing = CliRunner().invoke(train, ["--resume", str(tmp_path)])
    assert missing.exit_code == 1 and "is not a run folder" in missing.output
    again = CliRunner().invoke(train, ["--device", "0", "--checkpoint-dir", str(run)])
    assert again.exit_code == 1 and "holds a run already: continue it with --resume" in again.output


def test_train_plots_its_curves(tmp_path):
    pytest.importorskip("matplotlib")
    result = CliRunner().invoke(train, ["--device", "0", "--quiet", "--model", "mlp", "--epochs", "2",
                                        "--plot", str(tmp_path / "curves.png")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args, code, message", [
    (["--platform", "no-such-platform"], 1, "Error: No OpenCL platform matches 'no-such-platform'"),
    (["--epochs", "0"], 2, "Invalid value for '--epochs'"),
    (["--model", "resnet"], 2, "Invalid value for '--model'"),
    (["--lr", "-1"], 2, "Invalid value for '--lr'"),
    (["--dataset", "nmist", "--device", "0"], 1, "did you mean 'mnist'"),
    (["--image-size", "big"], 2, "is not HxW"),
    (["--resume"], 2, "Option '--resume' requires an argument"),
])
def test_user_errors_exit_with_a_message_and_no_traceback(args, code, message):
    result = CliRunner().invoke(train, args)
    assert result.exit_code == code
    assert message in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("command, args, option", [
    (train, ["--image-size", "0x0"], "--image-size"),
    (train, ["--image-size", "64x-1"], "--image-size"),
    (pack, ["in", "out", "--image-size", "0"], "--image-size"),
    (train, ["--seed", "-1"], "--seed"),
    (train, ["--augment", "crop=abc"], "--augment"),
    (train, ["--augment", "crop=-1"], "--augment"),
    (train, ["--augment", "crop,rotate"], "--augment"),
    (train, ["--augment", "flip=1"], "--augment"),
    (train, ["--momentum", "nan"], "--momentum"),
    (train, ["--weight-decay", "inf"], "--weight-decay"),
    (train, ["--lr", "nan"], "--lr"),
    (train, ["--lr", "inf"], "--lr"),
    (train, ["--label-smoothing", "nan"], "--label-smoothing"),
    (train, ["--validation-split", "nan"], "--validation-split"),
    (tune.main, ["--min-time", "nan"], "--min-time"),
    (tune.main, ["--max-seconds", "inf"], "--max-seconds"),
])
def test_bad_values_are_usage_errors(command, args, option):
    """Refused while the arguments are read (exit 2, naming the option), before any data or device;
    each of these ran, or failed later with exit 1, before. --epochs 1 bounds a run should one start."""
    result = CliRunner().invoke(command, [*args, "--epochs", "1"] if command is train else args)
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}'" in result.output


def test_eval_clamps_a_batch_size_beyond_the_data(tmp_path):
    """1,000 test images with --batch-size 1000000: evaluated as one batch of 1,000."""
    path = tmp_path / "mlp.clnet"
    clnet.models.mlp(device=clnet.device(device=0)).compile("cross_entropy", "sgd").save(path)
    result = CliRunner().invoke(evaluate, [str(path), "--device", "0", "--batch-size", "1000000", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["samples"] == 1000


def test_debug_shows_the_traceback():
    result = CliRunner().invoke(train, ["--platform", "no-such-platform", "--debug"])
    assert isinstance(result.exception, clnet.DeviceNotFoundError)


def test_help_has_examples():
    result = CliRunner().invoke(train, ["--help"])
    assert result.exit_code == 0 and "Examples:" in result.output and "--platform pocl" in result.output


@pytest.mark.parametrize("args, models, batch_sizes, sizes", [
    ([], list(tune.DEFAULT_MODELS), [128, 1024], [1024, 4096]),
    (["--models", "mlp", "lenet5", "--batch-sizes", "8", "16", "--sizes"], ["mlp", "lenet5"], [8, 16], []),
    (["--models", "--sizes", "40", "--batch-sizes=32"], [], [32], [40]),
])
def test_options_of_several_values_read_as_argparse_did(args, models, batch_sizes, sizes):
    params = tune.main.make_context("clnet-tune", ["--device", "0", *args]).params
    assert (params["models"], params["batch_sizes"], params["sizes"]) == (models, batch_sizes, sizes)
    assert params["device"] == "0"


@pytest.mark.parametrize("args, message", [
    (["--batch-sizes"], "expected at least 1 value"),
    (["--batch-sizes", "-4"], "-4 is not in the range x>=1"),
    (["--models", "mlp", "resnet"], "'resnet' is not one of"),
    (["--json", "no/such/folder/bench.json"], "no/such/folder does not exist; create it first"),
])
def test_bench_usage_errors_exit_2(args, message):
    result = CliRunner().invoke(bench.main, args)
    assert result.exit_code == 2 and message in result.output


def test_console_scripts_run_as_processes():
    exe = shutil.which("clnet-train")
    assert exe, "clnet is not installed: pip install -e '.[test]'"
    done = subprocess.run([exe, "--quiet", "--epochs", "1", "--device", "0", "--platform",
                           str(clnet.list_devices()[0].platform_index)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Test accuracy")
    failed = subprocess.run([shutil.which("clnet-devices"), "--bogus"], capture_output=True, text=True)
    assert failed.returncode == 2 and "No such option" in failed.stderr
    tune_help = subprocess.run([shutil.which("clnet-tune"), "--help"], capture_output=True, text=True)
    assert tune_help.returncode == 0 and "--max-seconds" in tune_help.stdout
