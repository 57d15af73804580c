"""clnet-eval and clnet-predict through click's runner, once each as a real process, and their failures."""

import csv
import json
import os
import shutil
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner

import clnet
from clnet.cli import evaluate, predict

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A lenet5 trained for one epoch on a fifth of MNIST-5k, saved with class names; its test
    metrics and predictions, computed in the process."""
    (x, y), (x_test, y_test) = clnet.datasets.load_mnist_5k()
    model = clnet.models.lenet5(device=clnet.device(device=0))
    model.compile(loss="cross_entropy", optimizer=clnet.optim.SGD(0.05, momentum=0.9))
    model.fit(x[::5], y[::5], epochs=1, batch_size=50, verbose=False)
    path = tmp_path_factory.mktemp("model") / "lenet.clnet"
    model.save(path, classes=NAMES)
    test = clnet.datasets.load("mnist-5k")[1]
    return {"path": str(path), "evaluate": model.evaluate(test), "probs": model.predict(test.x), "test": test}


def _runner():
    """A runner that keeps stderr apart (click 8.2 always does; older versions need mix_stderr=False)."""
    try:
        return CliRunner(mix_stderr=False)
    except TypeError:
        return CliRunner()


def run(command, args):
    result = _runner().invoke(command, args + ["--device", "0"])
    assert result.exit_code == 0, (result.output, result.stderr)
    return result.stdout


def test_eval_prints_loss_and_accuracy(trained):
    out = run(evaluate, [trained["path"]])
    words = out.splitlines()[-1].split()
    assert words[0] == "Loss" and words[2] == "accuracy" and words[4] == "top-5"
    assert float(words[1]) == pytest.approx(trained["evaluate"]["loss"], abs=1e-4)
    assert float(words[3]) == pytest.approx(trained["evaluate"]["accuracy"], abs=1e-4)
    top5 = clnet.metrics.top_k_accuracy(trained["probs"], trained["test"].y, 5)
    assert float(words[6]) == pytest.approx(top5, abs=1e-4)
    assert "precision" not in out


def test_eval_json_with_confusion_matrix(trained):
    out = run(evaluate, [trained["path"], "--json", "--confusion-matrix", "--top-k", "2", "--batch-size", "100"])
    report = json.loads(out)
    assert report["accuracy"] == pytest.approx(trained["evaluate"]["accuracy"], abs=1e-6)
    assert report["loss"] == pytest.approx(trained["evaluate"]["loss"], rel=1e-5)
    assert report["samples"] == 1000 and report["split"] == "test" and report["top_k"] == 2
    matrix = np.array(report["confusion_matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == 1000
    assert np.trace(matrix) / 1000 == pytest.approx(report["accuracy"], abs=1e-6)
    assert report["support"] == [100] * 10 and report["classes"] == NAMES
    assert len(report["precision"]) == len(report["recall"]) == 10


def test_eval_prints_the_confusion_table(trained, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = run(evaluate, [trained["path"], "--confusion-matrix"])
    table = out.split("\n\n")[1].splitlines()
    assert "precision" in table[0] and "recall" in table[0] and table[0].split()[3:13] == NAMES
    rows = [line.split() for line in table[1:]]
    assert [row[0] for row in rows] == NAMES
    assert sum(int(v) for row in rows for v in row[1:11]) == 1000
    assert list(tmp_path.iterdir()) == []  # writes nothing


def test_eval_saves_the_confusion_matrix(trained, tmp_path):
    path = tmp_path / "confusion.csv"
    report = json.loads(run(evaluate, [trained["path"], "--json", "--confusion-matrix", "--save-matrix", str(path)]))
    rows = list(csv.reader(path.open()))
    assert rows[0][1:] == NAMES and [row[0] for row in rows[1:]] == NAMES
    assert [[int(v) for v in row[1:]] for row in rows[1:]] == report["confusion_matrix"]


def test_eval_resizes_an_image_folder(trained, tmp_path):
    Image = pytest.importorskip("PIL.Image")
    test = trained["test"]
    for i in range(20):  # 20 test digits, stored as 40x36 RGB images
        folder = tmp_path / "digits" / NAMES[test.y[i]]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(test.x[i, 0]).convert("RGB").resize((36, 40)).save(folder / f"{i}.png")
    report = json.loads(run(evaluate, [trained["path"], "--dataset", str(tmp_path / "digits"), "--split", "train",
                                       "--json"]))
    assert report["samples"] == 20 and 0 <= report["accuracy"] <= 1


def test_predict_images_and_arrays(trained, tmp_path):
    Image = pytest.importorskip("PIL.Image")
    test = trained["test"]
    Image.fromarray(test.x[0, 0]).save(tmp_path / "a.png")                       # the model's size, grey
    Image.fromarray(test.x[1, 0]).convert("RGB").resize((56, 56)).save(tmp_path / "b.jpg")  # colour, larger
    np.save(tmp_path / "c.npy", test.x[2:5])
    np.savez(tmp_path / "d.npz", x=test.x[5:7, 0].astype(np.float32) / 255)      # (N, H, W) floats
    files = [str(tmp_path / f) for f in ("a.png", "b.jpg", "c.npy", "d.npz")]
    lines = run(predict, [trained["path"]] + files).splitlines()
    assert len(lines) == 7 and lines[0].startswith(files[0] + ": ") and lines[2].startswith(files[2] + "[0]: ")
    assert len(lines[0].split(": ")[1].split(", ")) == 3
    results = json.loads(run(predict, [trained["path"]] + files + ["--json", "--top-k", "2"]))
    assert [r["input"] for r in results] == files[:2] + [f"{files[2]}[{i}]" for i in range(3)] + \
        [f"{files[3]}[{i}]" for i in range(2)]
    expected = trained["probs"]
    for i in [0, 2, 3, 4, 5, 6]:   # results[i] is test image i; b.jpg (1) was resized, so it differs
        best = results[i]["top_k"]
        assert len(best) == 2 and best[0]["probability"] >= best[1]["probability"]
        assert best[0]["index"] == int(np.argmax(expected[i])) and best[0]["class"] == NAMES[best[0]["index"]]
        assert best[0]["probability"] == pytest.approx(float(expected[i].max()), abs=1e-5)
    assert all(r["top_k"][0]["class"] in NAMES for r in results)


def test_eval_and_predict_as_processes(trained, tmp_path):
    if shutil.which("clnet-eval") is None or shutil.which("clnet-predict") is None:
        pytest.skip("the console scripts are not installed (pip install -e .)")
    done = subprocess.run(["clnet-eval", trained["path"], "--device", "0", "--json"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["accuracy"] == pytest.approx(trained["evaluate"]["accuracy"], abs=1e-6)
    np.save(tmp_path / "x.npy", trained["test"].x[:4])
    done = subprocess.run(["clnet-predict", trained["path"], str(tmp_path / "x.npy"), "--device", "0", "--json"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert [r["top_k"][0]["index"] for r in json.loads(done.stdout)] == list(np.argmax(trained["probs"][:4], axis=1))
    done = subprocess.run(["clnet-predict", str(tmp_path / "missing.clnet"), str(tmp_path / "x.npy")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip().count("\n") == 0 and "missing.clnet" in done.stderr


def _bad_inputs(tmp, model):
    (tmp / "corrupt.clnet").write_bytes(b"PK\x03\x04 not really a zip archive")
    (tmp / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    np.save(tmp / "wrong.npy", np.zeros((2, 3, 5, 5), np.float32))
    os.mkfifo(tmp / "fifo.png")
    os.mkfifo(tmp / "matrix.csv")
    return {
        "missing model": ([predict, str(tmp / "none.clnet"), str(tmp / "broken.png")], "none.clnet: no such model file"),
        "missing model (eval)": ([evaluate, str(tmp / "none.clnet")], "none.clnet: no such model file"),
        "corrupt model": ([evaluate, str(tmp / "corrupt.clnet")], "corrupt.clnet"),
        "corrupt model (predict)": ([predict, str(tmp / "corrupt.clnet"), str(tmp / "wrong.npy")], "corrupt.clnet"),
        "unreadable image": ([predict, model, str(tmp / "broken.png")], "broken.png: cannot read the image"),
        "missing image": ([predict, model, str(tmp / "nothere.png")], "nothere.png: no such file"),
        "FIFO image": ([predict, model, str(tmp / "fifo.png")], "fifo.png is a FIFO, not a regular file"),
        "FIFO matrix": ([evaluate, model, "--save-matrix", str(tmp / "matrix.csv")], "matrix.csv is a FIFO"),
        "wrong array shape": ([predict, model, str(tmp / "wrong.npy")], "do not fit the model's input"),
        "unknown dataset": ([evaluate, model, "--dataset", "nmist"], "did you mean 'mnist'"),
    }


@pytest.mark.parametrize("case", ["missing model", "missing model (eval)", "corrupt model", "corrupt model (predict)",
                                  "unreadable image", "missing image", "FIFO image", "FIFO matrix", "wrong array shape", "unknown dataset"])
def test_bad_inputs_fail_in_one_line(trained, tmp_path, case):
    pytest.importorskip("PIL.Image")
    (command, *args), message = _bad_inputs(tmp_path, trained["path"])[case]
    result = _runner().invoke(command, args + ["--device", "0"])
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert result.stdout == "" and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: ") and message in result.stderr


@pytest.mark.parametrize("command, args, message", [
    (evaluate, ["--top-k", "0"], "Invalid value for '--top-k'"),
    (evaluate, ["--split", "valid"], "Invalid value for '--split'"),
    (predict, [], "Missing argument 'FILES...'"),
])
def test_usage_errors_exit_2(trained, command, args, message):
    result = _runner().invoke(command, [trained["path"]] + args)
    assert result.exit_code == 2 and message in result.stderr


def test_help_has_examples():
    for command, name in ((evaluate, "clnet-eval"), (predict, "clnet-predict")):
        result = CliRunner().invoke(command, ["--help"])
        assert result.exit_code == 0 and "Examples:" in result.output and name in result.output
        assert "--platform" in result.output and "--debug" in result.output
