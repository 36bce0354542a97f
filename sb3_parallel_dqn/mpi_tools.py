"""
Tiny MPI helpers, in the spirit of Spinning Up's ``mpi_tools.py``.

Every helper is a free no-op with one process. MPI is *not* initialised when this module is imported:
``mpi4py.MPI`` is imported (which calls ``MPI_Init``) only on first use, and only if the process was started
by an MPI launcher (``mpirun``/``mpiexec``/``srun``) or the user already imported ``mpi4py.MPI``. A plain
``python train.py`` therefore never touches MPI, which keeps single-process runs free of MPI's start-up cost and
lets ``ParallelDQN.load`` work anywhere.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback
from collections.abc import Iterator
from functools import cache
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from mpi4py import MPI

# Variables through which MPI launchers hand a process its place in the job (MPICH/Hydra, Intel MPI, Open MPI,
# PMIx, MVAPICH, Slurm's PMI). Their presence means "started by a launcher"; a child process that inherits them
# and imports mpi4py tries to join the parent's job and fails in MPI_Init (`PMI_Init returned -1`).
_LAUNCHER_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MV2_COMM_WORLD_SIZE", "MPI_LOCALNRANKS")
_LAUNCHER_VAR_PREFIXES = ("PMI_", "PMIX_", "HYDRA_", "HYDI_", "OMPI_", "PRTE_", "MPI_LOCALNRANKS", "MPI_LOCALRANKID", "MV2_")


def launched_by_mpi() -> bool:
    """Whether this process was started by an MPI launcher (without initialising MPI to find out)."""
    return any(var in os.environ for var in _LAUNCHER_SIZE_VARS)


def launcher_world_size() -> int | None:
    """
    The job's size as the MPI launcher announced it in the environment (``PMI_SIZE``, ``OMPI_COMM_WORLD_SIZE``...),
    without initialising MPI: lets a script check its input before any rank starts MPI. None when unknown.
    """
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        value = os.environ.get(var, "")
        if value.isdigit():
            return int(value)
    return None if launched_by_mpi() else 1


def launcher_rank() -> int | None:
    """This process' rank as the MPI launcher announced it (``PMI_RANK``...), without initialising MPI; None if unknown."""
    for var in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK"):
        value = os.environ.get(var, "")
        if value.isdigit():
            return int(value)
    return None if launched_by_mpi() else 0


@cache
def comm() -> MPI.Intracomm | None:
    """
    The world communicator, or ``None`` when this process does not run under MPI.

    The first call under a launcher initialises MPI and installs :func:`abort_on_uncaught_exception`, so that an
    exception on one rank ends the whole job instead of leaving the other ranks blocked in a collective.
    """
    if not launched_by_mpi() and "mpi4py.MPI" not in sys.modules:
        return None
    from mpi4py import MPI

    world = MPI.COMM_WORLD
    if world.Get_size() > 1:
        abort_on_uncaught_exception()
    return world


def rank() -> int:
    """Rank of this process in the world communicator (0 without MPI)."""
    world = comm()
    return 0 if world is None else world.Get_rank()


def world_size() -> int:
    """Number of processes in the world communicator (1 without MPI)."""
    world = comm()
    return 1 if world is None else world.Get_size()


def is_root() -> bool:
    """Whether this process is rank 0, the one that writes logs, stdout and model files."""
    return rank() == 0


@cache
def local_rank() -> int:
    """Rank among the processes on this host (from a shared-memory split of the world), used to pick a GPU."""
    world = comm()
    if world is None or world.Get_size() == 1:
        return 0
    from mpi4py import MPI

    node = world.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return node.Get_rank()
    finally:
        node.Free()


def allreduce_sum_(array: np.ndarray) -> np.ndarray:
    """Sum a contiguous numpy array over all ranks, in place (one ``Allreduce``); returns it."""
    return _allreduce_(array, "SUM")


def allreduce_max_(array: np.ndarray) -> np.ndarray:
    """Element-wise maximum of a contiguous numpy array over all ranks, in place (one ``Allreduce``); returns it."""
    return _allreduce_(array, "MAX")


def _allreduce_(array: np.ndarray, op: str) -> np.ndarray:
    world = comm()
    if world is not None and world.Get_size() > 1:
        from mpi4py import MPI

        world.Allreduce(MPI.IN_PLACE, array, op=getattr(MPI, op))
    return array


def allgather(values: np.ndarray) -> np.ndarray:
    """Stack each rank's 1-D array of the same shape and dtype: returns shape ``(world_size, *values.shape)``."""
    values = np.ascontiguousarray(values)
    world = comm()
    if world is None or world.Get_size() == 1:
        return values[None].copy()
    out = np.empty((world.Get_size(), *values.shape), dtype=values.dtype)
    world.Allgather(values, out)
    return out


def broadcast_(array: np.ndarray, root: int = 0) -> np.ndarray:
    """Overwrite a contiguous numpy array with ``root``'s copy, in place; returns it."""
    world = comm()
    if world is not None and world.Get_size() > 1:
        world.Bcast(array, root=root)
    return array


def broadcast_object(obj: Any, root: int = 0) -> Any:
    """Pickle-broadcast a small Python object from ``root`` (set-up only: never on a hot path)."""
    world = comm()
    if world is None or world.Get_size() == 1:
        return obj
    return world.bcast(obj, root=root)


@contextlib.contextmanager
def launcher_env_removed() -> Iterator[None]:
    """
    Temporarily remove the MPI launcher's variables from ``os.environ``.

    Start env worker processes inside this block. A ``spawn`` or ``forkserver`` child re-imports ``__main__``; if the
    user's script does ``from mpi4py import MPI`` at top level, the child calls ``MPI_Init`` and, with the launcher's
    variables inherited, tries to join the parent's job and crashes (MPICH: ``PMI_Init returned -1``). Without them
    it initialises as a harmless singleton (world size 1) instead. ``fork`` children are unaffected either way.
    """
    removed = {key: os.environ.pop(key) for key in list(os.environ) if key.startswith(_LAUNCHER_VAR_PREFIXES)}
    try:
        yield
    finally:
        os.environ.update(removed)


_abort_hook_installed = False


# Seconds between printing a failing rank's traceback and aborting the job (see abort_on_uncaught_exception).
_ABORT_GRACE_S = 0.5


def abort_on_uncaught_exception() -> None:
    """
    Make an uncaught exception on any rank abort the whole MPI job (as ``python -m mpi4py`` does).

    Without this, the failing rank waits in ``MPI_Finalize`` while the others wait in their next collective:
    the job hangs forever. The traceback is printed first, then ``MPI_Abort`` ends every rank.
    """
    global _abort_hook_installed
    if _abort_hook_installed:
        return
    _abort_hook_installed = True

    def _hook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        if issubclass(exc_type, KeyboardInterrupt):
            sys.stderr.write(f"[rank {rank()}] interrupted, aborting the MPI job\n")
        else:
            sys.stderr.write(f"[rank {rank()}] uncaught exception, aborting the MPI job:\n")
            traceback.print_exception(exc_type, exc, tb)
        sys.stderr.flush()
        sys.stdout.flush()
        # MPI_Abort makes the launcher kill every process at once, its output forwarders included: give them a moment
        # to pass on what this rank just wrote (the traceback, and the last lines of stdout), or it can be lost.
        time.sleep(_ABORT_GRACE_S)
        world = comm()
        if world is not None:
            world.Abort(1)

    sys.excepthook = _hook
