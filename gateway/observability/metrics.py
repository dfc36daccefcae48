"""Every Prometheus metric the gateway exports, defined in one place.

Rules for this module:

1. Names start with ``imap_gateway_``; dashboards and alert rules in ``grafana/``
   depend on them, so a rename is a breaking change for administrators.
2. No label ever carries a user name, an IP address or a session id: those are
   unbounded (one attacker can mint millions) and belong in logs, not in metrics.
   Label values come from small fixed sets, and ``command_label`` folds anything
   unknown into ``"other"`` so a client cannot grow the series count.
3. Metrics live in a registry of their own (``REGISTRY``) so the exporter shows
   exactly what the gateway defines. The one exception to rule 1 is the process
   collector: it exports the standard ``process_*`` names (``process_cpu_seconds_total``,
   ``process_resident_memory_bytes``, ``process_open_fds``, ``process_start_time_seconds``
   ...) that every exporter uses, so the dashboards and alerts operators already have
   for CPU, memory and file descriptors work unchanged. Next to it,
   ``imap_gateway_worker_*{worker}`` describe each worker process
   (``gateway.observability.processes``; worker "0" = the process without workers).
4. With ``[server] workers > 1`` every process writes its values to prometheus_client's
   multiprocess files (``PROMETHEUS_MULTIPROC_DIR``, set by ``imap-gateway serve`` before
   this module is imported) and the supervisor's scrape adds them up
   (``exposition_registry``). So every gauge says how to combine the workers' values
   (``multiprocess_mode``; ignored in a single process): "livesum" for what each worker
   holds, "livemax"/"livemostrecent" for what each reads from shared state or the backend.
   What only /proc knows (CPU, memory, descriptors) the supervisor reads itself, for
   itself and its workers, at each scrape (``GatewayProcessCollector``).
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.exposition import generate_latest
from prometheus_client.process_collector import ProcessCollector

from gateway.observability.processes import (
    GatewayProcessCollector,
    WorkerProcessCollector,
    Workers,
)

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
REGISTRY.register(WorkerProcessCollector(lambda: [(0, os.getpid())]))

_NS = "imap_gateway"

connections_total = Counter(
    "connections", "Client connections accepted.", ["listener", "tls_mode"],
    namespace=_NS, registry=REGISTRY,
)
connections_active = Gauge(
    "connections_active", "Client connections open now.", ["listener"],
    namespace=_NS, registry=REGISTRY, multiprocess_mode="livesum",
)
connections_rejected_total = Counter(
    "connections_rejected", "Connections refused at accept time.", ["reason"],
    namespace=_NS, registry=REGISTRY,
)
tls_handshake_failures_total = Counter(
    "tls_handshake_failures", "Client TLS handshakes that failed.", ["listener", "reason"],
    namespace=_NS, registry=REGISTRY,
)
auth_attempts_total = Counter(
    "auth_attempts", "Login attempts by outcome.", ["result", "reason", "mechanism"],
    namespace=_NS, registry=REGISTRY,
)
auth_decision_seconds = Histogram(
    "auth_decision_seconds", "Time from login command to the answer.",
    namespace=_NS, registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
oauth_key_fetches_total = Counter(
    "oauth_key_fetches", "Fetches of the OAuth provider's signing keys (JWKS) by result "
    "(ok, error); on error the cached keys stay in use.", ["result"],
    namespace=_NS, registry=REGISTRY,
)
plaintext_logins_blocked_total = Counter(
    "plaintext_logins_blocked", "LOGIN/AUTHENTICATE refused because TLS was not active.",
    ["listener"], namespace=_NS, registry=REGISTRY,
)
policy_denials_total = Counter(
    "policy_denials", "Logins denied by a policy rule.", ["rule"],
    namespace=_NS, registry=REGISTRY,
)
tarpit_delay_seconds = Histogram(
    "tarpit_delay_seconds", "Delay added to failed logins by the limiter.",
    namespace=_NS, registry=REGISTRY, buckets=(0.5, 1, 2, 4, 8, 16, 32),
)
bans_active = Gauge(
    "bans_active", "Bans in force.", ["scope"], namespace=_NS, registry=REGISTRY,
    multiprocess_mode="livemax",
)
bans_created_total = Counter(
    "bans_created", "Bans created.", ["scope", "reason"], namespace=_NS, registry=REGISTRY,
)
anomalies_total = Counter(
    "anomalies", "Anomalies detected.", ["kind"], namespace=_NS, registry=REGISTRY,
)
backend_connect_seconds = Histogram(
    "backend_connect_seconds", "Backend connect, TLS and greeting time.", ["backend"],
    namespace=_NS, registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
backend_errors_total = Counter(
    "backend_errors", "Backend failures.", ["backend", "kind"], namespace=_NS, registry=REGISTRY,
)
backend_up = Gauge(
    "backend_up", "1 if the last backend connection attempt succeeded.", ["backend"],
    namespace=_NS, registry=REGISTRY, multiprocess_mode="livemostrecent",
)
bytes_relayed_total = Counter(
    "bytes_relayed",
    "Bytes relayed after login (added per session every MiB, when traffic moves the idle "
    "deadline, and when the session ends).",
    ["direction"], namespace=_NS, registry=REGISTRY,
)
commands_relayed_total = Counter(
    "commands_relayed",
    "Client commands relayed after login (added per session with bytes_relayed: every MiB, "
    "when traffic moves the idle deadline, and when the session ends).", ["command"],
    namespace=_NS, registry=REGISTRY,
)
commands_refused_total = Counter(
    "commands_refused", "Client commands the gateway answered itself instead of relaying.",
    ["reason"], namespace=_NS, registry=REGISTRY,
)
sessions_active = Gauge(
    "sessions_active", "Authenticated sessions open now.", namespace=_NS, registry=REGISTRY,
    multiprocess_mode="livesum",
)
session_duration_seconds = Histogram(
    "session_duration_seconds", "Duration of client connections.",
    namespace=_NS, registry=REGISTRY,
    buckets=(0.1, 1, 10, 60, 300, 900, 1800, 3600, 4 * 3600, 24 * 3600),
)
preauth_disconnects_total = Counter(
    "preauth_disconnects", "Connections closed by the gateway before login.", ["reason"],
    namespace=_NS, registry=REGISTRY,
)
login_history_dropped_total = Counter(
    "login_history_dropped",
    "Login attempts not written to the login history (the store was down or far behind).",
    namespace=_NS, registry=REGISTRY,
)
state_unavailable_total = Counter(
    "state_unavailable",
    "Limiter, detector or ban calls that found the shared state ([state] redis) down.",
    ["operation"], namespace=_NS, registry=REGISTRY,
)
tls_cert_expiry_timestamp_seconds = Gauge(
    "tls_cert_expiry_timestamp_seconds",
    "notAfter of the TLS certificate served now, as a Unix timestamp; cert is the config "
    "role (imap: [tls] cert, web: [web] cert). Set at start and on each SIGHUP reload.",
    ["cert"], namespace=_NS, registry=REGISTRY, multiprocess_mode="livemin",
)
policy_reload_failures_total = Counter(
    "policy_reload_failures",
    "Policy reloads ([policy] dir changed, or SIGHUP) that failed; the last good policy stays.",
    namespace=_NS, registry=REGISTRY,
)
policy_last_reload_successful = Gauge(
    "policy_last_reload_successful",
    "1 if the last policy load succeeded, 0 if the gateway runs on an older policy because "
    "the files now in [policy] dir do not load.",
    namespace=_NS, registry=REGISTRY, multiprocess_mode="livemin",
)

auth_policy_requests_total = Counter(
    "auth_policy_requests",
    "Dovecot auth-policy requests by Dovecot's protocol, command (allow, report) and decision "
    "(allow, reject, delay, error).",
    ["protocol", "command", "decision"], namespace=_NS, registry=REGISTRY,
)
auth_policy_reports_total = Counter(
    "auth_policy_reports",
    "Authentication results Dovecot reported to the auth-policy server: success, failure, "
    "policy_reject (refused by this server), gateway_relay (the gateway's own login, not "
    "counted again).",
    ["protocol", "result"], namespace=_NS, registry=REGISTRY,
)
auth_policy_request_seconds = Histogram(
    "auth_policy_request_seconds", "Time to answer one Dovecot auth-policy request.",
    ["command"], namespace=_NS, registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
auth_policy_unauthorized_total = Counter(
    "auth_policy_unauthorized",
    "Auth-policy requests refused (401) for a missing or wrong API key.",
    namespace=_NS, registry=REGISTRY,
)
store_unavailable_total = Counter(
    "store_unavailable",
    "Credential store calls that found its database server ([store] url) unreachable.",
    ["operation"], namespace=_NS, registry=REGISTRY,
)

state_fallback_active = Gauge(
    "state_fallback_active",
    "1 while the limiter counts in this process because [state] redis is unavailable.",
    namespace=_NS, registry=REGISTRY, multiprocess_mode="livemax",
)
state_fallback_switches_total = Counter(
    "state_fallback_switches",
    "Switches of the limiter state between Redis and this process's memory.",
    ["to"], namespace=_NS, registry=REGISTRY,
)
workers = Gauge(
    "workers", "Worker processes the supervisor runs ([server] workers; 1 without one).",
    namespace=_NS, registry=REGISTRY, multiprocess_mode="livemax",
)
worker_restarts_total = Counter(
    "worker_restarts", "Worker processes the supervisor started again after they died.",
    namespace=_NS, registry=REGISTRY,
)

# The command label set: everything else is folded into "other" (rule 2).
KNOWN_COMMANDS = frozenset(
    """APPEND AUTHENTICATE CAPABILITY CHECK CLOSE COMPRESS COPY CREATE DELETE ENABLE EXAMINE
    EXPUNGE FETCH GETACL GETMETADATA GETQUOTA GETQUOTAROOT ID IDLE LIST LOGIN LOGOUT LSUB MOVE
    MYRIGHTS NAMESPACE NOOP RENAME SEARCH SELECT SETACL SETMETADATA SETQUOTA SORT STARTTLS STATUS
    STORE SUBSCRIBE THREAD UID UNSELECT UNSUBSCRIBE XLIST
    UID_COPY UID_EXPUNGE UID_FETCH UID_MOVE UID_SEARCH UID_SORT UID_STORE UID_THREAD""".split()
)


def command_label(name: str) -> str:
    """Fold a client-chosen command name into the fixed label set ("UID FETCH" -> "UID_FETCH")."""
    label = name.upper().replace(" ", "_")
    return label if label in KNOWN_COMMANDS else "other"


def _no_workers() -> list[tuple[int, int]]:
    return []


def exposition_registry(workers: Workers = _no_workers) -> CollectorRegistry:
    """What a scrape shows: this process's registry, or, under a supervisor (rule 4), the
    sum of every worker's multiprocess files (the supervisor's own counters included) and
    the ``process_*`` series of the supervisor and ``workers()`` together: (index, pid) of
    each live worker, asked at every scrape."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=path)
    registry.register(GatewayProcessCollector(workers))
    return registry


def render_latest() -> bytes:
    """The text exposition of every gateway metric."""
    return generate_latest(exposition_registry())


ANOMALY_KINDS = (
    "password_spray", "credential_stuffing", "distributed_brute_force", "new_network_for_user",
    "plaintext_login_attempt", "high_volume_fetch", "mass_delete",
)
#: The ``operation`` label of ``state_unavailable_total`` (``gateway.limits.outage``).
STATE_OPERATIONS = (
    "check_connect", "check_login", "record_failure", "record_success", "anomaly", "admin_bans",
)


#: The ``operation`` label of ``store_unavailable_total``: a login's credential check, the
#: watcher that ends sessions of revoked app passwords, the login history writer, and the
#: web portal's pages and sign-in.
STORE_OPERATIONS = ("login", "credential_check", "login_history", "web")


def init_series(listeners: list[str], backend: str) -> None:
    """Export every fixed-label series at zero from the start.

    Prometheus cannot see the first increment of a counter series that appears only
    when it is first used (``increase()`` needs two samples), so alerts such as
    "password spray detected" would miss the first event.
    """
    for kind in ANOMALY_KINDS:
        anomalies_total.labels(kind)
    for reason in ("per_ip_limit", "rate_limit", "global_limit", "banned"):
        connections_rejected_total.labels(reason)
    for reason in ("timeout", "too_many_bad_commands", "line_too_long", "literal_too_large"):
        preauth_disconnects_total.labels(reason)
    for operation in STATE_OPERATIONS:
        state_unavailable_total.labels(operation)
    for operation in STORE_OPERATIONS:
        store_unavailable_total.labels(operation)
    for to in ("memory", "redis"):
        state_fallback_switches_total.labels(to)
    for scope in ("ip", "subnet", "user_ip"):
        bans_active.labels(scope)
    for listener in listeners:
        plaintext_logins_blocked_total.labels(listener)
        connections_active.labels(listener)
        for reason in ("timeout", "protocol", "eof"):
            tls_handshake_failures_total.labels(listener, reason)
    for direction in ("client_to_backend", "backend_to_client"):
        bytes_relayed_total.labels(direction)
    backend_up.labels(backend)
    for result in ("ok", "error"):
        oauth_key_fetches_total.labels(result)
    for kind in ("connect_timeout", "refused", "tls", "login_timeout", "protocol", "closed"):
        backend_errors_total.labels(backend, kind)
    for scope, reason in (("ip", "ip_failures"), ("subnet", "subnet_failures"),
                          ("ip", "password_spray"), ("subnet", "password_spray")):
        bans_created_total.labels(scope, reason)
    for mechanism in ("login", "plain", "auth-login"):
        auth_attempts_total.labels("success", "ok", mechanism)
        auth_attempts_total.labels("failure", "backend_rejected", mechanism)


def init_auth_policy_series() -> None:
    """The auth-policy server's series at zero (see ``init_series``); only when it is on."""
    for protocol in ("imap", "pop3", "smtp", "submission", "sieve"):
        for command, decisions in (("allow", ("allow", "reject", "delay", "error")),
                                   ("report", ("allow", "error"))):
            for decision in decisions:
                auth_policy_requests_total.labels(protocol, command, decision)
        for result in ("success", "failure", "policy_reject"):
            auth_policy_reports_total.labels(protocol, result)
    auth_policy_reports_total.labels("imap", "gateway_relay")
