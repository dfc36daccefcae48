"""OAuth bearer tokens: which tokens the gateway accepts, and the key set behind it.

The pure checks (``gateway.auth.oauth``) get tokens signed with the suite's own RSA,
EC P-256 and Ed25519 keys; the shell's key cache (``gateway.proxy.oauth``) fetches them
from the suite's HTTPS JWKS server (tests/support/jwks_server.py).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import trio
import trustme

from gateway.auth import oauth
from gateway.config import config_from_mapping
from gateway.proxy.oauth import KEYS_UNAVAILABLE, TokenVerifier, error_challenge
from tests.support.jwks_server import (
    AUDIENCE,
    JwksServer,
    TokenSigner,
    hs256_with_public_key,
    new_key,
    tampered,
    unsigned_token,
)

ISSUER = "https://idp.example.org/realms/mail"


@pytest.fixture(scope="module")
def signer() -> TokenSigner:
    return TokenSigner(ISSUER, [new_key("rsa-1", "RS256"), new_key("ec-1", "ES256"),
                                new_key("ed-1", "EdDSA")])


@pytest.fixture(scope="module")
def keys(signer) -> oauth.KeySet:
    return oauth.parse_key_set(json.dumps(signer.jwks()))


RULES = oauth.OAuthRules(issuer=ISSUER, audience=AUDIENCE, leeway=30.0)


def check(token: str, keys: oauth.KeySet, rules: oauth.OAuthRules = RULES,
          now: float | None = None):
    return oauth.validate_jwt(token, keys, rules, time.time() if now is None else now)


@pytest.mark.parametrize("kid", ["rsa-1", "ec-1", "ed-1"])
def test_a_good_token_of_each_key_type_names_the_user(signer, keys, kid):
    got = check(signer.token("alice", kid=kid), keys)
    assert got == oauth.TokenAccepted(user="alice", mfa=True, amr=("pwd", "otp"),
                                      subject="sub-alice")


def test_amr_without_an_mfa_value_is_not_mfa(signer, keys):
    got = check(signer.token("alice", amr=["pwd"]), keys)
    assert isinstance(got, oauth.TokenAccepted) and got.mfa is False
    got = check(signer.token("alice", amr=None), keys)
    assert isinstance(got, oauth.TokenAccepted) and got.mfa is False


def test_username_claim_is_configurable(signer, keys):
    rules = oauth.OAuthRules(issuer=ISSUER, audience=AUDIENCE, username_claim="email")
    got = check(signer.token("alice", email="alice@example.org"), keys, rules)
    assert isinstance(got, oauth.TokenAccepted) and got.user == "alice@example.org"
    assert check(signer.token("alice"), keys, rules).reason == oauth.NO_USERNAME


@pytest.mark.parametrize("over, reason", [
    ({"iss": "https://evil.example.org/realms/mail"}, oauth.WRONG_ISSUER),
    ({"aud": "another-client"}, oauth.WRONG_AUDIENCE),
    ({"aud": None}, oauth.MISSING_CLAIM),
    ({"exp": None}, oauth.MISSING_CLAIM),
    ({"exp": -120}, oauth.EXPIRED),  # seconds from now (the test's now, not collection's)
    ({"nbf": 120}, oauth.NOT_YET_VALID),
    ({"preferred_username": ""}, oauth.NO_USERNAME),
])
def test_tokens_with_bad_claims_are_refused(signer, keys, over, reason):
    over = {k: int(time.time()) + v if k in ("exp", "nbf") and v is not None else v
            for k, v in over.items()}
    got = check(signer.token("alice", **over), keys)
    assert isinstance(got, oauth.TokenRejected) and got.reason == reason


def test_leeway_covers_small_clock_skew(signer, keys):
    token = signer.token("alice", exp=int(time.time()) - 10)
    assert isinstance(check(token, keys), oauth.TokenAccepted)  # 10 s late, 30 s leeway
    strict = oauth.OAuthRules(issuer=ISSUER, audience=AUDIENCE, leeway=0.0)
    assert check(token, keys, strict).reason == oauth.EXPIRED


def test_audience_list_containing_ours_is_accepted(signer, keys):
    got = check(signer.token("alice", aud=["account", AUDIENCE]), keys)
    assert isinstance(got, oauth.TokenAccepted)


def test_required_scope_from_scope_or_entra_scp(signer, keys):
    rules = oauth.OAuthRules(issuer=ISSUER, audience=AUDIENCE, required_scope="IMAP.AccessAsUser.All")
    assert check(signer.token("alice"), keys, rules).reason == oauth.SCOPE_MISSING
    ok = check(signer.token("alice", scope=None, scp="IMAP.AccessAsUser.All User.Read"), keys, rules)
    assert isinstance(ok, oauth.TokenAccepted)


def test_unknown_kid_is_its_own_reason(signer, keys):
    other = TokenSigner(ISSUER, [new_key("rotated-2", "RS256")])
    assert check(other.token("alice"), keys).reason == oauth.UNKNOWN_KID


def test_a_token_signed_by_another_key_with_a_known_kid_fails_the_signature(signer, keys):
    impostor = TokenSigner(ISSUER, [new_key("rsa-1", "RS256")])
    assert check(impostor.token("alice"), keys).reason == oauth.BAD_SIGNATURE


def test_tampered_payload_fails_the_signature(signer, keys):
    token = tampered(signer.token("alice"), preferred_username="bob")
    assert check(token, keys).reason == oauth.BAD_SIGNATURE


def test_alg_none_is_refused(signer, keys):
    token = unsigned_token(signer.claims("alice"), kid="rsa-1")
    assert check(token, keys).reason == oauth.BAD_ALG


def test_hs256_keyed_with_the_public_key_is_refused(signer, keys):
    token = hs256_with_public_key(signer.claims("alice"), signer.keys["rsa-1"])
    assert check(token, keys).reason == oauth.BAD_ALG


def test_alg_must_fit_the_key_not_the_header(signer, keys):
    # An ES256 header naming the RSA key: the key decides, so it is refused before PyJWT.
    token = signer.token("alice", kid="ec-1", headers={"kid": "rsa-1"})
    assert check(token, keys).reason == oauth.BAD_ALG


def test_key_set_skips_symmetric_and_private_keys(signer):
    doc = signer.jwks()
    doc["keys"].append({"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"})
    doc["keys"].append({"kty": "RSA", "kid": "enc", "use": "enc", **{
        k: v for k, v in signer.keys["rsa-1"].public_jwk().items() if k in ("n", "e")}})
    ks = oauth.parse_key_set(doc)
    assert ks.kids() == ["ec-1", "ed-1", "rsa-1"]
    assert any("hmac" in s for s in ks.skipped) and any("enc" in s for s in ks.skipped)


def test_a_document_without_keys_is_an_error():
    with pytest.raises(oauth.KeySetError):
        oauth.parse_key_set(b"<html>")
    with pytest.raises(oauth.KeySetError):
        oauth.parse_key_set({"kids": []})


def test_introspection_answers():
    now = time.time()
    good = {"active": True, "iss": ISSUER, "aud": AUDIENCE, "exp": now + 60,
            "username": "carol", "amr": ["hwk"]}
    assert oauth.check_introspection(good, RULES, now) == oauth.TokenAccepted(
        user="carol", mfa=True, amr=("hwk",))
    assert oauth.check_introspection({"active": False}, RULES, now).reason == oauth.INACTIVE
    assert oauth.check_introspection({**good, "aud": "x"}, RULES, now).reason == oauth.WRONG_AUDIENCE
    assert oauth.check_introspection({**good, "exp": now - 600}, RULES, now).reason == oauth.EXPIRED


# -- the shell's key cache against the suite's HTTPS JWKS server ------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def idp(ca):
    srv = JwksServer(ca).start()
    yield srv
    srv.stop()


def _config(tmp_path: Path, idp: JwksServer, ca_file: Path, **oauth_keys):
    from tests.support.certs import make_certs

    certs = make_certs(tmp_path / "certs")
    master = tmp_path / "master.pass"
    master.write_text("x\n")
    master.chmod(0o600)
    return config_from_mapping({
        "tls": {"cert": str(certs.cert_path), "key": str(certs.key_path)},
        "listener": [{"address": "127.0.0.1:9993"}],
        "backend": {"address": "127.0.0.1:143", "master_user": "m",
                    "master_password_file": str(master)},
        "oauth": {"issuer": idp.issuer, "audience": AUDIENCE, "ca_file": str(ca_file),
                  **oauth_keys},
    }, source_path=tmp_path / "gateway.toml")


@pytest.fixture
def make_verifier(idp, ca, tmp_path):
    ca_file = tmp_path / "idp-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))

    def make(**oauth_keys) -> TokenVerifier:
        return TokenVerifier(_config(tmp_path, idp, ca_file, **oauth_keys).oauth)
    return make


def test_keys_come_from_the_discovery_document_and_are_cached(idp, make_verifier):
    v = make_verifier()

    async def main():
        for _ in range(3):
            got = await v.verify(idp.signer.token("alice"), time.time())
            assert isinstance(got, oauth.TokenAccepted) and got.user == "alice"
    trio.run(main)
    assert idp.count("/.well-known/openid-configuration") == 1
    assert idp.count("/certs") == 1


def test_rotation_unknown_kid_refetches_once_then_rate_limits(idp, make_verifier):
    idp.served_kids = ["rsa-1"]
    v = make_verifier(jwks_refetch_interval="1h")

    async def main():
        assert isinstance(await v.verify(idp.signer.token(kid="rsa-1"), time.time()),
                          oauth.TokenAccepted)
        idp.served_kids = ["rsa-1", "ec-1"]  # the provider rotates in a new key
        got = await v.verify(idp.signer.token(kid="ec-1"), time.time())
        assert isinstance(got, oauth.TokenAccepted), got
        # A made-up kid: the key set was just fetched, so it is not fetched again.
        forged = TokenSigner(idp.issuer, [new_key("made-up", "RS256")]).token()
        for _ in range(5):
            assert (await v.verify(forged, time.time())).reason == oauth.UNKNOWN_KID
    trio.run(main)
    assert idp.count("/certs") == 2


def test_provider_outage_keeps_cached_keys(idp, make_verifier):
    v = make_verifier(jwks_cache_ttl="1s", jwks_refetch_interval="0s")
    clock = [0.0]
    v._clock = lambda: clock[0]

    async def main():
        assert isinstance(await v.verify(idp.signer.token(), time.time()), oauth.TokenAccepted)
        idp.down = True
        clock[0] = 10.0  # past the cache TTL: a refresh is due and fails
        got = await v.verify(idp.signer.token(kid="ed-1"), time.time())
        assert isinstance(got, oauth.TokenAccepted), got
    trio.run(main)
    assert idp.count("/certs") == 2  # it did try


def test_a_hanging_provider_delays_only_the_session_that_refreshes(idp, make_verifier):
    import threading

    v = make_verifier(jwks_cache_ttl="1s", jwks_refetch_interval="0s", http_timeout="60s")
    clock = [0.0]
    v._clock = lambda: clock[0]
    done: list[str] = []

    async def main():
        assert isinstance(await v.verify(idp.signer.token(), time.time()), oauth.TokenAccepted)
        idp.hang = threading.Event()
        clock[0] = 10.0  # stale: the next login refreshes, and the provider hangs

        async def first():
            got = await v.verify(idp.signer.token(kid="ec-1"), time.time())
            assert isinstance(got, oauth.TokenAccepted)
            done.append("first")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(first)
            while not v._lock.locked():
                await trio.sleep(0.01)
            got = await v.verify(idp.signer.token(kid="ed-1"), time.time())
            assert isinstance(got, oauth.TokenAccepted)
            done.append("second")
            assert done == ["second"]  # answered from the cache while the refresh hangs
            idp.hang.set()
    trio.run(main)
    assert done == ["second", "first"]


def test_no_keys_at_all_is_not_the_tokens_fault(idp, make_verifier):
    idp.down = True
    v = make_verifier()
    got = trio.run(v.verify, idp.signer.token(), time.time())
    assert got.reason == KEYS_UNAVAILABLE


def test_jwks_file_is_read_and_reloaded(idp, make_verifier, tmp_path):
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(idp.signer.jwks(["rsa-1"])))
    v = make_verifier(jwks_file=str(path), jwks_refetch_interval="1h")

    async def main():
        assert isinstance(await v.verify(idp.signer.token(kid="rsa-1"), time.time()),
                          oauth.TokenAccepted)
        path.write_text(json.dumps(idp.signer.jwks(["ec-1"])))
        await v.reload_file()  # what SIGHUP does
        assert (await v.verify(idp.signer.token(kid="rsa-1"), time.time())).reason == \
            oauth.UNKNOWN_KID
        assert isinstance(await v.verify(idp.signer.token(kid="ec-1"), time.time()),
                          oauth.TokenAccepted)
    trio.run(main)
    assert idp.requests == []  # nothing fetched over the network


def test_opaque_tokens_go_to_introspection(idp, make_verifier, tmp_path):
    secret = tmp_path / "client.secret"
    secret.write_text(idp.client_secret + "\n")
    secret.chmod(0o600)
    v = make_verifier(introspection_url=idp.introspection_url, client_id=idp.client_id,
                      client_secret_file=str(secret))
    idp.opaque["opaque-abc"] = {"active": True, "iss": idp.issuer, "aud": AUDIENCE,
                                "exp": time.time() + 60, "username": "dave"}

    async def main():
        got = await v.verify("opaque-abc", time.time())
        assert isinstance(got, oauth.TokenAccepted) and got.user == "dave", got
        assert (await v.verify("opaque-unknown", time.time())).reason == oauth.INACTIVE
    trio.run(main)


def test_error_challenge_is_rfc7628_json(make_verifier, idp):
    import base64

    v = make_verifier(required_scope="email")
    body = json.loads(base64.b64decode(error_challenge(v.cfg)))
    assert body == {"status": "invalid_token", "scope": "email",
                    "openid-configuration": idp.issuer + "/.well-known/openid-configuration"}


def test_unverified_user_reads_the_claim_without_trusting_it(signer):
    assert oauth.unverified_user(signer.token("alice"), "preferred_username") == "alice"
    forged = tampered(signer.token("alice"), preferred_username="bob")
    assert oauth.unverified_user(forged, "preferred_username") == "bob"  # not checked
    assert oauth.unverified_user("opaque-token", "preferred_username") == ""
    assert oauth.unverified_user("a.b.c", "preferred_username") == ""
