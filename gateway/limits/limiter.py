"""The limiter: failed-login counting, tarpits, bans and smart lockout.

Theory of operation
-------------------
Four sliding windows of ``[limits] fail_window`` count failed logins: per client IP, per
subnet (/24, /64), per user, per (user, IP). A failure is identified by its attempt
fingerprint (HMAC of user and password, computed by the shell; the limiter never sees
the password), and the windows hold distinct fingerprints: a phone retrying the same
stale password counts once, an attacker trying new passwords counts every time.

Escalation, from mild to hard:

1. tarpit: the NO is delayed ``tarpit_base * 2**(n-1)`` (at most ``tarpit_max``), where n
   is the larger of the IP's and the (user, IP) pair's failure count;
2. ban: at ``ip_fail_threshold`` the IP, at ``subnet_fail_threshold`` the subnet, is banned
   for ``ban_ttl * 2**(offences-1)`` (at most ``ban_ttl_max``); offences are remembered
   for ``offence_memory``. A ban restarts that source's failure window, so after it ends
   the source gets a fresh threshold, and a longer ban if it offends again;
3. anomalies (``gateway.anomaly``): a password spray from one source bans it too.

Smart lockout (why a per-user limit cannot lock a victim out): a successful login makes
the user's subnet "familiar" for ``familiar_ttl``. The per-user and per-(user, IP)
thresholds only block logins from unfamiliar networks, and failures from a familiar
network do not count toward the per-user threshold. An attacker elsewhere can make the
user's account refuse *password-only* logins from *other* unfamiliar networks, never from
the networks the user actually uses, and never a login with a second factor (an app
password, a TOTP code, a remembered or approved device: ``LoginGate.second_factor_passes``).
The attacker's cost is the lockout's whole point (their guesses stop reaching the
backend); the user's is to bring a second factor while travelling.

Attacks spread thin (each source under every per-address threshold) are caught by what
does not depend on the source, counted in ``check_login`` as each password login arrives,
before the password is checked, so a burst from many networks in parallel cannot all
reach the backend before its failures are counted:

* a password (``spray_key``: a user-independent keyed fingerprint) tried against
  ``[anomaly] spray_password_users`` accounts from networks not familiar to them within
  ``spray_password_window``: a ``password_spray``; that password is refused from networks
  not familiar to the account (``sprayed_password``);
* an account tried from ``[limits] user_fail_networks`` networks not familiar to it within
  ``fail_window`` (a network where the user then logged in no longer counts): a
  ``distributed_brute_force``; password-only logins from unfamiliar networks are refused
  (``user_networks``).

``record_failure`` counts the same two (idempotently), for callers that report failures
without asking ``check_login`` first (Dovecot's auth policy for POP3/SMTP).

``[limits] allow_networks`` are never banned (and exempt from IP-wide tarpits); their
failures are still counted and their anomalies still raised.

All methods take the clock ``now`` (wall-clock seconds). They are async only because the
state may be Redis; the decisions themselves are the pure rules in ``gateway.limits.rules``.
User names are case-folded so "Alice" and "ALICE" share counters.
"""

from __future__ import annotations

import dataclasses

from gateway.anomaly.detectors import AnomalyDetector
from gateway.anomaly.model import Anomaly
from gateway.config import AnomalyConfig, LimitsConfig
from gateway.limits.decisions import (
    Ban,
    BanScope,
    ConnectDecision,
    FailureOutcome,
    LoginGate,
    SuccessOutcome,
)
from gateway.limits.fallback import FallbackState
from gateway.limits.rules import (
    ban_ttl,
    canonical_ip,
    covering_network_keys,
    host_network,
    is_allow_listed,
    normalize_network,
    overlaps_allow_list,
    subnet_of,
    tarpit_seconds,
)
from gateway.limits.state import BanAdmin, StateBackend

_K = "lim:"
_FAMILIAR_CAP = 64  # networks remembered per user; the most recently used win


_SPRAY_CAP = 256  # accounts remembered per sprayed password; far above spray_password_users


def _refused(found: list[Anomaly]) -> tuple[Anomaly, ...]:
    """The anomalies of a login the gate refused, saying so."""
    return tuple(dataclasses.replace(a, action="refused") for a in found)


#: The widest network an administrator may ban in one go (a typo must not lock out everyone).
MIN_ADMIN_BAN_PREFIX = {4: 8, 6: 16}


class BanRefused(ValueError):
    """An admin ban would cover an allow-listed network (``[limits] allow_networks``)."""


class Limiter:
    """Decisions for the shell: ``check_connect``, ``check_login``, ``record_failure``,
    ``record_success``; and ban administration: ``list_bans``, ``add_ban``, ``remove_ban``.

    ``anomalies`` is the detector the limiter feeds on logins; the shell feeds it the rest
    (``observe_plaintext_attempt``, ``observe_bytes``, ``observe_expunge``).

    ``limits`` and ``anomaly`` are the validated ``[limits]`` and ``[anomaly]`` sections
    (``config.limits``, ``config.anomaly``); omitted, every key has its default.
    """

    def __init__(
        self,
        state: StateBackend,
        limits: LimitsConfig | None = None,
        anomaly: AnomalyConfig | None = None,
    ) -> None:
        self.state = state
        #: Ban administration: never a local fallback (gateway.limits.fallback).
        self.bans: BanAdmin = state.shared if isinstance(state, FallbackState) else state
        self.limits = limits if limits is not None else LimitsConfig.model_validate({})
        self.anomalies = AnomalyDetector(state, anomaly)

    # -- helpers ----------------------------------------------------------------------

    def subnet(self, ip: str) -> str:
        s = self.limits
        return subnet_of(ip, s.subnet_v4_prefix, s.subnet_v6_prefix)

    def is_allow_listed(self, ip: str) -> bool:
        return is_allow_listed(ip, self.limits.allow_networks)

    async def _ban(self, scope: BanScope, network: str, reason: str, now: float) -> Ban:
        s = self.limits
        offences = await self.state.incr(f"{_K}off:{network}", now, s.offence_memory)
        ttl = ban_ttl(offences, s.ban_ttl, s.ban_ttl_max)
        ban = Ban(scope=scope, network=network, reason=reason, created=now,
                  expires=now + ttl, source="auto")
        await self.state.ban_put(ban, now)
        return ban

    # -- connection and login gates ---------------------------------------------------

    async def check_connect(self, ip: str, now: float) -> ConnectDecision:
        """Is ``ip`` banned (as a host, as a subnet, or inside any admin-banned network)?

        Allow-listed addresses are always admitted. Connection counts and rates are the
        ``ConnectionTracker``'s job (in-process); this is the shared ban check.
        """
        keys = self.connect_ban_keys(ip)
        bans = [] if keys is None else await self.state.ban_get(keys, now)
        return self.connect_decision(ip, bans)

    def connect_ban_keys(self, ip: str) -> list[str] | None:
        """The state keys whose bans refuse ``ip`` at connect; None when allow-listed (no
        ban applies). With ``connect_decision``: ``check_connect`` for a caller that looks
        the bans up itself (a worker asks the supervisor together with the caps)."""
        ip = canonical_ip(ip)
        return None if self.is_allow_listed(ip) else list(covering_network_keys(ip))

    def connect_decision(self, ip: str, bans: list[Ban]) -> ConnectDecision:
        """``check_connect``'s answer given the active bans under ``connect_ban_keys(ip)``."""
        if self.is_allow_listed(canonical_ip(ip)):
            return ConnectDecision(True, "allow_listed")
        if bans:
            ban = max(bans, key=lambda b: b.expires)
            return ConnectDecision(False, f"banned:{ban.reason}", ban)
        return ConnectDecision(True, "ok")

    async def check_login(
        self, user: str, ip: str, now: float, *, fingerprint: bytes | None = None,
        spray_key: bytes | None = None, protocol: str = "imap",
    ) -> LoginGate:
        """May ``user`` attempt a login from ``ip`` now (asked before verifying anything)?

        Blocks a banned source (hard), and, only from networks where the user has not
        logged in recently (smart lockout), a user under attack: too many failures
        (``user_lockout``, ``user_ip_failures``), too many networks trying the password
        (``user_networks``), or a password being sprayed (``sprayed_password``). Those
        lockouts let a second factor pass (``LoginGate.second_factor_passes``).

        ``fingerprint``: the attempt fingerprint of a login that carries a password (as
        for ``record_failure``). From an unfamiliar network it is counted now, before the
        password is checked, in the user's and the (user, IP) failure windows, and the
        network in the networks that tried the user: so attempts in flight in parallel
        (from one address or from many networks) cannot all reach the backend before their
        failures are counted. A failure adds the same again (no second count); a success
        clears the (user, IP) window as before. ``spray_key`` is the user-independent
        fingerprint of the secret (``HMAC(spray secret, password)[:8]``; None when
        unknown), counted the same way. The client gets the same generic NO as for a
        wrong password; the reason is for logs.
        """
        s = self.limits
        ip, user = canonical_ip(ip), user.casefold()
        subnet = self.subnet(ip)
        # The three reads in one round trip (they do not depend on each other).
        allow = self.is_allow_listed(ip)
        bans, (user_n, pair_n), familiar_networks = await self.state.batch([
            ("ban_get", ([] if allow else covering_network_keys(ip), now)),
            ("window_count", ([f"{_K}f:u:{user}", f"{_K}f:ui:{user}|{ip}"], now,
                              s.fail_window)),
            ("window_members", (f"{_K}fam:{user}", now, s.familiar_ttl)),
        ])
        if bans:
            return LoginGate(False, f"banned:{bans[0].reason}")
        if subnet in familiar_networks:
            calm = user_n < s.user_fail_threshold and pair_n < s.user_ip_fail_threshold
            return LoginGate(True, "ok" if calm else "familiar_network")

        # From here on the network is not familiar to the user.
        found: list[Anomaly] = []
        if spray_key is not None:
            users, new = await self._count_spray(user, spray_key, now, protocol)
            found += new
            if users >= self.anomalies.config.spray_password_users:
                return LoginGate(False, "sprayed_password", True, _refused(found))
        if fingerprint is not None:
            fp = fingerprint.hex()
            # The failure thresholds below compare the counts from before this attempt
            # (as after sequential failures); attempts still in flight are in them now.
            tried, _, _ = await self.state.window_add(
                [(f"{_K}un:{user}", subnet), (f"{_K}f:ui:{user}|{ip}", fp),
                 (f"{_K}f:u:{user}", fp)], now, s.fail_window)
            if tried >= s.user_fail_networks:
                networks, new = await self._count_networks(user, familiar_networks, now,
                                                            protocol)
                found += new
                if networks >= s.user_fail_networks:
                    return LoginGate(False, "user_networks", True, _refused(found))
        if pair_n >= s.user_ip_fail_threshold:
            return LoginGate(False, "user_ip_failures", True, tuple(found))
        if user_n >= s.user_fail_threshold:
            return LoginGate(False, "user_lockout", True, tuple(found))
        return LoginGate(True, "ok", anomalies=tuple(found))

    async def _count_spray(
        self, user: str, spray_key: bytes, now: float, protocol: str
    ) -> tuple[int, list[Anomaly]]:
        """Add ``user`` to the accounts this password was tried against (from networks not
        familiar to them); report a spray the first time the count reaches the threshold."""
        a = self.anomalies.config
        key = spray_key.hex()
        (users,) = await self.state.window_add(
            [(f"{_K}pw:{key}", user)], now, a.spray_password_window, _SPRAY_CAP)
        found = []
        if users >= a.spray_password_users and await self.anomalies.claim(
                "password_spray", f"pw:{key}", now):
            # The fingerprint stays out of the event: it is a (keyed) hash of a password.
            found.append(Anomaly("password_spray", protocol=protocol, evidence={
                "scope": "password", "distinct_users": users}))
        return users, found

    async def _count_networks(
        self, user: str, familiar: list[str], now: float, protocol: str
    ) -> tuple[int, list[Anomaly]]:
        """Networks that tried ``user``'s password within the window and are still not
        familiar (a network where the user then logged in no longer counts)."""
        s = self.limits
        tried = await self.state.window_members(f"{_K}un:{user}", now, s.fail_window)
        networks = len(set(tried) - set(familiar))
        found = []
        if networks >= s.user_fail_networks and await self.anomalies.claim(
                "distributed_brute_force", f"user:{user}", now):
            found.append(Anomaly("distributed_brute_force", user=user, protocol=protocol,
                                 evidence={"distinct_networks": networks}))
        return networks, found

    # -- outcomes ---------------------------------------------------------------------

    async def record_failure(
        self, user: str, ip: str, fingerprint: bytes, now: float, *,
        protocol: str = "imap", spray_key: bytes | None = None,
    ) -> FailureOutcome:
        """Count a failed login and say how to answer it (tarpit) and what it triggered.

        ``fingerprint`` is ``HMAC-SHA256(process_secret, user + "\\0" + password)[:8]``;
        only its hex form is stored. ``spray_key`` is the user-independent fingerprint
        (see ``check_login``), None when the caller has none (Dovecot's auth policy
        reports carry only a per-user hash). ``protocol`` goes into the anomalies raised.
        """
        s = self.limits
        ip, user = canonical_ip(ip), user.casefold()
        subnet = self.subnet(ip)
        allow = self.is_allow_listed(ip)
        fp = fingerprint.hex()
        # Both reads in one round trip: the gate's adds below touch neither key.
        familiar_networks, duplicate = await self.state.batch([
            ("window_members", (f"{_K}fam:{user}", now, s.familiar_ttl)),
            ("window_contains", (f"{_K}fp:{user}", fp, now, s.fail_window)),
        ])
        familiar = subnet in familiar_networks
        keys = {
            "ip": f"{_K}f:ip:{ip}",
            "subnet": f"{_K}f:net:{subnet}",
            "user_ip": f"{_K}f:ui:{user}|{ip}",
            "user": f"{_K}f:u:{user}",
        }
        gate_anomalies: list[Anomaly] = []
        if not familiar:
            # What check_login counts at the gate, for callers that report failures
            # without asking it first (Dovecot's auth policy); adding again is a no-op.
            await self.state.window_add([(f"{_K}un:{user}", subnet)], now, s.fail_window)
            if spray_key is not None:
                gate_anomalies += (await self._count_spray(user, spray_key, now, protocol))[1]
        if duplicate:
            values = await self.state.window_count(list(keys.values()), now, s.fail_window)
        else:
            # Failures from a familiar network do not count against the user account:
            # only the owner's own typos happen there.
            entries = [(k, fp) for name, k in keys.items() if name != "user" or not familiar]
            entries.append((f"{_K}fp:{user}", fp))
            added = await self.state.window_add(entries, now, s.fail_window)
            values = added[:-1]
            if familiar:
                values.append((await self.state.window_count([keys["user"]], now,
                                                              s.fail_window))[0])
        counts = dict(zip(keys, values, strict=True))

        tarpit_n = counts["user_ip"] if allow else max(counts["ip"], counts["user_ip"])
        tarpit = tarpit_seconds(tarpit_n, s.tarpit_base, s.tarpit_max)

        new_bans: list[Ban] = []
        banned: set[str] = set()
        if not allow:
            banned = {b.network for b in await self.state.ban_get(covering_network_keys(ip), now)}
            if counts["ip"] >= s.ip_fail_threshold and host_network(ip) not in banned:
                new_bans.append(await self._ban("ip", host_network(ip), "ip_failures", now))
                await self.state.delete([keys["ip"]])
            if counts["subnet"] >= s.subnet_fail_threshold and subnet not in banned:
                new_bans.append(await self._ban("subnet", subnet, "subnet_failures", now))
                await self.state.delete([keys["subnet"]])
            banned |= {b.network for b in new_bans}

        anomalies = []
        observed = await self.anomalies.observe_login_failure(
            user, ip, subnet, now, unknown_user=not familiar_networks)
        for a in [*gate_anomalies, *observed]:
            a = dataclasses.replace(a, protocol=protocol)
            spray_ban = (a.kind == "password_spray" and not allow
                         and self.anomalies.config.spray_action == "ban")
            if spray_ban:
                scope: BanScope = "ip" if a.ip is not None else "subnet"
                target = host_network(ip) if a.ip is not None else subnet
                if target not in banned:
                    new_bans.append(await self._ban(scope, target, "password_spray", now))
                    banned.add(target)
                a = dataclasses.replace(a, action="banned")
            elif tarpit > 0:
                a = dataclasses.replace(a, action="tarpitted")
            anomalies.append(dataclasses.replace(a, protocol=protocol))
        return FailureOutcome(tarpit_seconds=tarpit, new_bans=tuple(new_bans),
                              anomalies=tuple(anomalies), duplicate=duplicate, counts=counts)

    async def record_success(
        self, user: str, ip: str, now: float, *, protocol: str = "imap"
    ) -> SuccessOutcome:
        """A successful login: the user's subnet becomes familiar (exempt from the user
        lockout there) and the (user, IP) failure count is cleared. Raises
        ``new_network_for_user`` (carrying ``protocol``) when the subnet is new and the
        user had others."""
        s = self.limits
        ip, user = canonical_ip(ip), user.casefold()
        subnet = self.subnet(ip)
        fam_key = f"{_K}fam:{user}"
        previous, _, _, _ = await self.state.batch([
            ("window_members", (fam_key, now, s.familiar_ttl)),
            ("window_add", ([(fam_key, subnet)], now, s.familiar_ttl, _FAMILIAR_CAP)),
            ("delete", ([f"{_K}f:ui:{user}|{ip}"],)),
            self.anomalies.success_op(now),
        ])
        anomalies: list[Anomaly] = [
            dataclasses.replace(a, protocol=protocol)
            for a in await self.anomalies.observe_login_success(
                user, ip, now, subnet=subnet, previous_networks=previous, counted=True)
        ]
        return SuccessOutcome(anomalies=tuple(anomalies), new_network=subnet not in previous)

    # -- ban administration (imap-gateway bans list|add|remove) -------------------------

    async def list_bans(self, now: float) -> list[Ban]:
        """Active bans, soonest expiry first."""
        return await self.bans.ban_list(now)

    async def add_ban(
        self, network: str, now: float, *, ttl: float | None = None, reason: str = "admin"
    ) -> Ban:
        """Ban an address or CIDR network for ``ttl`` seconds (default ``ban_ttl_max``).

        A ``ttl`` longer than ``[limits] ban_ttl_max`` is cut to it: an admin ban is a
        tool for an incident, not a permanent block list (a typo such as ``99999999d``
        would otherwise outlive everyone's memory of it). ``ban_ttl_for`` tells the
        caller whether it was cut, so the answer can say so.

        Raises ``BanRefused`` if it overlaps ``[limits] allow_networks`` (those are never
        banned; remove the entry from the allow list first) and ``InvalidAddress`` for text
        that is not an address or network.
        """
        net = normalize_network(network)
        widest = MIN_ADMIN_BAN_PREFIX[net.version]
        if net.prefixlen < widest:
            raise BanRefused(
                f"{net} is wider than /{widest}: that would lock out a large part of the "
                "internet (or everyone); ban narrower networks")
        clash = overlaps_allow_list(net, self.limits.allow_networks)
        if clash is not None:
            raise BanRefused(
                f"{net} overlaps allow-listed {clash} ([limits] allow_networks); "
                "allow-listed networks are never banned"
            )
        ttl, _ = self.ban_ttl_for(ttl)
        scope: BanScope = "ip" if net.prefixlen == net.max_prefixlen else "subnet"
        ban = Ban(scope=scope, network=str(net), reason=reason, created=now,
                  expires=now + ttl, source="admin")
        await self.bans.ban_put(ban, now)
        return ban

    def ban_ttl_for(self, ttl: float | None) -> tuple[float, bool]:
        """The lifetime ``add_ban`` gives a ban asked for ``ttl`` seconds, and whether
        ``[limits] ban_ttl_max`` cut it. ValueError for a ttl that is not > 0."""
        ttl_max = self.limits.ban_ttl_max
        if ttl is None:
            return ttl_max, False
        if not ttl > 0:  # also NaN
            raise ValueError(f"ban ttl must be > 0 seconds, got {ttl}")
        return (ttl_max, True) if ttl > ttl_max else (ttl, False)

    async def remove_ban(self, network: str, now: float) -> bool:
        """Lift the ban of exactly this network (as listed); False if none existed."""
        return await self.bans.ban_delete(str(normalize_network(network)))
