"""What a wheel ships: every package of clnet is listed in setup.cfg (a missing one installs a clnet
that cannot be imported, which only a wheel install would show), the kernel sources go with it, and so
do the licence and the bundled data's notice, the version and the commands."""

import configparser
import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from clnet.version import __version__

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_is_in_setup_cfg():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    listed = set(config["options"]["packages"].split())
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "clnet").rglob("__init__.py")}
    assert found - listed == set(), f"add {sorted(found - listed)} to setup.cfg's packages"
    assert "clnet.kernels_cl" in listed and config["options.package_data"]["clnet.kernels_cl"] == "*.cl, *.h"


def test_the_wheel_ships_the_licence_and_the_notice(tmp_path):
    """Built from a copy of what setup.cfg reads, so that the checkout gets no build/ or egg-info."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md", "LICENSE", "NOTICE"):
        shutil.copy(ROOT / name, source)
    for name in ("clnet", "kernels_cl"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    # without build isolation where setuptools is at hand (seconds, offline); else pip fetches it
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q",
                    "-w", str(tmp_path), str(source)], check=True, capture_output=True, timeout=300)
    with zipfile.ZipFile(next(tmp_path.glob("clnet-*.whl"))) as wheel:
        shipped = {Path(name).name: name for name in wheel.namelist() if ".dist-info/" in name}
        assert "LICENSE" in shipped and "NOTICE" in shipped, sorted(shipped)
        assert "Copyright (c) 2026 the clnet developers" in wheel.read(shipped["LICENSE"]).decode()
        assert "mnist_5k.npz" in wheel.read(shipped["NOTICE"]).decode()
        # the version setup.cfg reads from clnet/version.py, and the `clnet` command beside the clnet-* ones
        assert f"\nVersion: {__version__}\n" in wheel.read(shipped["METADATA"]).decode()
        assert "clnet = clnet.commands:main" in wheel.read(shipped["entry_points.txt"]).decode()
