"""TOTP as real mail clients use it, with imaplib through the gateway to the real Dovecot.

mbsync, neomutt and Python imaplib save ``password$123456``, open several connections at
once and reconnect all day. What must hold:

- parallel logins of one client (same address, same IMAP ID name) with one saved code
  all get in; the same code from another address or another client program is a replay;
- the code typed to confirm enrolment, put into the mail client right after, logs that
  client in (and only that client);
- on a remembered device the saved, long stale ``$code`` suffix is ignored: Dovecot gets
  the password part and accepts it.

Every refusal is the uniform ``NO [AUTHENTICATIONFAILED]`` after the uniform delay; the
reason is only in the gateway's log.
"""

from __future__ import annotations

import imaplib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.support.dovecot import DovecotRig
from tests.support.gatewayproc import GatewayProcess
from tests.support.imap import imap_id, imaps
from tests.support.mfa import (
    MFA_LIMITS,
    TOTP_STEP,
    admin,
    admin_json,
    assert_denied,
    code_at,
    enroll_totp,
    login,
    shared_gateway,
    step_now,
)

pytestmark = pytest.mark.e2e

POLICY = """\
[[rule]]
name = "alice and carol with totp"
users = ["alice", "carol"]
action = "allow"
mfa = "totp"

[[rule]]
name = "bob, device remembered"
users = ["bob"]
action = "allow"
mfa = "strong"
remember_device = "14d"
"""

#: MFA_LIMITS' auth_failure_delay: every refusal takes at least this long.
FAILURE_DELAY = 0.1
FAILED_TEXT = "[AUTHENTICATIONFAILED] Authentication failed."


@dataclass
class Client:
    """One imaplib connection and the gateway's session id for it."""

    imap: imaplib.IMAP4_SSL
    session_id: str


def connect(gw: GatewayProcess, *, source: str | None = None,
            client_name: str | None = None) -> Client:
    """An imaplib connection to the gateway, after ``ID ("name" ...)`` if a name is given."""
    m = imaps(gw, source=source)
    try:
        sid = gw.session_id_for(m.sock.getsockname()[1])
        if client_name is not None:
            typ, _ = imap_id(m, {"name": client_name})
            assert typ == "OK", typ
    except BaseException:
        m.shutdown()
        raise
    return Client(m, sid)


def logged_in(gw: GatewayProcess, c: Client, factor: str) -> None:
    """The session is a real Dovecot session now (SELECT works) and the log names ``factor``."""
    event = gw.wait_for_event("login.ok", session_id=c.session_id)
    assert event["factor"] == factor, event
    typ, data = c.imap.select("INBOX")
    assert typ == "OK", (typ, data)
    c.imap.logout()


def refused(gw: GatewayProcess, user: str, secret: str, reason: str, *,
            source: str | None = None, client_name: str | None = None) -> None:
    """imaplib's LOGIN fails with the uniform answer, after the uniform delay; the log
    (not the client) says ``reason``."""
    c = connect(gw, source=source, client_name=client_name)
    try:
        started = time.monotonic()
        with pytest.raises(imaplib.IMAP4.error) as err:
            c.imap.login(user, secret)
        elapsed = time.monotonic() - started
        assert FAILED_TEXT in str(err.value), err.value
        assert elapsed >= FAILURE_DELAY, elapsed
        event = gw.wait_for_event("login.denied", session_id=c.session_id)
        assert event["reason"] == reason, event
    finally:
        c.imap.shutdown()


def parallel_logins(clients: list[Client], user: str, secret: str) -> list[tuple[str, list]]:
    """LOGIN on every connection at the same moment (one thread each)."""
    barrier = threading.Barrier(len(clients))
    results: list[tuple[str, list] | BaseException | None] = [None] * len(clients)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = clients[i].imap.login(user, secret)
        except BaseException as exc:  # reported below, in the test's thread
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for r in results:
        if isinstance(r, BaseException):
            raise AssertionError(f"a parallel login failed: {r!r}")
    return results  # type: ignore[return-value]


@pytest.fixture
def gw(gateway) -> GatewayProcess:
    return gateway(policies={"10-clients.toml": POLICY}, limits=MFA_LIMITS)


def test_parallel_logins_with_one_saved_code(gw: GatewayProcess, dovecot: DovecotRig) -> None:
    secret, step = enroll_totp(gw, "alice")
    saved = f"alicepass${code_at(secret, step + 1)}"
    mark = dovecot.mark()
    # mbsync opens its connections (one per channel) with the saved password at once
    clients = [connect(gw, client_name="mbsync") for _ in range(4)]
    for typ, _ in parallel_logins(clients, "alice", saved):
        assert typ == "OK"
    for c in clients:
        logged_in(gw, c, "totp")
    assert dovecot.log_since(mark).count("Login: user=<alice>, auth_user=<alice>") == 4
    # ... and reconnects a moment later: the same client, the same code, still valid
    again = connect(gw, client_name="mbsync")
    again.imap.login("alice", saved)
    logged_in(gw, again, "totp")

    # the same code from another source address (same client name): a replay
    refused(gw, "alice", saved, "totp_replay", source="127.0.0.2", client_name="mbsync")
    # from the same address but another client program, or one that sends no ID
    refused(gw, "alice", saved, "totp_replay", client_name="neomutt")
    refused(gw, "alice", saved, "totp_replay")
    # the uniform answer, byte for byte (imaplib only shows the text)
    assert_denied(login(gw, "alice", saved, source="127.0.0.2", client_name="mbsync"),
                  "totp_replay")


def test_parallel_logins_from_two_addresses_one_wins(gw: GatewayProcess) -> None:
    secret, step = enroll_totp(gw, "alice")
    saved = f"alicepass${code_at(secret, step + 1)}"
    here = connect(gw, source="127.0.0.1", client_name="mbsync")
    there = connect(gw, source="127.0.0.2", client_name="mbsync")
    barrier = threading.Barrier(2)
    outcome: dict[str, object] = {}

    def run(name: str, c: Client) -> None:
        barrier.wait()
        try:
            outcome[name] = c.imap.login("alice", saved)[0]
        except imaplib.IMAP4.error as exc:
            outcome[name] = exc

    threads = [threading.Thread(target=run, args=item)
               for item in (("here", here), ("there", there))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    winners = [name for name, r in outcome.items() if r == "OK"]
    assert len(winners) == 1, outcome
    loser = "there" if winners == ["here"] else "here"
    assert FAILED_TEXT in str(outcome[loser])
    losing = here if loser == "here" else there
    event = gw.wait_for_event("login.denied", session_id=losing.session_id)
    assert event["reason"] == "totp_replay", event
    for c in (here, there):
        c.imap.shutdown()


def test_enrol_confirm_then_configure_the_client_with_the_same_code(
    gw: GatewayProcess, dovecot: DovecotRig
) -> None:
    # keep clear of a step boundary between reading the code and confirming with it
    if TOTP_STEP - time.time() % TOTP_STEP < 2:
        time.sleep(TOTP_STEP - time.time() % TOTP_STEP + 0.1)
    secret = admin_json(gw, "totp", "enroll", "carol")["secret"]
    code = code_at(secret, step_now())  # what the authenticator app shows right now
    admin(gw, "totp", "verify", "carol", code)
    # the user types that same code into the mail client, which connects twice at once
    saved = f"carolpass${code}"
    clients = [connect(gw, client_name="Thunderbird") for _ in range(2)]
    for typ, _ in parallel_logins(clients, "carol", saved):
        assert typ == "OK"
    for c in clients:
        logged_in(gw, c, "totp")
    # the confirming code is that client's now: nobody else can use it
    refused(gw, "carol", saved, "totp_replay", source="127.0.0.2", client_name="Thunderbird")
    refused(gw, "carol", saved, "totp_replay", client_name="K-9 Mail")


# ---- remembered device, saved code going stale ------------------------------------------

@dataclass
class Remembered:
    gw: GatewayProcess
    saved: str = field(repr=False)
    step: int


@pytest.fixture(scope="module", autouse=True)
def remembered(tmp_path_factory, certs, dovecot) -> Iterator[Remembered]:
    """bob enrols, confirms with the current code, configures Thunderbird with that code;
    its first login remembers the device (127.0.0.0/24, "Thunderbird").

    Module scope and autouse: the last test needs the saved code to be stale (out of its
    ±1 step window), which takes up to a minute from here; the module's other tests run
    meanwhile instead of sleeping through it.
    """
    with shared_gateway(tmp_path_factory.mktemp("stale"), certs, dovecot,
                        policies={"10-clients.toml": POLICY}, limits=MFA_LIMITS) as gw:
        secret, step = enroll_totp(gw, "bob")  # confirmed with the code of ``step``
        saved = f"bobpass${code_at(secret, step)}"
        c = connect(gw, source="127.0.0.1", client_name="Thunderbird")
        c.imap.login("bob", saved)
        logged_in(gw, c, "totp")
        assert len(admin_json(gw, "devices", "list", "bob")["devices"]) == 1
        yield Remembered(gw, saved, step)


def test_remembered_device_neighbour_with_the_saved_code(
    remembered: Remembered, dovecot: DovecotRig
) -> None:
    gw, saved = remembered.gw, remembered.saved
    mark = dovecot.mark()
    # another address of the same /24, same client name: the same remembered device; the
    # code is spent for TOTP (another address used it) but the device is the factor
    c = connect(gw, source="127.0.0.2", client_name="Thunderbird")
    c.imap.login("bob", saved)
    logged_in(gw, c, "remembered-device")
    dovecot.wait_for_log(r"imap-login: Info: Login: user=<bob>, auth_user=<bob>", since=mark)
    # another network is not the device, and the code is no factor there
    refused(gw, "bob", saved, "totp_replay" if step_now() <= remembered.step + 1
            else "totp_stale", source="127.0.1.1", client_name="Thunderbird")


def test_remembered_device_with_a_stale_saved_code_logs_in(
    remembered: Remembered, dovecot: DovecotRig
) -> None:
    """Last in the module on purpose (see the fixture): usually little wait is left."""
    gw, saved = remembered.gw, remembered.saved
    # wait until the saved code has left its ±1 step window
    time.sleep(max(0.0, (remembered.step + 2) * TOTP_STEP - time.time() + 0.2))
    assert step_now() >= remembered.step + 2
    mark = dovecot.mark()
    clients = [connect(gw, source="127.0.0.1", client_name="Thunderbird") for _ in range(3)]
    for typ, _ in parallel_logins(clients, "bob", saved):
        assert typ == "OK"
    for c in clients:
        logged_in(gw, c, "remembered-device")
    # Dovecot got bob's own password: the stale "$code" was not forwarded
    assert dovecot.log_since(mark).count("Login: user=<bob>, auth_user=<bob>") == 3
    # a wrong password part is still Dovecot's to refuse
    refused(gw, "bob", "notbobpass" + saved[len("bobpass"):], "backend_rejected",
            source="127.0.0.1", client_name="Thunderbird")
    # away from the remembered device the stale code is refused, and the log says why
    refused(gw, "bob", saved, "totp_stale", source="127.0.1.1", client_name="Thunderbird")
