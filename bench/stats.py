"""Summary statistics and the result table: pure functions, no I/O."""

from __future__ import annotations

import math

TARGETS = ("dovecot-direct", "haproxy", "gateway", "gateway-app-password", "trio-floor",
           "gateway-baseline")
#: ``python -m bench.floor``: a trio TLS login relay built from the gateway's I/O layer with
#: no gateway features, so trio-floor/haproxy is the part of gateway/haproxy that feature work
#: cannot remove
FLOOR = "trio-floor"
#: runs only with ``--baseline TREE``: the gateway of another source tree (e.g. the commit
#: before a change), in the same rounds, so "did the change cost anything" is one run's ratio
BASELINE = "gateway-baseline"
#: the second gateway target only differs in how a login is authenticated, so only logins run on it
LOGIN_ONLY = frozenset({"gateway-app-password"})


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list (p in 0..100); the value is always a real sample."""
    if not sorted_values:
        raise ValueError("percentile of no samples")
    if not 0 <= p <= 100:
        raise ValueError(f"percentile {p} outside 0..100")
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def median(values: list[float]) -> float:
    if not values:
        raise ValueError("median of no values")
    s = sorted(values)
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def fmt(value: float | None) -> str:
    """Three significant digits, no exponent: the noise here is ~10 %, more digits would be fiction."""
    if value is None:
        return "-"
    if value == 0:
        return "0"
    digits = max(0, 2 - int(math.floor(math.log10(abs(value)))))
    return f"{value:,.{digits}f}"


def short_error(message: str) -> str:
    """One line for under the table: the first line, plus the last line when a log tail follows."""
    lines = [ln.strip(" |+-") for ln in message.splitlines()]
    lines = [ln for ln in lines if ln]
    if not lines:
        return "unknown error"
    return lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"


def ratio(gateway: float | None, haproxy: float | None) -> float | None:
    if gateway is None or haproxy is None or haproxy == 0:
        return None
    return gateway / haproxy


def ratio_note(
    rows: list[tuple[str, dict[str, float | None]]],
    numerator: str = "gateway-app-password",
    denominator: str = "gateway",
    label: str = "app-password / forward",
) -> str | None:
    """One line of ratios between two targets, for the rows where both have a value, or None.

    The table's ratio column stays gateway/haproxy; this line answers "what does gateway-verified
    app-password authentication cost next to forwarding the password" without a second column.
    """
    parts = []
    for metric, values in rows:
        r = ratio(values.get(numerator), values.get(denominator))
        if r is not None:
            parts.append(f"{metric.split(' (')[0]} {r:.2f}")
    return f"{label} ({numerator}/{denominator}): " + "; ".join(parts) if parts else None


#: rows whose ratio between two targets says nothing about either one's cost (how busy the
#: shared server core and the client were): left out of the floor line
UTILISATION_ROWS = ("login: server core busy", "login: client CPU")


def floor_note(rows: list[tuple[str, dict[str, float | None]]]) -> str | None:
    """trio-floor/haproxy per metric, or None when the floor did not run.

    Next to the table's gateway/haproxy it splits the gateway's ratio: what trio and the
    gateway's I/O layer cost with no features (this line), and what the features add (the
    difference).
    """
    costs = [r for r in rows if not r[0].startswith(UTILISATION_ROWS)]
    return ratio_note(costs, numerator=FLOOR, denominator="haproxy", label="floor share")


def table(rows: list[tuple[str, dict[str, float | None]]], errors: dict[str, str]) -> str:
    """Markdown table: metric | dovecot-direct | haproxy | gateway | gateway-app-password |
    trio-floor | gateway/haproxy (and gateway-baseline before the ratio when it ran).

    A target that failed shows 'error' in its column (the reason is listed under the table).
    """
    shown = [t for t in TARGETS if t != BASELINE or any(BASELINE in v for _, v in rows)
             or BASELINE in errors]
    head = ["metric", *shown, "gateway/haproxy"]
    body = []
    for metric, values in rows:
        cells = [metric]
        for t in shown:
            v = values.get(t)
            cells.append("error" if v is None and t in errors else fmt(v))
        r = ratio(values.get("gateway"), values.get("haproxy"))
        cells.append("-" if r is None else f"{r:.2f}")
        body.append(cells)
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        return (
            "| "
            + " | ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )
            + " |"
        )

    sep = (
        "| " + " | ".join("-" * (w - 1) + (":" if i else "-") for i, w in enumerate(widths)) + " |"
    )
    out = [line(head), sep, *map(line, body)]
    for target, err in errors.items():
        out.append(f"\n{target}: {err}")
    return "\n".join(out)
