"""Durations as administrators write them: ``"5s"``, ``"250ms"``, ``"15m"``, ``"1h30m"``,
``"14d"``, ``"2w"``. One parser for the config, policy files and the admin API and CLI, so
the same text means the same time everywhere.

A bare number is refused on purpose: ``timeout = "5"`` is ambiguous (seconds? ms? days?)
and guessing wrong by a factor of 1000 is the kind of mistake that shows up only under
attack.
"""

from __future__ import annotations

import re

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
HINT = "write a number and a unit (ms, s, m, h, d, w), e.g. '5s', '250ms', '15m', '1h30m', '90d'"


class DurationError(ValueError):
    """A duration string that ``parse_duration`` cannot read; the message says what to write."""


def parse_duration(text: str) -> float:
    """Seconds from a duration string (units may be combined: ``"1d12h"``)."""
    if not isinstance(text, str):
        raise DurationError(f"a duration must be a string, got {text!r}; {HINT}")
    s = text.strip()
    if not s:
        raise DurationError(f"empty duration; {HINT}")
    if s.startswith("-"):
        raise DurationError(f"invalid duration {text!r}: must not be negative")
    try:
        float(s)
    except ValueError:
        pass
    else:
        raise DurationError(f"invalid duration {text!r}: missing unit; {HINT}")
    pos = 0
    total = 0.0
    while pos < len(s):
        m = _PART.match(s, pos)
        if m is None:
            raise DurationError(f"invalid duration {text!r}; {HINT}")
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    return total
