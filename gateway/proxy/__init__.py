"""The I/O shell (layer 3): listeners, TLS, sessions, the login step, the backend leg and
the relay pump, all in trio.

Each module is thin: the rules live in the sans-IO core (``gateway.imap``) and the
decision layers (``gateway.policy``, ``gateway.auth``, ``gateway.limits``,
``gateway.anomaly``); the shell moves bytes and acts on what they return. Modules hand
each other the plain values and typed seams of :mod:`gateway.proxy.values`, which imports
none of them. Imports go one way: server -> session -> login, relay -> backend -> values,
and server -> bind (every address bound before anything is served).
"""
