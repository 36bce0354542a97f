"""
Tiny MPI helpers, in the spirit of Spinning Up's ``mpi_tools.py``: the world communicator, this process' place in
the job, the launcher's environment, and one collective per verb on flat numpy buffers.

Every helper is a free no-op with one process. MPI is *not* initialised when this module is imported:
``mpi4py.MPI`` is imported (which calls ``MPI_Init``) only on first use, and only if the process was started
by an MPI launcher (``mpirun``/``mpiexec``/``srun``) or the user already imported ``mpi4py.MPI``. A plain
``python train.py`` therefore never touches MPI, which keeps single-process runs free of MPI's start-up cost and
lets ``ParallelDQN.load`` work anywhere. Under a launcher, importing the package initialises MPI
(:func:`init_if_launched`), and once MPI is initialised the launcher's variables leave ``os.environ``
(:func:`hide_launcher_env`), so that env workers started by anyone come up outside the job.

Collectives here are only called from code that every rank runs the same number of times, in the same order
(``ParallelDQN``'s constructor, ``learn`` and its rollouts and gradient steps); never from code one rank may run
alone (``load``, evaluation, saving, device choice). Each is watched (:mod:`~sb3_parallel_dqn.distributed.watchdog`):
when some rank never arrives, the job ends with a message that names the collective (its ``what``) instead of
hanging.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time
import traceback
from functools import cache
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from sb3_parallel_dqn.distributed import watchdog

if TYPE_CHECKING:
    from mpi4py import MPI

# Variables through which MPI launchers hand a process its place in the job (MPICH/Hydra, Intel MPI, Open MPI,
# PMIx, MVAPICH, Slurm's PMI). Their presence means "started by a launcher"; a child process that inherits them
# and imports mpi4py tries to join the parent's job and fails in MPI_Init (`PMI_Init returned -1`).
_LAUNCHER_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MV2_COMM_WORLD_SIZE", "MPI_LOCALNRANKS")
_LAUNCHER_VAR_PREFIXES = ("PMI_", "PMIX_", "HYDRA_", "HYDI_", "OMPI_", "PRTE_", "MPI_LOCALNRANKS", "MPI_LOCALRANKID", "MV2_")
# Where launchers publish a process' rank among the processes of its host, most specific first. SLURM_LOCALID only
# counts when srun itself started this process as a task (see local_rank()).
_LOCAL_RANK_VARS = ("MPI_LOCALRANKID", "OMPI_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID")

# The launcher's variables as this process received them. hide_launcher_env() removes them from os.environ once MPI
# is initialised (so that env workers started afterwards never see them); everything here reads this copy instead.
_LAUNCHER_ENV: dict[str, str] = {
    key: value
    for key, value in os.environ.items()
    if key.startswith(_LAUNCHER_VAR_PREFIXES) or key in _LOCAL_RANK_VARS or key == "SLURM_PROCID"
}


def launched_by_mpi() -> bool:
    """
    Whether this process was started by an MPI launcher (without initialising MPI to find out).

    A ``multiprocessing`` child (an env worker) never counts, even if it inherited the launcher's variables: it must
    not try to join the job.
    """
    return not _in_child_process() and any(var in _LAUNCHER_ENV for var in _LAUNCHER_SIZE_VARS)


def _in_child_process() -> bool:
    # parent_process() is only set once a child runs its target; while a spawn/forkserver child re-imports __main__,
    # its process name already says what it is.
    return mp.parent_process() is not None or mp.current_process().name != "MainProcess"


def launcher_world_size() -> int | None:
    """
    The job's size as the MPI launcher announced it in the environment (``PMI_SIZE``, ``OMPI_COMM_WORLD_SIZE``...),
    without initialising MPI: lets a script check its input before any rank starts MPI. None when unknown.
    """
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        value = _LAUNCHER_ENV.get(var, "")
        if value.isdigit():
            return int(value)
    return None if launched_by_mpi() else 1


def launcher_rank() -> int | None:
    """This process' rank as the MPI launcher announced it (``PMI_RANK``...), without initialising MPI; None if unknown."""
    for var in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK"):
        value = _LAUNCHER_ENV.get(var, "")
        if value.isdigit():
            return int(value)
    return None if launched_by_mpi() else 0


def hide_launcher_env() -> None:
    """
    Remove the MPI launcher's variables from ``os.environ`` for good, so that every process started from now on
    (``SubprocVecEnv`` workers built by anyone, with any start method) comes up outside the job.

    A ``spawn`` or ``forkserver`` child re-imports ``__main__``; if the script does ``from mpi4py import MPI`` at top
    level, the child calls ``MPI_Init`` and, with the launcher's variables inherited, tries to join the parent's job
    and crashes (MPICH: ``PMI_Init returned -1``). Without them it initialises as a harmless singleton (world size 1).
    Only call it once this process' MPI is initialised: MPI reads them in ``MPI_Init``. This module keeps its own copy.
    """
    for key in list(os.environ):
        if key.startswith(_LAUNCHER_VAR_PREFIXES):
            del os.environ[key]


def init_if_launched() -> None:
    """
    Under an MPI launcher, initialise MPI now (:func:`comm`), which also takes the launcher's variables out of the
    environment, so that every process started afterwards, by anyone, comes up outside the job. The package calls
    this when it is imported: then a script's own ``SubprocVecEnv``, built after ``import sb3_parallel_dqn``, works
    with every start method, in whichever order the script imports mpi4py and this package. Without a launcher (and
    in env workers) it does nothing: a plain process never touches MPI.
    """
    if launched_by_mpi():
        comm()


@cache
def comm() -> MPI.Intracomm | None:
    """
    The world communicator, or ``None`` when this process does not run under MPI.

    The first call under a launcher initialises MPI, removes the launcher's variables from the environment (see
    :func:`hide_launcher_env`) and installs :func:`abort_on_uncaught_exception`, so that an exception on one rank
    ends the whole job instead of leaving the other ranks blocked in a collective.
    """
    if not launched_by_mpi() and "mpi4py.MPI" not in sys.modules:
        return None
    from mpi4py import MPI

    if launched_by_mpi():
        hide_launcher_env()
    world = MPI.COMM_WORLD
    if world.Get_size() > 1:
        abort_on_uncaught_exception()
        watchdog.start(world)
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


_local_rank: int | None = None


def local_rank() -> int | None:
    """
    Rank among the processes on this host (used to pick a GPU), without any collective: as the launcher published it
    (MPICH/Hydra and Intel MPI ``MPI_LOCALRANKID``, Open MPI ``OMPI_COMM_WORLD_LOCAL_RANK``, MVAPICH, Slurm's
    ``SLURM_LOCALID`` for tasks that ``srun`` started), else as :func:`compute_local_rank` found it earlier; None when
    neither knows. 0 without MPI.

    It never communicates, because it runs where one rank may be alone (``ParallelDQN.load`` on rank 0 to evaluate):
    a collective there would wait forever for the other ranks.
    """
    if world_size() == 1:
        return 0
    if _local_rank is not None:
        return _local_rank
    for var in _LOCAL_RANK_VARS:
        value = _LAUNCHER_ENV.get(var, "")
        if var == "SLURM_LOCALID" and _LAUNCHER_ENV.get("SLURM_PROCID") != str(rank()):
            continue  # mpirun inside an sbatch script: the batch step's id, not this rank's
        if value.isdigit():
            return int(value)
    return None


def compute_local_rank() -> int:
    """
    :func:`local_rank`, computed by a shared-memory split of the world when the launcher did not publish it, and
    cached. **Collective** when it has to compute: call it only where every rank runs (``ParallelDQN``'s constructor).
    """
    global _local_rank
    known = local_rank()
    if known is not None:
        return known
    from mpi4py import MPI

    world = comm()
    assert world is not None
    node = world.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        _local_rank = node.Get_rank()
    finally:
        node.Free()
    return _local_rank


Group = Any  # an mpi4py communicator (MPI.Intracomm); None stands for the world communicator


def _group(group: Group | None) -> Any:
    """The communicator to use, or None when it has one process (every helper is then a free no-op)."""
    world = comm() if group is None else group
    return None if world is None or world.Get_size() == 1 else world


def allreduce_sum_(array: np.ndarray, group: Group | None = None, what: str = "Allreduce") -> np.ndarray:
    """Sum a contiguous numpy array over the ranks of ``group`` (default: all), in place (one ``Allreduce``)."""
    return _allreduce_(array, "SUM", group, what)


def allreduce_max_(array: np.ndarray, group: Group | None = None, what: str = "Allreduce (max)") -> np.ndarray:
    """Element-wise maximum of a contiguous numpy array over the ranks of ``group``, in place (one ``Allreduce``)."""
    return _allreduce_(array, "MAX", group, what)


def _allreduce_(array: np.ndarray, op: str, group: Group | None, what: str) -> np.ndarray:
    world = _group(group)
    if world is not None:
        from mpi4py import MPI

        watchdog.enter(what, world)
        try:
            world.Allreduce(MPI.IN_PLACE, array, op=getattr(MPI, op))
        finally:
            watchdog.leave()
    return array


def reduce_scatter_sum_(array: np.ndarray, group: Group | None = None, what: str = "Reduce_scatter") -> np.ndarray:
    """
    Sum the flat ``array`` over the ranks of ``group`` in place (one ``Reduce_scatter_block``): rank k receives the
    k-th of as many equal blocks, at the start of ``array``, and gets that view back. The rest of ``array`` is left
    undefined. (No copy: the input is the receive buffer, ``MPI_IN_PLACE``.)
    """
    world = _group(group)
    if world is None:
        return array
    from mpi4py import MPI

    watchdog.enter(what, world)
    try:
        world.Reduce_scatter_block(MPI.IN_PLACE, array)
    finally:
        watchdog.leave()
    return array[: array.size // world.Get_size()]


def allgather_(array: np.ndarray, group: Group | None = None, what: str = "Allgather") -> np.ndarray:
    """
    Fill the flat ``array`` with every rank's block, in rank order, in place (one ``Allgather``, ``MPI_IN_PLACE``):
    rank k's block is already in the k-th of as many equal parts. Returns ``array``.
    """
    world = _group(group)
    if world is not None:
        from mpi4py import MPI

        watchdog.enter(what, world)
        try:
            world.Allgather(MPI.IN_PLACE, array)
        finally:
            watchdog.leave()
    return array


def time_allreduce(array: np.ndarray, repetitions: int = 2_000) -> float:
    """Mean seconds of one in-place sum ``Allreduce`` of ``array`` back to back, after a warm-up (benchmarks only)."""
    for _ in range(50):
        allreduce_sum_(array)
    world = comm()
    if world is not None:
        world.Barrier()
    start = time.perf_counter()
    for _ in range(repetitions):
        allreduce_sum_(array)
    return (time.perf_counter() - start) / repetitions


def allgather(values: np.ndarray, group: Group | None = None, what: str = "Allgather") -> np.ndarray:
    """Stack each rank's 1-D array of the same shape and dtype: returns shape ``(group size, *values.shape)``."""
    values = np.ascontiguousarray(values)
    world = _group(group)
    if world is None:
        return values[None].copy()
    out = np.empty((world.Get_size(), *values.shape), dtype=values.dtype)
    watchdog.enter(what, world)
    try:
        world.Allgather(values, out)
    finally:
        watchdog.leave()
    return out


def allgather_object(obj: Any, group: Group | None = None, what: str = "allgather") -> list[Any]:
    """Every rank's small picklable object, in rank order (set-up only: never on a hot path)."""
    world = _group(group)
    if world is None:
        return [obj]
    watchdog.enter(what, world)
    try:
        return world.allgather(obj)
    finally:
        watchdog.leave()


def broadcast_(array: np.ndarray, root: int = 0, group: Group | None = None, what: str = "Bcast") -> np.ndarray:
    """Overwrite a contiguous numpy array with ``root``'s copy, in place; returns it."""
    world = _group(group)
    if world is not None:
        watchdog.enter(what, world)
        try:
            world.Bcast(array, root=root)
        finally:
            watchdog.leave()
    return array


def broadcast_object(obj: Any, root: int = 0, group: Group | None = None, what: str = "bcast") -> Any:
    """Pickle-broadcast a small Python object from ``root`` (set-up only: never on a hot path)."""
    world = _group(group)
    if world is None:
        return obj
    watchdog.enter(what, world)
    try:
        return world.bcast(obj, root=root)
    finally:
        watchdog.leave()


def split(color: int, key: int, what: str = "Split") -> Group | None:
    """A sub-communicator of the ranks with the same ``color``, ordered by ``key`` (``Split``: collective)."""
    world = comm()
    if world is None:
        return None
    watchdog.enter(what, world)
    try:
        return world.Split(color, key)
    finally:
        watchdog.leave()


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


_written: dict[str, int] = {}  # rank 0: how many times it wrote each file that several ranks may ask for
_asked: dict[str, int] = {}  # other ranks: how many times they asked for each


def announce_written(key: str) -> None:
    """
    Rank 0 has finished writing the file ``key`` (a model ``save``): tell the other ranks, without waiting for them
    (rank 0 may be the only rank that saves). Nothing with one process.
    """
    _written[key] = _written.get(key, 0) + 1
    watchdog.announce_save(key, _written[key])


def wait_until_all_written(key: str, what: str) -> None:
    """
    Every rank wrote its own file of ``key`` (a replay-buffer shard): tell the others, and return once each of them
    has written theirs as often, so that every shard of a save made "on every rank" is complete when it returns and
    any rank may load the set next. Call it on every rank (watched as a collective); nothing with one process.
    """
    _written[key] = _written.get(key, 0) + 1
    watchdog.announce_save(key, _written[key])
    watchdog.wait_for_save(key, _written[key], what, ranks=range(world_size()))


def wait_until_written(key: str, what: str) -> None:
    """
    On a rank other than 0: return once rank 0 has written ``key`` as often as this rank has asked for it
    (:func:`announce_written`), so that a file saved "on every rank" is complete on every rank when ``save`` returns.
    Watched like a collective with rank 0 (see :mod:`~sb3_parallel_dqn.distributed.watchdog`). If rank 0 saved
    there alone before, the file it wrote then is already complete, and this returns at once.
    """
    _asked[key] = _asked.get(key, 0) + 1
    watchdog.wait_for_save(key, _asked[key], what)
