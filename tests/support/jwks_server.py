"""The suite's own stand-in for an OpenID provider: tokens signed with keys this module
makes, the public keys served as a JWKS over HTTPS, and a minimal test IdP for the code flow.

It serves what the gateway reads from a provider -- the discovery document, the JWKS,
an RFC 7662 introspection endpoint -- over real HTTPS (a trustme CA), and
``TokenSigner`` mints tokens the way a provider signs them (PyJWT with RSA, EC P-256 and
Ed25519 keys). Tests change what it serves while the gateway runs (key rotation) or make
it fail (``down``), and read ``requests`` to see what the gateway asked for.

For the portal's "Sign in with <provider>" it also has an authorization endpoint and a
token endpoint (OpenID Connect code flow with PKCE S256), but no login page: the
authorization endpoint approves ``login_as`` at once (with ``login_amr``). It checks
what a real provider checks of the client: client id, redirect URI, the PKCE verifier,
one use per code, and client authentication.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import trustme
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

AUDIENCE = "imap-gateway"
REALM_PATH = "/realms/test"


@dataclass
class SigningKey:
    kid: str
    alg: str
    private: Any = field(repr=False)

    def public_jwk(self) -> dict[str, Any]:
        pub = self.private.public_key()
        algo = {"RS256": RSAAlgorithm, "ES256": ECAlgorithm, "EdDSA": OKPAlgorithm}[self.alg]
        jwk = algo.to_jwk(pub, as_dict=True)
        jwk.update(kid=self.kid, use="sig", alg=self.alg)
        return jwk


def new_key(kid: str, alg: str = "RS256") -> SigningKey:
    if alg == "RS256":
        private: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    elif alg == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    elif alg == "EdDSA":
        private = ed25519.Ed25519PrivateKey.generate()
    else:
        raise ValueError(alg)
    return SigningKey(kid, alg, private)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenSigner:
    """Mints access tokens for ``issuer`` like a provider would."""

    def __init__(self, issuer: str, keys: list[SigningKey]) -> None:
        self.issuer = issuer
        self.keys = {k.kid: k for k in keys}

    def claims(self, user: str = "alice", **over: Any) -> dict[str, Any]:
        now = int(time.time())
        base: dict[str, Any] = {
            "iss": self.issuer, "aud": AUDIENCE, "sub": f"sub-{user}", "iat": now,
            "nbf": now, "exp": now + 300, "preferred_username": user,
            "amr": ["pwd", "otp"], "scope": "openid email",
        }
        base.update(over)
        return {k: v for k, v in base.items() if v is not None}

    def token(self, user: str = "alice", *, kid: str | None = None,
              headers: dict[str, Any] | None = None, **over: Any) -> str:
        key = self.keys[kid] if kid else next(iter(self.keys.values()))
        return jwt.encode(self.claims(user, **over), key.private, algorithm=key.alg,
                          headers={"kid": key.kid, **(headers or {})})

    def jwks(self, kids: list[str] | None = None) -> dict[str, Any]:
        chosen = kids if kids is not None else list(self.keys)
        return {"keys": [self.keys[k].public_jwk() for k in chosen]}


def unsigned_token(claims: dict[str, Any], kid: str) -> str:
    """An ``alg: none`` token (what a forger sends hoping the signature is skipped)."""
    head = b64url(json.dumps({"alg": "none", "typ": "JWT", "kid": kid}).encode())
    return f"{head}.{b64url(json.dumps(claims).encode())}."


def hs256_with_public_key(claims: dict[str, Any], key: SigningKey) -> str:
    """The algorithm-confusion forgery: HS256 keyed with the provider's *public* key PEM."""
    from cryptography.hazmat.primitives import serialization

    pem = key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    head = b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": key.kid}).encode())
    body = b64url(json.dumps(claims).encode())
    sig = hmac.new(pem, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64url(sig)}"


def tampered(token: str, **over: Any) -> str:
    """``token`` with claims changed and the original signature kept."""
    head, body, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    claims.update(over)
    return f"{head}.{b64url(json.dumps(claims).encode())}.{sig}"


class JwksServer:
    """HTTPS on 127.0.0.1: discovery, JWKS and introspection for ``signer``'s issuer.

    ``served_kids``: which of the signer's keys the JWKS lists now (None: all).
    ``down``: answer every request with HTTP 503 (a provider outage); ``hang``: hold every
    answer until the event is set (a provider that accepts and does not answer).
    ``opaque``: introspection answers by opaque token; unknown tokens are inactive.
    """

    def __init__(self, ca: trustme.CA, keys: list[SigningKey] | None = None,
                 client_id: str = "imap-gateway", client_secret: str = "gw-secret", *,
                 host: str = "127.0.0.1", cert: tuple[Path, Path] | None = None) -> None:
        """``host``: the name in the issuer URL (it listens on 127.0.0.1 either way;
        "localhost" makes it another site than a portal on 127.0.0.1). ``cert``: a (chain,
        key) PEM pair to serve instead of a new leaf of ``ca`` (a browser told to trust
        one certificate then trusts this server too)."""
        self.served_kids: list[str] | None = None
        self.down = False
        self.opaque: dict[str, dict[str, Any]] = {}
        self.requests: list[str] = []
        #: While set to an unset Event, every request waits for it (a provider that hangs).
        self.hang: threading.Event | None = None
        self.login_as = "alice"
        self.login_amr = ["pwd", "otp"]
        self._codes: dict[str, dict[str, Any]] = {}
        self.client_id, self.client_secret = client_id, client_secret
        self._lock = threading.Lock()
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        if cert is not None:
            ctx.load_cert_chain(str(cert[0]), str(cert[1]))
        else:
            ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.socket = ctx.wrap_socket(self._httpd.socket, server_side=True)
        self.port = self._httpd.server_address[1]
        self.issuer = f"https://{host}:{self.port}{REALM_PATH}"
        self.signer = TokenSigner(self.issuer, keys or [new_key("rsa-1", "RS256"),
                                                         new_key("ec-1", "ES256"),
                                                         new_key("ed-1", "EdDSA")])
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True,
                                        name="jwks-server")

    @property
    def jwks_url(self) -> str:
        return f"{self.issuer}/protocol/openid-connect/certs"

    @property
    def introspection_url(self) -> str:
        return f"{self.issuer}/protocol/openid-connect/token/introspect"

    @property
    def authorization_endpoint(self) -> str:
        return f"{self.issuer}/protocol/openid-connect/auth"

    @property
    def token_endpoint(self) -> str:
        return f"{self.issuer}/protocol/openid-connect/token"

    def count(self, path_suffix: str) -> int:
        with self._lock:
            return sum(1 for r in self.requests if r.endswith(path_suffix))

    def start(self) -> JwksServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)

    def _answer(self, method: str, path: str, headers: Any, body: bytes) -> tuple[int, Any]:
        with self._lock:
            self.requests.append(path)
        if self.hang is not None:
            self.hang.wait(timeout=60)
        if self.down:
            return 503, {"error": "temporarily_unavailable"}
        if method == "GET" and path == f"{REALM_PATH}/.well-known/openid-configuration":
            return 200, {"issuer": self.issuer, "jwks_uri": self.jwks_url,
                         "introspection_endpoint": self.introspection_url,
                         "authorization_endpoint": self.authorization_endpoint,
                         "token_endpoint": self.token_endpoint}
        if method == "GET" and path == urllib.parse.urlsplit(self.jwks_url).path:
            return 200, self.signer.jwks(self.served_kids)
        url = urllib.parse.urlsplit(path)
        if method == "GET" and url.path == urllib.parse.urlsplit(self.authorization_endpoint).path:
            return self._authorize(urllib.parse.parse_qs(url.query))
        if method == "POST" and path == urllib.parse.urlsplit(self.token_endpoint).path:
            return self._token(headers, urllib.parse.parse_qs(body.decode()))
        if method == "POST" and path == urllib.parse.urlsplit(self.introspection_url).path:
            expected = "Basic " + base64.b64encode(
                f"{self.client_id}:{self.client_secret}".encode()).decode()
            if headers.get("Authorization") != expected:
                return 401, {"error": "invalid_client"}
            form = urllib.parse.parse_qs(body.decode())
            token = form.get("token", [""])[0]
            return 200, self.opaque.get(token, {"active": False})
        return 404, {"error": "not_found"}

    def _authorize(self, q: dict[str, list[str]]) -> tuple[int, Any]:
        one = {k: v[0] for k, v in q.items()}
        if (one.get("response_type") != "code" or one.get("client_id") != self.client_id
                or one.get("code_challenge_method") != "S256" or not one.get("code_challenge")
                or "openid" not in one.get("scope", "").split()):
            return 400, {"error": "invalid_request"}
        code = secrets.token_urlsafe(16)
        self._codes[code] = {"redirect_uri": one["redirect_uri"], "nonce": one.get("nonce"),
                             "challenge": one["code_challenge"], "user": self.login_as,
                             "amr": list(self.login_amr)}
        sep = "&" if "?" in one["redirect_uri"] else "?"
        location = one["redirect_uri"] + sep + urllib.parse.urlencode(
            {"code": code, "state": one.get("state", "")})
        return 302, {"__location__": location}

    def _token(self, headers: Any, form: dict[str, list[str]]) -> tuple[int, Any]:
        one = {k: v[0] for k, v in form.items()}
        expected = "Basic " + base64.b64encode(
            f"{self.client_id}:{self.client_secret}".encode()).decode()
        if headers.get("Authorization") != expected:
            return 401, {"error": "invalid_client"}
        grant = self._codes.pop(one.get("code", ""), None)  # one use
        if grant is None or one.get("grant_type") != "authorization_code":
            return 400, {"error": "invalid_grant"}
        if one.get("redirect_uri") != grant["redirect_uri"]:
            return 400, {"error": "invalid_grant", "error_description": "redirect_uri"}
        verifier = one.get("code_verifier", "")
        if b64url(hashlib.sha256(verifier.encode()).digest()) != grant["challenge"]:
            return 400, {"error": "invalid_grant", "error_description": "PKCE"}
        id_token = self.signer.token(grant["user"], aud=self.client_id, nonce=grant["nonce"],
                                     amr=grant["amr"])
        return 200, {"id_token": id_token, "token_type": "Bearer",
                     "access_token": self.signer.token(grant["user"], amr=grant["amr"])}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                status, doc = server._answer(method, self.path, self.headers, body)
                data = json.dumps(doc).encode()
                self.send_response(status)
                if isinstance(doc, dict) and "__location__" in doc:
                    self.send_header("Location", doc["__location__"])
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                self._reply("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._reply("POST")

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


def running_server(ca: trustme.CA, **kw: Any) -> Iterator[JwksServer]:
    """A started JwksServer, stopped afterwards (for ``yield from`` in fixtures)."""
    srv = JwksServer(ca, **kw).start()
    try:
        yield srv
    finally:
        srv.stop()


def write_ca(ca: trustme.CA, path: Path) -> Path:
    ca.cert_pem.write_to_path(str(path))
    return path
