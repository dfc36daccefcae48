"""PolicyReloader: reload only on change, never replace a good policy with a broken one."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from gateway.policy import LoginContext, PolicyReloader, load_policy, snapshot

ALLOW = '[[rule]]\nname = "v1"\naction = "allow"\nmfa = "none"\n'
DENY_BOB = '[[rule]]\nname = "v2"\nusers = ["bob"]\naction = "deny"\n'


def bump(path: Path, text: str) -> None:
    """Write and move mtime forward, so the test does not depend on mtime granularity."""
    st = path.stat() if path.exists() else None
    path.write_text(text)
    if st is not None:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_first_check_loads_and_unchanged_snapshot_reads_nothing(tmp_path):
    bump(tmp_path / "10.toml", ALLOW)
    r = PolicyReloader(tmp_path)
    policy, err = r.check(snapshot(tmp_path))
    assert err is None and policy is not None and r.current is policy
    assert r.check(snapshot(tmp_path)) == (None, None)


def test_broken_edit_keeps_last_good_policy_and_reports_once_then_recovers(tmp_path):
    f = tmp_path / "10.toml"
    bump(f, ALLOW)
    r = PolicyReloader(tmp_path)
    good, _ = r.check(snapshot(tmp_path))

    bump(f, ALLOW.replace('"none"', '"nonee"'))
    policy, err = r.check(snapshot(tmp_path))
    assert policy is None and err is not None and err.key == "mfa"
    assert r.current is good and r.last_error is err
    # The running policy still decides as before.
    assert r.current.decide(LoginContext("bob", ipaddress.ip_address("192.0.2.1"))).allowed
    # Same broken files: not reported again every tick.
    assert r.check(snapshot(tmp_path)) == (None, None)
    # SIGHUP retries and reports again.
    again, err2 = r.check(snapshot(tmp_path), force=True)
    assert again is None and err2 is not None

    bump(f, DENY_BOB + ALLOW.replace('name = "v1"', 'name = "v2b"'))
    policy, err = r.check(snapshot(tmp_path))
    assert err is None and policy is r.current and policy is not good
    assert not policy.decide(LoginContext("bob", ipaddress.ip_address("192.0.2.1"))).allowed
    assert r.last_error is None


def test_a_new_broken_file_is_atomic_nothing_from_the_good_files_changes(tmp_path):
    bump(tmp_path / "10.toml", ALLOW)
    r = PolicyReloader(tmp_path)
    good, _ = r.check(snapshot(tmp_path))
    bump(tmp_path / "05-block.toml", DENY_BOB + "[[rule]]\nname = 'bad'\nnetworks = ['nowhere']\naction = 'deny'\n")
    policy, err = r.check(snapshot(tmp_path))
    assert policy is None and err.file.endswith("05-block.toml")
    assert r.current is good
    assert r.current.decide(LoginContext("bob", ipaddress.ip_address("192.0.2.1"))).allowed


def test_touch_without_content_change_is_not_a_new_policy_but_sighup_answers(tmp_path):
    f = tmp_path / "10.toml"
    bump(f, ALLOW)
    r = PolicyReloader(tmp_path, current=load_policy(tmp_path))
    assert r.check(snapshot(tmp_path)) == (None, None)
    bump(f, ALLOW)
    assert r.check(snapshot(tmp_path)) == (None, None)
    policy, err = r.check(snapshot(tmp_path), force=True)
    assert err is None and policy is not None and policy.fingerprint == r.current.fingerprint


def test_deleting_every_file_is_an_error_not_a_deny_all(tmp_path):
    f = tmp_path / "10.toml"
    bump(f, ALLOW)
    r = PolicyReloader(tmp_path)
    good, _ = r.check(snapshot(tmp_path))
    f.unlink()
    assert snapshot(tmp_path) == ()
    policy, err = r.check(snapshot(tmp_path))
    assert policy is None and "no *.toml" in err.message and r.current is good


def test_snapshot_lists_files_in_load_order_with_size(tmp_path):
    bump(tmp_path / "20.toml", ALLOW)
    bump(tmp_path / "10.toml", DENY_BOB)
    (tmp_path / ".hidden.toml").write_text("x")
    snap = snapshot(tmp_path)
    assert [s.name for s in snap] == ["10.toml", "20.toml"]
    assert snap[0].size == len(DENY_BOB)
    assert snapshot(tmp_path / "missing") == ()
