"""The suite's own stand-in for an OpenID provider's key endpoints: tokens signed with
keys this module makes, the public keys served as a JWKS over HTTPS.

Not an identity provider: it has no login, no authorization endpoint, no token endpoint.
It serves what the gateway reads from a provider -- the discovery document, the JWKS,
and an RFC 7662 introspection endpoint -- over real HTTPS (a trustme CA), and
``TokenSigner`` mints tokens the way a provider signs them (PyJWT with RSA, EC P-256 and
Ed25519 keys). Tests change what it serves while the gateway runs (key rotation) or make
it fail (``down``), and read ``requests`` to see what the gateway asked for.
"""

from __future__ import annotations

import base64
import json
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
    import hashlib
    import hmac
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
    ``down``: answer every request with HTTP 503 (a provider outage).
    ``opaque``: introspection answers by opaque token; unknown tokens are inactive.
    """

    def __init__(self, ca: trustme.CA, keys: list[SigningKey] | None = None,
                 client_id: str = "imap-gateway", client_secret: str = "gw-secret") -> None:
        self.served_kids: list[str] | None = None
        self.down = False
        self.opaque: dict[str, dict[str, Any]] = {}
        self.requests: list[str] = []
        self.client_id, self.client_secret = client_id, client_secret
        self._lock = threading.Lock()
        leaf = ca.issue_cert("127.0.0.1")
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        leaf.configure_cert(ctx)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.socket = ctx.wrap_socket(self._httpd.socket, server_side=True)
        self.port = self._httpd.server_address[1]
        self.issuer = f"https://127.0.0.1:{self.port}{REALM_PATH}"
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
        if self.down:
            return 503, {"error": "temporarily_unavailable"}
        if method == "GET" and path == f"{REALM_PATH}/.well-known/openid-configuration":
            return 200, {"issuer": self.issuer, "jwks_uri": self.jwks_url,
                         "introspection_endpoint": self.introspection_url}
        if method == "GET" and path == urllib.parse.urlsplit(self.jwks_url).path:
            return 200, self.signer.jwks(self.served_kids)
        if method == "POST" and path == urllib.parse.urlsplit(self.introspection_url).path:
            expected = "Basic " + base64.b64encode(
                f"{self.client_id}:{self.client_secret}".encode()).decode()
            if headers.get("Authorization") != expected:
                return 401, {"error": "invalid_client"}
            form = urllib.parse.parse_qs(body.decode())
            token = form.get("token", [""])[0]
            return 200, self.opaque.get(token, {"active": False})
        return 404, {"error": "not_found"}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                status, doc = server._answer(method, self.path, self.headers, body)
                data = json.dumps(doc).encode()
                self.send_response(status)
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
