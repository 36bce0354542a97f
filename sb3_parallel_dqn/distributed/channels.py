"""
Point-to-point messages between ranks that do not wait for each other (the asynchronous mode's actors and learners).

A collective ties every rank to the slowest; a :class:`Channel` lets a rank post a message and go on (``isend``:
nonblocking, the sender keeps the request until it completes), and lets the other take what has arrived when it
looks (``iprobe`` then ``recv``), or wait for it (:meth:`Channel.wait_for`). The messages travel on a duplicate of
the world communicator (``Dup``, made once on every rank when the channel is made: collective), so that nothing of
the package's collectives, the watchdog's notices or a script's own messages can take them. A blocking wait is
watched by :mod:`~sb3_parallel_dqn.distributed.watchdog` like a collective with the ranks it waits for: the job ends,
naming the wait, if one of them leaves, if the two wait for each other, on a signal, or after the collective timeout.

Messages are small pickled tuples whose first item names their kind (the protocol is the caller's); the payloads
are numpy arrays (transitions, flat weights), which pickle at memory speed.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from sb3_parallel_dqn.distributed import comm, watchdog

#: The tag of every message of a channel (the channel's own communicator keeps them apart from anything else).
TAG = 7

#: Seconds between two looks while :meth:`Channel.wait_for` waits (a wait costs no core).
POLL_S = 0.0005


class Channel:
    """
    Nonblocking messages between the ranks of the job (see the module docstring). **Collective** to make (one
    ``Dup`` of the world communicator): make it on every rank.

    :param name: what the channel carries, for the watchdog's messages
    """

    def __init__(self, name: str) -> None:
        world = comm.comm()
        if world is None or world.Get_size() == 1:
            raise ValueError(f"{name}: point-to-point messages need an MPI job of several ranks")
        watchdog.enter(f"the set-up of {name} (Dup)", world)
        try:
            self.world = world.Dup()
        finally:
            watchdog.leave()
        self.world.Set_name(name)
        self.name = name
        self._pending: list[Any] = []  # requests of posted messages not known to be complete yet

    def post(self, message: tuple[Any, ...], dest: int) -> None:
        """Send ``message`` to rank ``dest`` without waiting for it to be received (``isend``)."""
        self._pending.append(self.world.isend(message, dest=dest, tag=TAG))
        if len(self._pending) > 64:
            self._pending = [request for request in self._pending if not request.Test()]

    def take(self, source: int | None = None) -> tuple[int, tuple[Any, ...]] | None:
        """The next message that has arrived (from ``source``, or any rank) with its sender, or None: never waits."""
        from mpi4py import MPI

        status = MPI.Status()
        wanted = MPI.ANY_SOURCE if source is None else source
        if not self.world.iprobe(source=wanted, tag=TAG, status=status):
            return None
        sender = status.Get_source()
        return sender, self.world.recv(source=sender, tag=TAG)

    def wait_for(self, what: str, peers: Iterable[int], source: int | None = None) -> tuple[int, tuple[Any, ...]]:
        """
        The next message (from ``source``, or any rank), waiting as long as it takes: watched as a collective with
        ``peers`` (the ranks that can send it), so that the job ends, naming ``what``, if one of them leaves first.
        """
        taken = self.take(source)
        if taken is not None:
            return taken
        watchdog.enter(what, tuple(sorted({*peers, comm.rank()})))
        try:
            while True:
                taken = self.take(source)
                if taken is not None:
                    return taken
                time.sleep(POLL_S)
        finally:
            watchdog.leave()

    def flush(self, what: str, peers: Iterable[int]) -> None:
        """Return once every message this rank posted has been received (watched as :meth:`wait_for`)."""
        if all(request.Test() for request in self._pending):
            self._pending = []
            return
        watchdog.enter(what, tuple(sorted({*peers, comm.rank()})))
        try:
            while not all(request.Test() for request in self._pending):
                time.sleep(POLL_S)
        finally:
            watchdog.leave()
        self._pending = []

    @property
    def in_flight(self) -> int:
        """Messages posted by this rank that may not have been received yet."""
        return len(self._pending)
