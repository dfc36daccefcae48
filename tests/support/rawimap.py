"""Raw, logged-in IMAP connections straight to the rig's Dovecot, for tests that compare
what Dovecot does with exact bytes (literal reading, differential framing).

No gateway in between: plain port, plaintext LOGIN (the rig's ``login_trusted_networks``
covers 127.0.0.1). Responses are collected as *tags*: what matters to these tests is which
commands Dovecot ran, not what they answered.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from .dovecot import DovecotRig
from .imap import LineClient, ServerClosed


class SetupFailed(AssertionError):
    """LOGIN or SELECT did not succeed on a fresh connection."""


def connect(rig: DovecotRig, user: str, *, select: str | None = None,
            timeout: float = 5.0) -> LineClient:
    """A raw connection to Dovecot logged in as ``user`` (and with ``select`` opened)."""
    c = LineClient(rig.host, rig.imap_port, timeout=timeout)
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    r = c.command("l", f"LOGIN {user} {rig.users[user]}")[-1]
    if not r.startswith(b"l OK"):
        c.close()
        raise SetupFailed(f"LOGIN {user}: {r!r}")
    if select is not None:
        r = c.command("s", f"SELECT {select}")[-1]
        if not r.startswith(b"s OK"):
            c.close()
            raise SetupFailed(f"SELECT {select}: {r!r}")
    return c


def capabilities(rig: DovecotRig, user: str) -> tuple[str, ...]:
    """Dovecot's post-login CAPABILITY list (what the gateway's relay is built from)."""
    c = connect(rig, user)
    try:
        for line in c.command("c", "CAPABILITY"):
            if line.startswith(b"* CAPABILITY "):
                return tuple(line[len(b"* CAPABILITY "):].decode().split())
        raise SetupFailed("no * CAPABILITY line")
    finally:
        c.close()


def response_tag(resp: bytes) -> bytes | None:
    """The tag of a tagged response (None for ``*`` and ``+`` lines)."""
    if resp.startswith((b"*", b"+")):
        return None
    return resp.split(b" ", 1)[0]


@dataclass
class Exchange:
    """What Dovecot sent back for one batch of bytes.

    ``tags``: tags of tagged responses, in order. ``continuations``: ``+`` lines (Dovecot's
    own ``+ OK`` for a synchronizing literal it is reading, ``+ idling``). ``untagged_bad``:
    ``* BAD``/``* BYE`` lines (e.g. an invalid tag). ``end``: ``"done"`` (the ``until`` tag
    was answered), ``"closed"`` (EOF/reset), ``"timeout"`` or ``"continuation"``.
    """

    tags: list[bytes] = field(default_factory=list)
    continuations: list[bytes] = field(default_factory=list)
    untagged_bad: list[bytes] = field(default_factory=list)
    responses: list[bytes] = field(default_factory=list, repr=False)
    end: str = "done"


def exchange(c: LineClient, data: bytes, until: bytes | None, *,
             timeout: float = 5.0, stop_on_plus: bool = False) -> Exchange:
    """Send ``data`` and collect responses until the tagged response ``until`` (excluded
    from ``tags``), EOF, or ``timeout`` seconds without it (``until=None``: until EOF).
    ``stop_on_plus``: also stop at Dovecot's first ``+ OK`` (it is reading a synchronizing
    literal and will wait for its bytes), with ``end="continuation"``."""
    out = Exchange()
    try:
        c.send(data)
    except (BrokenPipeError, ConnectionResetError):
        pass  # Dovecot hung up early; what it sent before is still readable
    while True:
        try:
            r = c.read_response(timeout)
        except ServerClosed:
            out.end = "closed"
            return out
        except (TimeoutError, ConnectionResetError):
            out.end = "timeout"
            return out
        out.responses.append(r)
        tag = response_tag(r)
        if tag is None:
            if r.startswith(b"+"):
                out.continuations.append(r)
                if stop_on_plus and not r.startswith(b"+ idling"):
                    out.end = "continuation"
                    return out
            elif r[2:].upper().startswith((b"BAD", b"BYE")):
                out.untagged_bad.append(r)
            continue
        if until is not None and tag == until:
            return out
        out.tags.append(tag)
