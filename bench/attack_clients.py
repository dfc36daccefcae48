"""The actors of ``python -m bench.attack``: attackers, legitimate users, a stale phone.

Each actor is a blocking loop for one thread, bound to one loopback source address (the
gateway sees 127.0.10.7 as a different client from 127.0.0.1) and talking IMAP over
implicit TLS through ``tests.support.imap.LineClient``. What each actor saw from the
client side goes into a tally; what reached Dovecot is counted separately, from Dovecot's
own log (``bench.attack.dovecot_auth_lines``), so the two views can disagree and show it.

Why threads: the gateway's tarpit holds each failing connection for seconds, so an
attacker's throughput is set by how many connections it keeps in flight, which a thread per
connection models directly (hydra and most spray tools do the same).
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field

from tests.support.imap import HasEndpoint, LineClient, ServerClosed

#: An attacker waits this long at most for one answer (tarpit_max is 10 s by default).
ANSWER_TIMEOUT = 40.0


def quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _ok(resp: bytes) -> bool:
    return resp.split(b" ", 2)[1:2] == [b"OK"]


@dataclass
class AttackTally:
    """What an attacker (all of its threads) did and saw."""

    attempts: int = 0            # credentials it tried to submit
    sent: int = 0                # LOGIN commands answered by the gateway
    refused_at_connect: int = 0  # attempts that found no open door (BYE at connect, reset)
    accepted: int = 0            # LOGIN answered OK (the attacker got in)
    errors: int = 0              # connection lost mid-command
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for k, v in counts.items():
                setattr(self, k, getattr(self, k) + v)


@dataclass
class LegitTally:
    """Logins with the right password: how many were tried, how many the user did not get."""

    attempts: int = 0
    ok: int = 0
    refused: int = 0
    reasons: Counter = field(default_factory=Counter)
    users_in: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, user: str, outcome: str) -> None:
        with self._lock:
            self.attempts += 1
            if outcome == "ok":
                self.ok += 1
                self.users_in.add(user)
            else:
                self.refused += 1
                self.reasons[outcome] += 1


def _connect(gw: HasEndpoint, ip: str, timeout: float) -> tuple[LineClient | None, str]:
    """(client, "") with an ``* OK`` greeting, else (None, why): "bye: <text>" or the error."""
    try:
        c = LineClient.implicit(gw, source=ip, timeout=timeout)
    except OSError as e:  # ssl.SSLError, resets and timeouts are OSErrors
        return None, f"connect: {type(e).__name__}"
    if not c.greeting.startswith(b"* OK"):
        c.close()
        return None, "bye at connect: " + c.greeting.decode(errors="replace").strip()[6:60]
    return c, ""


def _logout(c: LineClient) -> None:
    try:
        c.command("z", "LOGOUT", timeout=3)
    except OSError:
        pass
    c.close()


def attacker(gw: HasEndpoint, ip: str, work: deque, lock: threading.Lock, tally: AttackTally,
             stop_at: float) -> None:
    """One attacker connection slot: take (user, password) from ``work`` (shared by the
    address's slots) and try it; on a closed or refused connection, reconnect for the next
    item. A refused connection consumes the item: the tool moves on, as spray tools do."""
    conn: LineClient | None = None
    n = 0
    try:
        while time.monotonic() < stop_at:
            with lock:
                if not work:
                    return
                user, password = work.popleft()
            tally.add(attempts=1)
            if conn is None:
                conn, _why = _connect(gw, ip, timeout=15)
                if conn is None:
                    tally.add(refused_at_connect=1)
                    continue
            n += 1
            try:
                resp = conn.command(f"a{n}", f"LOGIN {quote(user)} {quote(password)}",
                                    timeout=ANSWER_TIMEOUT)[-1]
            except (ServerClosed, OSError):
                tally.add(errors=1)
                conn.close()
                conn = None
                continue
            tally.add(sent=1)
            if _ok(resp):
                tally.add(accepted=1)
                _logout(conn)
                conn = None
    finally:
        if conn is not None:
            conn.close()


def legit_session(gw: HasEndpoint, ip: str, user: str, password: str, tally: LegitTally, *,
                  hold: float = 0.0, stop: threading.Event | None = None) -> bool:
    """A mail client's visit: connect, LOGIN, SELECT, FETCH flags, stay ``hold`` seconds (an
    idle client keeps its connection), LOGOUT. Records ok/refused; True if it got in."""
    conn, why = _connect(gw, ip, timeout=30)
    if conn is None:
        tally.record(user, why.split(":", 1)[0] if why.startswith("connect") else why)
        return False
    try:
        resp = conn.command("a", f"LOGIN {quote(user)} {quote(password)}", timeout=30)[-1]
        if not _ok(resp):
            tally.record(user, "login answered " + resp.decode(errors="replace").split(" ", 2)[1])
            return False
        tally.record(user, "ok")
        conn.command("s", "SELECT INBOX", timeout=30)
        conn.command("f", "UID FETCH 1:* (FLAGS)", timeout=30)
        end = time.monotonic() + hold
        while time.monotonic() < end and not (stop is not None and stop.is_set()):
            time.sleep(min(1.0, max(0.0, end - time.monotonic())))
        return True
    except (ServerClosed, OSError):
        tally.record(user, "connection lost")
        return False
    finally:
        _logout(conn)


def legit_loop(gw: HasEndpoint, ip: str, user: str, password: str, tally: LegitTally,
               interval: float, stop: threading.Event) -> None:
    """A user who checks mail every ``interval`` seconds until ``stop``."""
    while not stop.is_set():
        legit_session(gw, ip, user, password, tally)
        stop.wait(interval)


def office_user(gw: HasEndpoint, ip: str, user: str, password: str, tally: LegitTally, *,
                arrive_after: float, hold: float, retry_after: float,
                stop: threading.Event) -> None:
    """An office worker behind NAT: arrives, opens the mail client (which keeps its
    connection for ``hold`` seconds); when refused, the client retries after ``retry_after``."""
    if stop.wait(arrive_after):
        return
    while not stop.is_set():
        if legit_session(gw, ip, user, password, tally, hold=hold, stop=stop):
            return
        stop.wait(retry_after)


def stale_phone(gw: HasEndpoint, ip: str, user: str, old_password: str, tally: AttackTally,
                interval: float, stop: threading.Event) -> None:
    """A phone with a saved password that was changed: it reconnects and retries the same
    wrong password every ``interval`` seconds, forever."""
    work: deque = deque()
    lock = threading.Lock()
    while not stop.is_set():
        work.append((user, old_password))
        attacker(gw, ip, work, lock, tally, stop_at=time.monotonic() + ANSWER_TIMEOUT)
        stop.wait(interval)
