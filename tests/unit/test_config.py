"""Config loading: what an administrator's file turns into, and what each mistake says.

Every test writes a real TOML file under tmp_path and goes through load_config, the
same path `imap-gateway serve` and `check-config` take. TLS files are real PEMs from
trustme (the loader only checks that they exist and are readable).
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import tomllib
from pathlib import Path

import pydantic
import pytest
import trustme

from gateway.config import (
    Config,
    ConfigError,
    DurationError,
    load_config,
    parse_address,
    parse_duration,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "gateway.example.toml"

MINIMAL = """\
[tls]
cert = "tls/cert.pem"
key = "tls/key.pem"

[[listener]]
address = "0.0.0.0:993"

[backend]
address = "127.0.0.1:143"
"""


@pytest.fixture(scope="module")
def pems() -> tuple[bytes, bytes]:
    ca = trustme.CA()
    leaf = ca.issue_cert("imap.example.test")
    return leaf.private_key_and_cert_chain_pem.bytes(), leaf.private_key_pem.bytes()


@pytest.fixture
def confdir(tmp_path: Path, pems: tuple[bytes, bytes]) -> Path:
    """A config directory holding tls/cert.pem and tls/key.pem."""
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls" / "cert.pem").write_bytes(pems[0])
    key = tmp_path / "tls" / "key.pem"
    key.write_bytes(pems[1])
    key.chmod(0o600)
    return tmp_path


def write(confdir: Path, text: str, name: str = "gateway.toml") -> Path:
    path = confdir / name
    path.write_text(text)
    return path


def load_error(confdir: Path, text: str) -> ConfigError:
    path = write(confdir, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.file == path
    return info.value


def with_section(section: str, body: str) -> str:
    """MINIMAL plus keys in one section (appending to [backend] or adding a new table)."""
    if section == "backend":
        return MINIMAL + body + "\n"
    return MINIMAL + f"\n[{section}]\n{body}\n"


# --- valid files ------------------------------------------------------------


def test_minimal_config_loads_with_parsed_addresses_and_absolute_paths(confdir: Path) -> None:
    path = write(confdir, MINIMAL)
    cfg = load_config(str(path))

    assert cfg.source_path == path
    assert cfg.tls.cert == confdir / "tls" / "cert.pem"
    assert cfg.tls.key == confdir / "tls" / "key.pem"
    [listener] = cfg.listeners
    assert (listener.address, listener.host, listener.port) == ("0.0.0.0:993", "0.0.0.0", 993)
    assert listener.mode == "implicit-tls"
    assert (cfg.backend.host, cfg.backend.port) == ("127.0.0.1", 143)


def test_every_default(confdir: Path) -> None:
    cfg = load_config(write(confdir, MINIMAL))

    assert cfg.tls.min_version == "1.2"
    b = cfg.backend
    assert (b.tls, b.ca_file, b.client_ip) == ("none", None, "id")
    assert (b.connect_timeout, b.login_timeout) == (5.0, 15.0)
    assert (b.master_user, b.master_password_file) == ("", None)
    assert (b.master_login, b.master_separator) == ("sasl", "*")
    assert cfg.limits.model_dump() == {
        "max_line": 8192,
        "max_preauth_literal": 8192,
        "max_bad_commands": 5,
        "preauth_timeout": 60.0,
        "max_connections_per_ip": 20,
        "max_connections": 10000,
        "tls_handshake_timeout": 10.0,
        "idle_timeout": 1800.0,
        "auth_failure_delay": 0.5,
        "fail_window": 900.0,
        "ip_fail_threshold": 10,
        "subnet_fail_threshold": 30,
        "user_fail_threshold": 20,
        "user_ip_fail_threshold": 5,
        "user_fail_networks": 5,
        "subnet_v4_prefix": 24,
        "subnet_v6_prefix": 64,
        "tarpit_base": 1.0,
        "tarpit_max": 10.0,
        "ban_ttl": 900.0,
        "ban_ttl_max": 86400.0,
        "allow_networks": (),
        "max_connection_rate_per_ip": 30,
        "familiar_ttl": 2592000.0,
        "offence_memory": 604800.0,
    }
    assert cfg.state.redis == ""
    assert cfg.store.path == confdir / "state" / "gateway.db"
    assert cfg.store.key_file == confdir / "state" / "store.key"
    assert cfg.policy.dir == confdir / "policies"
    assert (cfg.admin.address, cfg.admin.host, cfg.admin.port) == (
        "127.0.0.1:9144",
        "127.0.0.1",
        9144,
    )
    assert cfg.admin.token_file is None
    assert (cfg.metrics.host, cfg.metrics.port) == ("127.0.0.1", 9143)
    assert (cfg.logging.format, cfg.logging.level, cfg.logging.file) == ("json", "info", None)
    assert cfg.anomaly.model_dump() == {
        "window": 600.0,
        "spray_distinct_users": 20,
        "stuffing_distinct_ips": 20,
        "stuffing_distinct_users": 20,
        "stuffing_failure_ratio": 0.8,
        "distributed_brute_force_ips": 10,
        "spray_password_users": 5,
        "spray_password_window": 3600.0,
        "stuffing_unknown_users": 30,
        "high_volume_fetch_bytes": 2147483648,
        "mass_delete_messages": 500,
        "spray_action": "ban",
    }


def test_config_is_immutable(confdir: Path) -> None:
    cfg = load_config(write(confdir, MINIMAL))
    with pytest.raises(pydantic.ValidationError):
        cfg.backend.connect_timeout = 1.0  # type: ignore[misc]


def test_relative_paths_follow_the_config_file_not_the_working_directory(
    confdir: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path_factory.mktemp("cwd")
    monkeypatch.chdir(elsewhere)
    text = with_section("store", 'path = "../data/gw.db"\nkey_file = "/abs/store.key"')
    text += '\n[logging]\nfile = "log/gateway.jsonl"\n[policy]\ndir = "~/pol"\n'
    cfg = load_config(os.path.relpath(write(confdir, text), elsewhere))

    assert cfg.source_path == confdir / "gateway.toml"
    assert cfg.store.path == confdir.parent / "data" / "gw.db"
    assert cfg.store.key_file == Path("/abs/store.key")
    assert cfg.logging.file == confdir / "log" / "gateway.jsonl"
    assert cfg.policy.dir == Path.home() / "pol"
    assert cfg.tls.cert == confdir / "tls" / "cert.pem"


def test_ipv6_hostname_and_disabled_addresses(confdir: Path) -> None:
    text = MINIMAL.replace('"0.0.0.0:993"', '"[::1]:993"').replace(
        '"127.0.0.1:143"', '"dovecot:143"'
    )
    text += '\n[[listener]]\naddress = "[2001:db8::1]:143"\nmode = "starttls"\n'
    text += '\n[admin]\naddress = ""\n[metrics]\naddress = ""\n'
    cfg = load_config(write(confdir, text))

    assert [(x.host, x.port, x.mode) for x in cfg.listeners] == [
        ("::1", 993, "implicit-tls"),
        ("2001:db8::1", 143, "starttls"),
    ]
    assert (cfg.backend.host, cfg.backend.port) == ("dovecot", 143)
    assert (cfg.admin.host, cfg.admin.port) == (None, None)
    assert cfg.metrics.port is None


def test_allow_networks_become_ip_networks(confdir: Path) -> None:
    text = with_section("limits", 'allow_networks = ["10.0.0.0/8", "2001:db8::/32"]')
    cfg = load_config(write(confdir, text))
    assert cfg.limits.allow_networks == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("2001:db8::/32"),
    )


def test_example_file_documents_every_key_and_loads(confdir: Path) -> None:
    shutil.copy(EXAMPLE, confdir / "gateway.toml")
    cfg = load_config(confdir / "gateway.toml")

    assert [(x.host, x.port) for x in cfg.listeners] == [("0.0.0.0", 993), ("::", 143)]
    # Every key the loader accepts is shown (and explained) in the example.
    example = tomllib.loads(EXAMPLE.read_text())
    for name, field in Config.model_fields.items():
        if name == "source_path":
            continue
        key = field.alias or name
        section = example[key][0] if key == "listener" else example[key]
        model = type(getattr(cfg, name)[0] if key == "listener" else getattr(cfg, name))
        assert set(section) == set(model.model_fields), f"[{key}] in the example"


def test_summary_is_json_and_hides_the_redis_password(confdir: Path) -> None:
    secret = "s3cr3t-redis-pw"
    text = with_section("state", f'redis = "redis://:{secret}@127.0.0.1:6379/0"')
    cfg = load_config(write(confdir, text))

    assert cfg.state.redis == f"redis://:{secret}@127.0.0.1:6379/0"
    summary = cfg.summary()
    dumped = json.dumps(summary)
    assert secret not in dumped
    assert secret not in repr(cfg) and secret not in str(cfg)
    assert summary["state"]["redis"] == "redis://:***@127.0.0.1:6379/0"
    assert summary["source_path"] == str(confdir / "gateway.toml")
    assert summary["listener"][0]["port"] == 993
    assert summary["backend"]["connect_timeout"] == 5.0


# --- the error contract -------------------------------------------------------


def test_error_string_is_file_key_message(confdir: Path) -> None:
    err = load_error(confdir, with_section("backend", 'tls = "yes"'))
    assert err.key == "backend.tls"
    assert err.message == "must be one of 'none', 'starttls', 'implicit', got 'yes'"
    assert str(err) == f"{confdir / 'gateway.toml'}: backend.tls: {err.message}"


@pytest.mark.parametrize(
    ("section", "body", "key"),
    [
        ("tls", None, "tls.min_version"),
        ("listener", None, "listener[1].mode"),
        ("backend", 'client_ip = "x-forwarded-for"', "backend.client_ip"),
        ("backend", 'master_login = "plain"', "backend.master_login"),
        ("logging", 'format = "text"', "logging.format"),
        ("logging", 'level = "trace"', "logging.level"),
    ],
)
def test_each_enum_violation_names_its_key(
    confdir: Path, section: str, body: str | None, key: str
) -> None:
    if section == "tls":
        text = MINIMAL.replace('key = "tls/key.pem"', 'key = "tls/key.pem"\nmin_version = "1.1"')
    elif section == "listener":
        text = MINIMAL + '\n[[listener]]\naddress = "0.0.0.0:143"\nmode = "plain"\n'
    else:
        text = with_section(section, body or "")
    err = load_error(confdir, text)
    assert err.key == key
    assert err.message.startswith("must be one of ")
    assert len(err.problems) == 1


def test_unquoted_tls_version_is_refused_with_a_hint(confdir: Path) -> None:
    text = MINIMAL.replace('key = "tls/key.pem"', 'key = "tls/key.pem"\nmin_version = 1.3')
    err = load_error(confdir, text)
    assert err.key == "tls.min_version"
    assert "put it in quotes" in err.message


@pytest.mark.parametrize(
    ("text", "key", "hint"),
    [
        (
            with_section("backend", 'conect_timeout = "5s"'),
            "backend.conect_timeout",
            "'connect_timeout'",
        ),
        (
            with_section("limits", 'connect_timeout = "5s"'),
            "limits.connect_timeout",
            "backend.connect_timeout",
        ),
        (with_section("limit", "max_line = 9000"), "limit", "[limits]"),
        (with_section("backend", 'password = "hunter2"'), "backend.password", "known keys here"),
        (
            MINIMAL.replace('address = "0.0.0.0:993"', 'address = "0.0.0.0:993"\nport = 993'),
            "listener[0].port",
            "unknown key",
        ),
    ],
)
def test_unknown_key_is_an_error_naming_it(confdir: Path, text: str, key: str, hint: str) -> None:
    err = load_error(confdir, text)
    assert err.key == key
    assert err.message.startswith("unknown ")
    assert hint in err.message
    assert "hunter2" not in str(err)


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ('"5"', "missing unit"),
        ('"5 seconds"', "invalid duration"),
        ("5", "must be a duration string with a unit, got 5"),
        ('"0s"', "longer than zero"),
        ('"-5s"', "negative"),
    ],
)
def test_bad_duration_names_the_key(confdir: Path, value: str, words: str) -> None:
    err = load_error(confdir, with_section("backend", f"connect_timeout = {value}"))
    assert err.key == "backend.connect_timeout"
    assert words in err.message


def test_zero_tarpit_is_allowed_but_not_longer_than_its_maximum(confdir: Path) -> None:
    cfg = load_config(write(confdir, with_section("limits", 'tarpit_base = "0s"')))
    assert cfg.limits.tarpit_base == 0.0
    err = load_error(confdir, with_section("limits", 'tarpit_base = "1m"'))
    assert err.key == "limits.tarpit_base"
    assert "tarpit_max" in err.message


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("5s", 5.0), ("250ms", 0.25), ("2m", 120.0), ("1h", 3600.0), ("14d", 14 * 86400.0),
     ("90d", 90 * 86400.0), ("1h30m", 5400.0), ("1.5s", 1.5)],
)  # fmt: skip
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "s", "5x", "5 s", "1e3s", "-1s", "5s5"])
def test_parse_duration_refuses_with_an_example(text: str) -> None:
    with pytest.raises(DurationError, match="'5s'|negative"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("address", "words"),
    [
        ("0.0.0.0", "missing port"),
        ("[::1]", "missing port"),
        (":993", "missing host"),
        ("[::g]:993", "invalid IPv6 address '::g'"),
        ("[10.0.0.1]:993", "invalid IPv6 address"),
        ("::1:993", "needs brackets"),
        ("0.0.0.0:70000", "1 to 65535, got 70000"),
        ("0.0.0.0:0", "1 to 65535, got 0"),
        ("0.0.0.0:imaps", "must be a number"),
        ("300.1.1.1:993", "invalid IPv4 address '300.1.1.1'"),
        ("bad host:993", "invalid host name"),
    ],
)
def test_bad_listener_address_names_the_key(confdir: Path, address: str, words: str) -> None:
    err = load_error(confdir, MINIMAL.replace("0.0.0.0:993", address))
    assert err.key == "listener[0].address"
    assert words in err.message
    assert len(err.problems) == 1


def test_parse_address() -> None:
    assert parse_address("[fe80::1%eth0]:993") == ("fe80::1%eth0", 993)
    assert parse_address("mail.example.com:143") == ("mail.example.com", 143)
    with pytest.raises(ValueError, match="brackets"):
        parse_address("2001:db8::1:143")


def test_bad_admin_address_and_duplicate_listener(confdir: Path) -> None:
    err = load_error(confdir, with_section("admin", 'address = "localhost"'))
    assert err.key == "admin.address"
    text = MINIMAL + '\n[[listener]]\naddress = "0.0.0.0:993"\nmode = "starttls"\n'
    err = load_error(confdir, text)
    assert (err.key, err.message) == ("listener[1].address", "same address as listener[0]")


@pytest.mark.parametrize(
    ("body", "key", "words"),
    [
        ('max_line = "8192"', "limits.max_line", "must be an integer, got '8192'"),
        ("max_line = 100", "limits.max_line", "at least 1024, got 100"),
        ("subnet_v4_prefix = 33", "limits.subnet_v4_prefix", "at most 32"),
        ("max_bad_commands = true", "limits.max_bad_commands", "must be an integer, got True"),
        ('allow_networks = "10.0.0.0/8"', "limits.allow_networks", "must be a list"),
        (
            'allow_networks = ["10.0.0.1/8"]',
            "limits.allow_networks[0]",
            "did you mean '10.0.0.0/8'",
        ),
        ('allow_networks = ["::/0", "x"]', "limits.allow_networks[1]", "invalid network 'x'"),
    ],
)
def test_wrong_types_and_ranges_name_the_key(
    confdir: Path, body: str, key: str, words: str
) -> None:
    err = load_error(confdir, with_section("limits", body))
    assert err.key == key
    assert words in err.message


def test_several_errors_are_all_reported(confdir: Path) -> None:
    err = load_error(confdir, with_section("anomaly", 'window = "10"\nstuffing_failure_ratio = 2'))
    assert [k for k, _ in err.problems] == ["anomaly.window", "anomaly.stuffing_failure_ratio"]
    assert "; anomaly.stuffing_failure_ratio: must be at most 1" in str(err)


def test_lockout_memory_and_spray_action(confdir: Path) -> None:
    text = with_section("limits", 'familiar_ttl = "14d"\noffence_memory = "1d"')
    cfg = load_config(write(confdir, text.replace("[anomaly]", "")))
    assert (cfg.limits.familiar_ttl, cfg.limits.offence_memory) == (14 * 86400.0, 86400.0)
    cfg = load_config(write(confdir, with_section("anomaly", 'spray_action = "log"')))
    assert cfg.anomaly.spray_action == "log"
    err = load_error(confdir, with_section("anomaly", 'spray_action = "block"'))
    assert (err.key, err.message) == (
        "anomaly.spray_action", "must be one of 'ban', 'log', got 'block'")
    err = load_error(confdir, with_section("limits", 'familiar_ttl = "0s"'))
    assert err.key == "limits.familiar_ttl" and "longer than zero" in err.message


def test_redis_url_errors_never_echo_the_url(confdir: Path) -> None:
    err = load_error(confdir, with_section("state", 'redis = "http://:pw-in-url@h:6379"'))
    assert err.key == "state.redis"
    assert "redis://" in err.message
    assert "pw-in-url" not in str(err)


# --- files the config points at ------------------------------------------------


def test_missing_cert_file(confdir: Path) -> None:
    (confdir / "tls" / "cert.pem").unlink()
    err = load_error(confdir, MINIMAL)
    assert err.key == "tls.cert"
    assert err.message == f"file not found: {confdir / 'tls' / 'cert.pem'}"


def test_cert_that_is_a_directory_and_missing_ca_file(confdir: Path) -> None:
    err = load_error(confdir, MINIMAL.replace("tls/key.pem", "tls"))
    assert (err.key, err.message) == ("tls.key", f"not a regular file: {confdir / 'tls'}")
    err = load_error(confdir, with_section("backend", 'tls = "implicit"\nca_file = "ca.pem"'))
    assert err.key == "backend.ca_file"
    assert "file not found" in err.message


def _master(confdir: Path, mode: int) -> str:
    pw = confdir / "master.pw"
    pw.write_text("master-secret-value\n")
    pw.chmod(mode)
    return with_section("backend", 'master_user = "gateway"\nmaster_password_file = "master.pw"')


@pytest.mark.parametrize(
    ("mode", "words"),
    [
        (0o644, "mode 0644: must not be readable by others; chmod 600"),
        (0o640, "mode 0640: must not be readable by group; chmod 600"),
        (0o620, "mode 0620: must not be accessible by group; chmod 600"),
    ],
)
def test_master_password_file_open_to_others_is_refused(
    confdir: Path, mode: int, words: str
) -> None:
    err = load_error(confdir, _master(confdir, mode))
    assert err.key == "backend.master_password_file"
    assert words in err.message


def test_master_password_file_0600_is_accepted_and_never_read(confdir: Path) -> None:
    cfg = load_config(write(confdir, _master(confdir, 0o600)))
    assert cfg.backend.master_user == "gateway"
    assert cfg.backend.master_password_file == confdir / "master.pw"
    assert "master-secret-value" not in repr(cfg)
    assert "master-secret-value" not in json.dumps(cfg.summary())


def test_master_user_needs_a_password_file(confdir: Path) -> None:
    err = load_error(confdir, with_section("backend", 'master_user = "gateway"'))
    assert err.key == "backend.master_password_file"
    assert "required when backend.master_user is set" in err.message


# --- the file itself ---------------------------------------------------------


def test_toml_syntax_error_names_the_line(confdir: Path) -> None:
    err = load_error(confdir, MINIMAL + "\n[limits]\nmax_line = = 3\n")
    assert err.key is None
    assert "TOML syntax error" in err.message
    assert "line 12" in err.message
    assert str(err).startswith(f"{confdir / 'gateway.toml'}: TOML syntax error")


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.toml")
    assert str(info.value) == f"{tmp_path / 'nope.toml'}: file not found"


def test_required_sections(confdir: Path) -> None:
    err = load_error(confdir, MINIMAL.replace('[backend]\naddress = "127.0.0.1:143"\n', ""))
    assert (err.key, err.message) == ("backend", "required section [backend] is missing")
    err = load_error(confdir, MINIMAL.replace('[[listener]]\naddress = "0.0.0.0:993"\n', ""))
    assert (err.key, err.message) == ("listener", "at least one [[listener]] table is required")
    err = load_error(confdir, with_section("backend", "").replace('address = "127.0.0.1:143"', ""))
    assert (err.key, err.message) == ("backend.address", "required key is missing")


# --- [web] ------------------------------------------------------------------------------


def test_web_is_off_by_default_with_documented_defaults(confdir: Path) -> None:
    web = load_config(write(confdir, MINIMAL)).web
    assert (web.address, web.host, web.port) == ("", None, None)
    assert (web.cert, web.key, web.public_url) == (None, None, "")
    assert (web.enrollment, web.admins) == ("invite", ())
    assert (web.session_ttl, web.activity_retention) == (8 * 3600.0, 90 * 86400.0)


def test_web_section_with_every_key(confdir: Path) -> None:
    cfg = load_config(write(confdir, with_section("web", "\n".join([
        'address = "[::]:8443"',
        'cert = "tls/cert.pem"',
        'key = "tls/key.pem"',
        'public_url = "https://mail.example.org:8443/portal"',
        'enrollment = "password"',
        'admins = ["alice", "@mail-admins"]',
        'session_ttl = "12h"',
        'activity_retention = "30d"',
    ]))))
    web = cfg.web
    assert (web.host, web.port) == ("::", 8443)
    assert web.cert == confdir / "tls" / "cert.pem" and web.key == confdir / "tls" / "key.pem"
    assert web.public_url == "https://mail.example.org:8443/portal"
    assert (web.enrollment, web.admins) == ("password", ("alice", "@mail-admins"))
    assert (web.session_ttl, web.activity_retention) == (12 * 3600.0, 30 * 86400.0)
    assert cfg.summary()["web"]["port"] == 8443


@pytest.mark.parametrize(
    ("body", "key", "words"),
    [
        ('address = "8443"', "web.address", "missing port"),
        ('public_url = "http://mail.example.org"', "web.public_url", "https://"),
        ('public_url = "https://"', "web.public_url", "no host"),
        ('public_url = "https://u:p@mail.example.org"', "web.public_url", "user name"),
        ('public_url = "https://mail.example.org/?a=1"', "web.public_url", "query"),
        ('public_url = "https://mail.example.org:99999"', "web.public_url", "port"),
        ('public_url = "https://mail.example.org/a b"', "web.public_url", "without spaces"),
        ('public_url = "https://mäil.example.org"', "web.public_url", "xn--"),
        ('enrollment = "open"', "web.enrollment", "'invite', 'password'"),
        ('admins = "alice"', "web.admins", "must be a list"),
        ('admins = ["alice", "@"]', "web.admins[1]", "empty group"),
        ('admins = ["bob smith"]', "web.admins[0]", "spaces"),
        ("admins = [7]", "web.admins[0]", "user name or '@group'"),
        ('session_ttl = "8"', "web.session_ttl", "unit"),
        ('activity_retention = "0d"', "web.activity_retention", "longer than zero"),
        ('cert = "tls/missing.pem"\nkey = "tls/key.pem"', "web.cert", "file not found"),
        ('cert = "tls/cert.pem"', "web.key", "required when web.cert is set"),
        ('key = "tls/key.pem"', "web.cert", "required when web.key is set"),
        ('address = "0.0.0.0:993"', "web.address", "same address as listener[0]"),
        ('address = "127.0.0.1:9143"', "web.address", "same address as metrics.address"),
        ('adress = "0.0.0.0:8443"', "web.adress", "did you mean 'address'"),
    ],
)
def test_web_errors_name_the_key(confdir: Path, body: str, key: str, words: str) -> None:
    err = load_error(confdir, with_section("web", body))
    assert err.key == key, err
    assert words in err.message, err.message
    assert str(confdir / "gateway.toml") in str(err)


# --- [oauth] -------------------------------------------------------------------

OAUTH = '[oauth]\nissuer = "https://idp.example.org/realms/mail"\naudience = "imap-gateway"\n'


def test_oauth_is_off_by_default_and_on_with_an_issuer_and_master_user(confdir: Path) -> None:
    assert load_config(write(confdir, MINIMAL)).oauth.enabled is False
    cfg = load_config(write(confdir, _master(confdir, 0o600) + "\n" + OAUTH))
    assert cfg.oauth.enabled and cfg.oauth.audience == "imap-gateway"
    assert cfg.oauth.mfa_claims == ("mfa", "otp", "hwk")
    assert cfg.oauth.username_claim == "preferred_username"


def test_oauth_needs_the_master_user(confdir: Path) -> None:
    err = load_error(confdir, MINIMAL + "\n" + OAUTH)
    assert err.key == "backend.master_user"
    assert "required when oauth.issuer is set" in err.message


@pytest.mark.parametrize(("body", "key", "words"), [
    ('issuer = "http://idp.example.org/realms/mail"\naudience = "x"', "oauth.issuer",
     "must start with https://"),
    ('issuer = "https://idp.example.org/realms/mail"', "oauth.audience", "required when"),
    ('issuer = "https://idp.example.org"\naudience = "x"\nintrospection_url = '
     '"https://idp.example.org/introspect"', "oauth.client_id", "required when"),
    ('issuer = "https://idp.example.org"\naudience = "x"\njwks_url = "https://i/j"\n'
     'jwks_file = "gateway.toml"', "oauth.jwks_file", "not both"),
    ('audience = "x"', "oauth.audience", "has no effect while oauth.issuer is empty"),
    ('issuer = "https://idp.example.org"\naudience = "x"\nmfa_claims = "mfa"',
     "oauth.mfa_claims", "must be a list"),
    ('issuer = "https://idp.example.org"\naudience = "x"\nleeway = 60', "oauth.leeway",
     "duration"),
    ('issuer = "https://idp.example.org"\naudience = "x"\nissuers = "y"', "oauth.issuers",
     "did you mean 'issuer'"),
])
def test_oauth_errors_name_the_key(confdir: Path, body: str, key: str, words: str) -> None:
    err = load_error(confdir, _master(confdir, 0o600) + "\n[oauth]\n" + body + "\n")
    problems = dict(err.problems)
    assert key in problems, err.problems
    assert words in problems[key], problems[key]

# --- [auth_policy] ------------------------------------------------------------


def test_auth_policy_is_off_by_default_and_shown_by_check_config(confdir: Path) -> None:
    cfg = load_config(write(confdir, MINIMAL))
    assert cfg.auth_policy.address == "" and cfg.auth_policy.port is None
    token = confdir / "policy.token"
    token.write_text("0123456789abcdef0123456789abcdef\n")
    token.chmod(0o600)
    cfg = load_config(write(confdir, with_section(
        "auth_policy", 'address = "127.0.0.1:9145"\ntoken_file = "policy.token"\ntimeout = "2s"')))
    summary = cfg.summary()["auth_policy"]
    assert summary == {"address": "127.0.0.1:9145", "host": "127.0.0.1", "port": 9145,
                       "token_file": str(token), "timeout": 2.0,
                       "gateway_networks": ["127.0.0.1/32", "::1/128"]}
    assert "0123456789abcdef" not in json.dumps(cfg.summary())  # the path, never the token


@pytest.mark.parametrize(
    ("body", "key", "words"),
    [
        ('address = "0.0.0.0:9145"', "auth_policy.token_file",
         "required when auth_policy.address ('0.0.0.0:9145') is not a loopback address"),
        ('address = "127.0.0.1:9143"', "auth_policy.address", "same address as metrics.address"),
        ('address = "127.0.0.1:9145"\ntoken_file = "missing.token"', "auth_policy.token_file",
         "file not found"),
        ('timeout = "0s"', "auth_policy.timeout", "must be longer than zero"),
        ('gateway_networks = ["10.0.0.1/8"]', "auth_policy.gateway_networks[0]",
         "did you mean '10.0.0.0/8'?"),
        ('adress = "127.0.0.1:9145"', "auth_policy.adress", "did you mean 'address'?"),
    ],
)
def test_auth_policy_errors_name_the_key(confdir: Path, body: str, key: str, words: str) -> None:
    err = load_error(confdir, with_section("auth_policy", body))
    assert err.key == key
    assert words in err.message

def test_store_url_is_redacted_and_needs_a_database(confdir: Path) -> None:
    pw = confdir / "pg.password"
    pw.write_text("pg-secret-pw\n")
    pw.chmod(0o600)
    text = with_section("store", 'url = "postgresql://gw:url-secret@db.example.org:5433/gateway'
                                 '?sslmode=verify-full"\npassword_file = "pg.password"')
    cfg = load_config(write(confdir, text))
    assert cfg.store.password_file == pw
    summary = json.dumps(cfg.summary())
    assert "url-secret" not in summary and "url-secret" not in repr(cfg)
    assert "postgresql://gw:***@db.example.org:5433/gateway?sslmode=verify-full" in summary
    assert "pg-secret-pw" not in summary  # only the file's path is kept

    err = load_error(confdir, with_section("store", 'url = "postgresql://gw:pw1@db.example.org"'))
    assert err.key == "store.url" and "names no database" in err.message
    assert "pw1" not in str(err)
    err = load_error(confdir, with_section("store", 'url = "mysql://db/x"'))
    assert err.key == "store.url" and "postgresql://" in err.message
    err = load_error(confdir, with_section("store", 'url = "postgresql://db/x?sslmode=strict"'))
    assert err.key == "store.url" and "verify-full" in err.message
    err = load_error(confdir, with_section("store", 'url = "postgresql://db/x?password=pw2"'))
    assert err.key == "store.url" and "password_file" in err.message and "pw2" not in str(err)


def test_store_password_file_must_be_private_and_needs_a_url(confdir: Path) -> None:
    pw = confdir / "pg.password"
    pw.write_text("pg-secret-pw\n")
    pw.chmod(0o644)
    err = load_error(confdir, with_section(
        "store", 'url = "postgresql://gw@db/x"\npassword_file = "pg.password"'))
    assert err.key == "store.password_file" and "0644" in err.message
    pw.chmod(0o600)
    err = load_error(confdir, with_section("store", 'password_file = "pg.password"'))
    assert err.key == "store.url" and "required" in err.message

def test_server_section_defaults_and_errors(confdir: Path) -> None:
    cfg = load_config(write(confdir, MINIMAL))
    assert cfg.server.workers == len(os.sched_getaffinity(0))
    assert cfg.server.drain_timeout == 10.0
    cfg = load_config(write(confdir, with_section("server", 'workers = 3\ndrain_timeout = "1m"')))
    assert (cfg.server.workers, cfg.server.drain_timeout) == (3, 60.0)
    err = load_error(confdir, with_section("server", "workers = 0"))
    assert (err.key, err.message) == ("server.workers", "must be at least 1, got 0")
    err = load_error(confdir, with_section("server", "drain_timeout = 10"))
    assert err.key == "server.drain_timeout" and "unit" in err.message
