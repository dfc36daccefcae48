"""The web layer: one ASGI stack (Starlette on Hypercorn's trio worker) for every HTTP
listener the gateway has.

Listeners and what each serves (one Hypercorn server per listener, each with the app of
its role, so a route can never leak onto another port):

- ``[admin] address`` (plain HTTP, loopback by default): the admin API, ``app.admin_app``;
- ``[metrics] address`` (plain HTTP): ``/metrics``, ``/healthz``, ``/readyz``,
  ``app.metrics_app``;
- ``[web] address`` (HTTPS only): the portal, ``app.portal_app``.

Modules: ``token`` (the admin bearer token and bind-address rule, shared with the CLI),
``admin`` (the admin API's handlers: pure functions of the gateway's services), ``csrf``
and ``headers`` (middleware every portal response passes; ``csrf`` also resolves the web
session cookie), ``auth`` (portal sign-in: password, second factor, session stages),
``portal`` (the portal's pages), ``qr`` (QR codes as inline SVG), ``feed`` (the live event
feed over WebSocket, on the admin API and the portal), ``admin_pages`` (the portal's admin
pages and who may see them), ``app`` (the app factories), ``serve`` (Hypercorn
configuration, TLS, logging; the only module that opens sockets).

This ``__init__`` imports nothing: the CLI reads the token through ``gateway.web.token``
without loading Starlette or Hypercorn.
"""
