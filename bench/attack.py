"""Scripted attacks through the gateway: what reaches Dovecot, who gets locked out, how fast.

    .venv/bin/python -m bench.attack [--report docs/attack-report.md] [--only a,b,c,d,f,g]

One run starts a fresh Dovecot (the test rig, ``tests/support/rig``, with generated users)
and, for each scenario, a fresh gateway with the ``[limits]`` and ``[anomaly]`` tables of
the shipped ``deploy/gateway.example.toml`` unchanged. Each scenario runs an attack and
legitimate traffic at the same time, from loopback source addresses:

a. password spray: 500 users x 2 passwords from 20 addresses (127.0.10.1-20, 2 connections
   each), while 10 users check mail every 3 s from their own addresses;
b. brute force: one address, one user, 300 passwords (the right one at #200), 16
   connections (hydra's default); the user checks mail from home every 3 s;
c. stale saved password: a phone retries the same old password every 3 s while its owner
   logs in correctly from a laptop every 4 s;
d. NAT office: 50 users behind one address arrive within 20 s, each mail client keeping
   its connection 20 s and retrying 10 s after a refusal, one of their phones with a stale
   password; meanwhile 5 addresses elsewhere spray 100 users;
e. (only with ``--only e``) d again, with the office address in ``[limits] allow_networks``,
   which is what the documentation offers an administrator for a known NAT;
f. spread spray: one password against 400 users from 20 addresses, each in its own /16
   (127.A.B.1), 20 attempts each, 2 connections per address; beside it the 10 mail
   checkers of a, an office of 20 users behind one NAT address and two phones with stale
   saved passwords;
g. spread brute force: one user, 300 passwords (the right one at #200) from 60 addresses in
   60 /16s, 5 each, one connection per address; the user checks mail from home every 3 s,
   with the office and the phones of f beside it.

Measured: attack attempts (client side) against attempts that reached Dovecot (Dovecot's
own auth log: one ``passwd-file(user,rip,...)`` line per failed password check and one
``Login:`` line per success, ``rip`` being the client address the gateway forwarded with
ID), legitimate logins attempted against refused, and the time from the attack's first
packet to the first ``anomaly`` log event of the expected kind and to the first ban.

Everything runs on 127.0.0.0/8, every process is stopped by PID, and each scenario is
time-capped so the whole run stays under 10 minutes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import platform
import re
import shutil
import sys
import tempfile
import threading
import time
import tomllib
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.attack_clients import (
    AttackTally,
    LegitTally,
    attacker,
    legit_loop,
    legit_session,
    office_user,
    stale_phone,
)

REPO = Path(__file__).resolve().parent.parent
SHIPPED_CONFIG = REPO / "deploy" / "gateway.example.toml"
DEFAULT_REPORT = REPO / "docs" / "attack-report.md"
NOTES_MARKER = "<!-- notes: text below this line is kept when the report is regenerated -->"
RIG_USERS = REPO / "tests" / "support" / "rig" / "users"

#: Every bench account uses {PLAIN}: Dovecot's cost per check does not change what is counted.
PASSWORD_ONLY_POLICY = """\
# bench.attack: password-only logins (the shipped 99-default.toml requires MFA)
[[rule]]
name = "attack bench: password only"
action = "allow"
mfa = "none"
"""

_AUTH_FAIL = re.compile(r" auth: Info: passwd-file\(([^,]*),([^,]*),")
_LOGIN_OK = re.compile(r" imap-login: Info: Login: user=<([^>]*)>.*? rip=([^,]+),")


def password_of(user: str) -> str:
    return f"{user}-Correct-Horse-7"


def users_file(path: Path, users: list[str]) -> Path:
    """The rig's users (alice, bob, carol) plus ``users`` with {PLAIN} passwords."""
    lines = [RIG_USERS.read_text().rstrip("\n")]
    lines += [f"{u}:{{PLAIN}}{password_of(u)}::::::" for u in users]
    path.write_text("\n".join(lines) + "\n")
    return path


def shipped_tables() -> tuple[dict[str, Any], dict[str, Any]]:
    """``[limits]`` and ``[anomaly]`` of the shipped example config, as written."""
    with open(SHIPPED_CONFIG, "rb") as f:
        cfg = tomllib.load(f)
    return dict(cfg["limits"]), dict(cfg["anomaly"])


def _ts(event: dict[str, Any]) -> float:
    return dt.datetime.fromisoformat(event["ts"].replace("Z", "+00:00")).timestamp()


def _covers(network: str, ips: set[str]) -> bool:
    net = ipaddress.ip_network(network, strict=False)
    return any(ipaddress.ip_address(ip) in net for ip in ips)


# ---- one scenario -----------------------------------------------------------------------------

@dataclass
class Result:
    key: str
    title: str
    attack: AttackTally
    legit: LegitTally
    reached_dovecot: int = 0
    attacker_logins_at_dovecot: int = 0
    legit_users: int = 0
    expected_kind: str | None = None
    first_anomaly: tuple[str, float] | None = None
    first_ban: tuple[str, str, float] | None = None
    legit_banned: list[str] = field(default_factory=list)
    anomalies: Counter = field(default_factory=Counter)
    bans: Counter = field(default_factory=Counter)
    duration: float = 0.0
    notes: list[str] = field(default_factory=list)
    #: Sources counted as "attack" that are not in the attack plan (the stale phone).
    extra_attack_ips: set[str] = field(default_factory=set)
    legit_refused_by: Counter = field(default_factory=Counter)   # gateway's reasons
    attacker_session_ends: Counter = field(default_factory=Counter)


@dataclass
class Env:
    rig: Any                     # tests.support.dovecot.DovecotRig
    factory: Any                 # tests.support.gatewayproc.GatewayFactory
    limits: dict[str, Any]
    anomaly: dict[str, Any]

    def gateway(self, **limits: Any):
        gw = self.factory(limits={**self.limits, **limits}, anomaly=self.anomaly,
                          metrics={"address": ""},
                          policies={"00-bench.toml": PASSWORD_ONLY_POLICY})
        gw.wait_idle()
        return gw


def _execute(env: Env, result: Result, *, attack_work: dict[str, deque], conns_per_ip: int,
             background: list[Callable[[threading.Event], None]], legit_ips: set[str],
             cap: float, min_duration: float,
             before: Callable[[Any], None] | None = None,
             limits: dict[str, Any] | None = None) -> Result:
    """Run one scenario against a fresh gateway (``limits`` overriding the shipped ones) and
    fill ``result`` from both logs."""
    gw = env.gateway(**(limits or {}))
    try:
        if before is not None:
            before(gw)
        mark = env.rig.mark()
        stop = threading.Event()
        bg = [threading.Thread(target=fn, args=(stop,), daemon=True) for fn in background]
        for t in bg:
            t.start()
        time.sleep(0.5)  # legitimate traffic is already flowing when the attack starts
        start_wall, start = time.time(), time.monotonic()
        stop_at = start + cap
        threads = []
        for ip, work in attack_work.items():
            lock = threading.Lock()
            for _ in range(conns_per_ip):
                threads.append(threading.Thread(
                    target=attacker, args=(gw, ip, work, lock, result.attack, stop_at),
                    daemon=True))
        for t in threads:
            t.start()
        for t in threads:
            t.join(max(0.0, stop_at + 45 - time.monotonic()))
        remaining = start + min_duration - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)
        stop.set()
        for t in bg:
            t.join(60)
        result.duration = time.monotonic() - start
        left = sum(len(w) for w in attack_work.values())
        if left:
            result.notes.append(f"time cap ({cap:.0f} s): {left} planned attempts not made")
        time.sleep(0.5)  # Dovecot's log process writes asynchronously
        attack_ips = set(attack_work) | result.extra_attack_ips
        _count_dovecot(env.rig.log_since(mark), attack_ips, result)
        _read_gateway_log(gw, attack_ips, legit_ips - attack_ips, start_wall, result)
    finally:
        gw.stop()
    return result


def _count_dovecot(log: str, attack_ips: set[str], result: Result) -> None:
    for m in _AUTH_FAIL.finditer(log):
        if m.group(2) in attack_ips:
            result.reached_dovecot += 1
    for m in _LOGIN_OK.finditer(log):
        if m.group(2) in attack_ips:
            result.reached_dovecot += 1
            result.attacker_logins_at_dovecot += 1


def _read_gateway_log(gw, attack_ips: set[str], legit_ips: set[str], start: float,
                      result: Result) -> None:
    for ev in gw.events("anomaly"):
        result.anomalies[ev["kind"]] += 1
        if result.first_anomaly is None and ev["kind"] == result.expected_kind:
            about_attacker = (ev.get("ip") in attack_ips
                              or (ev.get("subnet") and _covers(ev["subnet"], attack_ips))
                              or (ev.get("ip") is None and ev.get("subnet") is None))
            if about_attacker:
                result.first_anomaly = (ev["kind"], _ts(ev) - start)
    for ev in gw.events("connection.refused"):
        if ev.get("client_ip") in legit_ips:
            result.legit_refused_by[ev.get("reason")] += 1
    for ev in gw.events("session.end"):
        if ev.get("client_ip") in attack_ips:
            result.attacker_session_ends[ev.get("reason")] += 1
    for ev in gw.events("ban.created"):
        result.bans[f"{ev['scope']}/{ev['ban_reason']}"] += 1
        if _covers(ev["network"], attack_ips) and result.first_ban is None:
            result.first_ban = (ev["ban_reason"], ev["network"], _ts(ev) - start)
        if _covers(ev["network"], legit_ips):
            result.legit_banned.append(f"{ev['network']} ({ev['ban_reason']})")


# ---- the four scenarios ---------------------------------------------------------------------

SPRAY_USERS = [f"spray{i:03d}" for i in range(500)]
CHECKERS = [f"legit{i:02d}" for i in range(10)]
OFFICE = [f"nat{i:02d}" for i in range(50)]
ALL_USERS = SPRAY_USERS + CHECKERS + OFFICE + ["victim", "stale"]
SPRAY_PASSWORDS = ["Winter2025!", "Welcome1"]


def _spray_work(ips: list[str], users: list[str], passwords: list[str]) -> dict[str, deque]:
    """A spray tool's plan: each password against every user, the user list dealt round-robin
    over the source addresses."""
    work: dict[str, deque] = {ip: deque() for ip in ips}
    for pw in passwords:
        for i, user in enumerate(users):
            work[ips[i % len(ips)]].append((user, pw))
    return work


def _checkers(tally: LegitTally, interval: float = 3.0) -> tuple[list, set[str]]:
    ips = {f"127.0.20.{i + 1}": u for i, u in enumerate(CHECKERS)}
    fns = [lambda stop, ip=ip, u=u: legit_loop(_GW[0], ip, u, password_of(u), tally, interval,
                                               stop)
           for ip, u in ips.items()]
    return fns, set(ips)


#: The gateway of the running scenario, for actors created before it started.
_GW: list[Any] = [None]


def _bind_gateway(before: Callable[[Any], None] | None = None) -> Callable[[Any], None]:
    def hook(gw: Any) -> None:
        _GW[0] = gw
        if before is not None:
            before(gw)
    return hook


def scenario_spray(env: Env) -> Result:
    legit = LegitTally()
    r = Result("a", "password spray: 500 users x 2 passwords from 20 addresses", AttackTally(),
               legit, legit_users=len(CHECKERS), expected_kind="password_spray")
    ips = [f"127.0.10.{i}" for i in range(1, 21)]
    fns, legit_ips = _checkers(legit)
    return _execute(env, r, attack_work=_spray_work(ips, SPRAY_USERS, SPRAY_PASSWORDS),
                    conns_per_ip=2, background=fns, legit_ips=legit_ips, cap=60,
                    min_duration=20, before=_bind_gateway())


def scenario_brute_force(env: Env) -> Result:
    legit = LegitTally()
    r = Result("b", "brute force: 1 address, 1 user, 300 passwords", AttackTally(), legit,
               legit_users=1, expected_kind=None)
    guesses = [f"guess-{n:03d}" for n in range(300)]
    guesses[199] = password_of("victim")
    home = "127.0.21.1"

    def first_login(gw: Any) -> None:  # the victim used this network before the attack
        assert legit_session(gw, home, "victim", password_of("victim"), LegitTally())

    fns = [lambda stop: legit_loop(_GW[0], home, "victim", password_of("victim"), legit, 3.0,
                                   stop)]
    work = {"127.0.11.1": deque(("victim", g) for g in guesses)}
    r.notes.append("the right password is guess #200; 'attacker got in' says if it was reached")
    return _execute(env, r, attack_work=work, conns_per_ip=16, background=fns,
                    legit_ips={home}, cap=45, min_duration=20,
                    before=_bind_gateway(first_login))


def scenario_stale_phone(env: Env) -> Result:
    legit = LegitTally()
    r = Result("c", "stale saved password on a phone, owner on a laptop", AttackTally(), legit,
               legit_users=1, expected_kind=None)
    phone, laptop = "127.0.12.2", "127.0.13.2"
    r.extra_attack_ips = {phone}
    fns = [
        lambda stop: stale_phone(_GW[0], phone, "stale", "stale-OldPassword-2023", r.attack,
                                 3.0, stop),
        lambda stop: legit_loop(_GW[0], laptop, "stale", password_of("stale"), legit, 4.0, stop),
    ]
    r.notes.append("the 'attack' columns are the phone's retries (same wrong password)")
    return _execute(env, r, attack_work={}, conns_per_ip=0, background=fns,
                    legit_ips={laptop}, cap=30, min_duration=30,
                    before=_bind_gateway())


NAT = "127.0.14.1"


def scenario_nat_office(env: Env, *, allow_nat: bool = False) -> Result:
    legit = LegitTally()
    if allow_nat:
        r = Result("e", "as d, office address in [limits] allow_networks", AttackTally(),
                   legit, legit_users=len(OFFICE), expected_kind="password_spray")
    else:
        r = Result("d", "50 users behind one NAT address, spray from elsewhere", AttackTally(),
                   legit, legit_users=len(OFFICE), expected_kind="password_spray")
    nat = NAT
    phone = AttackTally()
    fns: list[Callable[[threading.Event], None]] = [
        (lambda stop, i=i, u=u: office_user(_GW[0], nat, u, password_of(u), legit,
                                            arrive_after=i * 0.4, hold=20.0, retry_after=10.0,
                                            stop=stop))
        for i, u in enumerate(OFFICE)
    ]
    fns.append(lambda stop: stale_phone(_GW[0], nat, OFFICE[0], "nat00-old-password", phone,
                                        3.0, stop))
    ips = [f"127.0.16.{i}" for i in range(1, 6)]
    work = _spray_work(ips, SPRAY_USERS[:100], SPRAY_PASSWORDS[:1])
    result = _execute(env, r, attack_work=work, conns_per_ip=2, background=fns,
                      legit_ips={nat}, cap=60, min_duration=55, before=_bind_gateway(),
                      limits={"allow_networks": [f"{nat}/32"]} if allow_nat else None)
    never = sorted(set(OFFICE) - legit.users_in)
    result.notes.append(f"office users who never got in: {len(never)} of {len(OFFICE)}")
    result.notes.append(f"{OFFICE[0]}'s phone (stale password, same NAT address): "
                        f"{phone.attempts} retries, {phone.sent} answered, "
                        f"{phone.refused_at_connect} refused at connect")
    return result


def spread_sources(n: int, first: int) -> list[str]:
    """``n`` attacker addresses, each in its own /16 (127.A.B.1 with distinct A.B): no
    two share a /24 or /16 counter, as with a botnet or rented proxies."""
    return [f"127.{first + i // 50}.{i % 50 + 100}.1" for i in range(n)]


def _bystanders(r: Result, legit: LegitTally, *,
                office: int = 20) -> tuple[list, set[str], Callable[[], str]]:
    """What runs beside the spread attacks: an office of ``office`` users behind one NAT
    address (arriving within 8 s, each client keeping its connection 10 s), one of their
    phones with a stale saved password, and a roaming phone elsewhere with another stale
    password. The phones are tallied apart: they are expected to fail. Returns the actors,
    the office address and a summary line for after the run."""
    nat, roamer = NAT, "127.0.22.7"
    phones = AttackTally()
    fns: list[Callable[[threading.Event], None]] = [
        (lambda stop, i=i, u=u: office_user(_GW[0], nat, u, password_of(u), legit,
                                            arrive_after=i * 0.4, hold=10.0, retry_after=5.0,
                                            stop=stop))
        for i, u in enumerate(OFFICE[:office])
    ]
    fns.append(lambda stop: stale_phone(_GW[0], nat, OFFICE[0], "nat00-old-password", phones,
                                        3.0, stop))
    fns.append(lambda stop: stale_phone(_GW[0], roamer, "stale", "stale-OldPassword-2023",
                                        phones, 3.0, stop))
    r.notes.append(f"beside the attack: {office} office users behind {nat}, two phones with "
                   "stale saved passwords (one behind the NAT, one at " + roamer + ")")

    def summary() -> str:
        return (f"office users who never got in: {len(set(OFFICE[:office]) - legit.users_in)}"
                f" of {office}; stale phones: {phones.attempts} retries, {phones.sent} "
                f"answered, {phones.refused_at_connect} refused at connect")
    return fns, {nat}, summary


def scenario_spread_spray(env: Env) -> Result:
    legit = LegitTally()
    r = Result("f", "spread spray: 1 password, 400 users, 20 addresses in 20 /16s",
               AttackTally(), legit, legit_users=len(CHECKERS) + 20,
               expected_kind="password_spray")
    ips = spread_sources(20, 100)
    fns, legit_ips = _checkers(legit)
    more, office_ips, summary = _bystanders(r, legit)
    result = _execute(env, r, attack_work=_spray_work(ips, SPRAY_USERS[:400], ["Spring2026!"]),
                      conns_per_ip=2, background=fns + more, legit_ips=legit_ips | office_ips,
                      cap=90, min_duration=25, before=_bind_gateway())
    result.notes.append(summary())
    return result


def scenario_spread_brute_force(env: Env) -> Result:
    legit = LegitTally()
    r = Result("g", "spread brute force: 1 user, 60 addresses in 60 /16s, 5 passwords each",
               AttackTally(), legit, legit_users=1 + 20, expected_kind="distributed_brute_force")
    home = "127.0.21.1"
    guesses = [f"guess-{n:03d}" for n in range(300)]
    guesses[199] = password_of("victim")
    ips = spread_sources(60, 140)
    work: dict[str, deque] = {ip: deque() for ip in ips}
    for n, g in enumerate(guesses):
        work[ips[n % len(ips)]].append(("victim", g))

    def first_login(gw: Any) -> None:  # the victim used this network before the attack
        assert legit_session(gw, home, "victim", password_of("victim"), LegitTally())

    fns: list[Callable[[threading.Event], None]] = [
        lambda stop: legit_loop(_GW[0], home, "victim", password_of("victim"), legit, 3.0, stop)]
    more, office_ips, summary = _bystanders(r, legit)
    r.notes.append("the right password is guess #200; 'attacker got in' says if it was reached")
    result = _execute(env, r, attack_work=work, conns_per_ip=1, background=fns + more,
                      legit_ips={home} | office_ips, cap=90, min_duration=25,
                      before=_bind_gateway(first_login))
    result.notes.append(summary())
    return result


SCENARIOS: dict[str, Callable[[Env], Result]] = {
    "a": scenario_spray, "b": scenario_brute_force, "c": scenario_stale_phone,
    "d": scenario_nat_office,
    # not in the default run (time budget): what an administrator does about d
    "e": lambda env: scenario_nat_office(env, allow_nat=True),
    "f": scenario_spread_spray, "g": scenario_spread_brute_force,
}


# ---- output ----------------------------------------------------------------------------------

def _secs(x: tuple | None, label: int = 0) -> str:
    if x is None:
        return "none"
    return f"{x[-1]:.1f} s ({x[label]})"


def table(results: list[Result]) -> str:
    head = ("| scenario | attack attempts | refused at connect | LOGIN answered | reached Dovecot "
            "| attacker got in | legit logins | legit refused | first anomaly (expected kind) "
            "| first ban of attacker |")
    rows = [head, "|" + "---|" * 10]
    for r in results:
        a = r.attack
        rows.append(
            f"| {r.key}. {r.title} | {a.attempts} | {a.refused_at_connect} | {a.sent} "
            f"| {r.reached_dovecot} | {a.accepted} | {r.legit.attempts} ({r.legit_users} users) "
            f"| {r.legit.refused} | "
            f"{_secs(r.first_anomaly) if r.expected_kind else 'n/a (no kind for this)'} "
            f"| {_secs(r.first_ban, 0)} |")
    return "\n".join(rows)


def details(results: list[Result]) -> str:
    out = []
    for r in results:
        out.append(f"- **{r.key}** ({r.duration:.0f} s): anomalies {dict(r.anomalies) or '{}'}; "
                   f"bans {dict(r.bans) or '{}'}; legit refusals "
                   f"{dict(r.legit.reasons) or '{}'} (gateway log: "
                   f"{dict(r.legit_refused_by) or '{}'}); legit sources banned: "
                   f"{', '.join(r.legit_banned) or 'none'}; attacker sessions ended by "
                   f"{dict(r.attacker_session_ends) or '{}'}")
        if r.first_ban:
            out[-1] += f"; first ban: {r.first_ban[1]} ({r.first_ban[0]})"
        out += [f"  - {n}" for n in r.notes]
    return "\n".join(out)


def settings_text(limits: dict[str, Any], anomaly: dict[str, Any]) -> str:
    lim = ", ".join(f"{k}={v!r}" for k, v in limits.items())
    ano = ", ".join(f"{k}={v!r}" for k, v in anomaly.items())
    return (
        f"Gateway `[limits]` and `[anomaly]`: exactly those of `{SHIPPED_CONFIG.relative_to(REPO)}`"
        f" (nothing changed):\n\n- limits: {lim}\n- anomaly: {ano}\n\n"
        "Different from the shipped config, because of loopback and the bench: listeners on "
        "127.0.0.1 with free ports (implicit TLS and STARTTLS), certificate from a test CA, "
        "backend = the rig's Dovecot on 127.0.0.1 (`client_ip = \"id\"`, Dovecot "
        "`login_trusted_networks = 127.0.0.1/32`), `[metrics]` and `[admin]` off, JSON log "
        "to a file, and a password-only policy (the shipped `policies/99-default.toml` asks "
        "for MFA). Dovecot: the test rig (`tests/support/rig`, `auth_failure_delay = 0`, "
        "anvil auth penalty off) with 564 generated `{PLAIN}` users. A fresh gateway per "
        "scenario (bans and anomaly windows do not carry over); one Dovecot for the run.")


def write_report(path: Path, results: list[Result], command: str, settings: str,
                 started: dt.datetime) -> None:
    kept = ""
    if path.exists():
        text = path.read_text()
        if NOTES_MARKER in text:
            kept = text.split(NOTES_MARKER, 1)[1]
    body = f"""# Attack measurement

Generated by `bench/attack.py` on {started:%Y-%m-%d %H:%M} UTC ({platform.node() or 'host'},
{os.cpu_count()} CPUs, Python {platform.python_version()}). Reproduce with:

    {command}

{(__doc__ or '').split('Everything runs')[0].split('loopback source addresses:', 1)[1].strip()}

## Settings

{settings}

## Results

{table(results)}

"Reached Dovecot" counts Dovecot's own auth log lines for the attacker's addresses;
"refused at connect" attempts got `* BYE` (ban, per-address cap) before any login.
Times are from the attack's first connection to the gateway's log event.

{details(results)}

{NOTES_MARKER}{kept}"""
    path.write_text(body)


# ---- main --------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    from tests.support.certs import make_certs
    from tests.support.dovecot import RigError, start_rig
    from tests.support.gatewayproc import GatewayFactory

    p = argparse.ArgumentParser(prog="python -m bench.attack", description=__doc__.split("\n")[0])
    p.add_argument("--report", type=Path, default=DEFAULT_REPORT,
                   help="markdown report to write (default: docs/attack-report.md); '-' = none")
    p.add_argument("--only", default="a,b,c,d,f,g", help="scenarios to run, e.g. a,d")
    args = p.parse_args(argv)
    keys = [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = [k for k in keys if k not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenario(s) {unknown}; choose from {sorted(SCENARIOS)}")
    command = ".venv/bin/python -m bench.attack" + ("" if args.only == "a,b,c,d,f,g"
                                                   else f" --only {args.only}")
    started = dt.datetime.now(dt.UTC)
    work = Path(tempfile.mkdtemp(prefix="igw-attack.", dir="/tmp"))
    limits, anomaly = shipped_tables()
    rig = None
    factory = None
    try:
        try:
            rig = start_rig(users_file=users_file(work / "users", ALL_USERS))
        except RigError as e:
            print(f"bench.attack: {e}", file=sys.stderr)
            return 2
        factory = GatewayFactory(work / "gw", make_certs(work / "certs"),
                                 f"127.0.0.1:{rig.imap_port}")
        env = Env(rig, factory, limits, anomaly)
        settings = settings_text(limits, anomaly)
        print(settings.replace("`", ""), "\n", flush=True)
        results = []
        for k in keys:
            t0 = time.monotonic()
            print(f"running scenario {k} ...", flush=True)
            results.append(SCENARIOS[k](env))
            print(f"  done in {time.monotonic() - t0:.0f} s", flush=True)
        print()
        print(table(results))
        print()
        print(details(results))
        if str(args.report) != "-":
            write_report(args.report, results, command, settings, started)
            print(f"\nreport written to {args.report}")
        return 0
    finally:
        if factory is not None:
            factory.stop_all()
        if rig is not None:
            rig.stop()
            shutil.rmtree(rig.dir, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
