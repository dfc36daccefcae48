"""The portal's "Sign in with <provider>": OpenID Connect authorization code flow with PKCE.

Theory of operation:

1. ``GET /oauth/start`` makes a flow: a random ``state`` (ties the answer to this
   browser: login CSRF), ``nonce`` (ties the ID token to this flow: replay) and PKCE
   ``code_verifier`` (RFC 7636, S256: a stolen code is useless without it). They live in
   one cookie, ``__Host-igw-oidc`` (Secure, HttpOnly, Path=/, at most ``FLOW_TTL``), and
   the browser is sent to the provider's authorization endpoint. SameSite=Lax, not
   Strict like the portal's other cookies: the provider's redirect back is a cross-site
   top-level navigation, and Strict would leave the cookie behind.
2. ``GET /oauth/callback`` (the redirect URI, ``[web] public_url`` + ``/oauth/callback``)
   must bring back the cookie's ``state``; the code is exchanged at the token endpoint
   with the verifier, and the ID token is checked like an access token (same keys, same
   algorithm rules) with our ``client_id`` as audience and the flow's nonce. The cookie is
   cleared whatever happens: a flow is used once.
3. The sign-in then goes through the same gates as a password sign-in
   (``gateway.web.auth.check_id_token``): limiter, policy, uniform failure. A token whose
   ``amr`` holds one of ``[oauth] mfa_claims`` completes the second factor at the
   provider; any other still needs the portal's own second factor.

The callback is a GET that signs in, unlike every other state change of the portal
(POST with a CSRF token): OpenID Connect returns the code by redirect, and ``state``
plays the CSRF token's part. This module holds the pure parts; the pages are in
``gateway.web.portal``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Final
from urllib.parse import urlencode, urlsplit

__all__ = ["COOKIE", "FLOW_TTL", "Flow", "authorization_url", "clear_flow_cookie",
           "flow_cookie", "new_flow", "read_flow", "state_matches"]

COOKIE: Final = "__Host-igw-oidc"
#: Seconds a browser has to come back from the provider.
FLOW_TTL: Final = 600
SCOPES: Final = "openid profile email"


@dataclass(frozen=True)
class Flow:
    state: str
    nonce: str = field(repr=False)
    verifier: str = field(repr=False)
    started: float = 0.0

    @property
    def challenge(self) -> str:
        """The S256 code challenge of ``verifier`` (RFC 7636 §4.2)."""
        digest = hashlib.sha256(self.verifier.encode("ascii")).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def new_flow(now: float) -> Flow:
    return Flow(state=secrets.token_urlsafe(24), nonce=secrets.token_urlsafe(24),
                verifier=secrets.token_urlsafe(48), started=now)


def flow_cookie(flow: Flow) -> str:
    value = base64.urlsafe_b64encode(json.dumps(
        [flow.state, flow.nonce, flow.verifier, flow.started]).encode()).decode()
    return (f"{COOKIE}={value}; Path=/; Secure; HttpOnly; SameSite=Lax; "
            f"Max-Age={FLOW_TTL}")


def clear_flow_cookie() -> str:
    return f"{COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0"


def read_flow(cookie_header: str, now: float) -> Flow | None:
    """The flow in the request's Cookie header, or None (missing, malformed, too old)."""
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(cookie_header)
    except Exception:  # http.cookies raises CookieError and others for junk
        return None
    morsel = jar.get(COOKIE)
    if morsel is None or len(morsel.value) > 1024:
        return None
    try:
        state, nonce, verifier, started = json.loads(base64.urlsafe_b64decode(morsel.value))
    except (ValueError, TypeError):
        return None
    if not all(isinstance(v, str) and v for v in (state, nonce, verifier)):
        return None
    if not isinstance(started, int | float) or not 0 <= now - started <= FLOW_TTL:
        return None
    return Flow(state, nonce, verifier, float(started))


def state_matches(flow: Flow, state: str) -> bool:
    return hmac.compare_digest(flow.state.encode(), state.encode())


def authorization_url(endpoint: str, client_id: str, redirect_uri: str, flow: Flow) -> str:
    query = urlencode({
        "response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri,
        "scope": SCOPES, "state": flow.state, "nonce": flow.nonce,
        "code_challenge": flow.challenge, "code_challenge_method": "S256",
    })
    return endpoint + ("&" if urlsplit(endpoint).query else "?") + query
