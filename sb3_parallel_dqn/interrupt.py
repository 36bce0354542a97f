"""
Stop training at a safe point on SIGTERM or SIGINT, instead of dying wherever the signal lands.

A signal that kills a process mid-write leaves a half-written file, and under MPI a rank that dies in the middle
of a collective leaves the job to the launcher's cleanup. Inside :func:`stop_on_signals`, the first SIGTERM or SIGINT
only records a request; ``ParallelDQN`` reads it at the end of each rollout, where every rank already exchanges
one small message, so all ranks agree to stop after the same rollout (once its gradient steps are done, so that a
checkpoint written then resumes exactly). A second SIGINT raises ``KeyboardInterrupt`` as usual, for an impatient
user.

Outside :func:`stop_on_signals` nothing changes: ``learn`` keeps SB3's behaviour on Ctrl-C. A request never
outlives its block, and the ``learn`` it stopped consumes it: a later ``learn`` (in the same block or after it) runs
its whole budget unless a new signal arrives.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType

from sb3_parallel_dqn.distributed import watchdog

# The signal received inside the stop_on_signals() block in progress, and whether training has acted on it already.
_received: signal.Signals | None = None
_acted_on = False

HANDLED = (signal.SIGTERM, signal.SIGINT)


def requested() -> signal.Signals | None:
    """The signal that asks training to stop: received inside the block in progress, not yet acted on."""
    return None if _acted_on else _received


def request(signum: int = signal.SIGTERM) -> None:
    """Ask training to stop at the next safe point, as the signal ``signum`` would."""
    global _received, _acted_on
    _received, _acted_on = signal.Signals(signum), False


def acknowledge() -> None:
    """Training stopped for the request (``ParallelDQN`` calls this on every rank): later ``learn`` calls run in full."""
    global _acted_on
    _acted_on = True


def clear() -> None:
    """Forget any request (the :func:`stop_on_signals` block starts or ends)."""
    global _received, _acted_on
    _received, _acted_on = None, False


def _handler(signum: int, frame: FrameType | None) -> None:
    watchdog.signal_read(signum)  # read between waits: a request, not a rank stuck in a collective
    if _received is not None and signum == signal.SIGINT:
        raise KeyboardInterrupt  # the second Ctrl-C in the block: stop now, even while the first stop saves its files
    request(signum)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """
    Within this block, SIGTERM and SIGINT ask training to stop at the next safe point (see the module docstring);
    the previous handlers come back afterwards. Only the main thread may install signal handlers; elsewhere this
    does nothing.

    Exit codes: a script that stops this way should exit with ``128 + signal number`` (143 for SIGTERM, 130 for
    SIGINT), as a process killed by the signal would, so that job schedulers see that it was interrupted.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    clear()
    previous = {signum: signal.signal(signum, _handler) for signum in HANDLED}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        # Before this fix a request outlived its block and silently cut every later learn() short (issue 12, item 3).
        clear()
