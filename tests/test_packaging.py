"""What a wheel ships: every package of clnet is listed in setup.cfg (a missing one installs a clnet
that cannot be imported, which only a wheel install would show), and the kernel sources go with it."""

import configparser
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_is_in_setup_cfg():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    listed = set(config["options"]["packages"].split())
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "clnet").rglob("__init__.py")}
    assert found - listed == set(), f"add {sorted(found - listed)} to setup.cfg's packages"
    assert "clnet.kernels_cl" in listed and config["options.package_data"]["clnet.kernels_cl"] == "*.cl, *.h"
