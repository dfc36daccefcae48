"""Device approval end to end: the real gateway with its web portal on, the real Dovecot,
imaplib and raw IMAP.

A mail client that sends only the password from a device the policy does not accept yet
(the rule asks for a second factor and remembers devices; this one is not remembered) is
refused with ``NO [ALERT]`` naming the portal. If the password was right, the device waits
in ``devices pending`` (client name from IMAP ID); a wrong password gets the very same
bytes after the same delay and leaves nothing behind. Once approved (``devices approve``,
what the portal does through the store), the device's next login with the password gets in
and the device is remembered for the rule's ``remember_device``. Without ``[web] address``
nothing changes: the uniform ``NO [AUTHENTICATIONFAILED]``.
"""

from __future__ import annotations

import imaplib
import statistics
import time
from datetime import datetime

import pytest

from tests.support.gatewayproc import GatewayProcess
from tests.support.imap import LineClient, ServerClosed, imap_id, imaps
from tests.support.mfa import (
    FAILED,
    MFA_LIMITS,
    admin,
    admin_json,
    code_at,
    enroll_totp,
    quote,
    step_now,
    wrong_code,
)
from tests.support.net import free_port

pytestmark = pytest.mark.e2e

POLICY = """\
[[rule]]
name = "second factor, devices remembered"
users = ["*"]
action = "allow"
mfa = "strong"
remember_device = "14d"
"""

URL = "https://mail-gw.example.org:8443"
ALERT = (b"NO [ALERT] New device: approve it at https://mail-gw.example.org:8443 after "
         b"signing in with your second factor\r\n")
#: The uniform failure delay of these gateways: long enough that Dovecot's answer to the
#: password check always comes inside it (the check must end 50 ms before it does).
DELAY = 0.5
#: How far the medians of two kinds of refusal may differ (both wait for the same floor).
TIMING_TOLERANCE = 0.1
REMEMBER = 14 * 86400


def approval_gateway(gateway, *, web: bool = True) -> GatewayProcess:
    limits = {**MFA_LIMITS, "auth_failure_delay": f"{int(DELAY * 1000)}ms"}
    extra = {"web": {"address": f"127.0.0.1:{free_port()}", "public_url": URL}} if web else {}
    return gateway(limits=limits, policies={"00-approval.toml": POLICY}, **extra)


def raw_login(gw: GatewayProcess, user: str, secret: str, client_name: str) -> tuple[bytes, float]:
    """LOGIN after ``ID ("name" ...)`` over implicit TLS: the tagged answer as sent and how
    long the LOGIN took to be answered."""
    with LineClient.implicit(gw, timeout=10) as c:
        r = c.command("i", f'ID ("name" {quote(client_name)})')[-1]
        assert r.startswith(b"i OK"), r
        started = time.monotonic()
        answer = c.command("a", f"LOGIN {quote(user)} {quote(secret)}")[-1]
        seconds = time.monotonic() - started
        try:
            c.command("z", "LOGOUT", timeout=2)
        except (ServerClosed, TimeoutError, OSError):
            pass
    return answer, seconds


def pending(gw: GatewayProcess, user: str = "alice") -> list[dict]:
    return admin_json(gw, "devices", "pending", user)["devices"]


def imaplib_login(gw: GatewayProcess, user: str, password: str,
                  client_name: str) -> imaplib.IMAP4_SSL:
    m = imaps(gw)
    typ, _ = imap_id(m, {"name": client_name})
    assert typ == "OK", typ
    m.login(user, password)
    return m


def test_a_new_device_is_refused_with_the_alert_and_noted_only_with_the_right_password(gateway):
    gw = approval_gateway(gateway)
    enroll_totp(gw, "alice")

    # imaplib shows what a mail client shows its user: the ALERT text
    with pytest.raises(imaplib.IMAP4.error) as err:
        imaplib_login(gw, "alice", "alicepass", "iPhone Mail")
    assert ALERT[3:-2].decode() in str(err.value), err.value
    denied = gw.wait_for_event("login.denied", reason="device_not_approved")
    assert denied["alert"] == "device_approval" and denied["user"] == "alice"
    [device] = pending(gw)
    assert (device["client_name"], device["address"], device["state"]) == (
        "iPhone Mail", "127.0.0.1", "pending")
    assert device["description"] == "iPhone Mail from 127.0.0.1, just now"
    assert device["first_seen"] == device["last_seen"]

    # right and wrong passwords (and an unknown user) from new devices: the same bytes
    # after the same delay; only the right password is noted
    right, wrong, unknown = [], [], []
    for i in range(3):
        right.append(raw_login(gw, "alice", "alicepass", f"Thunderbird {i}"))
        wrong.append(raw_login(gw, "alice", f"wrong{i}", f"Outlook {i}"))
        unknown.append(raw_login(gw, "nosuchuser", "whatever", f"K-9 Mail {i}"))
    for answer, seconds in right + wrong + unknown:
        assert answer == b"a " + ALERT, answer
        assert seconds >= DELAY - 0.02, seconds
    medians = [statistics.median(s for _, s in kind) for kind in (right, wrong, unknown)]
    assert max(medians) - min(medians) < TIMING_TOLERANCE, medians
    names = {d["client_name"] for d in pending(gw)}
    assert names == {"iPhone Mail", "Thunderbird 0", "Thunderbird 1", "Thunderbird 2"}
    assert pending(gw, "nosuchuser") == []
    # The rig's Dovecot takes about half a second to refuse a password, longer than the
    # check may last inside the delay: those checks are cut short, which is what keeps a
    # backend's slow refusals from telling a wrong password from a right one.
    reasons = [e["reason"] for e in gw.events("login.denied")]
    assert reasons.count("device_not_approved") == 4
    assert len(reasons) == 10
    assert set(reasons) <= {"device_not_approved", "backend_rejected",
                            "approval_check_unfinished"}
    assert "alicepass" not in gw.log_text()

    # the same device logging in again is the same entry, seen later
    time.sleep(0.05)
    assert raw_login(gw, "alice", "alicepass", "iPhone Mail")[0] == b"a " + ALERT
    [again] = [d for d in pending(gw) if d["client_name"] == "iPhone Mail"]
    assert again["id"] == device["id"] and again["last_seen"] > device["last_seen"]


def test_once_approved_the_device_logs_in_and_is_remembered(gateway):
    gw = approval_gateway(gateway)
    enroll_totp(gw, "alice")
    assert raw_login(gw, "alice", "alicepass", "iPhone Mail")[0] == b"a " + ALERT
    [device] = pending(gw)

    approved = admin_json(gw, "devices", "approve", "alice", str(device["id"]))
    assert approved["approved"] == device["id"]
    # another program on the same address is still a new device
    assert raw_login(gw, "alice", "alicepass", "Thunderbird")[0] == b"a " + ALERT
    # a wrong password from the approved device is an ordinary failure
    assert raw_login(gw, "alice", "wrong", "iPhone Mail")[0] == b"a " + FAILED

    m = imaplib_login(gw, "alice", "alicepass", "iPhone Mail")
    try:
        assert m.select("INBOX")[0] == "OK"  # a real Dovecot session
    finally:
        m.logout()
    ok = gw.wait_for_event("login.ok", user="alice")
    assert ok["factor"] == "remembered-device"
    gw.wait_for_event("device.approval_used", device_id=device["id"])
    [remembered] = admin_json(gw, "devices", "list", "alice")["devices"]
    assert (remembered["network"], remembered["client_name"]) == ("127.0.0.0/24", "iPhone Mail")
    lifetime = (datetime.fromisoformat(remembered["expires"])
                - datetime.fromisoformat(remembered["created"])).total_seconds()
    assert lifetime == pytest.approx(REMEMBER, abs=1)
    # the approval is used up; the device is remembered from now on
    assert [d["client_name"] for d in pending(gw)] == ["Thunderbird"]
    answer, _ = raw_login(gw, "alice", "alicepass", "iPhone Mail")
    assert answer.startswith(b"a OK"), answer

    # forgotten, it asks again (and is noted anew)
    admin(gw, "devices", "forget", "alice", "--all")
    assert raw_login(gw, "alice", "alicepass", "iPhone Mail")[0] == b"a " + ALERT
    assert {d["client_name"] for d in pending(gw)} == {"Thunderbird", "iPhone Mail"}


def test_a_second_factor_still_works_from_a_new_device(gateway):
    gw = approval_gateway(gateway)
    secret, step = enroll_totp(gw, "alice")
    # a code that does not check out is the uniform failure, not the ALERT
    bad = wrong_code(secret, step_now())
    assert raw_login(gw, "alice", f"alicepass${bad}", "Thunderbird")[0] == b"a " + FAILED
    answer, _ = raw_login(gw, "alice", f"alicepass${code_at(secret, step + 1)}", "Thunderbird")
    assert answer.startswith(b"a OK"), answer
    assert pending(gw) == []
    # the device is remembered: the password alone is enough now
    answer, _ = raw_login(gw, "alice", "alicepass", "Thunderbird")
    assert answer.startswith(b"a OK"), answer


def test_without_the_web_portal_the_refusal_is_the_uniform_one(gateway):
    gw = approval_gateway(gateway, web=False)
    enroll_totp(gw, "alice")
    with pytest.raises(imaplib.IMAP4.error) as err:
        imaplib_login(gw, "alice", "alicepass", "iPhone Mail")
    assert "[AUTHENTICATIONFAILED] Authentication failed." in str(err.value)
    assert "ALERT" not in str(err.value)
    answer, seconds = raw_login(gw, "alice", "alicepass", "iPhone Mail")
    assert answer == b"a " + FAILED and seconds >= DELAY - 0.02
    assert [e["reason"] for e in gw.events("login.denied")] == ["totp_required"] * 2
    assert all("alert" not in e for e in gw.events("login.denied"))
    assert pending(gw) == []
