"""The gateway's HTTP endpoint as Prometheus and a load balancer's health check use it:
/healthz and /readyz answer 200, /metrics carries the imap_gateway_ series for what just
happened, and no series carries a user name or a client address (cardinality and
privacy: those belong in logs)."""

from __future__ import annotations

import pytest

from tests.support.attack import attempt_all, attempt_login, fast_limits, metrics_on
from tests.support.imap import LineClient
from tests.support.scrape import http_get, metrics_address, sample_value, samples

pytestmark = pytest.mark.e2e

CLIENTS = ["127.0.1.110", "127.0.1.111", "127.0.2.110"]


def test_health_readiness_and_metrics_without_users_or_client_addresses(gateway):
    gw = gateway(limits=fast_limits(ip_fail_threshold=2), metrics=metrics_on())
    host, port = metrics_address(gw)
    health = http_get(host, port, "/healthz")
    assert (health.status, health.body) == (200, "ok\n")
    ready = http_get(host, port, "/readyz")
    assert (ready.status, ready.body) == (200, "ready\n")
    assert http_get(host, port, "/nope").status == 404

    # some traffic with user names and client addresses in it: failures, a ban, a
    # refusal, a plaintext attempt and a good login with a command
    attempt_all(gw, [("alice", "guess-1", CLIENTS[0]), ("alice", "guess-2", CLIENTS[0]),
                     ("nosuchuser", "x", CLIENTS[1])])
    gw.wait_for_event("ban.created")
    assert attempt_login(gw, "alice", "alicepass", source=CLIENTS[0]).refused_at_connect
    with LineClient.plain(gw, source=CLIENTS[1]) as c:
        c.command("a", "LOGIN bob bobpass")
    with LineClient.implicit(gw, source=CLIENTS[2]) as c:
        assert c.command("a", "LOGIN alice alicepass")[-1].startswith(b"a OK")
        assert c.command("b", "SELECT INBOX")[-1].startswith(b"b OK")
        c.command("z", "LOGOUT")
    gw.wait_idle()  # relayed commands are counted in batches, all of them by the session's end

    reply = http_get(host, port, "/metrics")
    assert reply.status == 200
    assert reply.content_type.startswith("text/plain")
    text = reply.body
    names = {n for n, _, _ in samples(text)}
    own = ("imap_gateway_", "process_")  # process_*: the standard process collector
    assert all(n.startswith(own) for n in names), sorted(
        n for n in names if not n.startswith(own))
    assert sample_value(text, "process_start_time_seconds") > 0
    assert sample_value(text, "imap_gateway_auth_attempts_total", result="failure") == 4
    assert sample_value(text, "imap_gateway_auth_attempts_total", result="success",
                        mechanism="login") == 1
    assert sample_value(text, "imap_gateway_auth_attempts_total", reason="plaintext") == 1
    assert sample_value(text, "imap_gateway_bans_created_total", scope="ip") == 1
    assert sample_value(text, "imap_gateway_connections_rejected_total", reason="banned") == 1
    assert sample_value(text, "imap_gateway_plaintext_logins_blocked_total") == 1
    assert sample_value(text, "imap_gateway_commands_relayed_total", command="SELECT") == 1
    assert sample_value(text, "imap_gateway_connections_total") >= 6
    assert sample_value(text, "imap_gateway_backend_up") == 1

    # no user name anywhere, no client address anywhere
    for word in ("alice", "bob", "nosuchuser", *CLIENTS, "127.0.1.", "127.0.2."):
        assert word not in text, word
    # The only addresses in labels are the gateway's own listeners and its backend
    # (fixed at configuration time, so bounded), never a peer's.
    own = {lst["address"] for lst in gw.config["listener"]} | {gw.config["backend"]["address"]}
    for name, labels, _ in samples(text):
        for key, value in labels.items():
            if "127." in value or "::" in value:
                assert key in ("listener", "backend") and value in own, (name, key, value)


def test_relayed_byte_counters_hold_every_byte_of_an_ended_session(gateway):
    """The relay adds bytes and commands to the counters in batches (not per chunk); when
    the session ends, every byte it relayed is counted, in each direction, and every
    command."""
    gw = gateway(metrics=metrics_on())
    host, port = metrics_address(gw)
    gw.wait_idle()
    commands = [("b", "SELECT INBOX"), ("c", "NOOP"), ("z", "LOGOUT")]
    received = 0
    with LineClient.implicit(gw) as c:
        assert c.command("a", "LOGIN alice alicepass")[-1].startswith(b"a OK")
        for tag, text in commands:
            received += sum(map(len, c.command(tag, text)))
    gw.wait_idle()
    text = http_get(host, port, "/metrics").body
    sent = sum(len(f"{tag} {cmd}\r\n") for tag, cmd in commands)
    assert sample_value(text, "imap_gateway_bytes_relayed_total",
                        direction="client_to_backend") == sent
    # the client read up to LOGOUT's tagged OK; the rest is what Dovecot sends on closing
    assert sample_value(text, "imap_gateway_bytes_relayed_total",
                        direction="backend_to_client") >= received > 0
    for command in ("SELECT", "NOOP", "LOGOUT"):
        assert sample_value(text, "imap_gateway_commands_relayed_total", command=command) == 1
