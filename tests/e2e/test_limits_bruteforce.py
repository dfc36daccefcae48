"""Brute-force protection through the real gateway and Dovecot (the limiter).

What an administrator relies on: an attacker is slowed down, then shut out before its
guesses reach Dovecot; a phone with a stale saved password, an allow-listed office and
the real user under attack are never shut out.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support.attack import attempt_all, attempt_login, fast_limits, greeting_from, metrics_on
from tests.support.scrape import sample_value, scrape

pytestmark = pytest.mark.e2e

ATTACKER = "127.0.1.1"
USER_NET = "127.0.2.1"


def test_tarpit_grows_then_ip_ban_keeps_the_attacker_away_from_dovecot(gateway, dovecot):
    # The tarpit is a floor on the answer time measured from the LOGIN command, and the
    # rig's Dovecot itself takes ~0.5 s to refuse a password: so the base is set above
    # that, where the growth is visible to the client.
    gw = gateway(limits=fast_limits(ip_fail_threshold=4, tarpit_base="350ms",
                                    tarpit_max="1400ms"),
                 metrics=metrics_on())
    before_attack = dovecot.mark()
    tries = [attempt_login(gw, "alice", f"guess-{i}", source=ATTACKER) for i in range(4)]
    assert all(t.failed for t in tries), [t.answer for t in tries]
    delays = [t.seconds for t in tries]
    # tarpit_base * 2**(n-1) = 0.35 (under Dovecot's 0.5), 0.7, 1.4, then the 1.4 s cap
    assert delays[0] < delays[1], delays
    assert 0.65 <= delays[1] < delays[2] - 0.4, delays
    assert delays[2] >= 1.35 and delays[3] >= 1.35, delays
    assert delays[3] < 2.5, delays  # tarpit_max holds: not 2.8 s
    # the guesses before the ban did reach Dovecot (premise of the "never reaches" check)
    dovecot.wait_for_log(r"rip=127\.0\.1\.1\b", since=before_attack)

    ban = gw.wait_for_event("ban.created", network="127.0.1.1/32")
    assert ban["scope"] == "ip" and ban["ban_reason"] == "ip_failures"
    assert ban["client_ip"] == ATTACKER
    assert time.time() + 500 < ban["expires"] <= time.time() + 600  # ban_ttl = 10m

    after_ban = dovecot.mark()
    refused = attempt_login(gw, "alice", "alicepass", source=ATTACKER)
    assert refused.refused_at_connect, refused
    assert refused.answer == b""
    refusal = gw.wait_for_event("connection.refused", client_ip=ATTACKER)
    assert refusal["reason"] == "banned:ip_failures"

    # another address is unaffected; its login is also the marker that Dovecot's log
    # has caught up past the moment of the refused connection
    other = attempt_login(gw, "alice", "alicepass", source=USER_NET)
    assert other.ok, other
    dovecot.wait_for_log(r"Login: user=<alice>.*rip=127\.0\.2\.1\b", since=after_ban)
    assert "127.0.1.1" not in dovecot.log_since(after_ban)

    assert "guess-" not in gw.log_text()  # counted by fingerprint, never logged

    text = scrape(gw)
    assert sample_value(text, "imap_gateway_bans_created_total",
                        scope="ip", reason="ip_failures") == 1
    assert sample_value(text, "imap_gateway_tarpit_delay_seconds_count") == 4
    assert sample_value(text, "imap_gateway_connections_rejected_total", reason="banned") == 1


def test_stale_saved_password_retried_does_not_ban(gateway):
    """A phone retrying one stale password counts once: no ban, however often it retries,
    and the user's next login with the new password works from the same address.

    Control, concurrently on the same gateway: another address trying three *different*
    wrong passwords is banned, so "no ban" is the dedup and not a lax threshold."""
    gw = gateway(limits=fast_limits(ip_fail_threshold=3, user_ip_fail_threshold=3,
                                    user_fail_threshold=3))
    phone, guesser = "127.0.2.10", "127.0.1.10"
    with ThreadPoolExecutor(1) as pool:
        control = pool.submit(
            lambda: [attempt_login(gw, "carol", f"typo-{i}", source=guesser) for i in range(3)])
        tries = [attempt_login(gw, "bob", "old-bobpass", source=phone) for _ in range(4)]
        assert all(t.failed for t in control.result())
    assert all(t.failed for t in tries), [(t.greeting, t.answer) for t in tries]
    denied = gw.events("login.denied", client_ip=phone)
    # Dovecot is asked once; the retries are answered by the gateway from its memory of
    # recently rejected passwords (the client cannot tell the difference).
    assert [e["reason"] for e in denied] == ["backend_rejected"] + ["password_known_bad"] * 3
    assert [b["network"] for b in gw.events("ban.created")] == [f"{guesser}/32"]
    assert greeting_from(gw, guesser).startswith(b"* BYE [UNAVAILABLE]")
    assert greeting_from(gw, phone).startswith(b"* OK")
    assert attempt_login(gw, "bob", "bobpass", source=phone).ok


def test_smart_lockout_spares_the_users_familiar_network(gateway, dovecot):
    gw = gateway(limits=fast_limits(user_fail_threshold=3))
    home = "127.0.2.20"
    assert attempt_login(gw, "carol", "carolpass", source=home).ok  # home becomes familiar
    # three attackers elsewhere, one distinct guess each: the account is under attack
    attacks = attempt_all(gw, [("carol", f"guess-{i}", f"127.0.1.2{i + 1}") for i in range(3)])
    assert all(a.failed for a in attacks), attacks
    mark = dovecot.mark()
    attacker = attempt_login(gw, "carol", "carolpass", source="127.0.1.24")
    assert attacker.failed  # even the right password: the gate closes before verifying
    denied = gw.wait_for_event("login.denied", client_ip="127.0.1.24")
    assert denied["reason"] == "user_lockout" and denied["user"] == "carol"

    user = attempt_login(gw, "carol", "carolpass", source=home)
    assert user.ok, user
    dovecot.wait_for_log(r"Login: user=<carol>.*rip=127\.0\.2\.20\b", since=mark)
    assert "127.0.1.24" not in dovecot.log_since(mark)
    assert gw.events("ban.created") == []


def test_allow_listed_network_is_never_banned_but_failures_are_logged(gateway):
    office, outsider = "127.0.4.1", "127.0.1.30"
    gw = gateway(limits=fast_limits(ip_fail_threshold=3, allow_networks=["127.0.4.0/24"]))
    # the office and, as a control, an address outside the allow list fail alike
    office_tries = [("alice", f"office-typo-{i}", office) for i in range(4)]
    control_tries = [("alice", f"attack-{i}", outsider) for i in range(3)]
    results = attempt_all(gw, office_tries + control_tries)
    assert all(r.failed for r in results), results
    denied = gw.events("login.denied", client_ip=office)
    assert len(denied) == 4 and all(e["user"] == "alice" for e in denied)
    bans = gw.events("ban.created")
    assert [b["network"] for b in bans] == [f"{outsider}/32"]
    assert greeting_from(gw, outsider).startswith(b"* BYE [UNAVAILABLE]")
    assert attempt_login(gw, "alice", "alicepass", source=office).ok
