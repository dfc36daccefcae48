"""Reads and writes on a connected, non-blocking socket descriptor, for the relay's hot path.

``trio.socket``'s own calls wrap every read and write in a context manager, a retry helper
and two checkpoints; on a relayed NOOP that was the largest single entry of the gateway's
profile, and its frames were part of what every idle session holds while it waits. These
two functions do the same job directly: try the system call, and only when the kernel
says "would block" wait for the descriptor with ``trio.lowlevel.wait_readable`` /
``wait_writable``.

Trio's rules kept: every call is a checkpoint (a cancelled task raises before the system
call; a call that did not have to wait yields once afterwards without raising, so a peer
that floods the gateway cannot starve the other sessions and no data read is lost),
cancellation works while waiting, and a socket closed with trio's ``close()`` (which calls
``notify_closing``) wakes a waiter with ``ClosedResourceError``. Errors become trio's
``BrokenResourceError`` with the ``OSError`` as cause. ``os.write`` on a socket whose peer
is gone fails with ``EPIPE`` (Python ignores ``SIGPIPE``).

The caller owns the socket and must not close it while a call is in progress from a task
that is not cancelled (the session closes its sockets after the relay's tasks ended).
"""

from __future__ import annotations

import os

import trio


async def receive(fd: int, max_bytes: int, *, wait_first: bool = False) -> bytes:
    """Up to ``max_bytes`` from the socket; ``b""`` at end of stream.

    ``wait_first``: wait for the socket to be readable before the first read, for a reader
    that nearly always has to wait (the relay: a peer answers what was just sent to it).
    It saves the read that would fail with "would block"; the wait is the checkpoint.
    """
    if wait_first:
        await trio.lowlevel.wait_readable(fd)
        waited = True
    else:
        await trio.lowlevel.checkpoint_if_cancelled()  # cancelled: raise before reading
        waited = False
    while True:
        try:
            data = os.read(fd, max_bytes)
        except BlockingIOError:
            pass  # wait below, outside the except clause: an idle session keeps no exception
        except OSError as exc:
            raise trio.BrokenResourceError(f"receive: {exc}") from exc
        else:
            if not waited:
                await trio.lowlevel.cancel_shielded_checkpoint()  # yield, never lose the data
            return data
        await trio.lowlevel.wait_readable(fd)
        waited = True


async def send_all(fd: int, data: bytes | bytearray | memoryview, *,
                   schedule: bool = True) -> None:
    """All of ``data`` to the socket (or ``BrokenResourceError``).

    ``schedule=False``: no schedule point after a send that did not have to wait (a
    cancelled task still raises before sending). Only for a caller whose loop reaches a
    receive -- a schedule point -- after every send, so that one task still cannot
    starve the others: the relay's pump loops.
    """
    await trio.lowlevel.checkpoint_if_cancelled()
    view = memoryview(data)
    waited = False
    while view:
        try:
            sent = os.write(fd, view)
        except BlockingIOError:
            pass
        except OSError as exc:
            raise trio.BrokenResourceError(f"send: {exc}") from exc
        else:
            view = view[sent:]
            continue
        await trio.lowlevel.wait_writable(fd)
        waited = True
    if not waited and schedule:
        await trio.lowlevel.cancel_shielded_checkpoint()
