"""The OAuth token check in the shell: fetching the provider's keys and introspection.

``gateway.auth.oauth`` decides whether a token is good; this module gets it what it needs:

- The key set (JWKS) comes from ``[oauth] jwks_file`` (re-read on SIGHUP), ``jwks_url``,
  or the ``jwks_uri`` of ``<issuer>/.well-known/openid-configuration``. It is fetched on
  first use and refreshed every ``jwks_cache_ttl``; a token naming an unknown ``kid``
  refetches it at once, but at most once per ``jwks_refetch_interval``, so made-up kids
  cannot turn the gateway into a load generator against the provider.
- A failed fetch (provider down, bad TLS, bad JSON) keeps the keys already cached: an
  outage of the provider does not stop logins with tokens it already issued.
- Opaque tokens (not a JWT) go to the RFC 7662 ``introspection_url`` as ``client_id``
  (HTTP Basic, the secret read from ``client_secret_file``).

HTTP is a plain urllib request in a worker thread: one small GET/POST now and then does
not justify an async HTTP client dependency. Only https:// is followed (a redirect to
http:// is refused) and answers are capped at ``MAX_DOCUMENT`` bytes. The token is sent
to the introspection endpoint and nowhere else, and never logged.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import trio

from gateway.auth import oauth as tokens
from gateway.config import OAuthConfig
from gateway.observability import metrics
from gateway.observability.logs import get_logger
from gateway.secretfile import SecretFileError, read_secret_file

__all__ = ["INTROSPECTION_UNAVAILABLE", "KEYS_UNAVAILABLE", "ProviderError", "TokenVerifier",
           "error_challenge"]

#: Reasons that say nothing about the client's token (the limiter does not count them).
KEYS_UNAVAILABLE: Final = "oauth_keys_unavailable"
INTROSPECTION_UNAVAILABLE: Final = "oauth_introspection_unavailable"

MAX_DOCUMENT: Final = 1 << 20

log = get_logger()


class ProviderError(Exception):
    """The provider could not be asked (network, TLS, HTTP status, bad JSON)."""


class _HttpsOnlyRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> urllib.request.Request | None:
        if urllib.parse.urlsplit(newurl).scheme != "https":
            raise ProviderError(f"redirect to a non-https URL refused: {newurl}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _http_json(url: str, context: ssl.SSLContext, timeout: float,
               data: bytes | None = None, headers: Mapping[str, str] | None = None) -> Any:
    """GET (or POST ``data``) ``url`` and parse the JSON answer. Blocking: run in a thread."""
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context),
                                         _HttpsOnlyRedirects())
    req = urllib.request.Request(url, data=data, headers={"Accept": "application/json",
                                                          **(headers or {})})
    try:
        with opener.open(req, timeout=timeout) as resp:
            body = resp.read(MAX_DOCUMENT + 1)
    except urllib.error.HTTPError as exc:
        raise ProviderError(f"{url}: HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ProviderError(f"{url}: {reason}") from None
    if len(body) > MAX_DOCUMENT:
        raise ProviderError(f"{url}: answer larger than {MAX_DOCUMENT} bytes")
    try:
        return json.loads(body)
    except ValueError:
        raise ProviderError(f"{url}: answer is not JSON") from None


def error_challenge(cfg: OAuthConfig) -> bytes:
    """The RFC 7628 §3.2.2 error message a failed OAUTHBEARER/XOAUTH2 login is sent
    (base64 of JSON), the same for every failure: it tells the client where to get a
    new token, not what was wrong with this one."""
    body: dict[str, str] = {"status": "invalid_token"}
    if cfg.required_scope:
        body["scope"] = cfg.required_scope
    body["openid-configuration"] = cfg.issuer.rstrip("/") + "/.well-known/openid-configuration"
    return base64.b64encode(json.dumps(body, separators=(",", ":")).encode())


class TokenVerifier:
    """Checks bearer tokens for one gateway process (see the module docstring).

    ``clock`` is trio's by default; the key cache ages and rate limits use it, while
    token times (exp, nbf) use the wall clock passed by the caller.
    """

    def __init__(self, cfg: OAuthConfig, *,
                 clock: Callable[[], float] = trio.current_time) -> None:
        self.cfg = cfg
        self.rules = tokens.OAuthRules(
            issuer=cfg.issuer, audience=cfg.audience, username_claim=cfg.username_claim,
            mfa_claims=cfg.mfa_claims, required_scope=cfg.required_scope, leeway=cfg.leeway)
        self._clock = clock
        self._ssl = ssl.create_default_context(
            cafile=str(cfg.ca_file) if cfg.ca_file is not None else None)
        self._keys: tokens.KeySet | None = None
        self._loaded_at: float | None = None  # last successful load
        self._tried_at: float | None = None  # last attempt, successful or not
        self._kid_refetch_at: float | None = None  # last refetch for an unknown kid
        self._jwks_uri: str | None = cfg.jwks_url or None
        self._lock = trio.Lock()
        self._client_secret: str | None = None
        self._discovery: dict[str, Any] | None = None

    @property
    def keys(self) -> tokens.KeySet | None:
        return self._keys

    # -- keys -----------------------------------------------------------------------------

    def _load_sync(self) -> tokens.KeySet:
        if self.cfg.jwks_file is not None:
            try:
                document: Any = Path(self.cfg.jwks_file).read_bytes()
            except OSError as exc:
                raise ProviderError(f"{self.cfg.jwks_file}: {exc.strerror}") from None
            where = str(self.cfg.jwks_file)
        else:
            if self._jwks_uri is None:
                self._jwks_uri = self._endpoint_sync("jwks_uri")
            where = self._jwks_uri
            document = _http_json(self._jwks_uri, self._ssl, self.cfg.http_timeout)
        try:
            return tokens.parse_key_set(document)
        except tokens.KeySetError as exc:
            raise ProviderError(f"{where}: {exc}") from None

    def _discovery_sync(self) -> dict[str, Any]:
        """The issuer's discovery document (fetched once, then kept)."""
        if self._discovery is None:
            url = self.cfg.issuer.rstrip("/") + "/.well-known/openid-configuration"
            doc = _http_json(url, self._ssl, self.cfg.http_timeout)
            if not isinstance(doc, dict):
                raise ProviderError(f"{url}: not a JSON object")
            if doc.get("issuer") != self.cfg.issuer:
                raise ProviderError(f"{url}: its issuer {doc.get('issuer')!r} is not "
                                    f"oauth.issuer {self.cfg.issuer!r}")
            self._discovery = doc
        return self._discovery

    def _endpoint_sync(self, name: str) -> str:
        uri = self._discovery_sync().get(name)
        if not isinstance(uri, str) or urllib.parse.urlsplit(uri).scheme != "https":
            raise ProviderError(f"the discovery document of {self.cfg.issuer} has no https "
                                f"{name}")
        return uri

    async def endpoint(self, name: str) -> str:
        """An endpoint from the discovery document (``authorization_endpoint``, ...).
        Raises ProviderError when the provider cannot say."""
        return await trio.to_thread.run_sync(self._endpoint_sync, name, abandon_on_cancel=True)

    async def _secret(self) -> str:
        if self._client_secret is None:
            assert self.cfg.client_secret_file is not None
            raw = await trio.to_thread.run_sync(read_secret_file, self.cfg.client_secret_file)
            self._client_secret = raw.decode("utf-8").strip()
        return self._client_secret

    async def _client_post(self, url: str, form: dict[str, str]) -> Any:
        """POST ``form`` as this client: HTTP Basic with the secret, or (a public
        client, no ``client_secret_file``) the ``client_id`` in the form."""
        cfg = self.cfg
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if cfg.client_secret_file is not None:
            secret = await self._secret()
            headers["Authorization"] = "Basic " + base64.b64encode(
                f"{urllib.parse.quote(cfg.client_id, safe='')}:"
                f"{urllib.parse.quote(secret, safe='')}".encode()).decode()
        else:
            form = {**form, "client_id": cfg.client_id}
        body = urllib.parse.urlencode(form).encode()
        return await trio.to_thread.run_sync(
            lambda: _http_json(url, self._ssl, cfg.http_timeout, body, headers),
            abandon_on_cancel=True)

    async def exchange_code(self, code: str, verifier: str, redirect_uri: str) -> str:
        """OpenID Connect authorization code + PKCE: the ID token for ``code``.
        Raises ProviderError (also for an answer without an ID token)."""
        url = await self.endpoint("token_endpoint")
        try:
            answer = await self._client_post(url, {
                "grant_type": "authorization_code", "code": code,
                "redirect_uri": redirect_uri, "code_verifier": verifier})
        except (SecretFileError, OSError, UnicodeDecodeError) as exc:
            raise ProviderError(str(exc)) from None
        id_token = answer.get("id_token") if isinstance(answer, dict) else None
        if not isinstance(id_token, str):
            raise ProviderError(f"{url}: the answer has no id_token")
        return id_token

    async def verify_id_token(self, token: str, now: float) -> (
            tokens.TokenAccepted | tokens.TokenRejected):
        """An OpenID Connect ID token: like an access token, but its audience is our
        ``client_id`` and no scope is required (the caller checks the nonce)."""
        rules = dataclasses.replace(self.rules, audience=self.cfg.client_id, required_scope="")
        return await self._verify_jwt(token, rules, now)

    async def refresh(self, why: str) -> bool:
        """Load the key set now; on failure keep the cached one. True if loaded."""
        self._tried_at = self._clock()
        try:
            keys = await trio.to_thread.run_sync(self._load_sync, abandon_on_cancel=True)
        except ProviderError as exc:
            metrics.oauth_key_fetches_total.labels("error").inc()
            log.warning("oauth.keys_fetch_failed", why=why, error=str(exc),
                        cached_kids=self._keys.kids() if self._keys else [])
            return False
        metrics.oauth_key_fetches_total.labels("ok").inc()
        self._keys, self._loaded_at = keys, self._clock()
        log.info("oauth.keys_loaded", why=why, kids=keys.kids(), skipped=list(keys.skipped))
        return True

    def _may_try(self, interval: float) -> bool:
        return self._tried_at is None or self._clock() - self._tried_at >= interval

    def _stale(self) -> bool:
        return self._loaded_at is None or self._clock() - self._loaded_at >= self.cfg.jwks_cache_ttl

    async def _current_keys(self) -> tokens.KeySet | None:
        if self._stale() and self._keys is not None and self._lock.locked():
            # Another session is refreshing (maybe waiting on a provider that hangs for
            # http_timeout): the cached keys serve meanwhile, nobody else waits.
            return self._keys
        if self._stale():
            async with self._lock:
                # Another session may have loaded them while this one waited; a failing
                # provider is retried no more often than an unknown kid may refetch.
                if self._stale() and self._may_try(self.cfg.jwks_refetch_interval):
                    await self.refresh("first_use" if self._keys is None else "cache_ttl")
        return self._keys

    async def reload_file(self) -> None:
        """SIGHUP: re-read ``jwks_file`` (a fetched key set is refreshed too)."""
        if self.cfg.enabled:
            async with self._lock:
                await self.refresh("sighup")

    # -- tokens -----------------------------------------------------------------------------

    async def verify(self, token: str, now: float) -> tokens.TokenAccepted | tokens.TokenRejected:
        """Is ``token`` good at wall-clock time ``now``? Never raises for a bad token."""
        if not tokens.is_jwt(token):
            if self.cfg.introspection_url:
                return await self._introspect(token, now)
            return tokens.TokenRejected(tokens.MALFORMED,
                                        "not a JWT, and no oauth.introspection_url is set")
        return await self._verify_jwt(token, self.rules, now)

    async def _verify_jwt(self, token: str, rules: tokens.OAuthRules, now: float) -> (
            tokens.TokenAccepted | tokens.TokenRejected):
        keys = await self._current_keys()
        if keys is None:
            return tokens.TokenRejected(KEYS_UNAVAILABLE, "no signing keys could be loaded yet")
        result = tokens.validate_jwt(token, keys, rules, now)
        if isinstance(result, tokens.TokenRejected) and result.reason == tokens.UNKNOWN_KID:
            async with self._lock:
                last = self._kid_refetch_at
                if self._keys is keys and (
                        last is None or self._clock() - last >= self.cfg.jwks_refetch_interval):
                    self._kid_refetch_at = self._clock()
                    await self.refresh("unknown_kid")
                current = self._keys
            if current is not None and current is not keys:
                result = tokens.validate_jwt(token, current, rules, now)
        return result

    async def _introspect(self, token: str, now: float) -> (
            tokens.TokenAccepted | tokens.TokenRejected):
        cfg = self.cfg
        try:
            # The config requires client_secret_file with introspection_url: always Basic.
            answer = await self._client_post(
                cfg.introspection_url, {"token": token, "token_type_hint": "access_token"})
        except (ProviderError, SecretFileError, OSError, UnicodeDecodeError) as exc:
            log.warning("oauth.introspection_failed", error=str(exc))
            return tokens.TokenRejected(INTROSPECTION_UNAVAILABLE, "introspection failed")
        if not isinstance(answer, dict):
            log.warning("oauth.introspection_failed", error="answer is not a JSON object")
            return tokens.TokenRejected(INTROSPECTION_UNAVAILABLE, "introspection failed")
        return tokens.check_introspection(answer, self.rules, now)
