"""The health series the alert rules watch, read from a real gateway's /metrics.

- ``imap_gateway_tls_cert_expiry_timestamp_seconds{cert="imap"}`` is the notAfter of the
  certificate the gateway serves: set at start, moved by a SIGHUP that loads a renewed
  certificate, left alone by a SIGHUP whose certificate file is broken (the old one is
  still served, so it is still the one that expires).
- ``imap_gateway_policy_last_reload_successful`` goes to 0 while ``[policy] dir`` holds a
  file that does not load, and back to 1 once it loads again, even when the fixed
  directory is the policy already in force (then no ``policy.reloaded`` event is logged);
  ``imap_gateway_policy_reload_failures_total`` counts each failed load.
- The process collector's series carry the standard ``process_*`` names.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import time

import pytest

from tests.support.attack import metrics_on
from tests.support.net import free_ports
from tests.support.scrape import sample_value, samples, scrape

pytestmark = pytest.mark.e2e

EXPIRY = "imap_gateway_tls_cert_expiry_timestamp_seconds"


def _write_leaf(certs, directory, not_after: dt.datetime):
    leaf = certs.ca.issue_cert("localhost", "127.0.0.1", "::1", not_after=not_after)
    cert, key = directory / "server-cert.pem", directory / "server-key.pem"
    with open(cert, "wb") as f:
        for blob in leaf.cert_chain_pems:
            f.write(blob.bytes())
    leaf.private_key_pem.write_to_path(str(key))
    key.chmod(0o600)
    return cert, key


def _in_days(days: int) -> dt.datetime:
    # X.509 times have whole seconds
    return (dt.datetime.now(dt.UTC) + dt.timedelta(days=days)).replace(microsecond=0)


def _wait_for_sample(gw, name: str, want: float, timeout: float = 15.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = scrape(gw)
        if sample_value(text, name) == want:
            return text
        assert time.monotonic() < deadline, (name, want, sample_value(text, name), gw.tail())
        time.sleep(0.2)


def test_certificate_expiry_follows_the_certificate_served(gateway, certs, tmp_path):
    first = _in_days(10)
    cert, key = _write_leaf(certs, tmp_path, first)
    gw = gateway(tls={"cert": str(cert), "key": str(key)}, metrics=metrics_on())
    text = scrape(gw)
    expiry = [(labels, v) for n, labels, v in samples(text) if n == EXPIRY]
    # one series, labelled by config role (never by the file's path)
    assert expiry == [({"cert": "imap"}, first.timestamp())], expiry

    renewed = _in_days(90)
    _write_leaf(certs, tmp_path, renewed)
    os.kill(gw.pid, signal.SIGHUP)
    gw.wait_for_event("tls.reloaded", 5)
    _wait_for_sample(gw, EXPIRY, renewed.timestamp())

    cert.write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n")
    os.kill(gw.pid, signal.SIGHUP)
    gw.wait_for_event("tls.reload_failed", 5)
    gw.wait_for_event("policy.reloaded", 5)  # the same SIGHUP, handled after the certificate
    assert sample_value(scrape(gw), EXPIRY, cert="imap") == renewed.timestamp()


def test_the_portal_certificate_of_its_own_is_the_web_series(gateway, certs, tmp_path):
    web_dir = tmp_path / "web"
    web_dir.mkdir()
    imap_expiry, web_expiry = _in_days(60), _in_days(200)
    imap_cert, imap_key = _write_leaf(certs, tmp_path, imap_expiry)
    web_cert, web_key = _write_leaf(certs, web_dir, web_expiry)
    web_port, metrics_port = free_ports(2)
    gw = gateway(tls={"cert": str(imap_cert), "key": str(imap_key)},
                 web={"address": f"127.0.0.1:{web_port}", "cert": str(web_cert),
                      "key": str(web_key)},
                 metrics={"address": f"127.0.0.1:{metrics_port}"})
    expiry = {labels["cert"]: v for n, labels, v in samples(scrape(gw)) if n == EXPIRY}
    assert expiry == {"imap": imap_expiry.timestamp(), "web": web_expiry.timestamp()}


def test_policy_reload_failure_is_flagged_until_the_files_load_again(gateway):
    gw = gateway(metrics=metrics_on())
    text = scrape(gw)
    assert sample_value(text, "imap_gateway_policy_last_reload_successful") == 1
    assert sample_value(text, "imap_gateway_policy_reload_failures_total") == 0

    broken = gw.dir / "policies" / "50-broken.toml"
    broken.write_text('[[rule]]\nname = "half-written"\naction = \n')
    gw.wait_for_event("policy.reload_failed", 10)
    text = _wait_for_sample(gw, "imap_gateway_policy_last_reload_successful", 0)
    assert sample_value(text, "imap_gateway_policy_reload_failures_total") == 1
    # the watcher does not retry the same broken files: still one failure, still flagged
    time.sleep(3)
    text = scrape(gw)
    assert sample_value(text, "imap_gateway_policy_reload_failures_total") == 1
    assert sample_value(text, "imap_gateway_policy_last_reload_successful") == 0

    broken.unlink()  # back to the policy in force: loads, nothing to swap
    _wait_for_sample(gw, "imap_gateway_policy_last_reload_successful", 1)


def test_process_series_have_the_standard_names(gateway):
    gw = gateway(metrics=metrics_on())
    names = {n for n, _, _ in samples(scrape(gw))}
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds",
            "process_max_fds", "process_start_time_seconds"} <= names
    assert not {n for n in names if n.startswith("imap_gateway_process_")}
