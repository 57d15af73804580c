"""The `clnet` command: one group over the clnet-* commands (`clnet train` is `clnet-train`, ...).

The subcommands are the very click commands of cli.py, bench.py and tune.py; the group only names
them, and imports clnet-bench's module when that command is asked for.
"""

import click

from . import cli, tune
from .cli_options import CONTEXT_SETTINGS, version_option

# name in the group: the command (bench: loaded by CommandGroup.get_command)
COMMANDS = {"train": cli.train, "eval": cli.evaluate, "predict": cli.predict, "export": cli.export,
            "devices": cli.devices, "pack": cli.pack, "tune": tune.main}


class CommandGroup(click.Group):
    """The clnet-* commands in the order a user meets them, clnet-bench imported when asked for."""

    def list_commands(self, ctx: click.Context) -> list:
        return [*COMMANDS, "bench"]

    def get_command(self, ctx: click.Context, name: str):
        if name == "bench":
            from . import bench
            return bench.main
        return COMMANDS.get(name)


@click.group(cls=CommandGroup, context_settings=CONTEXT_SETTINGS, epilog="""\b
Examples:
  clnet devices
  clnet train --model mlp --epochs 5 --save mlp.clnet
  clnet predict mlp.clnet digit.png
  python -m clnet eval mlp.clnet --json""")
@version_option
def main():
    """Train and run image-classification networks with OpenCL kernels, on any OpenCL device.

    Each command is also its own program: `clnet train` is `clnet-train`; `clnet COMMAND --help`
    tells more."""
