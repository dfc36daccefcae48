"""``imap-gateway app-password create`` asks the real Dovecot whether the user exists.

The CLI logs in to the rig's Dovecot over IMAP as the user through the master user (what
an app password login does later). Dovecot answers OK for alice, ``NO
[AUTHORIZATIONFAILED]`` for a user it does not know, ``NO [AUTHENTICATIONFAILED]`` when the
master login itself is wrong. Also: ``[store] totp_issuer`` reaches the otpauth URI.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.support.dovecot import DovecotRig


def write_config(d: Path, certs, rig: DovecotRig, *, master_password: str | None = "masterpass",
                 master_login: str = "sasl", client_ip: str = "id", extra: str = "") -> Path:
    # proxy-v2: the rig's haproxy = yes listener, which requires the PROXY header
    port = rig.proxy_port if client_ip == "proxy-v2" else rig.imap_port
    backend = f'address = "127.0.0.1:{port}"\nclient_ip = "{client_ip}"\n'
    if master_password is not None:
        secret = d / "master.pass"
        secret.write_text(master_password + "\n")
        secret.chmod(0o600)
        backend += (f'master_user = "{rig.master[0]}"\nmaster_password_file = "master.pass"\n'
                    f'master_login = "{master_login}"\n')
    cfg = d / "gateway.toml"
    cfg.write_text(f'[tls]\ncert = "{certs.cert_path}"\nkey = "{certs.key_path}"\n\n'
                   '[[listener]]\naddress = "127.0.0.1:10993"\n\n'
                   f'[backend]\n{backend}\n{extra}')
    return cfg


def cli(cfg: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway", "--config", str(cfg), *args],
                          capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


def labels(cfg: Path, user: str) -> list[str]:
    done = cli(cfg, "app-password", "list", user, "--json")
    assert done.returncode == 0, done.stderr
    return [a["label"] for a in json.loads(done.stdout)["app_passwords"]]


@pytest.mark.parametrize(("master_login", "client_ip"),
                         [("sasl", "id"), ("separator", "id"), ("sasl", "proxy-v2")])
def test_create_for_a_user_dovecot_knows(tmp_path, certs, dovecot, master_login, client_ip):
    cfg = write_config(tmp_path, certs, dovecot, master_login=master_login, client_ip=client_ip)
    mark = dovecot.mark()
    done = cli(cfg, "app-password", "create", "alice", "--label", "phone", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["user"] == "alice" and done.stderr == ""
    dovecot.wait_for_log(r"Login: user=<alice>, auth_user=<gatewaymaster>", since=mark)
    assert labels(cfg, "alice") == ["phone"]


def test_create_for_an_unknown_user_is_refused_and_force_creates_it(tmp_path, certs, dovecot):
    cfg = write_config(tmp_path, certs, dovecot)
    done = cli(cfg, "app-password", "create", "alcie", "--label", "phone")
    assert done.returncode == 1, done.stdout
    assert "Dovecot does not know the user alcie" in done.stderr
    assert "AUTHORIZATIONFAILED" in done.stderr and "--force" in done.stderr
    assert done.stdout == ""  # no password was shown: none was made
    as_json = cli(cfg, "app-password", "create", "alcie", "--label", "phone", "--json")
    assert as_json.returncode == 1
    assert "does not know the user alcie" in json.loads(as_json.stderr)["error"]
    assert labels(cfg, "alcie") == []

    forced = cli(cfg, "app-password", "create", "alcie", "--label", "phone", "--json", "--force")
    assert forced.returncode == 0, forced.stderr
    assert json.loads(forced.stdout)["user"] == "alcie"
    assert forced.stderr.startswith("imap-gateway: warning: Dovecot does not know the user alcie")
    assert labels(cfg, "alcie") == ["phone"]


def test_a_wrong_master_password_is_not_mistaken_for_an_unknown_user(tmp_path, certs, dovecot):
    cfg = write_config(tmp_path, certs, dovecot, master_password="not-the-master-password")
    done = cli(cfg, "app-password", "create", "alice", "--label", "phone")
    assert done.returncode == 1
    assert "cannot check that alice exists" in done.stderr
    assert "refused the master login of gatewaymaster" in done.stderr
    assert "master_password_file" in done.stderr
    assert "not-the-master-password" not in done.stderr
    assert labels(cfg, "alice") == []


def test_without_a_master_user_nothing_can_be_asked(tmp_path, certs, dovecot):
    cfg = write_config(tmp_path, certs, dovecot, master_password=None)
    done = cli(cfg, "app-password", "create", "alice", "--label", "phone")
    assert done.returncode == 1
    assert "no [backend] master_user" in done.stderr and "--force" in done.stderr
    forced = cli(cfg, "app-password", "create", "alice", "--label", "phone", "--force")
    assert forced.returncode == 0, forced.stderr
    assert "warning: cannot check that alice exists" in forced.stderr


def test_an_unreachable_backend_is_reported(tmp_path, certs, dovecot):
    from tests.support.net import free_port

    cfg = write_config(tmp_path, certs, dovecot)
    cfg.write_text(cfg.read_text().replace(f"127.0.0.1:{dovecot.imap_port}",
                                           f"127.0.0.1:{free_port()}"))
    done = cli(cfg, "app-password", "create", "alice", "--label", "phone")
    assert done.returncode == 1
    assert "cannot check that alice exists: backend refused" in done.stderr


def test_totp_issuer_names_the_service_in_the_otpauth_uri(tmp_path, certs, dovecot):
    cfg = write_config(tmp_path, certs, dovecot, extra='[store]\ntotp_issuer = "Example Mail"\n')
    done = cli(cfg, "totp", "enroll", "alice", "--json")
    assert done.returncode == 0, done.stderr
    uri = urlsplit(json.loads(done.stdout)["uri"])
    assert uri.path == "/Example%20Mail:alice"
    assert parse_qs(uri.query)["issuer"] == ["Example Mail"]
    cfg.write_text(cfg.read_text().replace('"Example Mail"', '"Example: Mail"'))
    bad = cli(cfg, "totp", "enroll", "alice")
    assert bad.returncode == 2 and "store.totp_issuer" in bad.stderr and "':'" in bad.stderr
