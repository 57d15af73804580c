"""What a user meets first: the version, the `clnet` command group and `python -m clnet`, commands
in pipes, progress on terminals and in pipes, diagnostics through the "clnet" logger, the README's
`clnet.X` names, the extras, and the image formats read."""

import ast
import configparser
import fcntl
import io
import json
import logging
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

import clnet
from clnet import layers as L
from clnet.callbacks.progress import images_per_second
from clnet.cli_options import SIGPIPE_STATUS, diagnostics_to_stderr, friendly_errors
from clnet.commands import main
from clnet.progress import ProgressBar

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
COMMAND_NAMES = ["train", "eval", "predict", "export", "devices", "pack", "tune", "bench"]


def setup_cfg():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    return config


def requirements(text):
    return {re.split(r"[<>=\[ ]", line.strip())[0] for line in text.strip().splitlines() if line.strip()}


# ------------------------------------------------------------------ version, group, python -m


def test_the_version_has_one_source():
    from clnet.version import __version__
    assert clnet.__version__ == __version__ and re.fullmatch(r"\d+\.\d+\.\d+\S*", __version__)
    assert setup_cfg()["metadata"]["version"] == "attr: clnet.version.__version__"


@pytest.mark.parametrize("name", [None, *COMMAND_NAMES])
def test_every_command_tells_its_version(name):
    for flag in ("--version", "-V"):
        result = CliRunner().invoke(main, [name, flag] if name else [flag])
        assert result.exit_code == 0 and result.output == f"clnet {clnet.__version__}\n", result.output


def test_the_group_holds_every_command_and_each_is_the_clnet_script():
    config = setup_cfg()
    scripts = dict(line.replace(" ", "").split("=") for line in
                   config["options.entry_points"]["console_scripts"].strip().splitlines())
    assert scripts["clnet"] == "clnet.commands:main"
    ctx = click.Context(main)
    assert main.list_commands(ctx) == COMMAND_NAMES
    for name in COMMAND_NAMES:  # the very commands of the clnet-* scripts, not copies
        module, function = scripts[f"clnet-{name}"].split(":")
        __import__(module)
        assert main.get_command(ctx, name) is getattr(sys.modules[module], function)


def test_the_group_runs_a_command():
    result = CliRunner().invoke(main, ["devices", "--json"])
    assert result.exit_code == 0, result.output
    assert [d["name"] for d in json.loads(result.output)] == [i.name for i in clnet.list_devices()]
    assert CliRunner().invoke(main, ["nosuch"]).exit_code == 2


def test_python_m_clnet():
    result = subprocess.run([sys.executable, "-m", "clnet", "--help"], capture_output=True, text=True, env=ENV,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: python -m clnet [OPTIONS] COMMAND")
    assert all(re.search(rf"^  {name} ", result.stdout, re.M) for name in COMMAND_NAMES)
    assert "torch" not in result.stderr  # bench's PyTorch is imported when it runs, not for --help


# ------------------------------------------------------------------ pipes


@pytest.mark.parametrize("program", [["-m", "clnet", "devices"],   # clnet devices
                                     ["-c", "from clnet.cli import devices; devices()"]])  # clnet-devices
def test_a_reader_that_closes_the_pipe_ends_the_command_quietly(program):
    """`clnet-devices | head -c 1`: the reader has gone before the command writes."""
    process = subprocess.Popen([sys.executable, *program], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    process.stdout.close()
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=60) == SIGPIPE_STATUS and stderr == ""
    whole = subprocess.run([sys.executable, *program], capture_output=True, text=True, env=ENV, timeout=60)
    assert whole.returncode == 0 and whole.stdout.startswith("[0] platform"), whole.stderr


def test_a_broken_pipe_that_is_not_stdout_is_an_error():
    @click.command()
    @friendly_errors
    def worker():
        raise BrokenPipeError(32, "Broken pipe")   # a worker process's pipe, say

    result = CliRunner().invoke(worker, [])
    assert result.exit_code == 1 and "Error: [Errno 32] Broken pipe" in result.output


# ------------------------------------------------------------------ progress


def tiny_fit(device, stream, epochs=2):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(96, 4)).astype(np.float32), rng.integers(0, 3, 96)
    model = clnet.Sequential([L.Dense(4, 3)], device=device, seed=0).compile("cross_entropy", "sgd")
    model.fit(x, y, epochs=epochs, batch_size=8, stream=stream, validation_split=0.25)


def test_progress_in_a_pipe_is_lines_without_carriage_returns(device, monkeypatch):
    monkeypatch.setattr(ProgressBar, "LINE_S", 0.0)  # a line after every step (every 30 s in use)
    stream = io.StringIO()
    tiny_fit(device, stream)
    text = stream.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert [line.split("  ")[0] for line in lines if "val_loss" in line] == ["Epoch 1/2", "Epoch 2/2"]
    assert re.search(r"^Epoch 1/2  loss \S+  accuracy \S+  val_loss .*\(\d+\.\d s, [\d,]+ img/s\)$", text, re.M)
    steps = [line for line in lines if "%" in line]
    assert len(steps) == 18 and steps[-1].startswith("Epoch 2/2 100% 9/9 [")
    assert re.search(r", loss \d\.\d{4}, accuracy \d\.\d{4}, [\d,]+ img/s\]$", steps[-1])


def read_pty(master, chunks):
    while True:
        try:
            chunk = os.read(master, 1 << 16)
        except OSError:  # the other end closed
            return
        if not chunk:
            return
        chunks.append(chunk)


def test_progress_on_an_80_column_terminal_never_wraps(device, monkeypatch):
    """Every redraw of the bar fits the terminal's width (a wrapped one would leave a row behind)."""
    monkeypatch.setattr(ProgressBar, "REDRAW_S", 0.0)  # redraw after every step
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    chunks = []
    reader = threading.Thread(target=read_pty, args=(master, chunks))
    reader.start()
    with open(slave, "w", encoding="utf-8", closefd=True) as terminal:
        tiny_fit(device, terminal)
    reader.join(timeout=30)
    os.close(master)
    text = b"".join(chunks).decode().replace("\r\n", "\n")  # the terminal's own line ends
    redraws = [segment for line in text.split("\n") for segment in line.split("\r")[:-1]]
    bars = [r for r in redraws if "%|" in r]
    assert len(bars) >= 9 and max(len(r) for r in redraws) <= 79  # tqdm keeps the last column free
    assert max(len(b) for b in bars) >= 70  # fitted to the width, not a fixed small one
    assert "Epoch 2/2  loss" in text


def test_a_diagnostic_during_a_bar_is_written_beside_it(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    bar = ProgressBar(10, "Epoch 1/1", terminal)
    bar.update(5, "loss 1.0")
    with diagnostics_to_stderr(logging.INFO):
        logging.getLogger("clnet.somewhere").info("a download")
    bar.close()
    before, after = terminal.getvalue().split("a download\n")
    assert re.search(r"\r +\r$", before) and after.startswith("\rEpoch 1/1  50%")  # wiped, then drawn again


def test_images_per_second():
    assert images_per_second(3840, 2.0) == "1,920 img/s"


# ------------------------------------------------------------------ diagnostics


def test_diagnostics_go_to_the_clnet_logger(caplog, tmp_path):
    with caplog.at_level(logging.DEBUG, logger="clnet"):
        dev = clnet.device(platform=str(clnet.list_devices()[0].platform_index), device="0")
        clnet.Sequential([L.Dense(3, 2)], device=dev, seed=0).predict(np.zeros((2, 3), np.float32))
    said = {(record.name, record.getMessage().split()[0]) for record in caplog.records}
    assert {("clnet.device", "Opened"), ("clnet.kernels", "Built")} <= said
    assert all(record.name.startswith("clnet.") for record in caplog.records)


def test_a_resume_is_a_diagnostic(device, tmp_path, caplog):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 4)).astype(np.float32), rng.integers(0, 3, 32)
    path = tmp_path / "run.clnet"
    for epochs in (1, 2):
        model = clnet.Sequential([L.Dense(4, 3)], device=device, seed=0).compile("cross_entropy", "sgd")
        with caplog.at_level(logging.INFO, logger="clnet"):
            model.fit(x, y, epochs=epochs, batch_size=8, verbose=0, checkpoint=path, resume=True)
    [record] = [r for r in caplog.records if r.name == "clnet.callbacks.checkpoint"]
    assert record.getMessage() == f"Resuming from {path} at epoch 2, step 0"


def test_library_code_never_configures_logging():
    for path in (ROOT / "clnet").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("basicConfig", "addHandler", "setLevel"):
                assert path.name == "cli_options.py", f"{path} configures logging"


def test_commands_show_diagnostics_on_stderr_by_level():
    @click.command()
    @friendly_errors
    @click.option("--quiet", is_flag=True)
    def talk(quiet):
        log = logging.getLogger("clnet.somewhere")
        log.debug("a kernel built")
        log.info("a download")
        log.warning("files left out")
        click.echo("result")

    said = {flags: CliRunner().invoke(talk, flags) for flags in ((), ("--verbose",), ("-v",), ("--quiet",))}
    assert all(result.exit_code == 0 and result.stdout == "result\n" for result in said.values())
    assert said[()].stderr == "a download\nWarning: files left out\n"
    assert said[("--verbose",)].stderr == said[("-v",)].stderr == "a kernel built\n" + said[()].stderr
    assert said[("--quiet",)].stderr == "Warning: files left out\n"
    assert not logging.getLogger("clnet").handlers and logging.getLogger("clnet").level == logging.NOTSET


# ------------------------------------------------------------------ the README's names, the extras


def test_the_readmes_clnet_names_resolve_after_a_plain_import():
    """In a fresh interpreter, where no test has imported a submodule yet."""
    names = sorted(set(n.rstrip(".") for n in re.findall(r"(?<![\w./-])clnet\.[A-Za-z_][\w.]*",
                                                          (ROOT / "README.md").read_text())))
    assert {"clnet.metrics", "clnet.export.to_onnx", "clnet.callbacks.EarlyStopping"} <= set(names)
    script = ("import functools, sys, clnet\n"
              "for name in sys.argv[1:]:\n"
              "    try:\n"
              "        functools.reduce(getattr, name.split('.')[1:], clnet)\n"
              "    except AttributeError as exc:\n"
              "        print(name, exc)\n")
    result = subprocess.run([sys.executable, "-c", script, *names], capture_output=True, text=True, env=ENV,
                            timeout=60)
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr


def test_a_renamed_module_answers_to_its_old_name_and_says_where_it_went():
    with pytest.warns(DeprecationWarning, match=r"clnet.training is now clnet.callbacks"):
        assert clnet.training is clnet.callbacks
    with pytest.raises(AttributeError, match="no attribute 'nosuch'"):
        clnet.nosuch


def test_the_extras():
    options = setup_cfg()["options"]
    extras = {name: requirements(text) for name, text in setup_cfg()["options.extras_require"].items()}
    assert "tqdm" in requirements(options["install_requires"])
    assert extras["onnx"] == {"onnx", "onnxruntime"}
    assert extras["all"] == extras["images"] | extras["plot"] | extras["onnx"] | extras["safetensors"]
    readme = (ROOT / "README.md").read_text()
    assert not re.search(r'pip install "clnet\[\w+\]"', readme)  # clnet is not on the index: from the checkout
    assert 'pip install ".[onnx]"' in readme and 'pip install "clnet[onnx] @ file://' in readme
    for path in (ROOT / "clnet").rglob("*.py"):  # nor do the hints of missing packages say so
        assert not re.search(r'pip install "clnet\[\w+\]"', path.read_text()), path


# ------------------------------------------------------------------ image formats


def test_webp_tiff_and_gif_images_are_read_and_other_files_reported(tmp_path, caplog):
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    pixels = [rng.integers(0, 256, (6, 5, 3), dtype=np.uint8) for _ in range(5)]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.fromarray(pixels[0]).save(tmp_path / "a" / "0.webp", lossless=True)
    Image.fromarray(pixels[1]).save(tmp_path / "a" / "1.tif")
    Image.fromarray(pixels[2]).save(tmp_path / "a" / "2.TIFF")
    grey = [Image.fromarray(np.full((6, 5), v, np.uint8)) for v in (10, 200)]  # two frames
    grey[0].save(tmp_path / "b" / "3.gif", save_all=True, append_images=grey[1:])
    Image.fromarray(pixels[4]).save(tmp_path / "b" / "4.png")
    (tmp_path / "b" / "notes.txt").write_text("not an image")
    (tmp_path / "b" / "labels.csv").write_text("neither")
    with caplog.at_level(logging.WARNING, logger="clnet"):
        data = clnet.datasets.ImageFolder(tmp_path)
    assert [p.name for p in data.files] == ["0.webp", "1.tif", "2.TIFF", "3.gif", "4.png"]
    for i in (0, 1, 2, 4):
        np.testing.assert_array_equal(data.x[i], pixels[i].transpose(2, 0, 1))
    assert (data.x[3] == 10).all()  # the GIF's first frame
    [record] = caplog.records
    assert record.name == "clnet.datasets.folder" and record.levelname == "WARNING"
    assert "2 files are not images" in record.getMessage() and "labels.csv" in record.getMessage()
    from clnet.datasets import read_inputs
    names, x = read_inputs(str(tmp_path / "b" / "3.gif"), (3, 6, 5))
    assert names == [str(tmp_path / "b" / "3.gif")] and (x == 10).all()
