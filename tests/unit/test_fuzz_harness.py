"""Smoke test of the fuzzing harness itself (fuzz/): a few thousand inputs, deterministic
runs, failures caught, minimized and replayable, and the oracles really fire.

It does not assert that the gateway has no bugs (that is ``make fuzz``): failures the real
targets find are only checked to be reproducible from their minimized input."""

from __future__ import annotations

import json
import time

import pytest

from fuzz import cli, engine
from fuzz import targets as tg
from gateway.imap import commands as cm
from gateway.imap import preauth as pa


def _fake(run, name: str = "fake") -> tg.Target:
    return tg.Target(name, run, [b"a1 NOOP\r\n", b"a2 LOGIN x y\r\n"], [b"{0}", b"\r\n"],
                     1.0, "test target", lambda flags: "")


@pytest.mark.parametrize("name", cli.TARGET_NAMES)
def test_every_target_runs_and_its_failures_reproduce(name):
    runner = engine.run_mutator(tg.TARGETS[name], 500, seed=11)
    stats = engine.finish(runner)
    assert stats.inputs == 500 and stats.traced >= 1 and stats.features > 0
    for f in runner.failures.values():
        assert f.minimized is not None and len(f.minimized) <= len(f.blob) + 2
        if f.kind in ("exception", "invariant"):
            assert runner.signature_of(f.minimized) == f.signature, f.signature


def test_same_seed_same_inputs_other_seed_other_inputs():
    def digest(seed: int) -> str:
        return engine.finish(engine.run_mutator(tg.TARGETS["sasl"], 300, seed), False).digest

    assert digest(1) == digest(1)
    assert digest(1) != digest(2)


def test_chunks_cover_the_data_in_every_split_mode():
    data = bytes(range(256)) * 3
    for split in range(256):
        chunks = tg.chunks_of(data, split)
        assert b"".join(chunks) == data and all(chunks)
    assert tg.chunks_of(data, 6) == [data[i : i + 1] for i in range(len(data))]
    assert tg.chunks_of(data, 0) == [data]
    assert tg.chunks_of(b"a {1}\r\nx\r\nb", 4) == [b"a {1}\r\n", b"x\r\n", b"b"]


def test_exceptions_and_violations_are_recorded_minimized_and_counted():
    def run(blob: bytes, features: set) -> None:
        _, _, data = tg.decode(blob)
        features.add(len(data) % 7)
        if b"{0}" in data:
            raise RuntimeError("boom")
        if b"LOGIN" in data:
            raise tg.Violation("fake.login_seen", "detail")

    runner = engine.run_mutator(_fake(run), 2000, seed=3)
    engine.finish(runner)
    sigs = {f.signature: f for f in runner.failures.values()}
    boom = next(f for s, f in sigs.items() if s.startswith("RuntimeError at "))
    assert boom.kind == "exception" and boom.count >= 1 and "boom" in boom.message
    assert tg.decode(boom.minimized)[2] == b"{0}"
    login = sigs["invariant fake.login_seen"]
    assert tg.decode(login.minimized)[2] == b"LOGIN" and login.minimized[:2] == b"\x00\x00"


def test_slow_inputs_are_failures(monkeypatch):
    monkeypatch.setattr(engine, "SLOW_SECONDS", 0.02)

    def run(blob: bytes, features: set) -> None:
        if b"Z" in blob[2:]:
            time.sleep(0.04)

    runner = engine.Runner(_fake(run), watchdog=True)
    runner.run_one(b"\x00\x00abc")
    runner.run_one(b"\x00\x00aZc")
    runner.run_one(b"\x00\x00ZZ")
    assert not runner.failures  # timing is kept aside until the run ends
    runner.collect_timing()
    assert list(runner.failures) == ["slow"] and runner.failures["slow"].count == 2
    assert runner.failures["slow"].blob == b"\x00\x00aZc"
    runner.minimize(runner.failures["slow"], budget_s=2)
    assert runner.failures["slow"].minimized == b"\x00\x00Z"


def test_a_hang_is_interrupted(monkeypatch):
    monkeypatch.setattr(engine, "HANG_SECONDS", 0.05)

    def run(blob: bytes, features: set) -> None:
        while True:
            pass

    runner = engine.Runner(_fake(run), watchdog=True)
    runner.run_one(b"\x00\x00x")
    assert runner.failures["hang"].kind == "hang"


def test_forwarding_after_close_is_caught(monkeypatch):
    real = cm.CommandStream.receive_data

    def leaky(self, data):
        out = real(self, data)
        if any(isinstance(a, cm.Close) for a in out):
            out.append(cm.Forward(b"z1 DELETE INBOX\r\n"))
        return out

    monkeypatch.setattr(cm.CommandStream, "receive_data", leaky)
    blob = b"\x04\x00" + b"a FETCH " + b"1," * 60 + b"\r\n"  # max_line 80: Close
    with pytest.raises(tg.Violation, match="action_after_close"):
        tg.run_commands(blob, set())


def test_a_smuggled_command_breaks_the_fixed_point(monkeypatch):
    real = cm.CommandStream.receive_data

    def smuggle(self, data):
        return [cm.Forward(b"x1 STORE 1 +FLAGS (\\Deleted)\r\n") if isinstance(a, cm.Forward)
                else a for a in real(self, data)]

    blob = b"\x00\x00a NOOP\r\nb UID FETCH 1:* (FLAGS BODY.PEEK[HEADER])\r\n"
    tg.run_commands(blob, set(), scoped=True)  # read-only scope: fine as is
    monkeypatch.setattr(cm.CommandStream, "receive_data", smuggle)
    with pytest.raises(tg.Violation, match="read_only_forwarded_write|forward_not_input"):
        tg.run_commands(blob, set(), scoped=True)


def test_a_login_request_before_tls_is_caught(monkeypatch):
    real = pa.PreauthConnection._execute

    def careless(self, out):
        self.tls_active = True  # as if a bug let LOGIN through before TLS
        try:
            real(self, out)
        finally:
            self.tls_active = False

    monkeypatch.setattr(pa.PreauthConnection, "_execute", careless)
    with pytest.raises(tg.Violation, match="credential_before_tls"):
        tg.run_preauth(b"\x02\x00a LOGIN alice secret\r\n", set())


def test_an_error_raised_by_the_harness_itself_is_labelled_so():
    try:
        tg.decode(5)  # type: ignore[arg-type]
    except TypeError as e:
        sig, kind = engine.classify(e)
    assert kind == "harness" and sig.startswith("harness error TypeError at fuzz/targets.py")


def test_proxy_reference_parser_rejects_a_bad_length():
    good = tg.proxy_v2_header(("192.0.2.1", 1), ("192.0.2.2", 2), tls_version="TLSv1.3")
    assert tg.parse_proxy_v2(good)["sport"] == 1
    with pytest.raises(tg.Violation, match="length_field"):
        tg.parse_proxy_v2(good + b"\x00")


def test_cli_runs_workers_and_reports(tmp_path, capsys):
    code = cli.main(["--total", "600", "--seed", "4", "--engine", "mutator", "--jobs", "2",
                     "--out", str(tmp_path), "--target", "sasl", "--target", "proxyproto",
                     "--target", "commands"])
    out = capsys.readouterr().out
    results = json.loads((tmp_path / "results.json").read_text())
    assert sum(r["inputs"] for r in results["targets"].values()) == 600
    assert "total" in out and ("fuzz OK" in out or "fuzz FAILED" in out)
    failures = [f for r in results["targets"].values() for f in r["failures"]]
    assert code == (1 if failures else 0)
    for path in tmp_path.glob("failures/*.bin"):
        name = path.stem.rsplit("-", 1)[0]
        assert cli.main(["--replay", str(path), "--target", name]) == 1


def test_quotas_add_up():
    q = cli.quotas(1_000_000, list(cli.TARGET_NAMES))
    assert sum(q.values()) == 1_000_000 and q["preauth"] == 250_000
    assert sum(cli.quotas(7, ["sasl", "preauth"]).values()) == 7
