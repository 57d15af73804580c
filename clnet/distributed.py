"""Many processes: the MPI world of a run started by mpirun, mpiexec or srun, and the few collectives
clnet needs (sums, broadcasts, gathers), each bounded by a watchdog.

A plain run never imports MPI: only when a launcher's variables say there are several processes
(`launched`: OMPI_COMM_WORLD_SIZE, PMI_SIZE, PMIX_RANK) is mpi4py imported and COMM_WORLD used; with one
process `world()` is a world of one whose collectives return their input. Every rank runs the same
script: the calls that compute (fit, evaluate, predict, train_on_batch) are collective and must be
made on every rank; only rank 0 prints and writes files.

How a failing rank ends the run, never a hang: an exception that reaches the top of a rank prints
its traceback and aborts every rank (MPI_Abort); a rank that dies (killed, out of memory) is seen
by the launcher, which ends the others; a rank that waits in a collective longer than
CLNET_MPI_TIMEOUT seconds (default 600: longer than any step, compilation or checkpoint a rank may
wait for) says so on stderr and exits, which the launcher also sees.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback
from contextlib import contextmanager

import numpy as np

from .device import alike, device, devices, requested
from .errors import ClnetError

LAUNCHER_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK")
DEFAULT_TIMEOUT = 600.0  # seconds a rank waits in one collective before it ends the run
OUTPUT_GRACE = 0.5  # seconds a failing rank waits for the launcher to pass its message on


def launched() -> bool:
    """Whether a launcher's variables say this process is one of several (no MPI import): Open
    MPI's and MPICH's (or Slurm's PMI) world size, or a PMIx rank with more than one task (Slurm's
    count, or MPI's answer when no count is set)."""
    sizes = [os.environ.get(name) for name in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE")]
    if "PMIX_RANK" in os.environ:
        sizes.append(os.environ.get("SLURM_STEP_NUM_TASKS") or "unknown")
    return any(s and s.strip() != "1" for s in sizes)


class World:
    """This process's place among the ranks of a run, and the collectives over them.

    Args:
        comm: an mpi4py communicator (COMM_WORLD), or None for a run of one process.
        timeout: seconds a collective may wait for the other ranks before the run is ended.

    Example:
        >>> world = clnet.distributed.world()
        >>> world.rank, world.size, world.local_rank
        >>> total = world.sum(np.array([loss_sum, count]))   # the same on every rank
    """

    def __init__(self, comm=None, timeout: float = DEFAULT_TIMEOUT):
        self.comm, self.timeout = comm, timeout
        self.rank, self.size, self.local_rank, self.local_size = 0, 1, 0, 1
        self._waiting = None  # (since, what) while in a collective, read by the watchdog
        if comm is not None:
            from mpi4py import MPI
            self.rank, self.size = comm.Get_rank(), comm.Get_size()
            node = comm.Split_type(MPI.COMM_TYPE_SHARED)  # the ranks of this machine
            self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
            node.Free()
            threading.Thread(target=self._watch, name="clnet-mpi-watchdog", daemon=True).start()

    @property
    def lead(self) -> bool:
        """Whether this is rank 0, the one that prints and writes files."""
        return self.rank == 0

    @contextmanager
    def _collective(self, what):
        self._waiting = (time.monotonic(), what)
        try:
            yield
        finally:
            self._waiting = None

    def _watch(self):
        while True:
            time.sleep(min(1.0, self.timeout / 4))
            waiting = self._waiting
            if waiting and time.monotonic() - waiting[0] > self.timeout:
                print(f"clnet: rank {self.rank} of {self.size} waited {self.timeout:g} s for the other ranks "
                      f"({waiting[1]}): one of them has stopped or hangs, so the run ends here (the last "
                      f"checkpoint stays loadable; CLNET_MPI_TIMEOUT sets the wait)", file=sys.stderr, flush=True)
                os._exit(1)  # the launcher ends the other ranks

    def sum(self, array: np.ndarray, what: str = "a sum") -> np.ndarray:
        """The element-wise sum of `array` (float64 or float32, contiguous) over the ranks, in place."""
        if self.comm is not None:
            from mpi4py import MPI
            with self._collective(what):
                self.comm.Allreduce(MPI.IN_PLACE, array, op=MPI.SUM)
        return array

    def broadcast(self, array: np.ndarray, what: str = "a broadcast") -> np.ndarray:
        """Rank 0's `array` (contiguous) on every rank, in place."""
        if self.comm is not None:
            with self._collective(what):
                self.comm.Bcast(array, root=0)
        return array

    def share(self, value, what: str = "a broadcast"):
        """Rank 0's `value` (any picklable object) on every rank."""
        if self.comm is None:
            return value
        with self._collective(what):
            return self.comm.bcast(value, root=0)

    def gather(self, value, what: str = "a gather") -> list:
        """Every rank's `value` (any picklable object), in rank order, on every rank."""
        if self.comm is None:
            return [value]
        with self._collective(what):
            return self.comm.allgather(value)

    def any(self, flag: bool, what: str = "an agreement") -> bool:
        """Whether `flag` is true on any rank (the same answer everywhere)."""
        return bool(self.sum(np.array([int(bool(flag))], np.int64), what)[0]) if self.comm is not None else flag

    def end(self, code: int) -> None:
        """End this process with exit status `code`; an error (not 0, not an agreed Ctrl-C's 130)
        ends every rank, as the others may be waiting for this one."""
        if self.comm is not None and code not in (0, 130):
            self.abort(code)
        sys.exit(code)

    def abort(self, code: int = 1) -> None:
        """End every rank now (MPI_Abort), after a moment for the launcher to pass on what this
        rank has printed: it drops what it has not read when the ranks are ended."""
        sys.stdout.flush()
        sys.stderr.flush()
        time.sleep(OUTPUT_GRACE)
        self.comm.Abort(code)

    def __repr__(self):
        return f"<clnet World rank {self.rank} of {self.size}, local {self.local_rank} of {self.local_size}>"


_world = None


def world() -> World:
    """This process's World, made on the first call: under a launcher of several processes it
    imports mpi4py and takes COMM_WORLD, and from then on an exception that reaches the top of
    this rank aborts every rank; otherwise a World of one process.

    Raises:
        ClnetError: launched as several processes, but mpi4py is not installed.

    Example:
        >>> if clnet.distributed.world().lead:
        ...     print("only once")
    """
    global _world
    if _world is None:
        comm = None
        if launched():
            try:
                from mpi4py import MPI
            except ImportError:
                raise ClnetError("clnet runs under an MPI launcher (mpirun, mpiexec or srun) but mpi4py is not "
                                 "installed: pip install mpi4py (the mpi extra) and an MPI (pip install mpich, or the "
                                 "system's)") from None
            comm = MPI.COMM_WORLD if MPI.COMM_WORLD.Get_size() > 1 else None
        _world = World(comm, timeout() if comm is not None else DEFAULT_TIMEOUT)
        if comm is not None:
            sys.excepthook = _abort_on_exception
    return _world


init = world  # clnet.distributed.init(): the name an MPI user looks for


def timeout() -> float:
    """The seconds a rank waits in one collective: CLNET_MPI_TIMEOUT, else DEFAULT_TIMEOUT.

    Raises:
        ClnetError: CLNET_MPI_TIMEOUT is not a number of seconds above 0.
    """
    text = os.environ.get("CLNET_MPI_TIMEOUT") or str(DEFAULT_TIMEOUT)
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise ClnetError(f"CLNET_MPI_TIMEOUT must be a number of seconds above 0 (default {DEFAULT_TIMEOUT:g}), "
                         f"got {text!r}")
    return seconds


def _abort_on_exception(kind, value, trace):
    """An exception that ends one rank ends every rank (the others would wait for it); but Ctrl-C,
    which a fit stops on at the same step on every rank, ends each rank as it would end alone."""
    if issubclass(kind, KeyboardInterrupt):
        return sys.__excepthook__(kind, value, trace)
    traceback.print_exception(kind, value, trace)
    print(f"clnet: rank {_world.rank} of {_world.size} failed; ending every rank", file=sys.stderr, flush=True)
    _world.abort(1)


def local_devices(platform: str | None = None, device_name: str | None = None) -> list:
    """This rank's devices: those `platform` and `device_name` name (as `clnet.devices`), or, when
    neither they nor CLNET_DEVICE (nor PYOPENCL_CTX) name a device, under MPI the one of this
    machine's ranks by local rank among the devices like the best one (every GPU of its platform,
    in turn); with one process, the best device.

    Example:
        >>> model = clnet.models.resnet18(device=clnet.distributed.local_devices())   # under mpirun
    """
    here = world()
    infos = in_turn(platform, device_name) if here.size > 1 else None
    if infos is None:
        return devices(platform, device_name)  # the variables again there, named in its errors
    info = infos[here.local_rank % len(infos)]
    return [device(info.platform_index, info.device_index)]


def in_turn(platform: str | None = None, device_name: str | None = None) -> list | None:
    """The devices (`DeviceInfo`) a machine's ranks take in turn by local rank: those like the best
    (of the platform the arguments, else the variables, name); None where the arguments or the
    variables name a device (CLNET_DEVICE, PYOPENCL_CTX), which every rank then takes.

    Example:
        >>> [d.label for d in in_turn("nvidia")]   # every NVIDIA GPU, one per rank
    """
    named_platform, named_device, _ = requested(platform, device_name)  # the arguments, else the variables
    return None if named_device is not None else alike(named_platform)
