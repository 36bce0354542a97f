"""
A watchdog that ends a job stuck in a collective, with a message, instead of letting it hang.

An MPI collective waits until every rank of its group calls it. When one rank never does, the others wait forever:
a rank whose script ended (pytest stopped on a failure), a collective called on some ranks only (``if rank == 0:
model.save(path)`` with a split model), ranks that took different decisions, or a rank that is alive but stuck (a
deadlocked env). A signal does not help either: Python runs its handlers between bytecodes, never inside ``MPI_*``.

So, as torch's process-group watchdog does, each rank of a job of several runs a background thread
(:func:`start`, from :func:`~sb3_parallel_dqn.distributed.comm.comm`). The helpers of
:mod:`~sb3_parallel_dqn.distributed.comm` say which collective the main thread is in (:func:`enter` and
:func:`leave`: two assignments, nothing on the wire), and the thread, every :data:`POLL_S` seconds, ends the job
(``MPI_Abort``, after printing why) when the main thread has been waiting in one collective and

- a rank of that collective's group has **left**: its script returned or exited (each rank says so to the others
  from an ``atexit`` hook, or at an explicit ``MPI.Finalize``) -- :data:`LEFT_GRACE_S` after the notice;
- a rank of the group waits in **another** collective whose group holds this rank, and neither has reached the
  other's call (each rank counts its calls per group; each that waits longer than :data:`STUCK_S` tells the ranks
  of its group which call it is in, and its counts) -- after :data:`MISMATCH_S`: the two will never meet. A rank
  that is merely late (still in a call the others have passed, as a broadcast lets its root go on) is no cycle;
- this process received **SIGTERM, SIGINT, SIGHUP or SIGQUIT** (read from the signal wakeup file descriptor, which
  the C-level handler writes even while the main thread is blocked) at least :data:`SIGNAL_GRACE_S` ago, the main
  thread has not run a Python handler for it since (:func:`signal_read`: a stop request that the program read, as
  :mod:`~sb3_parallel_dqn.interrupt`'s, is the program's to act on) and the wait has lasted that long too;
- it has waited longer than the **collective timeout**: :data:`DEFAULT_TIMEOUT_S` (30 minutes, torch's default
  process-group timeout), or ``SB3_PARALLEL_DQN_COLLECTIVE_TIMEOUT`` seconds, or :func:`set_timeout`.

The messages travel as point-to-point messages with the tag :data:`CONTROL_TAG` on a duplicate of the world
communicator, made when MPI starts (every rank starts it, as every rank initialises MPI): a script's own receives
never take them, and notices that nobody received before the job ended (a rank's exit notice to a rank that has
stopped listening) do not make ``MPI_Finalize`` fail, as they did on ``COMM_WORLD`` (MPICH refuses to free a
built-in communicator that holds unmatched messages, and the launcher then killed the job at its very end). The
thread wakes four times a second and the main thread's bookkeeping costs two assignments per collective
(docs/benchmarks/watchdog: its cost on the per-step gradient path). ``SB3_PARALLEL_DQN_WATCHDOG=0`` turns it off.

Waits that are not MPI collectives but need another rank (a rank waiting for rank 0 to write a file,
:func:`wait_for_save`) are watched the same way.
"""

from __future__ import annotations

import atexit
import faulthandler
import math
import os
import select
import signal
import sys
import threading
import time
import warnings
from collections.abc import Sequence
from typing import Any

CONTROL_TAG = 32_101
POLL_S = 0.25
STUCK_S = 2.0
LEFT_GRACE_S = 3.0
MISMATCH_S = 5.0
SIGNAL_GRACE_S = 20.0
DEFAULT_TIMEOUT_S = 1800.0
TIMEOUT_VARIABLE = "SB3_PARALLEL_DQN_COLLECTIVE_TIMEOUT"
# "0" turns the watchdog off (for measuring its cost; a hang then hangs).
SWITCH_VARIABLE = "SB3_PARALLEL_DQN_WATCHDOG"
WATCHED_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT})
# Seconds between printing why and aborting: the launcher's output forwarders pass the message on meanwhile.
_ABORT_GRACE_S = 0.5

# What the main thread waits in: (what, key of its group, this rank's count of calls on that group, monotonic start).
_active: tuple[str, tuple[str, tuple[int, ...]], int, float] | None = None
_timeout_s: float | None = None
# Per group (its key, see _key_of), how many collectives this rank has entered on it: two ranks in collectives that
# never meet is only certain when each has not yet reached the other's call (see _Watchdog.check).
_counts: dict[tuple[str, tuple[int, ...]], int] = {}
# When the main thread last ran a Python handler for each signal (signal_read): it was not blocked then.
_read_at: dict[int, float] = {}
_keys: dict[int, tuple[Any, tuple[str, tuple[int, ...]]]] = {}  # id(communicator) -> (it, kept alive; its key)


def _key_of(what: str, group: Any) -> tuple[str, tuple[int, ...]]:
    """A group's name and world ranks, the same on every rank of it (a tuple of ranks: a wait that is no collective)."""
    if isinstance(group, tuple):
        return (f"wait: {what}", group)
    known = _keys.get(id(group))
    if known is not None:
        return known[1]
    from mpi4py import MPI

    ranks = MPI.Group.Translate_ranks(group.Get_group(), list(range(group.Get_size())), MPI.COMM_WORLD.Get_group())
    key = (group.Get_name(), tuple(int(rank) for rank in ranks))
    _keys[id(group)] = (group, key)
    return key


def enter(what: str, group: Any) -> None:
    """The main thread starts waiting in the collective ``what`` of ``group`` (a communicator, or world ranks)."""
    global _active
    key = _key_of(what, group)
    count = _counts[key] = _counts.get(key, 0) + 1
    _active = (what, key, count, time.monotonic())


def signal_read(signum: int) -> None:
    """
    A Python signal handler of the main thread ran for ``signum`` (call it from the handler): the main thread was
    not blocked in a collective then, so the signal, a request the program read, does not end the job. The
    watchdog reads the signal from the wakeup descriptor later than it arrived, by as much as the machine's load
    delays its thread: without this, a request read just before a long healthy wait looked like one that landed in
    it.
    """
    _read_at[signum] = time.monotonic()


def leave() -> None:
    """The main thread's collective returned."""
    global _active
    _active = None


def set_timeout(seconds: float | None) -> None:
    """
    End the job when one collective waits longer than ``seconds`` (None: ``$SB3_PARALLEL_DQN_COLLECTIVE_TIMEOUT``,
    else :data:`DEFAULT_TIMEOUT_S`). Process-wide, like torch's ``init_process_group(timeout=...)``.
    """
    global _timeout_s
    if seconds is not None and not seconds > 0:
        raise ValueError(f"the collective timeout must be > 0 seconds, not {seconds}")
    _timeout_s = seconds


def timeout_s() -> float:
    """The collective timeout in force (see :func:`set_timeout`)."""
    if _timeout_s is not None:
        return _timeout_s
    value = os.environ.get(TIMEOUT_VARIABLE, "")
    try:
        seconds = float(value)
    except ValueError:
        return DEFAULT_TIMEOUT_S
    return seconds if seconds > 0 else DEFAULT_TIMEOUT_S


class _Watchdog:
    """The thread's state; the main thread only reads ``saves`` and writes through :func:`enter`/:func:`leave`."""

    def __init__(self, world: Any) -> None:
        self.world = world
        self.control = world.Dup()  # collective: start() runs where every rank initialises MPI
        self.control.Set_name("sb3_parallel_dqn watchdog")
        self.rank, self.size = world.Get_rank(), world.Get_size()
        self.pid = os.getpid()  # a forked child (an env worker) inherits the atexit hook, and must not announce
        self.stop = threading.Event()
        self.left: dict[int, float] = {}  # rank -> when its exit was announced (monotonic, here)
        # rank -> (notice id, what, group key, its count there, its counts on every group, when noticed here)
        self.stuck: dict[int, tuple[int, str, tuple[str, tuple[int, ...]], int, dict, float]] = {}
        self.saves: dict[tuple[str, int], int] = {}  # (path, rank) -> how many saves that rank finished writing there
        self.signal: tuple[signal.Signals, float] | None = None
        self.announced: tuple[float, tuple[int, ...]] | None = None  # the wait whose stuck notice went out
        self.notice_id = 0
        self.sends: list[Any] = []
        self.lock = threading.Lock()  # the main thread sends too (announce_save)
        self.wakeup_fd: int | None = None
        self.exited = False
        self.errors: set[str] = set()
        self.thread = threading.Thread(target=self.run, name="sb3_parallel_dqn-watchdog", daemon=True)

    # -- messages ------------------------------------------------------------------------------------------------
    def send(self, message: tuple[Any, ...], ranks: Sequence[int]) -> None:
        with self.lock:
            for dest in ranks:
                if dest != self.rank:
                    self.sends.append(self.control.isend(message, dest=dest, tag=CONTROL_TAG))
            self.sends = [request for request in self.sends if not request.Test()]

    def receive(self) -> None:
        from mpi4py import MPI

        status = MPI.Status()
        while True:
            # A matched probe: a script's own receive with MPI.ANY_TAG cannot take the message between probe and recv.
            matched = self.control.improbe(source=MPI.ANY_SOURCE, tag=CONTROL_TAG, status=status)
            if matched is None:
                return
            source, message = status.Get_source(), matched.recv()
            if isinstance(message, tuple) and message:
                self.handle(source, message)

    def handle(self, source: int, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "left":
            self.left[source] = time.monotonic()
        elif kind == "stuck" and len(message) == 6:
            _, notice, what, key, count, counts = message
            self.stuck[source] = (notice, what, key, count, counts, time.monotonic())
        elif kind == "done" and len(message) == 2:
            if source in self.stuck and self.stuck[source][0] == message[1]:
                del self.stuck[source]
        elif kind == "saved" and len(message) == 3:
            _, path, count = message
            self.saves[path, source] = max(count, self.saves.get((path, source), 0))

    # -- the loop ------------------------------------------------------------------------------------------------
    def wait_for_wakeup(self) -> None:
        if self.wakeup_fd is None:
            self.stop.wait(POLL_S)
            return
        ready, _, _ = select.select([self.wakeup_fd], [], [], POLL_S)
        if ready:
            try:
                data = os.read(self.wakeup_fd, 64)
            except BlockingIOError:
                return
            for number in data:
                if number in {int(s) for s in WATCHED_SIGNALS}:
                    self.signal = (signal.Signals(number), time.monotonic())

    def run(self) -> None:
        from mpi4py import MPI

        while not self.stop.is_set():
            self.wait_for_wakeup()
            if self.stop.is_set() or MPI.Is_finalized():
                return
            try:
                self.receive()
                self.check()
            except Exception as error:  # say so once, and keep watching: a dead watchdog would let a hang hang
                if repr(error) not in self.errors:
                    self.errors.add(repr(error))
                    sys.stderr.write(f"[rank {self.rank}] sb3_parallel_dqn watchdog error: {error!r}\n")

    def check(self) -> None:
        active, now = _active, time.monotonic()
        if self.announced is not None and (active is None or active[3] != self.announced[0]):
            self.send(("done", self.notice_id), self.announced[1])
            self.announced = None
        if active is None:
            return
        what, key, count, since = active
        ranks, waited = key[1], now - since
        if waited > STUCK_S and self.announced is None:
            self.notice_id += 1
            self.send(("stuck", self.notice_id, what, key, count, dict(_counts)), ranks)
            self.announced = (since, ranks)
        me = f"rank {self.rank} has waited {waited:.0f} s in {what}"
        # Announced long enough ago that a wait it completed has returned here (a rank may leave right after a call).
        gone = sorted(r for r in ranks if r != self.rank and now - self.left.get(r, now) > LEFT_GRACE_S)
        if gone and waited > LEFT_GRACE_S:
            self.abort(
                active,
                f"{me}, but rank {', '.join(map(str, gone))} of its group has left (its script returned or exited): "
                f"{what} must run on every rank of the job, as often and in the same order",
            )
        for peer in ranks:
            notice = self.stuck.get(peer)
            if notice is None or peer == self.rank:
                continue
            _, other, other_key, other_count, other_counts, noticed = notice
            # A cycle, not lateness: each of the two waits in a call the other has not reached, on a group holding both.
            cycle = self.rank in other_key[1] and _counts.get(other_key, 0) < other_count and other_counts.get(key, 0) < count
            if cycle and waited > MISMATCH_S and now - noticed > MISMATCH_S:
                self.abort(
                    active,
                    f"{me}, while rank {peer} waits in {other}: collectives called by some ranks only, or in another "
                    f"order, never meet. {what} and {other} must run on every rank, as often and in the same order",
                )
        if self.signal is not None:
            received, at = self.signal
            # The wait it landed in, unread: the main thread ran no handler for it from a grace before the thread saw it.
            read = _read_at.get(int(received), -math.inf) >= at - SIGNAL_GRACE_S
            if since < at and not read and now - at > SIGNAL_GRACE_S:
                self.abort(active, f"{me}, and {received.name} arrived {now - at:.0f} s ago: ending the job")
        limit = timeout_s()
        if waited > limit:
            self.abort(
                active,
                f"{me}, longer than the collective timeout ({limit:.0f} s; set {TIMEOUT_VARIABLE} or "
                f"train --collective-timeout): some rank of {list(ranks)} never called it",
            )

    def abort(self, active: tuple[Any, ...], reason: str) -> None:
        if _active is not active:  # the wait ended meanwhile: nothing to end
            return
        sys.stderr.write(f"[sb3_parallel_dqn] {reason}. Ending the MPI job (MPI_Abort).\n")
        sys.stderr.write(f"[rank {self.rank}] where the main thread waits:\n")
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        sys.stderr.flush()
        time.sleep(_ABORT_GRACE_S)
        self.world.Abort(1)

    def announce_exit(self) -> None:
        """Stop the thread, then tell every other rank that this one left (once: atexit or MPI_Finalize)."""
        if self.exited or os.getpid() != self.pid:
            return
        self.exited = True
        self.stop.set()
        if self.thread.is_alive() and threading.current_thread() is not self.thread:
            self.thread.join(timeout=2 * POLL_S + 1)
        self.send(("left",), range(self.size))
        deadline = time.monotonic() + 2.0
        while self.sends and time.monotonic() < deadline:
            with self.lock:
                self.sends = [request for request in self.sends if not request.Test()]
            time.sleep(0.01)


_watchdog: _Watchdog | None = None


def start(world: Any) -> None:
    """
    Start the watchdog thread of this rank (a job of several ranks; once) and the exit notice to the other ranks.
    Call it from the main thread, where the signal wakeup descriptor can be set. Needs ``MPI_THREAD_MULTIPLE``
    (mpi4py's default): with a lower thread level it warns and stays off.
    """
    global _watchdog
    if _watchdog is not None or world.Get_size() == 1 or os.environ.get(SWITCH_VARIABLE) == "0":
        return
    from mpi4py import MPI

    if MPI.Query_thread() < MPI.THREAD_MULTIPLE:
        warnings.warn(
            "sb3_parallel_dqn's collective watchdog needs MPI_THREAD_MULTIPLE (mpi4py.rc.thread_level = 'multiple'): "
            "it is off, so a collective that some rank never calls hangs the job",
            stacklevel=2,
        )
        return
    watchdog = _Watchdog(world)
    if threading.current_thread() is threading.main_thread():
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        os.set_blocking(write_fd, False)
        previous = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        if previous == -1:
            watchdog.wakeup_fd = read_fd
            # A forked child (an env worker) must not write its own signals into this process' pipe.
            os.register_at_fork(after_in_child=_forget_wakeup_fd)
        else:  # somebody else reads the wakeup fd (an event loop): keep theirs, watch without signals
            signal.set_wakeup_fd(previous)
            os.close(read_fd)
            os.close(write_fd)
    _watchdog = watchdog
    watchdog.thread.start()
    atexit.register(watchdog.announce_exit)
    # An explicit MPI.Finalize() before exit: MPI deletes COMM_SELF's attributes first, while it still works.
    keyval = MPI.Comm.Create_keyval(delete_fn=lambda *args: watchdog.announce_exit())
    MPI.COMM_SELF.Set_attr(keyval, True)


def _forget_wakeup_fd() -> None:
    try:
        signal.set_wakeup_fd(-1)
    except ValueError:  # forked from another thread than the main one: that child has no wakeup fd of ours to drop
        pass


def announce_save(path: str, count: int) -> None:
    """This rank finished writing its ``count``-th save to ``path``: tell the other ranks (they may wait for it)."""
    if _watchdog is not None:
        _watchdog.send(("saved", path, count), range(_watchdog.size))


def wait_for_save(path: str, count: int, what: str, ranks: Sequence[int] = (0,)) -> None:
    """
    Wait until each of ``ranks`` (this one aside) has announced its ``count``-th save to ``path`` (see
    :func:`announce_save`), watched as a collective with them: ends the job if one left, waits elsewhere, or the
    timeout passes. Returns at once without the watchdog (``SB3_PARALLEL_DQN_WATCHDOG=0``): nothing then tells this
    rank when the files are complete.
    """
    watchdog = _watchdog
    if watchdog is None:
        return
    others = [rank for rank in ranks if rank != watchdog.rank]
    enter(what, tuple(sorted({*ranks, watchdog.rank})))
    try:
        while any(watchdog.saves.get((path, rank), 0) < count for rank in others):
            if not watchdog.thread.is_alive():
                raise RuntimeError(f"{what}: the collective watchdog has stopped, so nothing tells when the files are written")
            time.sleep(0.002)
    finally:
        leave()
