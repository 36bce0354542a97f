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
  from an ``atexit`` hook, :func:`_announce_exit`) -- after :data:`LEFT_GRACE_S`;
- a rank of the group waits in **another** collective whose group holds this rank (each rank that waits longer
  than :data:`STUCK_S` tells the ranks of its group which collective it is in) -- after :data:`MISMATCH_S`: the
  two will never meet, whatever the order;
- this process received **SIGTERM, SIGINT, SIGHUP or SIGQUIT** (read from the signal wakeup file descriptor, which
  the C-level handler writes even while the main thread is blocked) at least :data:`SIGNAL_GRACE_S` ago, and the
  wait has lasted that long too (a stop at the next safe point, :mod:`~sb3_parallel_dqn.interrupt`, never waits
  that long in one collective);
- it has waited longer than the **collective timeout**: :data:`DEFAULT_TIMEOUT_S` (30 minutes, torch's default
  process-group timeout), or ``SB3_PARALLEL_DQN_COLLECTIVE_TIMEOUT`` seconds, or :func:`set_timeout`.

The messages travel as point-to-point messages with the tag :data:`CONTROL_TAG` on the world communicator (a
separate communicator would need a collective to make, which is the very thing that may not arrive); a script that
receives with ``MPI.ANY_TAG`` on ``COMM_WORLD`` could take them. The thread wakes four times a second and the
main thread's bookkeeping costs two assignments per collective (docs/benchmarks/watchdog: its cost on the per-step
gradient path). ``SB3_PARALLEL_DQN_WATCHDOG=0`` turns it off.

Waits that are not MPI collectives but need another rank (a rank waiting for rank 0 to write a file,
:func:`wait_for_save`) are watched the same way.
"""

from __future__ import annotations

import atexit
import faulthandler
import os
import select
import signal
import sys
import threading
import time
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

# What the main thread waits in: (what, communicator or tuple of world ranks, monotonic start), or None.
_active: tuple[str, Any, float] | None = None
_timeout_s: float | None = None


def enter(what: str, group: Any) -> None:
    """The main thread starts waiting in the collective ``what`` of ``group`` (a communicator, or world ranks)."""
    global _active
    _active = (what, group, time.monotonic())


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
        self.rank, self.size = world.Get_rank(), world.Get_size()
        self.pid = os.getpid()  # a forked child (an env worker) inherits the atexit hook, and must not announce
        self.stop = threading.Event()
        self.left: dict[int, float] = {}  # rank -> when its exit was announced (monotonic, here)
        self.stuck: dict[int, tuple[int, str, tuple[int, ...], float]] = {}  # rank -> (id, what, ranks, since here)
        self.saves: dict[str, int] = {}  # path -> how many saves rank 0 has finished writing there
        self.signal: tuple[signal.Signals, float] | None = None
        self.announced: tuple[float, tuple[int, ...]] | None = None  # the wait whose stuck notice went out
        self.notice_id = 0
        self.sends: list[Any] = []
        self.ranks_of: dict[int, tuple[int, ...]] = {}
        self.wakeup_fd: int | None = None
        self.thread = threading.Thread(target=self.run, name="sb3_parallel_dqn-watchdog", daemon=True)

    # -- messages ------------------------------------------------------------------------------------------------
    def send(self, message: tuple[Any, ...], ranks: Sequence[int]) -> None:
        for dest in ranks:
            if dest != self.rank:
                self.sends.append(self.world.isend(message, dest=dest, tag=CONTROL_TAG))
        self.sends = [request for request in self.sends if not request.Test()]

    def receive(self) -> None:
        from mpi4py import MPI

        status = MPI.Status()
        while self.world.iprobe(source=MPI.ANY_SOURCE, tag=CONTROL_TAG, status=status):
            source = status.Get_source()
            message = self.world.recv(source=source, tag=CONTROL_TAG)
            kind = message[0]
            if kind == "left":
                self.left[source] = time.monotonic()
            elif kind == "stuck":
                _, notice, what, ranks = message
                self.stuck[source] = (notice, what, tuple(ranks), time.monotonic())
            elif kind == "done":
                if source in self.stuck and self.stuck[source][0] == message[1]:
                    del self.stuck[source]
            elif kind == "saved":
                _, path, count = message
                self.saves[path] = max(count, self.saves.get(path, 0))

    # -- the loop ------------------------------------------------------------------------------------------------
    def group_ranks(self, group: Any) -> tuple[int, ...]:
        if isinstance(group, tuple):
            return group
        if group is None:
            return tuple(range(self.size))
        key = id(group)
        if key not in self.ranks_of:
            from mpi4py import MPI

            self.ranks_of[key] = tuple(
                MPI.Group.Translate_ranks(group.Get_group(), list(range(group.Get_size())), self.world.Get_group())
            )
        return self.ranks_of[key]

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
        while not self.stop.is_set():
            self.wait_for_wakeup()
            if self.stop.is_set():
                return
            try:
                self.receive()
                self.check()
            except Exception as error:  # never let the watchdog die silently
                sys.stderr.write(f"[rank {self.rank}] sb3_parallel_dqn watchdog error: {error!r}\n")
                return

    def check(self) -> None:
        active, now = _active, time.monotonic()
        if self.announced is not None and (active is None or active[2] != self.announced[0]):
            self.send(("done", self.notice_id), self.announced[1])
            self.announced = None
        if active is None:
            return
        what, group, since = active
        waited = now - since
        ranks = self.group_ranks(group)
        if waited > STUCK_S and self.announced is None:
            self.notice_id += 1
            self.send(("stuck", self.notice_id, what, ranks), ranks)
            self.announced = (since, ranks)
        me = f"rank {self.rank} has waited {waited:.0f} s in {what}"
        gone = sorted(r for r in ranks if r in self.left and r != self.rank)
        if gone and waited > LEFT_GRACE_S:
            self.abort(
                f"{me}, but rank {', '.join(map(str, gone))} of its group has left (its script returned or exited): "
                f"{what} must run on every rank of the job, as often and in the same order"
            )
        for peer in ranks:
            notice = self.stuck.get(peer)
            if notice is None or peer == self.rank or self.rank not in notice[2]:
                continue
            _, other, other_ranks, noticed = notice
            if (other, other_ranks) != (what, ranks) and waited > MISMATCH_S and now - noticed > MISMATCH_S:
                self.abort(
                    f"{me}, while rank {peer} waits in {other}: collectives called by some ranks only, or in another "
                    f"order, never meet. {what} and {other} must run on every rank, as often and in the same order"
                )
        if self.signal is not None:
            received, at = self.signal
            if waited > SIGNAL_GRACE_S and now - at > SIGNAL_GRACE_S:
                self.abort(f"{me}, and {received.name} arrived {now - at:.0f} s ago: ending the job")
        limit = timeout_s()
        if waited > limit:
            self.abort(
                f"{me}, longer than the collective timeout ({limit:.0f} s; set {TIMEOUT_VARIABLE} or "
                f"train --collective-timeout): some rank of {list(ranks)} never called it"
            )

    def abort(self, reason: str) -> None:
        sys.stderr.write(f"[sb3_parallel_dqn] {reason}. Ending the MPI job (MPI_Abort).\n")
        sys.stderr.write(f"[rank {self.rank}] where the main thread waits:\n")
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        sys.stderr.flush()
        time.sleep(_ABORT_GRACE_S)
        self.world.Abort(1)


_watchdog: _Watchdog | None = None


def start(world: Any) -> None:
    """
    Start the watchdog thread of this rank (a job of several ranks; once) and the exit notice to the other ranks.
    Call it from the main thread, where the signal wakeup descriptor can be set.
    """
    global _watchdog
    if _watchdog is not None or world.Get_size() == 1 or os.environ.get(SWITCH_VARIABLE) == "0":
        return
    watchdog = _Watchdog(world)
    if threading.current_thread() is threading.main_thread():
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        os.set_blocking(write_fd, False)
        if signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False) == -1:
            watchdog.wakeup_fd = read_fd
        else:  # somebody else reads the wakeup fd (an event loop): keep theirs, watch without signals
            signal.set_wakeup_fd(-1)
            os.close(read_fd)
            os.close(write_fd)
    _watchdog = watchdog
    watchdog.thread.start()
    atexit.register(_announce_exit)


def _announce_exit() -> None:
    """At exit: stop the thread, then tell every other rank that this one left (they end the job if they wait)."""
    watchdog = _watchdog
    if watchdog is None or os.getpid() != watchdog.pid:
        return
    watchdog.stop.set()
    watchdog.thread.join(timeout=2 * POLL_S + 1)
    watchdog.send(("left",), range(watchdog.size))
    deadline = time.monotonic() + 2.0
    while watchdog.sends and time.monotonic() < deadline:
        watchdog.sends = [request for request in watchdog.sends if not request.Test()]
        time.sleep(0.01)


def announce_save(path: str, count: int) -> None:
    """Rank 0 finished writing its ``count``-th save to ``path``: tell the other ranks (they may wait for it)."""
    if _watchdog is not None:
        _watchdog.send(("saved", path, count), range(_watchdog.size))


def wait_for_save(path: str, count: int, what: str) -> None:
    """
    Wait until rank 0 has announced its ``count``-th save to ``path`` (see :func:`announce_save`), watched as a
    collective with rank 0: ends the job if rank 0 left, waits elsewhere, or the timeout passes.
    """
    watchdog = _watchdog
    if watchdog is None:
        return
    enter(what, (0, watchdog.rank))
    try:
        while watchdog.saves.get(path, 0) < count:
            time.sleep(0.002)
    finally:
        leave()
