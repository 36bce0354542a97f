"""
A ``SubprocVecEnv`` that says which env worker failed, and how, instead of a bare pipe error.

When one of SB3's env worker processes dies (a signal, a segfault in the env, ``os._exit``) or raises inside the
env, the parent only sees its end of the pipe break: an ``EOFError``, ``BrokenPipeError`` or
``ConnectionResetError`` from deep inside ``step_wait``, which names neither the env nor, under MPI, the rank.
:class:`ParallelSubprocVecEnv` turns every such failure into an :class:`EnvWorkerError` that names the worker, its
rank, its global env index and pid, and says how it ended (the signal, the exit code, or the worker's traceback).
Under ``mpirun`` the error propagates out of ``learn()`` like any other, so
:func:`sb3_parallel_dqn.distributed.comm.abort_on_uncaught_exception` ends the whole job.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from types import FrameType
from typing import Any

import gymnasium as gym
from stable_baselines3.common.vec_env import SubprocVecEnv

from sb3_parallel_dqn import compat
from sb3_parallel_dqn.distributed import comm

# How long to wait for a worker whose pipe broke to finish dying: the pipe breaks as the kernel tears the process
# down, a moment before its exit code can be read.
_EXIT_WAIT_S = 5.0
# After a failure, how long close() waits for each remaining worker's reply and exit before terminating it.
_CLOSE_WAIT_S = 10.0
# A traceback travels through the pipe in one message; a bounded one can never fill the pipe and block the worker.
_MAX_TRACEBACK_CHARS = 20_000


# What to do when an env worker dies while starting under mpirun: the one case the package cannot prevent.
MPI_INIT_HINT = (
    "If the worker's output says 'PMI_Init returned -1' (or another MPI_Init failure), it re-imported a script that "
    "imports mpi4py and tried to join this MPI job, because it inherited the launcher's variables (PMI_*, OMPI_*...): "
    "import sb3_parallel_dqn before building any SubprocVecEnv (it removes them once MPI is initialised), or use "
    "start_method='fork'"
)


class EnvWorkerError(RuntimeError):
    """
    An env worker process of a :class:`ParallelSubprocVecEnv` died or raised an exception.

    :param message: the full message (see :class:`ParallelSubprocVecEnv` for its formats)
    :param env_index: index of the failed env in this process's VecEnv
    :param rank: MPI rank of the process that owns the VecEnv (0 without MPI)
    :param global_index: the env's index in the whole job, ``rank * n_envs + env_index`` (its seed offset)
    :param pid: process id of the worker
    :param exitcode: the worker's exit code, negative for a signal (``multiprocessing`` convention); None when it
        raised an exception or had not exited yet
    :param worker_traceback: the traceback formatted in the worker, when it raised an exception
    """

    def __init__(
        self,
        message: str,
        env_index: int,
        rank: int,
        global_index: int,
        pid: int | None,
        exitcode: int | None = None,
        worker_traceback: str | None = None,
    ) -> None:
        super().__init__(message)
        self.env_index = env_index
        self.rank = rank
        self.global_index = global_index
        self.pid = pid
        self.exitcode = exitcode
        self.worker_traceback = worker_traceback

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions pickle as ``cls(*args)``; keep every field, not only the message.
        return (
            type(self),
            (self.args[0], self.env_index, self.rank, self.global_index, self.pid, self.exitcode, self.worker_traceback),
        )


@dataclass(frozen=True)
class _WorkerFailure:
    """The last message of a worker whose env raised: never a reply that SB3's protocol can produce."""

    traceback: str


def _ignore_signal(signum: int, frame: FrameType | None) -> None:
    pass


def _worker(remote: Connection, parent_remote: Connection, env_fn_wrapper: Any) -> None:
    """
    SB3's worker loop, plus a last message with the traceback when the env raises.

    Module-level so that ``forkserver`` and ``spawn`` can import it in the child.
    """
    # A Ctrl-C reaches the whole process group. SB3's workers exit on it at once, so a parent that stops
    # gracefully at the end of its rollout (sb3_parallel_dqn.interrupt) would find its envs gone. The parent
    # decides when its workers stop: it closes them, or they exit when it dies (EOF on the pipe, or SIGTERM from
    # multiprocessing for these daemon processes). A handler, not SIG_IGN: SIG_IGN would be inherited through exec
    # by programs the env starts (a simulator), which should still stop on Ctrl-C.
    signal.signal(signal.SIGINT, _ignore_signal)
    try:
        compat.subproc_worker()(remote, parent_remote, env_fn_wrapper)
    except Exception:
        try:
            remote.send(_WorkerFailure(traceback.format_exc()[-_MAX_TRACEBACK_CHARS:]))
        except OSError:
            pass  # the parent is gone: nobody left to tell
        # Exit code 1, as SB3's worker does on an exception, but without printing the traceback: the parent raises it.
        raise SystemExit(1) from None


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            return f"killed by signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exited with code {exitcode}"


class _WorkerConnection:
    """
    The parent's end of one worker's pipe, as SB3's ``SubprocVecEnv`` uses it (``send``/``recv``), turning a lost
    or failed worker into an :class:`EnvWorkerError`. Wrapping the connection, rather than overriding each method,
    covers every method of ``SubprocVecEnv`` (step, reset, env_method, get_attr, render...) with SB3's code as is.
    """

    def __init__(self, connection: Connection, vec_env: ParallelSubprocVecEnv, index: int) -> None:
        self.connection = connection
        self.vec_env = vec_env
        self.index = index
        # Replies still owed by the worker, so that close() waits for exactly those (SB3's ``waiting`` flag cannot
        # tell, after a failure part-way through step_wait, which replies were already read).
        self.pending = 0

    def send(self, obj: Any) -> None:
        self.vec_env._check_usable()
        try:
            self.connection.send(obj)
        except OSError as error:  # BrokenPipeError, ConnectionResetError
            # A worker that raised (e.g. in its env's constructor, before reading any command) sent its traceback
            # before exiting: it may still wait in the pipe, and says more than the exit code.
            worker_traceback = self.failure_after_close()
            if worker_traceback is not None:
                raise self.vec_env._worker_raised(self.index, worker_traceback) from error
            raise self.vec_env._worker_lost(self.index, error) from error
        self.pending += 1

    def recv(self) -> Any:
        self.vec_env._check_usable()
        try:
            message = self.connection.recv()
        except (EOFError, OSError) as error:
            raise self.vec_env._worker_lost(self.index, error) from error
        self.pending -= 1
        if isinstance(message, _WorkerFailure):
            raise self.vec_env._worker_raised(self.index, message.traceback)
        return message

    def shut_down(self, timeout: float | None) -> None:
        """Read the replies still owed (within ``timeout`` each) and ask the worker to stop; never raises."""
        try:
            while self.pending > 0:
                if not self.connection.poll(timeout):
                    return  # stuck in the env: close() terminates it
                self.connection.recv()
                self.pending -= 1
            self.connection.send(("close", None))
        except (EOFError, OSError):
            pass  # the worker is gone already

    def failure_after_close(self) -> str | None:
        """The traceback, if the worker's ``env.close()`` raised (call after the worker exited); never raises."""
        try:
            if self.connection.poll(0):
                message = self.connection.recv()
                if isinstance(message, _WorkerFailure):
                    return message.traceback
        except (EOFError, OSError):
            pass
        return None

    def close(self) -> None:
        self.connection.close()


class ParallelSubprocVecEnv(SubprocVecEnv):
    """
    SB3's ``SubprocVecEnv`` (same protocol, start methods and behaviour while the workers are healthy) that raises
    an :class:`EnvWorkerError` naming the failed worker instead of a bare ``EOFError``/``BrokenPipeError``.
    ``make_parallel_vec_env`` builds it wherever SB3 would use a ``SubprocVecEnv``.

    The message says what happened to the worker:

    - ``env worker 1 of rank 0 (global env index 1, pid 1234) died: killed by signal SIGKILL``
      (or ``exited with code 3``); other workers found dead at the same time are listed after a ``;``. The
      exception is chained from the original pipe error.
    - ``env worker 1 of rank 0 (global env index 1, pid 1234) raised an exception:`` followed by the worker's
      traceback, when the env (its constructor, ``step``, ``reset``, a method called through ``env_method``...)
      raised. The worker exits with code 1 without printing it.

    After a failure the VecEnv cannot be used any more: every later call raises the same error. ``close()`` then
    never raises and never hangs: it collects the surviving workers (terminating any that do not stop within a few
    seconds). An exception in an env's own ``close()`` becomes a warning with its traceback. Workers ignore Ctrl-C
    (SIGINT; see :func:`_worker`).

    :param env_fns: Environments to run in subprocesses
    :param start_method: method used to start the subprocesses (``fork``, ``forkserver`` or ``spawn``); None picks
        ``forkserver`` where available, else ``spawn``, as SB3 does
    :param first_global_index: the index in the whole job of the first env, for the messages
        (``make_parallel_vec_env`` passes it; None: this rank's as one replica of ``len(env_fns)`` envs)
    """

    remotes: tuple[_WorkerConnection, ...]

    def __init__(
        self, env_fns: list[Callable[[], gym.Env]], start_method: str | None = None, first_global_index: int | None = None
    ) -> None:
        # SB3 2.9's SubprocVecEnv.__init__ with this module's worker and wrapped connections; keep it diffable.
        # (It cannot be reused through super(): it looks up its own module's _worker.)
        self.waiting = False
        self.closed = False
        self._starting = True
        self._failure: EnvWorkerError | None = None
        # Before starting any worker: under a launcher this initialises MPI, which takes the launcher's variables out
        # of the environment that the workers inherit.
        self.rank = comm.rank()
        self.first_global_index = self.rank * len(env_fns) if first_global_index is None else first_global_index

        if start_method is None:
            # Fork is not a thread safe method (see issue #217)
            # but is more user friendly (does not require to wrap the code in
            # a `if __name__ == "__main__":`)
            forkserver_available = "forkserver" in mp.get_all_start_methods()
            start_method = "forkserver" if forkserver_available else "spawn"
        ctx = mp.get_context(start_method)

        # Unlike SB3, which makes all the pipes first, make each pipe just before its worker starts. With ``fork``
        # every worker inherits the file descriptors open in the parent, and a worker end held open by a sibling
        # means the parent never sees EOF when that pipe's own worker dies: it waits forever in recv().
        remotes, work_remotes = [], []
        self.processes = []
        for env_fn in env_fns:
            remote, work_remote = ctx.Pipe()
            args = (work_remote, remote, compat.cloudpickle_wrapper(env_fn))
            # daemon=True: if the main process crashes, we should not cause things to hang
            process = ctx.Process(target=_worker, args=args, daemon=True)  # type: ignore[attr-defined]
            process.start()
            self.processes.append(process)
            work_remote.close()
            remotes.append(remote)
            work_remotes.append(work_remote)
        self.work_remotes = tuple(work_remotes)
        self.remotes = tuple(_WorkerConnection(remote, self, index) for index, remote in enumerate(remotes))

        try:
            self.remotes[0].send(("get_spaces", None))
            observation_space, action_space = self.remotes[0].recv()
            # (VecEnv.__init__ asks every worker for its render mode: an env that failed to build is reported here.)
            super(SubprocVecEnv, self).__init__(len(env_fns), observation_space, action_space)
            self._starting = False
        except EnvWorkerError:
            self.close()  # the caller never gets this object, so nobody else could stop the other workers
            raise

    def close(self) -> None:
        if self.closed:
            return
        # SB3 waits for a reply from every worker when ``waiting`` and then joins each one, without limits. After a
        # failure that could hang: a dead worker never answers, and a reply read before the failure is never sent
        # again. So wait only for the replies still owed, and with a limit once a worker has failed.
        timeout = None if self._failure is None else _CLOSE_WAIT_S
        for remote in self.remotes:
            remote.shut_down(timeout)
        for index, (remote, process) in enumerate(zip(self.remotes, self.processes, strict=True)):
            process.join(timeout)
            if process.is_alive():
                process.terminate()
                process.join()
            # SB3's worker prints this traceback itself; this module's worker sends it, and nobody asks for a reply.
            worker_traceback = remote.failure_after_close()
            if worker_traceback is not None:
                warnings.warn(f"{self._worker_name(index)} failed to close its env:\n{worker_traceback}", stacklevel=2)
        # Close the parent side of the pipes, as SB3 does, so that the file descriptors do not pile up.
        for remote in self.remotes:
            remote.close()
        self.closed = True

    def _check_usable(self) -> None:
        if self._failure is not None:
            failure = self._failure
            raise EnvWorkerError(
                f"{failure} (this VecEnv cannot be used after an env worker failed)",
                failure.env_index,
                failure.rank,
                failure.global_index,
                failure.pid,
                failure.exitcode,
                failure.worker_traceback,
            )

    def _worker_name(self, index: int) -> str:
        global_index = self.first_global_index + index
        return f"env worker {index} of rank {self.rank} (global env index {global_index}, pid {self.processes[index].pid})"

    def _worker_lost(self, index: int, error: BaseException) -> EnvWorkerError:
        """The error to raise when the pipe of worker ``index`` broke: find out how that worker (and any other) ended."""
        process = self.processes[index]
        process.join(_EXIT_WAIT_S)
        if process.exitcode is None:
            status = f"lost its pipe ({type(error).__name__}: {error}) but is still running"
        else:
            status = f"died: {_describe_exit(process.exitcode)}"
        descriptions = [f"{self._worker_name(index)} {status}"]
        # Several workers can die together (an out-of-memory kill, a signal sent to the process group): name all.
        for other, other_process in enumerate(self.processes):
            if other != index and other_process.exitcode is not None:
                descriptions.append(f"{self._worker_name(other)} died: {_describe_exit(other_process.exitcode)}")
        message = "; ".join(descriptions)
        if self._starting and comm.launched_by_mpi():
            message += f". {MPI_INIT_HINT}"
        return self._fail(index, message, exitcode=process.exitcode)

    def _worker_raised(self, index: int, worker_traceback: str) -> EnvWorkerError:
        message = f"{self._worker_name(index)} raised an exception:\n{worker_traceback.rstrip()}"
        return self._fail(index, message, worker_traceback=worker_traceback)

    def _fail(
        self, index: int, message: str, exitcode: int | None = None, worker_traceback: str | None = None
    ) -> EnvWorkerError:
        self._failure = EnvWorkerError(
            message,
            index,
            self.rank,
            self.first_global_index + index,
            self.processes[index].pid,
            exitcode,
            worker_traceback,
        )
        return self._failure
