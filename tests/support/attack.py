"""Scripted logins from chosen loopback addresses, for the limiter and anomaly e2e tests.

127.0.0.0/8 is all local on Linux, so a client socket bound to 127.0.1.x reaches the
gateway at 127.0.0.1 and the gateway sees 127.0.1.x as the peer. Convention in these
tests: 127.0.1.x are attackers, 127.0.2.x/127.0.3.x are the real users' networks,
127.0.4.x an allow-listed office.

Every attempt is its own connection (what a brute-force tool or a phone retrying does),
so one attempt's tarpit never delays the next one's greeting.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .imap import LineClient, ServerClosed
from .net import free_port

AUTH_FAILED = b"NO [AUTHENTICATIONFAILED]"
REFUSED = b"* BYE [UNAVAILABLE]"


@dataclass(frozen=True)
class Attempt:
    """What the client saw: the greeting, the tagged LOGIN answer (b"" when the gateway
    refused at connect) and how long the LOGIN took to be answered."""

    greeting: bytes
    answer: bytes
    seconds: float

    @property
    def refused_at_connect(self) -> bool:
        return self.greeting.startswith(REFUSED)

    @property
    def ok(self) -> bool:
        return self.answer.startswith(b"a OK")

    @property
    def failed(self) -> bool:
        return self.answer.startswith(b"a " + AUTH_FAILED)


def attempt_login(gw: Any, user: str, password: str, *, source: str,
                  timeout: float = 15.0) -> Attempt:
    """One LOGIN over implicit TLS from ``source``; the timer covers only the LOGIN
    command (not connect or handshake), so it measures the gateway's answer delay."""
    with LineClient.implicit(gw, source=source, timeout=timeout) as c:
        if not c.greeting.startswith(b"* OK"):
            return Attempt(c.greeting, b"", 0.0)
        started = time.monotonic()
        answer = c.command("a", f'LOGIN "{user}" "{password}"', timeout=timeout)[-1]
        seconds = time.monotonic() - started
        try:
            c.command("z", "LOGOUT", timeout=2)
        except (ServerClosed, TimeoutError, OSError):
            pass
    return Attempt(c.greeting, answer, seconds)


def attempt_all(gw: Any, attempts: list[tuple[str, str, str]], *,
                workers: int = 8) -> list[Attempt]:
    """``attempt_login`` for each (user, password, source), concurrently (I/O-bound: the
    rig's Dovecot takes ~0.5 s to refuse a password). Results are in input order. Only for
    attempts whose relative order does not matter to the test."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(attempt_login, gw, u, p, source=s) for u, p, s in attempts]
        return [f.result() for f in futures]


def greeting_from(gw: Any, source: str, timeout: float = 5.0) -> bytes:
    """The first line the gateway sends a new implicit-TLS connection from ``source``."""
    with LineClient.implicit(gw, source=source, timeout=timeout) as c:
        return c.greeting


def fast_limits(**overrides: Any) -> dict[str, Any]:
    """``[limits]`` for quick tests: no constant failure delay, tiny tarpit, and every
    threshold high enough that only the ones a test lowers can fire."""
    base: dict[str, Any] = {
        "auth_failure_delay": "0s",
        "tarpit_base": "0s",
        "tarpit_max": "0s",
        "ip_fail_threshold": 100,
        "subnet_fail_threshold": 200,
        "user_fail_threshold": 100,
        "user_ip_fail_threshold": 100,
        "ban_ttl": "10m",
        "ban_ttl_max": "1h",
    }
    base.update(overrides)
    return base


def quiet_anomalies(**overrides: Any) -> dict[str, Any]:
    """``[anomaly]`` with every detector's threshold out of reach except those overridden,
    so a test sees only the kind it provokes."""
    base: dict[str, Any] = {
        "window": "10m",
        "spray_distinct_users": 1000,
        "stuffing_distinct_ips": 1000,
        "stuffing_distinct_users": 1000,
        "distributed_brute_force_ips": 1000,
        "high_volume_fetch_bytes": 1 << 40,
        "mass_delete_messages": 1_000_000,
    }
    base.update(overrides)
    return base


def metrics_on() -> dict[str, str]:
    """``[metrics]`` on a free loopback port (the factory retries if it gets taken)."""
    return {"address": f"127.0.0.1:{free_port()}"}
