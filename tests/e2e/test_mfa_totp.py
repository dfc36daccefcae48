"""Password + TOTP at IMAP LOGIN against the real Dovecot: right, wrong, expired and
replayed codes (a code belongs to the first client that uses it), the "plain" suffix,
users without a seed, and remembered devices (accepted, bound to the client's ID name
and /24, then forgotten by the admin). Each test's gateway runs once per store backend
(SQLite, PostgreSQL); the module-wide replay gateway uses SQLite."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.support.gatewayproc import GatewayProcess
from tests.support.mfa import (
    MFA_LIMITS,
    TOTP_STEP,
    admin,
    admin_json,
    assert_denied,
    assert_ok,
    code_at,
    enroll_totp,
    login,
    shared_gateway,
    step_now,
    wrong_code,
)

pytestmark = pytest.mark.e2e

TOTP_POLICY = """\
[[rule]]
name = "alice with totp"
users = ["alice"]
action = "allow"
mfa = "totp"

[[rule]]
name = "carol with a plain suffix"
users = ["carol"]
action = "allow"
mfa = "strong"
totp_suffix = "plain"

[[rule]]
name = "bob with totp"
users = ["bob"]
action = "allow"
mfa = "totp"
"""

REMEMBER_POLICY = """\
[[rule]]
name = "alice, device remembered"
users = ["alice"]
action = "allow"
mfa = "strong"
remember_device = "14d"
"""


@pytest.fixture
def totp_gw(gateway, store_section):
    return gateway(policies={"10-totp.toml": TOTP_POLICY}, limits=MFA_LIMITS,
                   store=store_section)


def test_password_and_current_code_logs_in_and_dovecot_gets_the_bare_password(totp_gw, dovecot):
    gw = totp_gw
    secret, verified = enroll_totp(gw, "alice")
    assert_denied(login(gw, "alice", "alicepass"), "totp_required")
    mark = dovecot.mark()
    assert_ok(login(gw, "alice", f"alicepass${code_at(secret, verified + 1)}"), "totp")
    # Dovecot accepted alice's own password: the "$123456" suffix was stripped
    dovecot.wait_for_log(r"imap-login: Info: Login: user=<alice>, auth_user=<alice>", since=mark)


def test_wrong_and_expired_codes_are_refused(totp_gw):
    gw = totp_gw
    secret, _ = enroll_totp(gw, "alice")
    now = step_now()
    assert_denied(login(gw, "alice", f"alicepass${wrong_code(secret, now)}"), "totp_invalid")
    # two steps (60 s) old: outside the ±1 step window
    assert_denied(login(gw, "alice", f"alicepass${code_at(secret, step_now() - 2)}"),
                  "totp_invalid")
    # a right code does not rescue a wrong password: Dovecot decides that part
    assert_denied(login(gw, "alice", f"wrongpass${code_at(secret, step_now() + 1)}"),
                  "backend_rejected")


def test_a_code_belongs_to_the_first_client_that_uses_it(totp_gw):
    gw = totp_gw
    secret, verified = enroll_totp(gw, "alice")
    # the code that confirmed the enrollment logs in the first client that uses it ...
    assert_ok(login(gw, "alice", f"alicepass${code_at(secret, verified)}"), "totp")
    # ... and nobody else
    assert_denied(login(gw, "alice", f"alicepass${code_at(secret, verified)}",
                        source="127.0.0.2"), "totp_replay")
    code = code_at(secret, step_now())
    assert_ok(login(gw, "alice", f"alicepass${code}"), "totp")
    # the same client (address and IMAP ID name: here none) may use it again while valid
    assert_ok(login(gw, "alice", f"alicepass${code}"), "totp")
    # another address, or another client program on the same address, may not
    assert_denied(login(gw, "alice", f"alicepass${code}", source="127.0.0.2"), "totp_replay")
    assert_denied(login(gw, "alice", f"alicepass${code}", client_name="K-9 Mail"),
                  "totp_replay")


def test_plain_suffix_only_where_the_rule_allows_it(totp_gw):
    gw = totp_gw
    carol, c_step = enroll_totp(gw, "carol")
    alice, a_step = enroll_totp(gw, "alice")
    assert_ok(login(gw, "carol", f"carolpass{code_at(carol, c_step + 1)}"), "totp")
    # alice's rule keeps the default separator: the digits are part of the password
    assert_denied(login(gw, "alice", f"alicepass{code_at(alice, a_step + 1)}"), "totp_required")


def test_user_without_a_seed(totp_gw):
    gw = totp_gw
    assert_denied(login(gw, "bob", "bobpass"), "totp_not_enrolled")
    assert_denied(login(gw, "bob", "bobpass$123456"), "totp_not_enrolled")
    # enrolled but not yet verified: still no active seed
    admin_json(gw, "totp", "enroll", "bob")
    assert_denied(login(gw, "bob", "bobpass"), "totp_not_enrolled")


def test_disabled_totp_no_longer_accepts_codes(totp_gw):
    gw = totp_gw
    secret, step = enroll_totp(gw, "alice")
    admin(gw, "totp", "disable", "alice")
    assert_denied(login(gw, "alice", f"alicepass${code_at(secret, step + 1)}"),
                  "totp_not_enrolled")


def test_remembered_device_then_forgotten(gateway, store_section):
    gw = gateway(policies={"10-remember.toml": REMEMBER_POLICY}, limits=MFA_LIMITS,
                 store=store_section)
    secret, step = enroll_totp(gw, "alice")
    assert_denied(login(gw, "alice", "alicepass", client_name="Thunderbird"), "totp_required")
    assert_ok(login(gw, "alice", f"alicepass${code_at(secret, step + 1)}",
                    source="127.0.0.1", client_name="Thunderbird"), "totp")
    devices = admin_json(gw, "devices", "list", "alice")["devices"]
    assert len(devices) == 1, devices

    # same user, same /24 (127.0.0.2 is in 127.0.0.0/24), same client name: no code needed
    assert_ok(login(gw, "alice", "alicepass", source="127.0.0.2", client_name="Thunderbird"),
              "remembered-device")
    # ... but not from another /24 (loopback is a /8: 127.0.1.1 is a different network)
    assert_denied(login(gw, "alice", "alicepass", source="127.0.1.1", client_name="Thunderbird"),
                  "totp_required")
    # the device key includes the client's ID name
    assert_denied(login(gw, "alice", "alicepass", client_name="K-9 Mail"), "totp_required")
    assert_denied(login(gw, "alice", "alicepass"), "totp_required")
    # a remembered device does not make a wrong password right
    assert_denied(login(gw, "alice", "not-alicepass", client_name="Thunderbird"),
                  "backend_rejected")

    admin(gw, "devices", "forget", "alice", "--all")
    assert admin_json(gw, "devices", "list", "alice")["devices"] == []
    assert_denied(login(gw, "alice", "alicepass", client_name="Thunderbird"), "totp_required")


@dataclass
class FirstUse:
    gw: GatewayProcess
    secret: str = field(repr=False)
    step: int


@pytest.fixture(scope="module", autouse=True)
def first_use(tmp_path_factory, certs, dovecot) -> Iterator[FirstUse]:
    """A TOTP login made when this module starts, for the later-window replay test.

    Why module scope and autouse: that test must replay the code once the gateway's
    clock has moved on to the next 30 s window. Using the code first, here, lets the
    other tests of the module run while the window passes instead of sleeping through it.
    """
    with shared_gateway(tmp_path_factory.mktemp("replay"), certs, dovecot,
                        policies={"10-totp.toml": TOTP_POLICY}, limits=MFA_LIMITS) as gw:
        secret, _ = enroll_totp(gw, "alice")
        step = step_now()
        assert_ok(login(gw, "alice", f"alicepass${code_at(secret, step)}"), "totp")
        yield FirstUse(gw, secret, step)


def test_a_code_replayed_in_the_next_window_is_still_refused(first_use):
    """Last in the module on purpose (see first_use): usually no wait is left."""
    gw, secret, step = first_use.gw, first_use.secret, first_use.step
    if step_now() > step + 1:  # the module ran long: the code left the ±1 window
        step = step_now()
        assert_ok(login(gw, "alice", f"alicepass${code_at(secret, step)}"), "totp")
    time.sleep(max(0.0, (step + 1) * TOTP_STEP - time.time() + 0.2))
    assert step_now() == step + 1
    # still inside the ±1 step tolerance, so only replay protection can refuse it
    assert_denied(login(gw, "alice", f"alicepass${code_at(secret, step)}", source="127.0.0.2"),
                  "totp_replay")
    # the client that used it may still use it: the restriction is per client, not per window
    assert_ok(login(gw, "alice", f"alicepass${code_at(secret, step)}"), "totp")
