"""What every clnet command shares: the device options, the handling of errors, diagnostics and
closed pipes, --version, options of several values.

The commands (clnet/cli.py, clnet/bench.py, clnet/tune.py) are click commands built from these, so
--platform/--device read and behave the same in all of them, and a user mistake exits 2 (usage,
from click) or 1 with a one-line message; --debug shows the traceback.
"""

import contextlib
import functools
import logging
import math
import os
import re
import select
import sys
from typing import Any, Callable, Iterator, List, Optional, Sequence

import click

from .distributed import world
from .errors import ClnetError
from .progress import beside_bars
from .version import __version__

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}
SIGPIPE_STATUS = 141  # 128 + SIGPIPE: what a shell reports for a writer whose reader has gone

version_option = click.version_option(__version__, "--version", "-V", message="clnet %(version)s",
                                      help="Show clnet's version and exit.")


def friendly_errors(command: Callable) -> Callable:
    """What every command does around its work: clnet errors (and any unexpected one) become a
    one-line message and exit status 1, unless --debug (under MPI an error ends every rank); a
    reader that closes the pipe early (`| head`) ends the command quietly; the "clnet" logger's
    diagnostics go to stderr (downloads, resumes and warnings; with --verbose also the device
    chosen, kernel builds and tuning-cache hits; a command's --quiet leaves only warnings);
    --version / -V.

    Args:
        command: the function of a click command; it gains the options --debug, --verbose/-v and
            --version/-V.

    Example:
        @click.command(context_settings=CONTEXT_SETTINGS)
        @friendly_errors
        @device_options
        def hello(platform, device): ...
    """
    @functools.wraps(command)
    def wrapper(*args, debug=False, verbose=False, **kwargs):
        level = logging.DEBUG if verbose else logging.WARNING if kwargs.get("quiet") else logging.INFO
        lead = world().lead  # under MPI, rank 0 prints and informs; the others warn and fail
        level = level if lead else max(level, logging.WARNING)
        try:
            with diagnostics_to_stderr(level), _output_unless(lead):
                return command(*args, **kwargs)
        except click.ClickException:  # usage errors: click prints them and exits 2
            raise
        except (ClnetError, OSError) as exc:
            if isinstance(exc, BrokenPipeError) and _reader_gone(sys.stdout):  # `| head` has read enough
                _silence_stdout()
                sys.exit(SIGPIPE_STATUS)
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
    return option_group(
        click.option("--verbose", "-v", is_flag=True, help="Also show the device chosen, kernel builds and "
                     "tuning-cache hits (on stderr)."),
        click.option("--debug", is_flag=True, help="Show the full traceback on errors."),
        version_option)(wrapper)


@contextlib.contextmanager
def _output_unless(lead: bool) -> Iterator[None]:
    """stdout as it is on rank 0 (`lead`), the null device on the other ranks of an MPI run."""
    if lead:
        yield
        return
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        yield


def _reader_gone(stream: Any) -> bool:
    """Whether `stream` is a pipe whose reader has closed it (its end polls as an error), rather
    than some other pipe of the command (a worker process's) that broke."""
    try:
        poller = select.poll()
        poller.register(stream.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll() (Windows), no file descriptor
        return False


def _silence_stdout() -> None:
    """Point stdout at the null device, so that the interpreter's last flush of what is still
    buffered for a reader that has gone fails no more."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
    except (OSError, ValueError):  # a stdout without a file descriptor (a test's capture)
        pass


class _DiagnosticHandler(logging.StreamHandler):
    """A diagnostic as one line on stderr, beside a progress bar rather than through it: "Warning:
    ..." for a warning or an error, the message alone below."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.levelno < logging.WARNING else f"{record.levelname.capitalize()}: {text}"

    def emit(self, record: logging.LogRecord) -> None:
        with beside_bars(self.stream):
            super().emit(record)


@contextlib.contextmanager
def diagnostics_to_stderr(level: int) -> Iterator[None]:
    """Show the "clnet" logger's records of `level` and above on stderr while the block runs; the
    logger's level and handlers are restored after it (commands may run in one process, as tests
    run them). Library code never configures logging: only the commands do, through this.

    Args:
        level: a logging level, e.g. logging.INFO.

    Example:
        with diagnostics_to_stderr(logging.DEBUG):
            clnet.device()          # "Opened <the device> (tiled kernels)" on stderr
    """
    logger = logging.getLogger("clnet")
    handler = _DiagnosticHandler(sys.stderr)
    saved = logger.level
    logger.setLevel(level)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved)


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
                 "Default: CLNET_PLATFORM, else PYOPENCL_CTX's, else the best device's."),
    click.option("--device", help="Device: index (within the platform if one is given) or name substring. "
                 "Default: CLNET_DEVICE, else PYOPENCL_CTX's, else the best (a GPU before a CPU); under mpirun, "
                 "each rank's by local rank. clnet-train, -eval, -predict and -devices take several, comma-separated, "
                 "or all (of the platforms given), as replicas of the model; so does a comma-separated --platform "
                 "without --device."))


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
