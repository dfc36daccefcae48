"""Anomaly detectors: counting in shared state, thresholds from ``[anomaly]``.

Theory of operation
-------------------
Each ``observe_*`` call adds what happened to a few sliding windows in the
``StateBackend`` (the same one the limiter uses, so detection spans every gateway
instance) and compares the counts with the thresholds. A detector that fires raises an
``Anomaly`` once per kind and subject per window: the first instance to claim the
``set_once`` flag reports it, the rest stay quiet, so a long attack is one event per
window and not one per failed login.

What each kind counts (all over ``[anomaly] window``):

====================== ==================================== ===========================
kind                   counted                              subject
====================== ==================================== ===========================
password_spray         distinct users failing from one       ip, else subnet
                       IP (or one subnet); and (counted by
                       the limiter, ``[anomaly]
                       spray_password_*``) distinct users    the password's keyed
                       one password was tried against, from  fingerprint (never in
                       any source                            the event)
credential_stuffing    distinct failing IPs, distinct        none (the whole gateway)
                       failing users, failures/(attempts);
                       or distinct failing users without a
                       familiar network (``stuffing_unknown_users``)
distributed_brute_force distinct IPs failing for one user;   user
                       or (the limiter, ``[limits]
                       user_fail_networks``) distinct
                       unfamiliar networks trying it
new_network_for_user   a success from a network not among    user
                       the user's familiar networks
plaintext_login_attempt credentials offered before TLS       ip
high_volume_fetch      bytes sent to one session / user      session, user
mass_delete            messages expunged/moved by one user   user
====================== ==================================== ===========================

The detector only reports (``action="logged"``); the limiter decides tarpits and bans
and rewrites ``action`` accordingly. Nothing secret is stored or reported: users,
addresses and counts only.
"""

from __future__ import annotations

from collections.abc import Sequence

from gateway.anomaly.model import Anomaly, AnomalyKind
from gateway.config import AnomalyConfig
from gateway.limits.state import DEFAULT_CAP, Op, StateBackend

_K = "an:"  # key namespace of the detectors inside the shared state


class AnomalyDetector:
    """Feeds: ``observe_login_failure``, ``observe_login_success``,
    ``observe_plaintext_attempt``, ``observe_bytes``, ``observe_expunge``.

    Each returns the anomalies that fired on this observation (usually none). Pass the
    same wall clock to every call (see ``gateway.limits.redis_state``).
    """

    def __init__(self, state: StateBackend, config: AnomalyConfig | None = None) -> None:
        self.state = state
        self.config = config if config is not None else AnomalyConfig.model_validate({})
        s = self.config
        # Distinct counts saturate at the cap; keep it well above every threshold.
        self._cap = max(
            DEFAULT_CAP,
            2 * max(s.spray_distinct_users, s.stuffing_distinct_ips,
                    s.stuffing_distinct_users, s.distributed_brute_force_ips,
                    s.stuffing_unknown_users),
        )

    async def claim(self, kind: AnomalyKind, subject: str, now: float) -> bool:
        """Claim the right to report ``kind`` about ``subject`` for this window (the
        limiter reports what it detects itself through this too, so each is raised once)."""
        return await self.state.set_once(f"{_K}seen:{kind}:{subject}", now, self.config.window)

    _once = claim

    async def observe_login_failure(
        self, user: str, ip: str, subnet: str, now: float, *, unknown_user: bool = False
    ) -> list[Anomaly]:
        """A failed login of ``user`` from ``ip`` (in ``subnet``). ``unknown_user``: the
        user has no familiar network (never logged in lately: unknown or dormant)."""
        s, w = self.config, self.config.window
        entries = [
            (f"{_K}spray:ip:{ip}", user),
            (f"{_K}spray:net:{subnet}", user),
            (f"{_K}stuff:ips", ip),
            (f"{_K}stuff:users", user),
            (f"{_K}dbf:{user}", ip),
        ]
        if unknown_user:
            entries.append((f"{_K}stuff:unknown", user))
        counts, failures, successes = await self.state.batch([  # one round trip
            ("window_add", (entries, now, w, self._cap)),
            ("counter_add", (f"{_K}stuff:failures", 1, now, w)),
            ("counter_add", (f"{_K}stuff:successes", 0, now, w)),
        ])
        spray_ip, spray_net, fail_ips, fail_users, dbf = counts[:5]
        unknown = counts[5] if unknown_user else 0
        found: list[Anomaly] = []

        if spray_ip >= s.spray_distinct_users:
            if await self._once("password_spray", f"ip:{ip}", now):
                found.append(Anomaly("password_spray", ip=ip, subnet=subnet,
                                     evidence={"distinct_users": spray_ip}))
        elif spray_net >= s.spray_distinct_users:
            if await self._once("password_spray", f"net:{subnet}", now):
                found.append(Anomaly("password_spray", subnet=subnet,
                                     evidence={"distinct_users": spray_net}))

        ratio = failures / (failures + successes)
        if (fail_ips >= s.stuffing_distinct_ips and fail_users >= s.stuffing_distinct_users
                and ratio >= s.stuffing_failure_ratio):
            if await self._once("credential_stuffing", "*", now):
                found.append(Anomaly("credential_stuffing", evidence={
                    "distinct_ips": fail_ips, "distinct_users": fail_users,
                    "failures": failures, "successes": successes,
                    "failure_ratio": round(ratio, 3),
                }))

        if unknown >= s.stuffing_unknown_users:
            # Many accounts nobody has logged in to lately, failing from anywhere: a list
            # of names (and passwords) being tried, however the sources are spread.
            if await self._once("credential_stuffing", "*", now):
                found.append(Anomaly("credential_stuffing", evidence={
                    "scope": "unknown_accounts", "distinct_unknown_users": unknown,
                    "distinct_ips": fail_ips}))

        if dbf >= s.distributed_brute_force_ips:
            if await self._once("distributed_brute_force", f"user:{user}", now):
                found.append(Anomaly("distributed_brute_force", user=user,
                                     evidence={"distinct_ips": dbf}))
        return found

    def success_op(self, now: float) -> Op:
        """The state operation that counts one successful login (for the stuffing ratio),
        for a caller that sends it in its own batch and then passes ``counted=True`` to
        ``observe_login_success``."""
        return ("counter_add", (f"{_K}stuff:successes", 1, now, self.config.window))

    async def observe_login_success(
        self, user: str, ip: str, now: float, *, subnet: str,
        previous_networks: Sequence[str], counted: bool = False,
    ) -> list[Anomaly]:
        """A successful login. ``previous_networks`` are the user's familiar networks before
        this login (the limiter knows them); a first-ever login raises nothing, since every
        user's first network would otherwise be an "anomaly". ``counted``: the caller
        already ran ``success_op``."""
        if not counted:
            await self.state.counter_add(f"{_K}stuff:successes", 1, now, self.config.window)
        if not previous_networks or subnet in previous_networks:
            return []
        if not await self._once("new_network_for_user", f"user:{user}:{subnet}", now):
            return []
        return [Anomaly("new_network_for_user", user=user, ip=ip, subnet=subnet, evidence={
            "previous_networks": sorted(previous_networks),
            "previous_network_count": len(previous_networks),
        })]

    async def observe_plaintext_attempt(
        self, ip: str, now: float, *, user: str | None = None, subnet: str | None = None
    ) -> list[Anomaly]:
        """Credentials (LOGIN/AUTHENTICATE) offered on a connection without TLS. The gateway
        already refused them; this tells the operator which client is misconfigured (or
        which scanner is fishing)."""
        n = await self.state.counter_add(f"{_K}plain:{ip}", 1, now, self.config.window)
        if not await self._once("plaintext_login_attempt", f"ip:{ip}", now):
            return []
        return [Anomaly("plaintext_login_attempt", user=user, ip=ip, subnet=subnet,
                        evidence={"attempts": n})]

    async def observe_bytes(
        self, session_id: str, user: str, n: int, now: float, *, ip: str | None = None
    ) -> list[Anomaly]:
        """``n`` bytes sent from the backend to ``user``'s session ``session_id``.

        Each call is a state round trip: call it per response batch or every few hundred
        KiB, not per socket read.
        """
        s, w = self.config, self.config.window
        per_session = await self.state.counter_add(f"{_K}bytes:s:{session_id}", n, now, w)
        per_user = await self.state.counter_add(f"{_K}bytes:u:{user}", n, now, w)
        found = []
        if per_session >= s.high_volume_fetch_bytes and await self._once(
                "high_volume_fetch", f"session:{session_id}", now):
            found.append(Anomaly("high_volume_fetch", user=user, ip=ip, evidence={
                "scope": "session", "session_id": session_id, "bytes": per_session}))
        if per_user >= s.high_volume_fetch_bytes and await self._once(
                "high_volume_fetch", f"user:{user}", now):
            found.append(Anomaly("high_volume_fetch", user=user, ip=ip, evidence={
                "scope": "user", "bytes": per_user}))
        return found

    async def observe_expunge(
        self, user: str, count: int, now: float, *, ip: str | None = None
    ) -> list[Anomaly]:
        """``count`` messages removed by EXPUNGE (or moved away by MOVE) for ``user``."""
        total = await self.state.counter_add(f"{_K}del:{user}", count, now, self.config.window)
        if total >= self.config.mass_delete_messages and await self._once(
                "mass_delete", f"user:{user}", now):
            return [Anomaly("mass_delete", user=user, ip=ip, evidence={"messages": total})]
        return []
