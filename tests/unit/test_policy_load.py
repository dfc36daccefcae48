"""Loading policy files: every validation error names file, rule and key, and loads nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.policy import PolicyError, load_policy

NETS = '[networks]\noffice = ["192.0.2.0/24"]\n[groups]\nstaff = ["alice"]\n'
OK_RULE = '[[rule]]\nname = "ok"\nusers = ["zed"]\naction = "allow"\nmfa = "none"\n'


def write(dir: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (dir / name).write_text(text)
    return dir


def load_error(dir: Path) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        load_policy(dir)
    return info.value


# (rule text appended after NETS in 10-office.toml, rule ref, key, message fragment)
RULE_ERRORS = [
    ('[[rule]]\nname = "office staff"\nnetworks = ["ofice"]\naction = "allow"\n',
     '"office staff"', "networks", "unknown network name 'ofice'"),
    ('[[rule]]\nname = "r"\nnetworks = ["192.0.2.0/33"]\naction = "deny"\n',
     '"r"', "networks", "bad CIDR '192.0.2.0/33'"),
    ('[[rule]]\nname = "r"\nnetworks = ["!192.0.2.1/24"]\naction = "deny"\n',
     '"r"', "networks", "did you mean '192.0.2.0/24'?"),
    ('[[rule]]\nname = "r"\nnetworks = ["2001:db8::/129"]\naction = "deny"\n',
     '"r"', "networks", "bad CIDR"),
    ('[[rule]]\nname = "r"\nnetworks = ["::ffff:203.0.113.0/120"]\naction = "deny"\n',
     '"r"', "networks", "IPv4-mapped clients are matched as IPv4; write '203.0.113.0/24'"),
    ('[[rule]]\nname = "r"\nnetworks = []\naction = "deny"\n', '"r"', "networks", "empty list"),
    ('[[rule]]\nname = "r"\naction = "permit"\n', '"r"', "action", "bad value 'permit'"),
    ('[[rule]]\nname = "r"\nusers = ["a"]\n', '"r"', "action", "missing"),
    ('[[rule]]\nname = "r"\naction = "allow"\nmfa = "sms"\n', '"r"', "mfa", "bad value 'sms'"),
    ('[[rule]]\nname = "r"\naction = "allow"\nmfa = "totp"\ntotp_suffix = "glued"\n',
     '"r"', "totp_suffix", "bad value 'glued'"),
    ('[[rule]]\nname = "r"\naction = "allow"\nmfa = "totp"\nremember_device = "2 weeks"\n',
     '"r"', "remember_device", "bad duration"),
    ('[[rule]]\nname = "r"\naction = "allow"\nmfa = "totp"\nremember_device = "400d"\n',
     '"r"', "remember_device", "366d maximum"),
    ('[[rule]]\nname = "r"\naction = "allow"\nmfa = "none"\nremember_device = "14d"\n',
     '"r"', "remember_device", "only applies to mfa"),
    ('[[rule]]\nname = "r"\naction = "deny"\nmfa = "totp"\n', '"r"', "mfa", "no effect on a deny rule"),
    ('[[rule]]\nname = "r"\naction = "allow"\nnetwork = ["office"]\n',
     '"r"', "network", "did you mean 'networks'?"),
    ('[[rule]]\nname = "r"\ngroups = ["staf"]\naction = "deny"\n',
     '"r"', "groups", "unknown group name 'staf'"),
    ('[[rule]]\nname = "r"\nusers = ["al*"]\naction = "deny"\n', '"r"', "users", "only a plain user name"),
    ('[[rule]]\nname = "r"\nusers = "alice"\naction = "deny"\n', '"r"', "users", "must be a list"),
    ('[[rule]]\nname = "r"\nusers = ["bob smith"]\naction = "deny"\n', '"r"', "users", "whitespace"),
    # Unnamed rules are referred to by their position in the file.
    ('[[rule]]\nusers = ["a"]\naction = "deny"\n[[rule]]\naction = "maybe"\n', "#2", "action", "bad value"),
    ('[[rule]]\nname = "x"\naction = "deny"\nusers = ["a"]\n[[rule]]\nname = "x"\naction = "deny"\nusers = ["b"]\n',
     '"x"', "name", "duplicate rule name"),
]


@pytest.mark.parametrize(("rules", "ref", "key", "fragment"), RULE_ERRORS)
def test_rule_error_names_file_rule_and_key(tmp_path, rules, ref, key, fragment):
    write(tmp_path, {"00-base.toml": OK_RULE, "10-office.toml": NETS + rules})
    err = load_error(tmp_path)
    assert (err.file, err.rule, err.key) == (str(tmp_path / "10-office.toml"), ref, key)
    assert fragment in err.message
    assert str(err).startswith(f"{tmp_path}/10-office.toml: rule {ref}: {key}: ")


def test_the_documented_example_message_verbatim(tmp_path):
    write(tmp_path, {"10-office.toml": NETS + RULE_ERRORS[0][0]})
    assert str(load_error(Path(tmp_path))).startswith(
        f"{tmp_path}/10-office.toml: rule \"office staff\": networks: unknown network name 'ofice'"
    )


def test_duplicate_rule_name_across_files_names_both(tmp_path):
    write(tmp_path, {
        "10-a.toml": '[[rule]]\nname = "x"\nusers = ["a"]\naction = "deny"\n',
        "20-b.toml": '[[rule]]\nname = "x"\nusers = ["b"]\naction = "deny"\n',
    })
    err = load_error(tmp_path)
    assert (err.file, err.rule, err.key) == (str(tmp_path / "20-b.toml"), '"x"', "name")
    assert "10-a.toml" in err.message


@pytest.mark.parametrize(
    ("text", "key", "fragment"),
    [
        ('[networks]\noffice = ["192.0.2.0/24", "nope"]\n' + OK_RULE, "networks.office", "bad CIDR 'nope'"),
        ('[networks]\noffice = []\n' + OK_RULE, "networks.office", "empty list"),
        ('[networks]\n"10.0.0.0/8" = ["10.0.0.0/8"]\n' + OK_RULE, "networks.10.0.0.0/8", "bad network name"),
        ('[groups]\nstaff = []\n' + OK_RULE, "groups.staff", "empty list"),
        ('[groups]\nstaff = ["a*b"]\n' + OK_RULE, "groups.staff", "only a plain user name"),
        ('[group]\nstaff = ["a"]\n' + OK_RULE, "group", "unknown top-level key"),
        ('[rule]\nname = "x"\naction = "deny"\n', "rule", "[[rule]] table (double brackets)"),
    ],
)
def test_definition_errors_name_file_and_key(tmp_path, text, key, fragment):
    write(tmp_path, {"10-office.toml": text})
    err = load_error(tmp_path)
    assert (err.file, err.rule, err.key) == (str(tmp_path / "10-office.toml"), None, key)
    assert fragment in err.message


def test_group_or_network_defined_twice_is_an_error(tmp_path):
    write(tmp_path, {"10-a.toml": '[groups]\nstaff = ["a"]\n' + OK_RULE, "20-b.toml": '[groups]\nstaff = ["b"]\n'})
    err = load_error(tmp_path)
    assert (err.file, err.key) == (str(tmp_path / "20-b.toml"), "groups.staff")
    assert "10-a.toml" in err.message


def test_toml_syntax_error_names_file_and_line(tmp_path):
    write(tmp_path, {"00-ok.toml": OK_RULE, "10-bad.toml": '[[rule]]\nname = "x\n'})
    err = load_error(tmp_path)
    assert err.file == str(tmp_path / "10-bad.toml")
    assert "TOML syntax error" in err.message and "line 2" in err.message


def test_empty_or_missing_directory_is_an_error(tmp_path):
    err = load_error(tmp_path)
    assert err.file == str(tmp_path) and "no *.toml policy files" in err.message
    assert "does not exist" in load_error(tmp_path / "nope").message
    (tmp_path / "10-only-groups.toml").write_text('[groups]\nstaff = ["a"]\n')
    assert "no [[rule]]" in load_error(tmp_path).message


def test_rule_after_a_catch_all_is_refused_because_it_could_never_match(tmp_path):
    """A catch-all in a file that sorts first (00-default.toml): a 10-block.toml deny rule
    after it would silently never apply (fail open), so the load refuses and says how to fix it."""
    write(tmp_path, {
        "00-default.toml": '[[rule]]\nname = "default"\naction = "allow"\nmfa = "strong"\n',
        "10-block.toml": '[[rule]]\nname = "block"\nnetworks = ["203.0.113.0/24"]\naction = "deny"\n',
    })
    err = load_error(tmp_path)
    assert (err.file, err.rule) == (str(tmp_path / "10-block.toml"), '"block"')
    assert "can never match" in err.message and "99-default.toml" in err.message
    (tmp_path / "00-default.toml").rename(tmp_path / "99-default.toml")
    assert [r.label for r in load_policy(tmp_path).rules] == ["block", "default"]


@pytest.mark.parametrize(
    "catch_all",
    ['users = ["*"]\n', 'networks = ["0.0.0.0/0", "::/0"]\n', 'users = ["*"]\nnetworks = ["::/0", "0.0.0.0/0"]\n'],
)
def test_catch_all_spelled_explicitly_is_also_detected(tmp_path, catch_all):
    write(tmp_path, {"10.toml": f'[[rule]]\nname = "all"\naction = "deny"\n{catch_all}' + OK_RULE})
    assert "can never match" in load_error(tmp_path).message


def test_hidden_files_and_subdirectories_are_not_loaded(tmp_path):
    write(tmp_path, {"10-ok.toml": OK_RULE, ".#10-ok.toml": "garbage [[", "notes.txt": "x"})
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "broken.toml").write_text("garbage [[")
    assert load_policy(tmp_path).files == ("10-ok.toml",)


def test_fingerprint_changes_with_content_and_not_with_mtime(tmp_path):
    write(tmp_path, {"10-ok.toml": OK_RULE})
    first = load_policy(tmp_path).fingerprint
    write(tmp_path, {"10-ok.toml": OK_RULE})
    assert load_policy(tmp_path).fingerprint == first
    write(tmp_path, {"10-ok.toml": OK_RULE.replace("zed", "zoe")})
    assert load_policy(tmp_path).fingerprint != first


def test_durations(tmp_path):
    for text, seconds in [('"0"', 0), ('"90s"', 90), ('"30m"', 1800), ('"12h"', 43200), ('"14d"', 1209600),
                          ('"2w"', 1209600)]:
        write(tmp_path, {"10.toml": f'[[rule]]\nname = "r"\naction = "allow"\nmfa = "strong"\nremember_device = {text}\n'})
        assert load_policy(tmp_path).rules[0].remember_device == seconds, text
