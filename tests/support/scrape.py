"""The gateway's HTTP endpoint (/metrics, /healthz, /readyz) as a scraper sees it.

Parsing goes through prometheus_client's own text parser, the same format Prometheus
reads, so "the series is there" means a real scraper would find it.
"""

from __future__ import annotations

import http.client
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class HttpReply:
    status: int
    body: str
    content_type: str


def http_get(host: str, port: int, path: str, timeout: float = 5.0) -> HttpReply:
    """One GET over a fresh connection, as a scraper or a health check makes it."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return HttpReply(r.status, r.read().decode("utf-8", "replace"),
                         r.getheader("Content-Type", ""))
    finally:
        conn.close()


def metrics_address(gw) -> tuple[str, int]:
    """(host, port) of a GatewayProcess's ``[metrics] address``; AssertionError if it is off."""
    address = gw.config.get("metrics", {}).get("address", "")
    assert address, "this gateway was started with [metrics] address = \"\""
    host, port = address.rsplit(":", 1)
    return host, int(port)


def scrape(gw) -> str:
    """The /metrics text of a running gateway; AssertionError unless the answer is 200."""
    host, port = metrics_address(gw)
    reply = http_get(host, port, "/metrics")
    assert reply.status == 200, (reply.status, reply.body[:300])
    return reply.body


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Every sample of the exposition text as (name, labels, value)."""
    out = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.append((s.name, dict(s.labels), s.value))
    return out


def sample_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels`` (0.0 when the
    series does not exist yet: a labelled counter appears on its first increment)."""
    return sum(v for n, lbl, v in samples(text)
               if n == name and all(lbl.get(k) == want for k, want in labels.items()))


def anomalies_counted(gw, kind: str) -> float:
    """``imap_gateway_anomalies_total{kind=...}`` as the gateway reports it now."""
    return sample_value(scrape(gw), "imap_gateway_anomalies_total", kind=kind)
