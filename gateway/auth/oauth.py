"""OAuth 2.0 bearer tokens: is this token good, and whose is it?

Rules of this module:

1. It does no I/O and reads no clock: the shell (``gateway.proxy.oauth``) fetches the
   provider's keys and introspection answers and passes them in with ``now``.
2. A bad token is a value (:class:`TokenRejected` with a machine-readable ``reason``
   for logs and metrics), never an exception, and no message ever contains the token.
3. Signatures are checked by PyJWT; which algorithm is acceptable is decided here, by
   the *key*, never by the token's header: an RSA key verifies RS256/384/512 and
   PS256/384/512 only, an EC key the ES algorithm of its curve, an Ed25519/Ed448 key
   EdDSA. ``none`` and every HMAC algorithm (HS*) are refused outright: with HS256 the
   "secret" would be the provider's *public* key, which anyone can fetch (the classic
   algorithm-confusion forgery). Symmetric keys (``kty = "oct"``) in a key set are
   ignored for the same reason.

Checks of a JWT, in order: three base64url parts; header ``alg`` on the allow-list;
``kid`` names a known key (else ``unknown_kid``: the shell refetches the key set, at a
limited rate, and asks again); the key allows that ``alg``; the signature; ``iss`` equals
the configured issuer; ``aud`` contains the audience; ``exp`` is required and ``exp``,
``nbf`` and ``iat`` are checked against ``now`` with ``leeway``; the required scope
(``scope`` or Entra's ``scp``, space separated); the username claim is a non-empty string.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import jwt
from jwt.algorithms import get_default_algorithms

__all__ = [
    "KeySet",
    "KeySetError",
    "OAuthRules",
    "TokenAccepted",
    "TokenRejected",
    "check_introspection",
    "is_jwt",
    "unverified_user",
    "parse_key_set",
    "validate_jwt",
]

_RSA_ALGS: Final = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_ALGS: Final = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512", "secp256k1": "ES256K"}
_OKP_CURVES: Final = frozenset({"Ed25519", "Ed448"})
#: Every algorithm a token header may name; anything else (none, HS*) is refused.
ALLOWED_ALGS: Final = _RSA_ALGS | frozenset(_EC_ALGS.values()) | {"EdDSA"}

#: Reasons, as logs and the ``reason`` label of the login metrics spell them.
MALFORMED = "oauth_malformed"
BAD_ALG = "oauth_bad_alg"
UNKNOWN_KID = "oauth_unknown_kid"
BAD_SIGNATURE = "oauth_bad_signature"
WRONG_ISSUER = "oauth_wrong_issuer"
WRONG_AUDIENCE = "oauth_wrong_audience"
EXPIRED = "oauth_expired"
NOT_YET_VALID = "oauth_not_yet_valid"
MISSING_CLAIM = "oauth_missing_claim"
SCOPE_MISSING = "oauth_scope_missing"
NO_USERNAME = "oauth_no_username"
INACTIVE = "oauth_inactive"


@dataclass(frozen=True, slots=True)
class OAuthRules:
    """What a token must satisfy (from ``[oauth]``)."""

    issuer: str
    audience: str
    username_claim: str = "preferred_username"
    mfa_claims: tuple[str, ...] = ("mfa", "otp", "hwk")
    required_scope: str = ""
    leeway: float = 60.0


@dataclass(frozen=True, slots=True)
class TokenAccepted:
    """A good token: ``user`` is the Dovecot user; ``mfa`` whether ``amr`` shows MFA."""

    user: str
    mfa: bool
    #: The token's ``amr`` values (how the user authenticated at the provider), for logs.
    amr: tuple[str, ...] = ()
    subject: str = ""
    #: The ``nonce`` claim of an OpenID Connect ID token ("" if none).
    nonce: str = field(default="", repr=False)


@dataclass(frozen=True, slots=True)
class TokenRejected:
    """A refused token; ``reason`` (one of the constants above) is for logs and metrics,
    ``detail`` a short explanation that never quotes the token."""

    reason: str
    detail: str = ""


class KeySetError(ValueError):
    """A JWKS document that cannot be used at all (not JSON, no ``keys`` list)."""


@dataclass(frozen=True, slots=True)
class _Key:
    key: Any = field(repr=False)  # a cryptography public key object
    algs: frozenset[str]


@dataclass(frozen=True, slots=True)
class KeySet:
    """The provider's usable public keys by ``kid``. Keys without a ``kid`` are kept under
    "" and used only for tokens without one, and only when they are the sole such key."""

    keys: Mapping[str, _Key] = field(default_factory=dict)
    #: Keys of the document that were skipped, with why (for the shell's log).
    skipped: tuple[str, ...] = ()

    def kids(self) -> list[str]:
        return sorted(self.keys)


def _algs_for(jwk: Mapping[str, Any]) -> frozenset[str] | str:
    """The algorithms this key may verify, or why it is unusable."""
    kty = jwk.get("kty")
    if kty == "RSA":
        allowed = _RSA_ALGS
    elif kty == "EC":
        crv = jwk.get("crv")
        if crv not in _EC_ALGS:
            return f"EC curve {crv!r} not supported"
        allowed = frozenset({_EC_ALGS[crv]})
    elif kty == "OKP":
        if jwk.get("crv") not in _OKP_CURVES:
            return f"OKP curve {jwk.get('crv')!r} not supported"
        allowed = frozenset({"EdDSA"})
    else:
        return f"key type {kty!r} not accepted (only RSA, EC, OKP public keys)"
    use = jwk.get("use")
    if use is not None and use != "sig":
        return f"use {use!r} is not 'sig'"
    alg = jwk.get("alg")
    if alg is not None:
        if alg not in allowed:
            return f"alg {alg!r} does not fit key type {kty}"
        allowed = frozenset({alg})
    return allowed


def parse_key_set(document: bytes | str | Mapping[str, Any]) -> KeySet:
    """Parse a JWKS document; unusable keys are skipped (listed in ``skipped``).

    Raises KeySetError only when the document as a whole is unusable.
    """
    if isinstance(document, bytes | str):
        try:
            data = json.loads(document)
        except ValueError as exc:
            raise KeySetError(f"not JSON: {exc}") from None
    else:
        data = document
    if not isinstance(data, Mapping) or not isinstance(data.get("keys"), list):
        raise KeySetError("not a JWKS document (no \"keys\" list)")
    algorithms = get_default_algorithms()
    keys: dict[str, _Key] = {}
    skipped: list[str] = []
    unnamed = 0
    for i, jwk in enumerate(data["keys"]):
        if not isinstance(jwk, Mapping):
            skipped.append(f"keys[{i}]: not an object")
            continue
        kid = jwk.get("kid", "")
        name = f"kid {kid!r}" if kid else f"keys[{i}]"
        if not isinstance(kid, str):
            skipped.append(f"keys[{i}]: kid is not a string")
            continue
        if "d" in jwk or "k" in jwk:
            skipped.append(f"{name}: a private or symmetric key has no place in a JWKS")
            continue
        algs = _algs_for(jwk)
        if isinstance(algs, str):
            skipped.append(f"{name}: {algs}")
            continue
        family = {"RSA": "RS256", "EC": next(iter(algs)), "OKP": "EdDSA"}[jwk["kty"]]
        try:
            key = algorithms[family].from_jwk(dict(jwk))
        except Exception as exc:  # PyJWT raises several types for a bad key
            skipped.append(f"{name}: {exc}")
            continue
        if kid == "":
            unnamed += 1
        if kid in keys:
            skipped.append(f"{name}: duplicate kid, the first one is used")
            continue
        keys[kid] = _Key(key, algs)
    if unnamed > 1:
        keys.pop("", None)
        skipped.append("several keys without kid: none of them is used")
    return KeySet(keys, tuple(skipped))


def is_jwt(token: str) -> bool:
    """Shaped like a JWS compact serialization (three dot-separated parts)?"""
    return token.count(".") == 2


def unverified_user(token: str, claim: str) -> str:
    """The user a JWT *claims* to be, without checking it ("" if it names none).

    Only for what a client-named user is used for before the token is checked: the
    limiter's per-user counters and the log line of a refused login. An OAUTHBEARER
    client may leave out ``a=``; counting all of those under one empty name would let
    anyone lock every such login out.
    """
    if not is_jwt(token):
        return ""
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return ""
    user = claims.get(claim)
    return user if isinstance(user, str) and not any(c in user for c in "\x00\r\n") else ""


def validate_jwt(token: str, keys: KeySet, rules: OAuthRules, now: float) -> (
        TokenAccepted | TokenRejected):
    """Check a JWT access token (see the module docstring for the order)."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        return TokenRejected(MALFORMED, "the token header is not valid JOSE")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in ALLOWED_ALGS:
        return TokenRejected(BAD_ALG, f"alg {alg!r} is not accepted")
    kid = header.get("kid", "")
    if not isinstance(kid, str):
        return TokenRejected(MALFORMED, "kid is not a string")
    known = keys.keys.get(kid)
    if known is None:
        return TokenRejected(UNKNOWN_KID, f"no key with kid {kid[:64]!r}")
    if alg not in known.algs:
        return TokenRejected(BAD_ALG, f"alg {alg} does not fit key {kid[:64]!r}")
    try:
        claims = jwt.decode(
            token, key=known.key, algorithms=[alg], audience=rules.audience,
            issuer=rules.issuer,
            # Time claims are checked below against the ``now`` we were given.
            options={"verify_exp": False, "verify_nbf": False, "verify_iat": False,
                     "require": ["exp", "iss", "aud"]},
        )
    except jwt.InvalidSignatureError:
        return TokenRejected(BAD_SIGNATURE, "signature does not verify")
    except jwt.InvalidIssuerError:
        return TokenRejected(WRONG_ISSUER, "iss is not the configured issuer")
    except jwt.InvalidAudienceError:
        return TokenRejected(WRONG_AUDIENCE, "aud does not contain the configured audience")
    except jwt.MissingRequiredClaimError as exc:
        return TokenRejected(MISSING_CLAIM, f"claim {exc.claim!r} is missing")
    except jwt.PyJWTError as exc:
        return TokenRejected(MALFORMED, type(exc).__name__)
    return _check_claims(claims, rules, now)


def _check_claims(claims: Mapping[str, Any], rules: OAuthRules, now: float) -> (
        TokenAccepted | TokenRejected):
    for name in ("exp", "nbf", "iat"):
        value = claims.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            return TokenRejected(MALFORMED, f"claim {name!r} is not a number")
    exp, nbf, iat = claims.get("exp"), claims.get("nbf"), claims.get("iat")
    if exp is not None and now > exp + rules.leeway:
        return TokenRejected(EXPIRED, "exp has passed")
    if nbf is not None and now < nbf - rules.leeway:
        return TokenRejected(NOT_YET_VALID, "nbf is in the future")
    if iat is not None and now < iat - rules.leeway:
        return TokenRejected(NOT_YET_VALID, "iat is in the future")
    if rules.required_scope and rules.required_scope not in _scopes(claims):
        return TokenRejected(SCOPE_MISSING, f"scope {rules.required_scope!r} not granted")
    user = claims.get(rules.username_claim)
    if not isinstance(user, str) or not user or any(c in user for c in "\x00\r\n"):
        return TokenRejected(NO_USERNAME, f"claim {rules.username_claim!r} is missing or empty")
    amr = claims.get("amr")
    amr_values = tuple(a for a in amr if isinstance(a, str)) if isinstance(amr, list) else ()
    sub, nonce = claims.get("sub"), claims.get("nonce")
    return TokenAccepted(user=user, mfa=bool(set(amr_values) & set(rules.mfa_claims)),
                         amr=amr_values, subject=sub if isinstance(sub, str) else "",
                         nonce=nonce if isinstance(nonce, str) else "")


def _scopes(claims: Mapping[str, Any]) -> set[str]:
    out: set[str] = set()
    for name in ("scope", "scp"):
        value = claims.get(name)
        if isinstance(value, str):
            out.update(value.split())
        elif isinstance(value, list):
            out.update(v for v in value if isinstance(v, str))
    return out


def _aud_list(value: Any) -> Sequence[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def check_introspection(answer: Mapping[str, Any], rules: OAuthRules, now: float) -> (
        TokenAccepted | TokenRejected):
    """Judge an RFC 7662 introspection answer for an opaque token.

    ``active`` must be true; ``iss`` and ``aud``, when the provider includes them, must
    match (a token issued for another client is refused); the time, scope and username
    rules are those of a JWT. The username falls back to RFC 7662's ``username``.
    """
    if answer.get("active") is not True:
        return TokenRejected(INACTIVE, "the provider says the token is not active")
    iss = answer.get("iss")
    if iss is not None and iss != rules.issuer:
        return TokenRejected(WRONG_ISSUER, "iss is not the configured issuer")
    if "aud" in answer and rules.audience not in _aud_list(answer["aud"]):
        return TokenRejected(WRONG_AUDIENCE, "aud does not contain the configured audience")
    claims = dict(answer)
    if rules.username_claim not in claims and isinstance(answer.get("username"), str):
        claims[rules.username_claim] = answer["username"]
    return _check_claims(claims, rules, now)
