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

__all__ = ["KEYS_UNAVAILABLE", "INTROSPECTION_UNAVAILABLE", "TokenVerifier", "error_challenge"]

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
                url = self.cfg.issuer.rstrip("/") + "/.well-known/openid-configuration"
                discovery = _http_json(url, self._ssl, self.cfg.http_timeout)
                uri = discovery.get("jwks_uri") if isinstance(discovery, dict) else None
                if not isinstance(uri, str) or urllib.parse.urlsplit(uri).scheme != "https":
                    raise ProviderError(f"{url}: no https jwks_uri in the discovery document")
                if discovery.get("issuer") != self.cfg.issuer:
                    raise ProviderError(f"{url}: its issuer {discovery.get('issuer')!r} is not "
                                        f"oauth.issuer {self.cfg.issuer!r}")
                self._jwks_uri = uri
            where = self._jwks_uri
            document = _http_json(self._jwks_uri, self._ssl, self.cfg.http_timeout)
        try:
            return tokens.parse_key_set(document)
        except tokens.KeySetError as exc:
            raise ProviderError(f"{where}: {exc}") from None

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
        keys = await self._current_keys()
        if keys is None:
            return tokens.TokenRejected(KEYS_UNAVAILABLE, "no signing keys could be loaded yet")
        result = tokens.validate_jwt(token, keys, self.rules, now)
        if isinstance(result, tokens.TokenRejected) and result.reason == tokens.UNKNOWN_KID:
            async with self._lock:
                last = self._kid_refetch_at
                if self._keys is keys and (
                        last is None or self._clock() - last >= self.cfg.jwks_refetch_interval):
                    self._kid_refetch_at = self._clock()
                    await self.refresh("unknown_kid")
                current = self._keys
            if current is not None and current is not keys:
                result = tokens.validate_jwt(token, current, self.rules, now)
        return result

    async def _introspect(self, token: str, now: float) -> (
            tokens.TokenAccepted | tokens.TokenRejected):
        cfg = self.cfg
        try:
            if self._client_secret is None:
                assert cfg.client_secret_file is not None  # config requires it with the URL
                raw = await trio.to_thread.run_sync(read_secret_file, cfg.client_secret_file)
                self._client_secret = raw.decode("utf-8").strip()
            basic = base64.b64encode(
                f"{urllib.parse.quote(cfg.client_id, safe='')}:"
                f"{urllib.parse.quote(self._client_secret, safe='')}".encode()).decode()
            body = urllib.parse.urlencode(
                {"token": token, "token_type_hint": "access_token"}).encode()
            answer = await trio.to_thread.run_sync(
                lambda: _http_json(cfg.introspection_url, self._ssl, cfg.http_timeout, body, {
                    "Authorization": "Basic " + basic,
                    "Content-Type": "application/x-www-form-urlencoded"}),
                abandon_on_cancel=True)
        except (ProviderError, SecretFileError, OSError, UnicodeDecodeError) as exc:
            log.warning("oauth.introspection_failed", error=str(exc))
            return tokens.TokenRejected(INTROSPECTION_UNAVAILABLE, "introspection failed")
        if not isinstance(answer, dict):
            log.warning("oauth.introspection_failed", error="answer is not a JSON object")
            return tokens.TokenRejected(INTROSPECTION_UNAVAILABLE, "introspection failed")
        return tokens.check_introspection(answer, self.rules, now)
