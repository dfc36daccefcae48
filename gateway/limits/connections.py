"""Connection caps of one gateway process: per-IP concurrency, per-IP rate, global total.

In-process on purpose: these protect this process's sockets and memory, so the numbers
that matter are local. (Bans, which must hold across instances, live in the Limiter.)

Cost and size: ``try_open``/``close`` are O(1) amortised. Memory is bounded: at most
``max_tracked_ips`` idle addresses are remembered (the least recently seen are forgotten
first), plus the addresses that hold open connections, which ``max_connections`` bounds.
Forgetting an idle address only forgets its recent rate, so a flood of new addresses
cannot grow memory, and at worst lets a forgotten address reconnect a little sooner.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from gateway.config import LimitsConfig
from gateway.limits.decisions import ConnectDecision, ConnectionTicket
from gateway.limits.rules import canonical_ip, is_allow_listed
from gateway.netaddr import IPNetwork

RATE_WINDOW = 60.0  # max_connection_rate_per_ip is per minute


@dataclass
class _PerIP:
    active: int = 0
    recent: deque[float] = field(default_factory=deque)  # admission times, oldest first


class ConnectionTracker:
    """Admit or refuse new connections; every admitted one must be ``close``d exactly once
    (extra closes of the same ticket are ignored, so a ``finally`` is always safe).

    Allow-listed networks are exempt from the per-IP caps (a webmail host or load balancer
    legitimately opens many connections), never from the global ``max_connections``.
    """

    def __init__(
        self,
        *,
        max_connections_per_ip: int,
        max_connections: int,
        max_connection_rate_per_ip: int,
        allow: Iterable[IPNetwork] = (),
        max_tracked_ips: int = 100_000,
    ) -> None:
        self.max_per_ip = max_connections_per_ip
        self.max_total = max_connections
        self.max_rate = max_connection_rate_per_ip
        self.allow = tuple(allow)
        self.max_tracked_ips = max_tracked_ips
        self.total = 0
        self._ips: OrderedDict[str, _PerIP] = OrderedDict()
        self._open: set[int] = set()
        self._authenticated: set[int] = set()
        self._serial = itertools.count(1)

    @classmethod
    def from_config(
        cls, limits: LimitsConfig, *, max_tracked_ips: int = 100_000
    ) -> ConnectionTracker:
        """The caps of the validated ``[limits]`` section (``config.limits``)."""
        return cls(
            max_connections_per_ip=limits.max_connections_per_ip,
            max_connections=limits.max_connections,
            max_connection_rate_per_ip=limits.max_connection_rate_per_ip,
            allow=limits.allow_networks,
            max_tracked_ips=max_tracked_ips,
        )

    def __len__(self) -> int:
        """Addresses currently remembered (for memory-bound checks)."""
        return len(self._ips)

    def active(self, ip: str) -> int:
        e = self._ips.get(canonical_ip(ip))
        return 0 if e is None else e.active

    def try_open(self, ip: str, now: float) -> ConnectDecision:
        """Admit a connection from ``ip`` at ``now``, or say which cap refused it.

        Refusals do not count toward the rate, so the client is readmitted as soon as its
        oldest admission in the last minute ages out.
        """
        ip = canonical_ip(ip)
        if self.total >= self.max_total:
            return ConnectDecision(False, "max_connections")
        exempt = is_allow_listed(ip, self.allow)
        e = self._ips.get(ip)
        if e is None:
            e = _PerIP()
        while e.recent and e.recent[0] <= now - RATE_WINDOW:
            e.recent.popleft()
        if not exempt:
            if e.active >= self.max_per_ip:
                return ConnectDecision(False, "max_connections_per_ip")
            if len(e.recent) >= self.max_rate:
                return ConnectDecision(False, "max_connection_rate_per_ip")
            e.recent.append(now)
        e.active += 1
        self.total += 1
        self._ips[ip] = e
        self._ips.move_to_end(ip)
        self._evict()
        ticket = ConnectionTicket(ip=ip, serial=next(self._serial), exempt=exempt)
        self._open.add(ticket.serial)
        return ConnectDecision(True, "ok", ticket=ticket)

    def authenticated(self, ticket: ConnectionTicket) -> None:
        """The connection logged in: it stops counting against its address's caps.

        The per-IP caps are there to stop floods of unauthenticated connections (scans,
        slow clients, brute force). An office behind one NAT address holds many logged-in
        sessions and reconnects all day; counting those would lock its users out of each
        other (measured: 22 of 50 users behind one address refused with the defaults).
        So a successful login gives back its concurrency slot and its rate admission. The
        global ``max_connections`` still counts it. Idempotent.
        """
        if ticket.serial not in self._open or ticket.serial in self._authenticated:
            return
        self._authenticated.add(ticket.serial)
        e = self._ips.get(ticket.ip)
        if e is None:
            return
        if e.active > 0:
            e.active -= 1
        if e.recent and not ticket.exempt:
            e.recent.pop()

    def close(self, ticket: ConnectionTicket) -> None:
        """Give back the slot of an admitted connection; idempotent."""
        if ticket.serial not in self._open:
            return
        self._open.discard(ticket.serial)
        self.total -= 1
        if ticket.serial in self._authenticated:
            self._authenticated.discard(ticket.serial)
            return
        e = self._ips.get(ticket.ip)
        if e is not None and e.active > 0:
            e.active -= 1

    def _evict(self) -> None:
        # Walk from the least recently admitted; skip (and keep) addresses with open
        # connections. Their number is bounded by max_connections, so this terminates
        # and the dict never exceeds max_tracked_ips + max_connections.
        if len(self._ips) <= self.max_tracked_ips:
            return
        for ip in list(self._ips):
            if len(self._ips) <= self.max_tracked_ips:
                break
            if self._ips[ip].active == 0:
                del self._ips[ip]
