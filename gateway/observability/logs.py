"""structlog configuration: a pipeline of small processors, configured once.

Every log line passes ``redact_secrets`` before it is rendered, so no call site can
forget it; the live event feed (``gateway.observability.events``) is fed by the
processor after it, so it gets exactly what the JSON log gets. Events are named by
what happened (``login.ok``, ``session.end``) and carry fields, not sentences.
Exceptions are rendered with ``format_exc_info``: a plain traceback without frame
locals (``dict_tracebacks`` would show locals, and a local may hold a password).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from gateway.observability.events import feed_processor

#: Field names whose values are never written, whatever their type.
SECRET_FIELDS = frozenset(
    {
        "password", "passwd", "pass", "secret", "app_password", "master_password",
        "totp", "totp_code", "code", "otp", "seed", "sasl", "sasl_payload", "token",
        "authorization", "credentials",
    }
)
REDACTED = "[redacted]"


def redact_secrets(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]):
    """Replace the value of any secret-named field, at any depth of dicts.

    Keys are only assigned to, never added or removed, so the loop can walk the dict
    itself (no copy of every line's items).
    """
    for key, value in event_dict.items():
        if key.lower() in SECRET_FIELDS:
            event_dict[key] = REDACTED
        elif isinstance(value, dict):
            event_dict[key] = redact_secrets(_logger, _method, dict(value))
    return event_dict


def _json_fallback(obj: Any) -> Any:
    """A value JSON has no type for: its ``__structlog__()`` if it has one, else repr()."""
    try:
        return obj.__structlog__()
    except AttributeError:
        return repr(obj)


#: One encoder for every line: ``json.dumps`` with a ``default=`` builds a new one per call.
_ENCODER = json.JSONEncoder(default=_json_fallback)


def render_json(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> str:
    """The line as JSON, keys in the order they were added (structlog's JSONRenderer
    output, without building an encoder per line)."""
    return _ENCODER.encode(event_dict)


_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


def configure_logging(fmt: str = "json", level: str = "info", file: TextIO | None = None) -> None:
    """Configure structlog for the whole process: JSON lines (default) or console text."""
    out = file if file is not None else sys.stderr
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
        redact_secrets,
        feed_processor,  # after redaction: the live feed never sees a secret
        structlog.processors.format_exc_info,
    ]
    if fmt == "console":
        processors.append(structlog.dev.ConsoleRenderer(colors=False))
    else:
        processors.append(render_json)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )


#: (structlog's configuration, a logger assembled from it): every logger bound with
#: fields is a child of this one, instead of each assembling its own (a logger factory
#: call and a wrapper per session, most of a bind's cost).
_assembled: tuple[tuple[Any, ...], Any] | None = None


def get_logger(**fields: Any) -> Any:
    """A logger that follows the configuration in force when it logs.

    Without fields this is structlog's lazy proxy, safe to create at import time; with
    fields it binds now, to the configuration in force now (sessions are created after
    ``configure_logging`` ran; ``structlog.testing.capture_logs`` swaps the processors,
    which assembles a new parent).
    """
    global _assembled
    if not fields:
        return structlog.get_logger()
    config = structlog.get_config()
    key = (config["processors"], config["wrapper_class"], config["logger_factory"],
           config["context_class"])
    assembled = _assembled
    if assembled is None or any(a is not b for a, b in zip(assembled[0], key, strict=True)):
        assembled = _assembled = (key, structlog.get_logger().bind())
    return assembled[1].bind(**fields)
