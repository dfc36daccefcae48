"""The ASGI app of the ``[auth_policy]`` listener: Dovecot's policy requests over HTTP.

Rules of this module:

1. One endpoint: ``POST`` on any path with ``?command=allow|report`` (Dovecot appends the
   query to ``auth_policy_server_url``, whatever path the administrator wrote there).
2. With ``[auth_policy] token_file`` every request must carry exactly one ``X-API-Key``
   header equal to the token (Dovecot's ``auth_policy_server_api_header = <token>``),
   compared in constant time, before the body is read; otherwise 401, logged and
   counted (``imap_gateway_auth_policy_unauthorized_total``). The token is never logged.
3. A body is at most ``MAX_BODY`` bytes and must arrive within ``REQUEST_DEADLINE``. A
   request that is not a policy request is answered 400; a bug, 500. Dovecot treats any
   non-2xx answer as "policy server failed" and, with its default
   ``auth_policy_reject_on_fail = no``, lets the login go on: nothing here can stop mail.
4. The decision itself is ``gateway.authpolicy.service``; this module only translates.
"""

from __future__ import annotations

import hmac

import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from gateway.authpolicy.protocol import BadRequest, parse_request
from gateway.authpolicy.service import AuthPolicyService
from gateway.observability import metrics
from gateway.observability.logs import get_logger
from gateway.web.admin import HttpError
from gateway.web.app import REQUEST_DEADLINE, read_body

__all__ = ["API_KEY_HEADER", "auth_policy_app"]

log = get_logger()

#: The header Dovecot sends when ``auth_policy_server_api_header`` has no "Name:" part.
API_KEY_HEADER = "x-api-key"


def _authorized(request: Request, token: str | None) -> bool:
    if token is None:
        return True
    given = request.headers.getlist(API_KEY_HEADER)
    if len(given) != 1:
        return False
    return hmac.compare_digest(given[0].strip().encode(), token.encode())


def _error(status: int, message: str) -> Response:
    return JSONResponse({"error": message}, status, headers={"Cache-Control": "no-store"})


def auth_policy_app(service: AuthPolicyService, token: str | None) -> ASGIApp:
    """The policy endpoint over ``service``; ``token`` None means no API key is required
    (the config allows that on loopback only)."""

    async def policy(request: Request) -> Response:
        client = request.client.host if request.client else None
        if not _authorized(request, token):
            metrics.auth_policy_unauthorized_total.inc()
            log.warning("auth_policy.unauthorized", peer_ip=client)
            return _error(401, "missing or wrong X-API-Key (see [auth_policy] token_file)")
        command = request.query_params.get("command")
        try:
            with trio.move_on_after(REQUEST_DEADLINE) as receiving:
                body = await read_body(request)
            if receiving.cancelled_caught:
                raise HttpError(408, f"request not received within {REQUEST_DEADLINE:g}s")
            parsed = parse_request(command, body)
        except HttpError as exc:
            return _error(exc.status, exc.message)
        except BadRequest as exc:
            metrics.auth_policy_requests_total.labels("other", "other", "error").inc()
            log.warning("auth_policy.bad_request", peer_ip=client, error=str(exc))
            return _error(400, str(exc))
        try:
            answer = await service.handle(parsed)
        except Exception:
            # A bug must never take the listener down; Dovecot allows on a 500.
            log.exception("auth_policy.request_crashed", command=parsed.command)
            metrics.auth_policy_requests_total.labels(
                "other", parsed.command, "error").inc()
            return _error(500, "internal error; see the gateway log")
        return Response(answer.body(), 200, media_type="application/json",
                        headers={"Cache-Control": "no-store"})

    async def not_post(request: Request) -> Response:
        return _error(405, "the auth-policy endpoint takes POST ?command=allow|report")

    return Starlette(routes=[
        Route("/{path:path}", policy, methods=["POST"]),
        Route("/{path:path}", not_post, methods=["GET", "PUT", "DELETE", "PATCH"]),
    ])
