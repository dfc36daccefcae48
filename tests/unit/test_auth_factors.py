"""Pure factor functions: suffix splitting, app-password format/hash, TOTP steps, device keys."""

from __future__ import annotations

import math
import re

import pyotp
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.auth import factors as f

# --- password$code splitting -------------------------------------------------------


@pytest.mark.parametrize(
    ("secret", "mode", "password", "code"),
    [
        ("password$123456", "separator", "password", "123456"),
        ("password$123456", "plain", "password", "123456"),
        ("password123456", "plain", "password", "123456"),
        ("password123456", "separator", "password123456", None),
        # a password containing '$' keeps everything before the last "$" + 6 digits
        ("pa$$word$654321", "separator", "pa$$word", "654321"),
        # digits in the password stay in the password: exactly the last six are the code
        ("hunter2024123456", "plain", "hunter2024", "123456"),
        ("password$12345", "separator", "password$12345", None),  # 5 digits: no code
        ("password$1234567", "separator", "password$1234567", None),  # 7 digits: no code
        ("$123456", "separator", "$123456", None),  # empty password: not split
        ("123456", "plain", "123456", None),
        ("pässwörd$000001", "separator", "pässwörd", "000001"),
        (
            "pw$１２３４５６",
            "separator",
            "pw$１２３４５６",
            None,
        ),  # fullwidth digits are not digits here
    ],
)
def test_split_totp_suffix(secret: str, mode: str, password: str, code: str | None) -> None:
    split = f.split_totp_suffix(secret, mode)
    assert (split.password, split.code) == (password, code)


def test_split_rejects_unknown_mode_naming_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="separator, plain"):
        f.split_totp_suffix("pw$123456", "dollar")


def test_split_secret_repr_hides_password_and_code() -> None:
    text = repr(f.split_totp_suffix("s3cretpw$987654"))
    assert "s3cretpw" not in text and "987654" not in text


# --- app passwords ---------------------------------------------------------------------


def test_app_password_format_and_entropy() -> None:
    assert len(f.APP_PASSWORD_ALPHABET) == 32
    assert not set("0o1l") & set(f.APP_PASSWORD_ALPHABET)
    assert f.APP_PASSWORD_GROUPS * f.APP_PASSWORD_GROUP_LEN * math.log2(32) >= 100
    seen = set()
    pattern = re.compile(r"[a-km-np-z2-9]{5}(-[a-km-np-z2-9]{5}){3}")
    for _ in range(200):
        pw = f.generate_app_password()
        assert pattern.fullmatch(pw), pw
        seen.add(pw)
    assert len(seen) == 200
    # every symbol of the alphabet shows up: the generator uses all 32 (5 bits each)
    assert set("".join(seen).replace("-", "")) == set(f.APP_PASSWORD_ALPHABET)


def test_normalize_accepts_typing_variants_and_rejects_other_shapes() -> None:
    pw = "abcde-fghij-kmnpq-rstuv"
    canon = "abcdefghijkmnpqrstuv"
    for typed in (pw, pw.upper(), pw.replace("-", ""), pw.replace("-", " "), f" {pw} "):
        assert f.normalize_app_password(typed) == canon
    for other in ("hunter2", "abcde-fghij-kmnpq-rstu", "abcde-fghij-kmnpq-rstu0", pw + "$123456"):
        assert f.normalize_app_password(other) is None


def test_hash_is_salted_scrypt_not_plaintext_and_verifies() -> None:
    pw = f.generate_app_password()
    canon = f.normalize_app_password(pw)
    assert canon is not None
    h1, h2 = f.hash_app_password(pw), f.hash_app_password(pw)
    assert h1 != h2  # salted
    assert h1.startswith("scrypt$16384$8$1$")
    assert canon not in h1 and pw not in h1
    assert f.verify_app_password_hash(canon, h1)
    wrong = f.normalize_app_password(f.generate_app_password())
    assert wrong is not None and not f.verify_app_password_hash(wrong, h1)
    assert not f.verify_app_password_hash(canon, "garbage")
    assert not f.verify_app_password_hash(canon, "scrypt$16384$8$1$!!$!!")


# --- scopes -------------------------------------------------------------------------------


def test_scopes_default_and_canonical_form() -> None:
    assert f.validate_scopes(None) == ("full",)
    assert f.validate_scopes(["read-only"]) == ("read-only",)
    assert f.validate_scopes(["mailboxes= INBOX , Archive/*"]) == (
        "full",
        "mailboxes=INBOX,Archive/*",
    )
    assert f.validate_scopes(["mailboxes=INBOX", "read-only"]) == ("read-only", "mailboxes=INBOX")


@pytest.mark.parametrize(
    ("scopes", "message"),
    [
        (["admin"], "unknown scope 'admin'"),
        (["full", "read-only"], "conflicts"),
        (["mailboxes="], "mailbox names"),
        (["mailboxes=INBOX,,Sent"], "mailbox names"),
        (["mailboxes=INBOX", "mailboxes=Sent"], "only once"),
    ],
)
def test_bad_scopes_say_what_to_use(scopes: list[str], message: str) -> None:
    with pytest.raises(f.InvalidScopeError, match=message):
        f.validate_scopes(scopes)


# --- TOTP steps ---------------------------------------------------------------------------

SECRET = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP"
NOW = 1_700_000_015.0  # step 56_666_667, 15 s into it


def test_matching_step_window_is_plus_minus_one_step() -> None:
    step = f.totp_step(NOW)
    otp = pyotp.TOTP(SECRET)
    for delta in (-1, 0, 1):
        code = otp.at(NOW + delta * 30)
        assert f.totp_matching_step(SECRET, code, NOW) == step + delta
    for delta in (-2, 2):
        code = otp.at(NOW + delta * 30)
        assert f.totp_matching_step(SECRET, code, NOW) is None
    assert f.totp_code_at_step(SECRET, step) == otp.at(NOW)


@pytest.mark.parametrize("code", ["", "12345", "1234567", "abcdef", "12345a", " 123456", None])
def test_malformed_codes_never_match(code: object) -> None:
    assert f.totp_matching_step(SECRET, code, NOW) is None  # type: ignore[arg-type]


def test_use_fingerprints_are_keyed_and_bound_to_user_address_and_client() -> None:
    key = f.fingerprint_key(b"k" * 32)
    assert key != b"k" * 32 and len(key) == 32
    src = f.totp_source_fingerprint(key, "alice", "192.0.2.7", "mbsync")
    assert src == f.totp_source_fingerprint(key, "alice", "::ffff:192.0.2.7", " mbsync ")
    different = [
        f.totp_source_fingerprint(key, "bob", "192.0.2.7", "mbsync"),
        f.totp_source_fingerprint(key, "alice", "192.0.2.8", "mbsync"),
        f.totp_source_fingerprint(key, "alice", "192.0.2.7", "neomutt"),
        f.totp_source_fingerprint(key, "alice", "192.0.2.7", None),
        f.totp_source_fingerprint(f.fingerprint_key(b"j" * 32), "alice", "192.0.2.7", "mbsync"),
        # parts cannot run into each other: moving text between fields changes the result
        f.totp_source_fingerprint(key, "alice192.0.2.7", "", "mbsync"),
        f.totp_source_fingerprint(key, "alice", "192.0.2.7mbsync", ""),
    ]
    assert src not in different and len(set(different)) == len(different)
    code = f.totp_code_fingerprint(key, "alice", "123456")
    assert code != f.totp_code_fingerprint(key, "bob", "123456")
    assert code != f.totp_code_fingerprint(key, "alice", "123457")
    assert b"123456" not in code and b"192.0.2.7" not in src


def test_uri_names_issuer_and_user() -> None:
    uri = f.totp_uri(SECRET, "alice@example.com")
    assert uri.startswith("otpauth://totp/imap-gateway:alice%40example.com?")
    assert "issuer=imap-gateway" in uri and f"secret={SECRET}" in uri


# --- devices ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "network"),
    [
        ("192.0.2.77", "192.0.2.0/24"),
        ("::ffff:192.0.2.77", "192.0.2.0/24"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
    ],
)
def test_device_network(ip: str, network: str) -> None:
    assert f.device_network(ip) == network


def test_device_network_rejects_non_ip() -> None:
    with pytest.raises(ValueError):
        f.device_network("example.com")


def test_device_client_name_is_bounded() -> None:
    assert f.device_client_name(None) == ""
    assert f.device_client_name("  Thunderbird ") == "Thunderbird"
    assert len(f.device_client_name("x" * 10_000)) == f.DEVICE_CLIENT_NAME_MAX


@settings(max_examples=200, deadline=None)
@given(
    password=st.text(min_size=1, max_size=40),
    code=st.from_regex(r"[0-9]{6}", fullmatch=True),
    mode=st.sampled_from(f.TOTP_SUFFIX_MODES),
)
def test_split_recovers_password_and_code(password: str, code: str, mode: str) -> None:
    split = f.split_totp_suffix(f"{password}${code}", mode)
    assert (split.password, split.code) == (password, code)
    # and splitting never loses characters: password (+ "$") + code is the input
    whole = f.split_totp_suffix(password, mode)
    if whole.code is None:
        assert whole.password == password
    else:
        assert password in (whole.password + whole.code, f"{whole.password}${whole.code}")


def test_matching_step_at_the_epoch_does_not_raise() -> None:
    # pyotp refuses negative counters; a clock at 0 (broken RTC) must give a result, not a crash
    assert f.totp_matching_step(SECRET, pyotp.TOTP(SECRET).at(0), 0.0) == 0
