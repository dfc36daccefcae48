"""Dovecot 2.3's auth-policy protocol, sans-IO: a request body in, a value out; an answer
value in, a response body out.

What Dovecot sends (checked against Dovecot 2.3.19 in tests/e2e/test_auth_policy.py):

- ``POST <auth_policy_server_url>?command=allow`` before authentication (and, with
  ``auth_policy_check_after_auth``, again after a successful passdb lookup; the two look
  the same), and ``?command=report`` when the authentication has ended.
- The body is one flat JSON object built from ``auth_policy_request_attributes``
  (``key=%{var}`` pairs; every value a string), plus, on a report, the booleans
  ``success`` and ``policy_reject`` (true when this server refused it). Dovecot also
  always adds ``"tls"``: an attribute must not be named ``tls`` (the object would carry
  the key twice).
- ``pwhash`` is ``hex(H(auth_policy_hash_nonce || user || "\\0" || password))`` truncated
  to ``auth_policy_hash_truncate`` bits (12 by default: 4 hex digits). The nonce is
  Dovecot's secret: this server never sees a password, only a keyed hash of it, which
  tells two attempts with the same password apart from two with different ones.
- The API header: ``auth_policy_server_api_header = <token>`` sends ``X-API-Key: <token>``.

What it wants back: ``{"status": S, "msg": M}``; S < 0 rejects, S > 0 delays the login by
S seconds, 0 allows; the answer to a report is ignored. A non-2xx answer, a malformed
body or no answer within ``auth_policy_server_timeout_msecs`` makes Dovecot apply
``auth_policy_reject_on_fail`` (default ``no``: allow). ``msg`` becomes the failure text
the client sees, so it is always empty here: a refusal by policy must read like any other
failed login.

Rules of this module: no I/O, no clock, no limiter. It parses, classifies and formats;
``gateway.authpolicy.service`` acts.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network
from typing import Any, Literal

__all__ = [
    "COMMANDS",
    "PROTOCOLS",
    "Answer",
    "BadRequest",
    "Command",
    "Decision",
    "PolicyRequest",
    "allow",
    "delay",
    "fingerprint",
    "is_gateway_relay",
    "parse_request",
    "protocol_label",
    "reject",
]

Command = Literal["allow", "report"]
COMMANDS: tuple[str, ...] = ("allow", "report")
Decision = Literal["allow", "reject", "delay", "error"]

#: Dovecot's service names (``%s``) that get a metric label of their own; anything else
#: is "other", so a misconfigured attribute cannot grow the series count.
PROTOCOLS: tuple[str, ...] = (
    "imap", "pop3", "smtp", "submission", "sieve", "lmtp", "doveadm", "other",
)

#: Longest user name / client id kept from a request (they go to logs).
MAX_FIELD = 256


class BadRequest(ValueError):
    """The request is not a Dovecot policy request; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class PolicyRequest:
    """One request, with the attributes this server uses.

    ``login``: the user name the client asked for (``%{requested_username}``).
    ``remote``: the client address (``%{rip}``): after the gateway's or a proxy's forwarding.
    ``real_remote``: the TCP peer of Dovecot (``%{real_rip}``), or None if not configured.
    ``pwhash``: Dovecot's keyed password hash (hex), "" when none was sent.
    ``success``/``policy_reject``: only on a report.
    """

    command: Command
    login: str
    remote: str | None
    real_remote: str | None
    protocol: str
    pwhash: str
    session_id: str
    device_id: str
    success: bool | None = None
    policy_reject: bool | None = None


@dataclass(frozen=True, slots=True)
class Answer:
    """What to answer Dovecot, and how to count and log it (``decision``, ``reason``)."""

    status: int
    decision: Decision
    reason: str

    def body(self) -> bytes:
        # msg is empty on purpose: Dovecot shows a non-empty msg to the client.
        return json.dumps({"status": self.status, "msg": ""}, separators=(",", ":")).encode()


def allow(reason: str = "ok") -> Answer:
    return Answer(0, "allow", reason)


def reject(reason: str) -> Answer:
    return Answer(-1, "reject", reason)


def delay(seconds: float, reason: str) -> Answer:
    """Delay the login by ``seconds``, rounded up to whole seconds (Dovecot's unit)."""
    whole = max(1, math.ceil(seconds - 1e-9))
    return Answer(whole, "delay", reason)


def error(reason: str) -> Answer:
    """The server could not decide (limiter state down or slow): Dovecot is told "allow"
    all the same, so an outage here never stops mail; counted as ``error``."""
    return Answer(0, "error", reason)


def protocol_label(protocol: str) -> str:
    name = protocol.lower()
    return name if name in PROTOCOLS else "other"


def _text(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadRequest(f"attribute {key!r} must be a string, got {type(value).__name__}")
    value = value[:MAX_FIELD]
    try:
        # JSON's \uD800 escapes can name lone surrogates, which no UTF-8 text holds (and
        # which the limiter's keys, the fingerprint and the log cannot encode). Dovecot
        # escapes only real characters.
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"attribute {key!r} is not valid Unicode (a lone surrogate)") from None
    return value


def _address(data: Mapping[str, Any], key: str) -> str | None:
    text = _text(data, key)
    if not text:
        return None
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None  # e.g. a Unix-socket login with no client address


def _flag(data: Mapping[str, Any], key: str) -> bool | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise BadRequest(f"attribute {key!r} must be true or false")
    return value


def parse_request(command: str | None, body: bytes) -> PolicyRequest:
    """The request for ``?command=`` and the JSON ``body``; ``BadRequest`` if it is not one.

    A body that is not an object, or an attribute of the wrong type, is refused; unknown
    attributes are ignored (Dovecot sends whatever ``auth_policy_request_attributes`` says).
    A nested object (``attrs/x=...``) is accepted and ignored.
    """
    if command not in COMMANDS:
        raise BadRequest(f"unknown command {command!r}; Dovecot sends ?command=allow or report")
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"body is not JSON: {exc}") from None
    except RecursionError:
        # Dovecot's body is one flat object; thousands of nested brackets are not one.
        raise BadRequest("body is not a policy request: JSON nested too deeply") from None
    if not isinstance(data, dict):
        raise BadRequest("body must be a JSON object")
    is_report = command == "report"
    success = _flag(data, "success")
    if is_report and success is None:
        raise BadRequest("a report must carry 'success' (Dovecot adds it itself)")
    return PolicyRequest(
        command="report" if is_report else "allow",
        login=_text(data, "login"),
        remote=_address(data, "remote"),
        real_remote=_address(data, "real_remote"),
        protocol=_text(data, "protocol").lower() or "other",
        pwhash=_text(data, "pwhash").lower(),
        session_id=_text(data, "session_id"),
        device_id=_text(data, "device_id"),
        success=success if is_report else None,
        policy_reject=_flag(data, "policy_reject") if is_report else None,
    )


def is_gateway_relay(request: PolicyRequest,
                     gateway_networks: Iterable[IPv4Network | IPv6Network]) -> bool:
    """Is this the gateway's own login to Dovecot, on behalf of a client it already counted?

    The gateway logs its clients in over IMAP, connecting from one of its own addresses
    (``[auth_policy] gateway_networks``), with the client's address forwarded (ID or
    PROXY v2): Dovecot then reports ``remote`` = the client and ``real_remote`` = the
    gateway. Only IMAP qualifies (the gateway relays nothing else), and only with
    ``real_remote`` in the request (the attribute ``real_remote=%{real_rip}``); without
    it every login is counted, relays twice.
    """
    if request.protocol != "imap" or request.real_remote is None:
        return False
    address = ipaddress.ip_address(request.real_remote)
    return any(address in net for net in gateway_networks)


def fingerprint(key: bytes, user: str, pwhash: str) -> bytes:
    """The limiter's 8-byte attempt fingerprint for a Dovecot report.

    Dovecot's ``pwhash`` already hides the password behind its nonce; keying it again with
    the gateway's per-process secret keeps the stored value from being matched against
    Dovecot's (or another gateway's) hashes. Same user and password, same fingerprint:
    a client retrying one stale password counts once, as at the gateway.
    """
    msg = ("dovecot\0" + user.casefold() + "\0" + pwhash).encode("utf-8", "surrogateescape")
    return hmac.new(key, msg, hashlib.sha256).digest()[:8]
