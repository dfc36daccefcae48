"""The `imap-gateway` command line as administrators and their scripts use it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trustme

GOOD = """\
[tls]
cert = "cert.pem"
key = "key.pem"

[[listener]]
address = "127.0.0.1:10993"
mode = "implicit-tls"

[backend]
address = "127.0.0.1:143"

[policy]
dir = "policies"
"""

POLICY = """\
[[rule]]
name = "everyone with a strong factor"
users = ["*"]
action = "allow"
mfa = "strong"
"""


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                          text=True, timeout=60)


@pytest.fixture
def confdir(tmp_path: Path) -> Path:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost")
    cert.private_key_pem.write_to_path(tmp_path / "key.pem")
    cert.cert_chain_pems[0].write_to_path(tmp_path / "cert.pem")
    (tmp_path / "gateway.toml").write_text(GOOD)
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "99-default.toml").write_text(POLICY)
    return tmp_path


def test_check_config_accepts_a_good_file_and_reports_json(confdir: Path):
    done = run("check-config", "--config", str(confdir / "gateway.toml"), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is True
    assert report["config"]["backend"]["address"] == "127.0.0.1:143"


def test_check_config_names_file_and_key_and_exits_non_zero(confdir: Path):
    bad = confdir / "gateway.toml"
    bad.write_text(GOOD.replace('address = "127.0.0.1:143"',
                                'address = "127.0.0.1:143"\ntls = "yes"'))
    done = run("check-config", "--config", str(bad))
    assert done.returncode == 2
    assert str(bad) in done.stderr and "backend.tls" in done.stderr
    assert "Traceback" not in done.stderr


def test_check_config_loads_the_portal_certificate_too(confdir: Path):
    (confdir / "web.pem").write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n")
    cfg = confdir / "gateway.toml"
    cfg.write_text(GOOD + '\n[web]\naddress = "127.0.0.1:10443"\ncert = "web.pem"\n'
                   'key = "key.pem"\n')
    done = run("check-config", "--config", str(cfg))
    assert done.returncode == 2
    assert f"{cfg}: web: " in done.stderr and "web.pem" in done.stderr


def test_serve_refuses_a_broken_policy_before_listening(confdir: Path):
    (confdir / "policies" / "10-bad.toml").write_text(
        '[[rule]]\nname = "typo"\nnetworks = ["ofice"]\naction = "allow"\nmfa = "none"\n')
    done = run("serve", "--config", str(confdir / "gateway.toml"))
    assert done.returncode == 2
    assert "10-bad.toml" in done.stderr and "ofice" in done.stderr
    assert "Traceback" not in done.stderr


def test_policy_check_and_explain(confdir: Path):
    cfg = str(confdir / "gateway.toml")
    done = run("policy", "check", "--config", cfg)
    assert done.returncode == 0, done.stderr
    done = run("policy", "explain", "--user", "alice", "--ip", "203.0.113.9", "--json",
               "--config", cfg)
    assert done.returncode == 0, done.stderr
    explained = json.loads(done.stdout)
    assert "everyone with a strong factor" in json.dumps(explained)


def test_unknown_option_is_a_usage_error(confdir: Path):
    done = run("app-password", "create", "alice", "--config", str(confdir / "gateway.toml"))
    assert done.returncode == 2
    assert "--label" in done.stderr


def test_users_invite_prints_a_one_time_token(confdir: Path):
    from gateway.config import load_config
    from gateway.store import open_store

    cfg = str(confdir / "gateway.toml")
    done = run("users", "invite", "alice", "--expires", "48h", "--json", "--config", cfg)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["user"] == "alice" and len(out["token"]) >= 40
    text = run("users", "invite", "bob", "--config", cfg)
    assert text.returncode == 0, text.stderr
    assert "Invitation for bob (one use, expires " in text.stdout
    config = load_config(Path(cfg))
    with open_store(config.store.path, config.store.key_file) as store:
        expires = datetime.fromisoformat(out["expires"]).timestamp()
        invite = store.consume_invite(out["token"], expires - 1)
        assert invite is not None and invite.user == "alice"
        assert store.consume_invite(out["token"], expires - 1) is None
    bad = run("users", "invite", "alice", "--expires", "soon", "--json", "--config", cfg)
    assert bad.returncode == 2 and "bad duration" in json.loads(bad.stderr)["error"]
    # with [web] public_url the output is the portal link
    (confdir / "gateway.toml").write_text(
        GOOD + '\n[web]\npublic_url = "https://mail.example.org:8443"\n')
    linked = run("users", "invite", "carol", "--config", cfg)
    assert linked.returncode == 0, linked.stderr
    assert re.search(r"^    https://mail\.example\.org:8443/invite/[A-Za-z0-9_-]{43}$",
                     linked.stdout, re.M), linked.stdout


def test_devices_pending_and_approve(confdir: Path):
    from gateway.config import load_config
    from gateway.store import open_store

    cfg = str(confdir / "gateway.toml")
    config = load_config(Path(cfg))
    config.store.path.parent.mkdir(parents=True, exist_ok=True)
    with open_store(config.store.path, config.store.key_file, create_key=True) as store:
        noted = store.note_device("alice", "203.0.113.9", "iPhone Mail", 1_700_000_000.0)
    done = run("devices", "pending", "alice", "--json", "--config", cfg)
    assert done.returncode == 0, done.stderr
    [device] = json.loads(done.stdout)["devices"]
    assert (device["id"], device["client_name"], device["state"]) == (
        noted.id, "iPhone Mail", "pending")
    assert device["description"].startswith("iPhone Mail from 203.0.113.9, ")
    done = run("devices", "approve", "alice", str(device["id"]), "--expires", "2h", "--json",
               "--config", cfg)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["approved"] == noted.id
    text = run("devices", "pending", "alice", "--config", cfg)
    assert text.returncode == 0 and " approved " in text.stdout
    missing = run("devices", "approve", "alice", "999", "--json", "--config", cfg)
    assert missing.returncode == 1 and "999" in json.loads(missing.stderr)["error"]


# ------------------------------------------------------------------ where the config comes from


def run_env(*args: str, env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k != "IMAP_GATEWAY_CONFIG"}
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True,
                          text=True, timeout=60, env={**full, **env}, cwd=cwd)


def test_config_flag_is_accepted_before_the_command_too(confdir: Path):
    cfg = str(confdir / "gateway.toml")
    for argv in (["--config", cfg, "policy", "check"], ["policy", "--config", cfg, "check"],
                 ["policy", "check", "--config", cfg], ["--config", cfg, "check-config"],
                 ["--json", "--config", cfg, "check-config"]):
        done = run(*argv)
        assert done.returncode == 0, (argv, done.stderr)
    assert json.loads(run("--json", "--config", cfg, "check-config").stdout)["ok"] is True


def test_check_config_takes_the_file_as_an_argument_too(confdir: Path):
    cfg = str(confdir / "gateway.toml")
    done = run("check-config", cfg)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{cfg}: OK"
    both = run("check-config", cfg, "--config", str(confdir / "other.toml"))
    assert both.returncode == 2 and "two config files" in both.stderr


def test_the_environment_names_the_config_and_the_flag_wins(confdir: Path, tmp_path_factory):
    cfg = str(confdir / "gateway.toml")
    from_env = run_env("check-config", env={"IMAP_GATEWAY_CONFIG": cfg})
    assert from_env.returncode == 0, from_env.stderr
    assert from_env.stdout.strip() == f"{cfg}: OK"
    missing = str(tmp_path_factory.mktemp("elsewhere") / "nope.toml")
    wins = run_env("check-config", "--config", cfg, env={"IMAP_GATEWAY_CONFIG": missing})
    assert wins.returncode == 0, wins.stderr
    # an error says where the file name came from
    bad = run_env("policy", "check", env={"IMAP_GATEWAY_CONFIG": missing})
    assert bad.returncode == 2
    assert missing in bad.stderr and "file not found" in bad.stderr
    assert "from $IMAP_GATEWAY_CONFIG" in bad.stderr


# ------------------------------------------------------------------ check-config: the rest


def _cert(confdir: Path, name: str, *, days_left: float) -> str:
    """A certificate (and key) valid from a year ago until ``days_left`` days from now."""
    now = datetime.now(UTC)
    leaf = trustme.CA().issue_cert("localhost", not_before=now - timedelta(days=365),
                                   not_after=now + timedelta(days=days_left))
    leaf.cert_chain_pems[0].write_to_path(confdir / f"{name}.pem")
    leaf.private_key_pem.write_to_path(confdir / f"{name}.key")
    return name


def test_check_config_refuses_an_expired_certificate(confdir: Path):
    _cert(confdir, "old", days_left=-2)
    cfg = confdir / "gateway.toml"
    cfg.write_text(GOOD.replace('"cert.pem"', '"old.pem"').replace('"key.pem"', '"old.key"'))
    done = run("check-config", "--config", str(cfg))
    assert done.returncode == 2, done.stdout
    assert "[tls] cert" in done.stderr and "old.pem" in done.stderr and "expired" in done.stderr
    report = json.loads(run("check-config", "--config", str(cfg), "--json").stderr)
    assert report["ok"] is False and "expired" in report["errors"][0]


def test_check_config_warns_about_a_certificate_that_expires_soon(confdir: Path):
    _cert(confdir, "soon", days_left=5)
    _cert(confdir, "fine", days_left=60)
    cfg = confdir / "gateway.toml"
    cfg.write_text(GOOD + '\n[web]\naddress = "127.0.0.1:10443"\ncert = "soon.pem"\n'
                   'key = "soon.key"\n')
    done = run("check-config", "--config", str(cfg))
    assert done.returncode == 0, done.stderr
    assert "warning: [web] cert" in done.stderr and "soon.pem" in done.stderr
    assert re.search(r"expires at \S+Z \(in [45]\.\d days\)", done.stderr), done.stderr
    assert "1 warning(s)" in done.stdout
    report = json.loads(run("check-config", "--config", str(cfg), "--json").stdout)
    assert report["ok"] is True and len(report["warnings"]) == 1
    # 60 days left: nothing to say
    cfg.write_text(GOOD.replace('"cert.pem"', '"fine.pem"').replace('"key.pem"', '"fine.key"'))
    quiet = run("check-config", "--config", str(cfg))
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr


def test_check_config_checks_the_policies(confdir: Path):
    (confdir / "policies" / "10-bad.toml").write_text(
        '[[rule]]\nname = "typo"\nnetworks = ["ofice"]\naction = "allow"\nmfa = "none"\n')
    done = run("check-config", "--config", str(confdir / "gateway.toml"))
    assert done.returncode == 2
    assert "policy.dir" in done.stderr and "10-bad.toml" in done.stderr and "ofice" in done.stderr
    (confdir / "policies" / "10-bad.toml").write_text('[groups]\nstaff = ["alice"]\n')
    warned = run("check-config", "--config", str(confdir / "gateway.toml"))
    assert warned.returncode == 0, warned.stderr
    assert "warning: policy.dir: group 'staff' is defined but no rule uses it" in warned.stderr


@pytest.mark.parametrize(("section", "key", "file"), [
    ("backend", "master_password_file", "master.pass"),
    ("store", "key_file", "store.key"),
    ("admin", "token_file", "admin.token"),
])
def test_check_config_refuses_an_empty_secret_file(confdir: Path, section: str, key: str,
                                                   file: str):
    secret = confdir / file
    secret.write_text("  \n")  # whitespace only: a failed `openssl rand > file`
    secret.chmod(0o600)
    extra = {"backend": 'master_user = "gatewaymaster"\nmaster_password_file = "master.pass"\n',
             "store": '\n[store]\nkey_file = "store.key"\n',
             "admin": '\n[admin]\ntoken_file = "admin.token"\n'}[section]
    text = (GOOD.replace('address = "127.0.0.1:143"\n', 'address = "127.0.0.1:143"\n' + extra)
            if section == "backend" else GOOD + extra)
    (confdir / "gateway.toml").write_text(text)
    done = run("check-config", "--config", str(confdir / "gateway.toml"))
    assert done.returncode == 2, done.stdout
    assert f"{section}.{key}" in done.stderr and file in done.stderr, done.stderr
    assert "empty" in done.stderr or "must hold one token" in done.stderr, done.stderr
