"""What every clnet command shares: the device options, the handling of errors, options of several values.

The commands (clnet/cli.py, clnet/bench.py, clnet/tune.py) are click commands built from these, so
--platform/--device read and behave the same in all of them, and a user mistake exits 2 (usage,
from click) or 1 with a one-line message; --debug shows the traceback.
"""

import functools
import math
import re
import sys
from typing import Any, Callable, List, Optional, Sequence

import click

from .distributed import world
from .errors import ClnetError

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}


def friendly_errors(command: Callable) -> Callable:
    """Turn clnet errors (and any unexpected one) into a message and exit status 1, unless --debug;
    under MPI an error ends every rank.

    Args:
        command: the function of a click command; it gains a --debug flag.

    Example:
        @click.command(context_settings=CONTEXT_SETTINGS)
        @friendly_errors
        @device_options
        def hello(platform, device): ...
    """
    @functools.wraps(command)
    def wrapper(*args, debug=False, **kwargs):
        try:
            return command(*args, **kwargs)
        except click.ClickException:  # usage errors: click prints them and exits 2
            raise
        except (ClnetError, OSError) as exc:
            if debug:
                raise
            click.echo(f"Error: {exc}", err=True)
        except KeyboardInterrupt:
            if debug:
                raise
            click.echo("Interrupted.", err=True)
            world().end(130)
        except Exception as exc:  # a bug: still one line, with the way to see more
            if debug:
                raise
            click.echo(f"Error: {type(exc).__name__}: {exc} (run again with --debug for the traceback)", err=True)
        world().end(1)  # under MPI, every rank ends: the others may be waiting for this one
    return click.option("--debug", is_flag=True, help="Show the full traceback on errors.")(wrapper)


def option_group(*decorators: Callable) -> Callable:
    """A decorator adding several click options at once, in the order given.

    Args:
        decorators: click.option(...) decorators.

    Example:
        verbosity = option_group(click.option("--quiet", is_flag=True), click.option("--log"))
    """
    def decorate(command):
        for option in reversed(decorators):
            command = option(command)
        return command
    return decorate


device_options = option_group(
    click.option("--platform", help="OpenCL platform: index or name substring (pocl, nvidia, intel, ...). "
                 "Default: CLNET_PLATFORM, else the best device's."),
    click.option("--device", help="Device: index (within the platform if one is given) or name substring. "
                 "Default: CLNET_DEVICE, else the best (a GPU before a CPU); under mpirun, each rank's by local rank. "
                 "clnet-train, -eval, -predict and -devices take several, comma-separated, or all (of the "
                 "platforms given), as replicas of the model; so does a comma-separated --platform without --device."))


class FiniteFloatRange(click.FloatRange):
    """click.FloatRange that also refuses nan (which passes every comparison) and infinity."""

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> float:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


class Several(click.ParamType):
    """Any number of values of `item` after one option, as argparse's nargs="*" ("+" with
    at_least=1): `--sizes 128 1024`, `--sizes` (none). Options of this type need a command of class
    SeveralValuesCommand, which hands their values over as one argument; the value is a list.

    Args:
        item: the click type of each value.
        at_least: how many values the option needs when given.

    Example:
        @click.command(cls=SeveralValuesCommand)
        @click.option("--sizes", type=Several(click.IntRange(min=1)), default=[128], metavar="N...")
        def command(sizes): ...
    """
    name = "values"

    def __init__(self, item: click.ParamType, at_least: int = 0):
        self.item, self.at_least = item, at_least

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> List[Any]:
        values = value.split() if isinstance(value, str) else list(value)  # a default is a list already
        if len(values) < self.at_least:
            self.fail(f"expected at least {self.at_least} value{'s' if self.at_least > 1 else ''}", param, ctx)
        return [self.item.convert(v, param, ctx) for v in values]


_NEGATIVE_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$")  # a value, as argparse reads it, not an option


class SeveralValuesCommand(click.Command):
    """A click command whose options of type Several take the values that follow them, up to the
    next option; it also keeps the arguments as given in ctx.meta["argv"], to record the command."""

    def parse_args(self, ctx: click.Context, args: List[str]) -> List[str]:
        ctx.meta["argv"] = list(args)
        return super().parse_args(ctx, _join_values(args, {name for param in self.params
                                                           if isinstance(param.type, Several)
                                                           for name in param.opts}))


def _join_values(args: Sequence[str], names: set) -> List[str]:
    """args with the values following each option of `names` joined into one argument."""
    joined, rest = [], list(args)
    while rest:
        arg = rest.pop(0)
        joined.append(arg)
        if arg == "--":
            return joined + rest
        if arg in names:
            values = []
            while rest and (not rest[0].startswith("-") or _NEGATIVE_NUMBER.match(rest[0])):
                values.append(rest.pop(0))
            joined.append(" ".join(values))
    return joined
