"""The auth-policy server without Dovecot: the protocol core, the decisions against a real
limiter (in-process state; Redis for the stalled-state case) and the HTTP endpoint.

The request bodies are the ones Dovecot 2.3.19 sent with the shipped snippet's
``auth_policy_request_attributes`` (recorded from the rig; e2e tests use Dovecot itself).
"""

from __future__ import annotations

import ipaddress
import json

import pytest
import trio

from gateway.authpolicy import protocol as proto
from gateway.authpolicy.service import AuthPolicyService, TarpitMemory
from gateway.config import AuthPolicyConfig
from gateway.limits.limiter import Limiter
from gateway.limits.redis_state import open_state
from gateway.limits.state import MemoryState
from gateway.observability import metrics
from gateway.web.policy_app import auth_policy_app
from tests.support.asgi import AsgiClient
from tests.support.limits import anomaly_config, limits_config
from tests.support.redis import RedisStartError, start_redis

POP3_ALLOW = (b'{"device_id":"","login":"alice","protocol":"pop3","pwhash":"07cb",'
              b'"real_remote":"192.0.2.7","remote":"192.0.2.7","session_id":"fG3BepVhfYl/AAAH",'
              b'"tls":false}')
POP3_REPORT = (b'{"device_id":"","login":"alice","protocol":"pop3","pwhash":"07cb",'
               b'"real_remote":"192.0.2.7","remote":"192.0.2.7","session_id":"fG3BepVhfYl/AAAH",'
               b'"success":false,"policy_reject":false,"tls":false}')
RELAY_REPORT = (b'{"device_id":"\\"name\\" \\"imap-gateway\\"","login":"alice","protocol":"imap",'
                b'"pwhash":"077d","real_remote":"127.0.0.1","remote":"203.0.113.9",'
                b'"session_id":"gwsess123","success":false,"policy_reject":false,"tls":false}')
T0 = 1_750_000_000.0
GATEWAY_NETS = (ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("::1/128"))


def request(command: str, *, login: str = "alice", remote: str = "192.0.2.7",
            real_remote: str | None = None, protocol: str = "pop3", pwhash: str = "07cb",
            success: bool | None = None, policy_reject: bool = False) -> proto.PolicyRequest:
    body: dict[str, object] = {"login": login, "remote": remote, "protocol": protocol,
                               "pwhash": pwhash, "real_remote": real_remote or remote}
    if command == "report":
        body.update(success=success, policy_reject=policy_reject)
    return proto.parse_request(command, json.dumps(body).encode())


# -- protocol --------------------------------------------------------------------------


def test_dovecot_bodies_parse_into_requests():
    allow = proto.parse_request("allow", POP3_ALLOW)
    assert (allow.command, allow.login, allow.remote, allow.protocol, allow.pwhash) == (
        "allow", "alice", "192.0.2.7", "pop3", "07cb")
    assert allow.success is None and allow.policy_reject is None

    report = proto.parse_request("report", RELAY_REPORT)
    assert (report.remote, report.real_remote, report.success, report.policy_reject) == (
        "203.0.113.9", "127.0.0.1", False, False)
    assert report.device_id == '"name" "imap-gateway"'


@pytest.mark.parametrize(("command", "body", "message"), [
    ("deny", POP3_ALLOW, "unknown command 'deny'"),
    (None, POP3_ALLOW, "unknown command None"),
    ("allow", b"login=alice", "not JSON"),
    ("allow", b'["alice"]', "must be a JSON object"),
    ("allow", b'{"login": 7}', "'login' must be a string"),
    ("report", b'{"login": "alice"}', "must carry 'success'"),
    ("report", b'{"login": "alice", "success": "yes"}', "'success' must be true or false"),
    # json.loads recurses per bracket: a 64 KiB body can nest far past the stack limit
    ("allow", b"[" * 5000 + b"]" * 5000, "nested too deeply"),
    ("allow", b'{"a":' * 3000 + b"1" + b"}" * 3000, "nested too deeply"),
    # a lone surrogate is no character: no UTF-8 for the limiter's keys, fingerprint, log
    ("report", b'{"login": "\\ud800alice", "remote": "192.0.2.7", "success": false}',
     "'login' is not valid Unicode"),
    ("allow", b'{"login": "a", "pwhash": "\\udc80"}', "'pwhash' is not valid Unicode"),
])
def test_what_is_not_a_dovecot_request_is_refused_with_the_reason(command, body, message):
    with pytest.raises(proto.BadRequest, match=message):
        proto.parse_request(command, body)


def test_only_imap_logins_from_the_gateway_networks_are_relays():
    assert proto.is_gateway_relay(proto.parse_request("report", RELAY_REPORT), GATEWAY_NETS)
    assert not proto.is_gateway_relay(proto.parse_request("report", POP3_REPORT), GATEWAY_NETS)
    # POP3 through a local proxy on the gateway's host is still counted: the gateway
    # relays IMAP only.
    assert not proto.is_gateway_relay(
        request("allow", protocol="pop3", real_remote="127.0.0.1"), GATEWAY_NETS)
    assert not proto.is_gateway_relay(
        request("allow", protocol="imap", real_remote="198.51.100.1"), GATEWAY_NETS)
    # Without the real_remote attribute nothing is a relay (counted, twice for relays).
    no_real = json.loads(RELAY_REPORT)
    del no_real["real_remote"]
    assert not proto.is_gateway_relay(
        proto.parse_request("report", json.dumps(no_real).encode()), GATEWAY_NETS)


def test_fingerprint_tells_passwords_apart_and_users_case_insensitively():
    key = b"k" * 32
    same = proto.fingerprint(key, "Alice", "07cb")
    assert len(same) == 8
    assert same == proto.fingerprint(key, "alice", "07cb")
    assert same != proto.fingerprint(key, "alice", "05a6")
    assert same != proto.fingerprint(key, "bob", "07cb")
    assert same != proto.fingerprint(b"x" * 32, "alice", "07cb")


def test_answers_never_carry_a_message_for_the_client():
    assert json.loads(proto.reject("banned:ip_failures").body()) == {"status": -1, "msg": ""}
    assert json.loads(proto.allow().body()) == {"status": 0, "msg": ""}
    assert proto.delay(0.3, "tarpit").status == 1  # Dovecot counts whole seconds
    assert proto.delay(2.0, "tarpit").status == 2
    assert proto.delay(2.5, "tarpit").status == 3


def test_tarpit_memory_is_bounded_and_expires():
    memory = TarpitMemory(capacity=2)
    memory.set("192.0.2.1", 2.0, until=T0 + 10)
    memory.set("192.0.2.2", 4.0, until=T0 + 10)
    memory.set("192.0.2.3", 8.0, until=T0 + 10)
    assert len(memory) == 2
    assert memory.get("192.0.2.1", T0) == 0.0  # the oldest went first
    assert memory.get("192.0.2.3", T0) == 8.0
    assert memory.get("192.0.2.3", T0 + 10) == 0.0


# -- decisions against the real limiter -----------------------------------------------------


def service(*, timeout: str = "1s", **limits) -> AuthPolicyService:
    lim = limits_config(**{"tarpit_base": "0s", "tarpit_max": "0s", **limits})
    limiter = Limiter(MemoryState(), lim, anomaly_config())
    config = AuthPolicyConfig.model_validate({"address": "127.0.0.1:9145", "timeout": timeout})
    return AuthPolicyService(limiter, config, lim, key=b"k" * 32, clock=lambda: T0)


def run(svc: AuthPolicyService, *requests: proto.PolicyRequest) -> list[proto.Answer]:
    async def main() -> list[proto.Answer]:
        return [await svc.handle(r) for r in requests]
    return trio.run(main)


def test_reported_failures_ban_the_address_for_every_protocol():
    svc = service(ip_fail_threshold=3)
    reports = [request("report", pwhash=f"{i:04x}", success=False) for i in range(3)]
    assert [a.status for a in run(svc, *reports)] == [0, 0, 0]  # a report's answer is ignored

    for protocol in ("pop3", "imap", "smtp", "sieve"):
        answer = run(svc, request("allow", protocol=protocol, login="bob"))[0]
        assert (answer.status, answer.decision) == (-1, "reject"), protocol
        assert answer.reason == "banned:ip_failures"
    assert run(svc, request("allow", remote="192.0.2.8"))[0].status == 0
    # An allow without a user name still meets the ban.
    assert run(svc, request("allow", login=""))[0].status == -1


def test_the_same_password_retried_counts_once():
    svc = service(ip_fail_threshold=2)
    run(svc, *[request("report", pwhash="07cb", success=False) for _ in range(5)])
    assert run(svc, request("allow"))[0].status == 0


def test_relayed_gateway_logins_and_policy_refusals_are_not_counted():
    svc = service(ip_fail_threshold=2)
    relays = [proto.parse_request("report", RELAY_REPORT.replace(b"077d", f"{i:04x}".encode()))
              for i in range(5)]
    answers = run(svc, *relays)
    assert {a.reason for a in answers} == {"gateway_relay"}
    refused = [request("report", pwhash=f"{i:04x}", success=False, policy_reject=True)
               for i in range(5)]
    run(svc, *refused)
    assert run(svc, request("allow", remote="203.0.113.9", protocol="pop3"))[0].status == 0
    assert run(svc, request("allow"))[0].status == 0


def test_a_recent_failure_delays_the_next_attempt_from_that_address():
    svc = service(tarpit_base="2s", tarpit_max="10s")
    # Dovecot asks "allow" with the pwhash of the attempt it then reports.
    run(svc, request("allow", pwhash="0001"), request("report", pwhash="0001", success=False))
    answer = run(svc, request("allow", pwhash="0002"))[0]
    assert (answer.status, answer.decision) == (2, "delay")
    run(svc, request("report", pwhash="0002", success=False))
    assert run(svc, request("allow", pwhash="0003"))[0].status == 4
    assert run(svc, request("allow", remote="192.0.2.99"))[0].status == 0


def test_smart_lockout_spares_the_network_the_user_logged_in_from():
    svc = service(user_fail_threshold=3)
    run(svc, request("report", remote="198.51.100.5", success=True))  # the user, at home
    run(svc, *[request("report", remote=f"203.0.113.{i}", pwhash=f"{i:04x}", success=False)
               for i in range(3)])
    assert run(svc, request("allow", remote="203.0.114.1"))[0].reason == "user_lockout"
    home = run(svc, request("allow", remote="198.51.100.5"))[0]
    assert (home.status, home.reason) == (0, "familiar_network")


def test_anomalies_from_dovecot_reports_carry_the_protocol():
    lim = limits_config()
    limiter = Limiter(MemoryState(), lim, anomaly_config(spray_distinct_users=3))

    async def main() -> list:
        found = []
        for i in range(3):
            outcome = await limiter.record_failure(f"user{i}", "192.0.2.50", bytes(8), T0,
                                                   protocol="pop3")
            found += outcome.anomalies
        return found

    anomalies = trio.run(main)
    assert [a.kind for a in anomalies] == ["password_spray"]
    assert anomalies[0].as_event()["protocol"] == "pop3"


def test_requests_are_counted_by_protocol_command_and_decision():
    def value(**labels: str) -> float:
        return metrics.REGISTRY.get_sample_value(
            "imap_gateway_auth_policy_requests_total", labels) or 0.0

    svc = service(ip_fail_threshold=1)
    before = value(protocol="smtp", command="allow", decision="reject")
    run(svc, request("report", protocol="smtp", success=False),
        request("allow", protocol="smtp"))
    assert value(protocol="smtp", command="allow", decision="reject") == before + 1
    run(svc, request("allow", protocol="x-made-up"))
    assert value(protocol="other", command="allow", decision="reject") >= 1


def test_a_stalled_state_is_answered_allow_within_the_timeout():
    """Redis paused (CLIENT PAUSE): the limiter does not answer; Dovecot gets "allow"
    (decision error) once ``[auth_policy] timeout`` (300 ms) has passed, not when Redis
    wakes 10 s later."""
    try:
        redis = start_redis()
    except RedisStartError as e:
        pytest.fail(str(e), pytrace=False)
    try:
        lim = limits_config()
        config = AuthPolicyConfig.model_validate({"address": "127.0.0.1:9145",
                                                  "timeout": "300ms"})

        async def main() -> tuple[proto.Answer, float]:
            async with open_state(redis.url, key_prefix="ap-test:") as state:
                svc = AuthPolicyService(Limiter(state, lim, anomaly_config()), config, lim)
                await svc.handle(request("allow"))  # connected before the pause
                redis.cli("CLIENT", "PAUSE", "10000", "ALL")
                started = trio.current_time()
                answer = await svc.handle(request("allow"))
                return answer, trio.current_time() - started

        answer, seconds = trio.run(main)
        assert (answer.status, answer.decision, answer.reason) == (0, "error", "timeout")
        assert seconds < 8  # well before the 10 s pause ends (generous: a loaded machine)
    finally:
        redis.stop()  # SIGTERM ends a paused Redis too


# -- the HTTP endpoint ------------------------------------------------------------------------

TOKEN = "0123456789abcdef0123456789abcdef"


def test_the_endpoint_wants_the_api_key_before_anything_else():
    client = AsgiClient(auth_policy_app(service(), TOKEN), base_url="http://127.0.0.1:9145")
    unauthorized = metrics.REGISTRY.get_sample_value(
        "imap_gateway_auth_policy_unauthorized_total") or 0.0
    for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": TOKEN[:-1]}):
        r = client.post("/?command=allow", content=POP3_ALLOW, headers=headers)
        assert r.status_code == 401, headers
        assert TOKEN not in r.text
    assert metrics.REGISTRY.get_sample_value(
        "imap_gateway_auth_policy_unauthorized_total") == unauthorized + 3

    ok = client.post("/?command=allow", content=POP3_ALLOW, headers={"X-API-Key": TOKEN})
    assert ok.status_code == 200
    assert ok.json() == {"status": 0, "msg": ""}
    # Any path: Dovecot appends the query to whatever auth_policy_server_url says.
    assert client.post("/policy/?command=report", content=POP3_REPORT,
                       headers={"X-API-Key": f" {TOKEN}"}).status_code == 200


def test_the_endpoint_refuses_what_is_not_a_policy_request():
    client = AsgiClient(auth_policy_app(service(), None), base_url="http://127.0.0.1:9145")
    assert client.post("/?command=allow", content=POP3_ALLOW).status_code == 200
    bad = client.post("/?command=nope", content=POP3_ALLOW)
    assert bad.status_code == 400 and "unknown command" in bad.json()["error"]
    assert client.post("/?command=allow", content=b"{").status_code == 400
    assert client.post("/?command=allow", content=b"x" * (65 * 1024)).status_code == 413
    assert client.get("/?command=allow").status_code == 405


def test_garbage_bodies_get_400_not_500_and_count_against_no_one():
    client = AsgiClient(auth_policy_app(service(), None), base_url="http://127.0.0.1:9145")
    for body in (b"[" * 20000 + b"]" * 20000,
                 b'{"login":"alice\\ud800","remote":"192.0.2.7","pwhash":"07cb",'
                 b'"success":false,"policy_reject":false}'):
        r = client.post("/?command=report", content=body)
        assert r.status_code == 400, r.text
    assert client.post("/?command=report", content=POP3_REPORT).status_code == 200


# -- startup ----------------------------------------------------------------------------------


def test_a_short_token_stops_the_start_naming_key_and_file(tmp_path):
    from gateway.config import config_from_mapping
    from gateway.startup import StartupError, prepare

    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "00.toml").write_text(
        '[[rule]]\nname = "all"\naction = "allow"\nmfa = "none"\n')
    pem = tmp_path / "x.pem"
    pem.write_text("not read here")
    token = tmp_path / "policy.token"
    token.write_text("short\n")
    token.chmod(0o600)
    data = {"tls": {"cert": str(pem), "key": str(pem)},
            "listener": [{"address": "127.0.0.1:993"}],
            "backend": {"address": "127.0.0.1:143"}, "admin": {"address": ""},
            "auth_policy": {"address": "127.0.0.1:9145", "token_file": str(token)}}
    config = config_from_mapping(data, source_path=tmp_path / "gateway.toml")
    with pytest.raises(StartupError) as info:
        prepare(config)
    assert "auth_policy.token_file" in str(info.value) and str(token) in str(info.value)
    assert "at least 16" in str(info.value)

    token.write_text(TOKEN + "\n")
    runtime = prepare(config)
    assert runtime.auth_policy_token == TOKEN
    assert TOKEN not in repr(runtime)
