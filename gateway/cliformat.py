"""How the ``imap-gateway`` command shows things: aligned tables and RFC 3339 times.

Rules of this module:
1. Every list command prints its rows through :func:`table`, so columns line up whatever
   the length of a label, user name or address (a fixed ``{:20}`` width breaks as soon
   as one value is longer than the column).
2. Every time in ``--json`` output is an RFC 3339 UTC string with whole seconds,
   ``"2026-12-01T17:05:00Z"`` (:func:`rfc3339`), or null for "never"/"unknown". Scripts
   compare and parse those with any date library; a float of epoch seconds means
   guessing the unit and the zone. :func:`json_times` converts the time fields of a
   payload that comes from elsewhere (the admin API, the event feed) by key name.
Standard library only.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

__all__ = ["TIME_KEYS", "json_times", "rfc3339", "table"]

#: Keys whose numeric value is a point in time (epoch seconds) in the payloads the CLI
#: prints: store listings, admin API sessions and bans, feed events.
TIME_KEYS = frozenset({
    "created", "expires", "last_used", "last_seen", "first_seen", "approved_until",
    "started", "until", "consumed",
})


def rfc3339(t: float | None) -> str | None:
    """Epoch seconds -> ``"2026-12-01T17:05:00Z"`` (UTC, seconds truncated); None stays None."""
    if t is None:
        return None
    return datetime.fromtimestamp(int(t), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def json_times(value: Any) -> Any:
    """A copy of ``value`` with every number under a :data:`TIME_KEYS` key made RFC 3339.

    Walks dicts and lists; strings, booleans and other keys are left as they are (a
    value that is already a string, e.g. the log's ``ts``, is not touched).
    """
    if isinstance(value, dict):
        return {
            k: (rfc3339(v) if k in TIME_KEYS and isinstance(v, int | float)
                and not isinstance(v, bool) else json_times(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [json_times(v) for v in value]
    return value


def table(header: Sequence[str], rows: Sequence[Sequence[str]], *,
          right: Sequence[int] = ()) -> str:
    """Rows under a header, each column as wide as its longest cell, two spaces apart.

    ``right`` lists the column indexes to right-align (numbers). Trailing spaces are cut,
    so the last column may be free text of any length.
    """
    all_rows = [list(header), *(list(r) for r in rows)]
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(header))]
    lines = []
    for r in all_rows:
        cells = [c.rjust(w) if i in right else c.ljust(w)
                 for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
