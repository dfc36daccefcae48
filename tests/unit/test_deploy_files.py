"""The files in deploy/ work together and pass the tools that will read them.

Docker is not available here, so the compose stack is checked by reading it: every file it
mounts exists, the addresses and subnets that several files must agree on do agree, and the
configs it mounts are accepted by the real programs that are installed (the gateway's own
check-config, doveconf, promtool). The systemd unit goes through `systemd-analyze verify`
and `systemd-analyze security`.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.unit.grafana_queries import GRAFANA_DIR, REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
UNIT = DEPLOY / "systemd" / "imap-gateway.service"
SNIPPETS = sorted((DEPLOY / "dovecot" / "conf.d").glob("*.conf"))
INIT_SECRETS = DEPLOY / "compose" / "init-secrets.sh"
GATEWAY_BIN = Path(sys.executable).with_name("imap-gateway")


def _compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def _gateway_toml() -> dict:
    return tomllib.loads((DEPLOY / "compose" / "gateway.toml").read_text())


def _port(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def _run(*cmd: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kw)


# ------------------------------------------------------------------ compose


def test_compose_has_the_four_services_and_builds_the_gateway_from_this_repo():
    compose = _compose()
    assert set(compose["services"]) == {"gateway", "dovecot", "prometheus", "grafana"}
    build = compose["services"]["gateway"]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"


def test_every_file_compose_mounts_exists_or_is_made_by_init_secrets():
    compose = _compose()
    missing = []
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if not source.startswith("."):
                assert source in compose["volumes"], f"{name}: undeclared volume {source}"
                continue
            path = (DEPLOY / source).resolve()
            if path.is_relative_to(DEPLOY / "compose" / "secrets"):
                continue  # made by init-secrets.sh
            if not path.exists():
                missing.append(f"{name}: {source}")
    assert missing == []


def test_only_the_gateway_is_reachable_from_outside_and_it_runs_without_privileges():
    services = _compose()["services"]
    assert "ports" not in services["dovecot"], "Dovecot must only be reachable through the gateway"
    for name in ("prometheus", "grafana"):
        assert all(p.startswith("127.0.0.1:") for p in services[name]["ports"]), name
    gw = services["gateway"]
    assert gw["cap_drop"] == ["ALL"] and gw["read_only"] is True
    assert "no-new-privileges:true" in gw["security_opt"]


def test_published_ports_match_the_gateway_listeners_and_the_image():
    listeners = {_port(x["address"]): x["mode"] for x in _gateway_toml()["listener"]}
    published = dict(p.split(":")[::-1] for p in _compose()["services"]["gateway"]["ports"])
    assert {int(c): int(h) for c, h in published.items()} == {
        port: 993 if mode == "implicit-tls" else 143 for port, mode in listeners.items()
    }
    exposed = re.search(r"^EXPOSE (.+)$", (DEPLOY / "Dockerfile").read_text(), re.M).group(1)
    metrics_port = _port(_gateway_toml()["metrics"]["address"])
    assert set(map(int, exposed.split())) == set(listeners) | {metrics_port}


def test_backend_subnet_is_the_one_dovecot_and_the_master_user_trust():
    """Three files must name the same subnet, or logins fail (or trust too much)."""
    subnet = _compose()["networks"]["imap-backend"]["ipam"]["config"][0]["subnet"]
    assert _compose()["networks"]["imap-backend"]["internal"] is True
    dovecot_conf = (DEPLOY / "compose" / "dovecot.conf").read_text()
    assert re.findall(r"^login_trusted_networks = (.+)$", dovecot_conf, re.M)[-1] == subnet
    assert f"backend_net=${{BACKEND_NET:-{subnet}}}" in INIT_SECRETS.read_text()


def test_prometheus_scrapes_the_gateway_metrics_port_and_loads_the_mounted_rules():
    prom = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    (job,) = prom["scrape_configs"]
    assert job["job_name"] == "imap-gateway"  # ImapGatewayDown selects up{job="imap-gateway"}
    (target,) = job["static_configs"][0]["targets"]
    assert target == f"gateway:{_port(_gateway_toml()['metrics']['address'])}"
    mounts = _compose()["services"]["prometheus"]["volumes"]
    assert "../grafana/alerts:/etc/prometheus/rules:ro" in mounts
    (pattern,) = prom["rule_files"]
    rule_files = [f"/etc/prometheus/rules/{p.name}" for p in (GRAFANA_DIR / "alerts").iterdir()]
    assert fnmatch.filter(rule_files, pattern) == ["/etc/prometheus/rules/imap-gateway.rules.yml"]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_accepts_the_prometheus_config():
    proc = _run("promtool", "check", "config", str(DEPLOY / "prometheus.yml"))
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.skipif(shutil.which("docker") is None, reason="docker not installed")
def test_docker_compose_config_when_available():
    if _run("docker", "compose", "version").returncode != 0:
        pytest.skip("docker compose plugin not installed")
    proc = _run("docker", "compose", "-f", str(COMPOSE_FILE), "config", "--quiet")
    assert proc.returncode == 0, proc.stderr


# ------------------------------------------------------------------ Dockerfile


def test_dockerfile_builds_from_python_slim_and_runs_as_a_non_root_user():
    text = (DEPLOY / "Dockerfile").read_text()
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert froms and all(f == "python:3.11-slim" for f in froms)
    assert re.search(r"pip install \.$", text, re.M)
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    ignore = [
        line for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ignore[:1] == ["*"], "the build context must be an allow-list (no keys, no .venv)"


# ------------------------------------------------------------------ systemd

REQUIRED_UNIT_SETTINGS = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE",
    "AmbientCapabilities": "CAP_NET_BIND_SERVICE",
    "ExecReload": "/bin/kill -HUP $MAINPID",
    "User": "imap-gateway",
    "StateDirectory": "imap-gateway",
}


def _unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def test_unit_has_the_hardening_the_gateway_relies_on():
    settings = _unit_settings()
    for key, value in REQUIRED_UNIT_SETTINGS.items():
        assert settings.get(key) == [value], key
    assert "/var/lib/imap-gateway" in settings["ReadWritePaths"][0].split()
    assert "PrivateUsers" not in settings, "PrivateUsers breaks binding 993/143"


def _unit_with_local_binary(tmp_path: Path) -> Path:
    """systemd-analyze verify checks that ExecStart exists: point it at this venv's script."""
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/opt/imap-gateway/venv/bin/imap-gateway", str(GATEWAY_BIN)))
    return unit


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path):
    assert GATEWAY_BIN.exists(), "project not installed in this venv"
    proc = _run("systemd-analyze", "verify", str(_unit_with_local_binary(tmp_path)))
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_exposure_score_stays_low(tmp_path: Path):
    """systemd rates the sandbox 0 (locked down) to 10 (unsafe); we are at 1.4. Over 2.5 means
    a hardening line was dropped."""
    unit = _unit_with_local_binary(tmp_path)
    proc = _run("systemd-analyze", "security", "--offline=yes", "--threshold=25", str(unit))
    if "Unknown option" in proc.stderr or "unrecognized option" in proc.stderr:
        pytest.skip("systemd-analyze too old for --offline")
    assert proc.returncode == 0, proc.stdout[-2000:]


# ------------------------------------------------------------------ Dovecot


def _doveconf(tmp_path: Path, body: str) -> subprocess.CompletedProcess:
    conf = tmp_path / "dovecot.conf"
    conf.write_text(f"base_dir = {tmp_path}/run\nstate_dir = {tmp_path}/state\n{body}")
    return _run("doveconf", "-n", "-c", str(conf))


needs_doveconf = pytest.mark.skipif(shutil.which("doveconf") is None, reason="dovecot not installed")


@needs_doveconf
def test_dovecot_snippets_are_accepted_by_doveconf(tmp_path: Path):
    includes = "".join(f"!include {p}\n" for p in SNIPPETS)
    proc = _doveconf(tmp_path, f"protocols = imap\nssl = no\n{includes}")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert re.search(r"passdb \{[^}]*master = yes[^}]*pass = yes", out), "master passdb missing"
    assert "login_trusted_networks = 127.0.0.1/32 ::1/128" in out
    assert re.search(r"inet_listener imap_gateway \{[^}]*haproxy = yes", out)


@needs_doveconf
def test_compose_dovecot_config_is_accepted_and_trusts_only_the_backend_subnet(tmp_path: Path):
    body = (DEPLOY / "compose" / "dovecot.conf").read_text().replace(
        "/etc/dovecot/conf.d/95-imap-gateway.conf", str(SNIPPETS[0])
    )
    proc = _doveconf(tmp_path, body)
    assert proc.returncode == 0, proc.stderr
    assert "login_trusted_networks = 172.30.53.0/24" in proc.stdout
    assert "127.0.0.1" not in proc.stdout


# ------------------------------------------------------------------ secrets + gateway config


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("openssl") is None, reason="needs root and openssl")
def test_init_secrets_output_passes_the_gateway_check_config(tmp_path: Path):
    """The compose gateway.toml, with the files init-secrets.sh makes, is what the gateway accepts."""
    secrets = tmp_path / "secrets"
    proc = _run("sh", str(INIT_SECRETS), env={**os.environ, "SECRETS_DIR": str(secrets)})
    assert proc.returncode == 0, proc.stderr
    assert "password:" in proc.stdout  # the demo password is shown once

    master = (secrets / "gateway" / "master_password").read_text().strip()
    line = (secrets / "dovecot" / "master-users").read_text().strip()
    user, hashed, *_, extra = line.split(":")
    salt = hashed.split("$")[2]
    rehash = _run("openssl", "passwd", "-6", "-salt", salt, master).stdout.strip()
    assert (user, hashed, extra) == ("gateway", "{SHA512-CRYPT}" + rehash, "allow_nets=172.30.53.0/24")
    for secret in ("master_password", "tls/key.pem"):
        st = (secrets / "gateway" / secret).stat()
        assert (st.st_mode & 0o777, st.st_uid) == (0o600, 10001), secret

    etc = tmp_path / "etc" / "imap-gateway"
    etc.mkdir(parents=True)
    shutil.copy(DEPLOY / "compose" / "gateway.toml", etc / "gateway.toml")
    shutil.copytree(secrets / "gateway", etc / "secrets")
    shutil.copytree(REPO_ROOT / "policies", etc / "policies")
    check = _run(str(GATEWAY_BIN), "check-config", "--config", str(etc / "gateway.toml"))
    assert check.returncode == 0, check.stdout + check.stderr

    again = _run("sh", str(INIT_SECRETS), env={**os.environ, "SECRETS_DIR": str(secrets)})
    assert again.returncode == 0 and again.stdout == "", "a second run must keep existing secrets"
    assert (secrets / "gateway" / "master_password").read_text().strip() == master
