"""Admin command helpers: output a person or a script can act on, secrets shown only once."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyotp
import pytest

from gateway.auth import admin
from gateway.auth.factors import TotpResult
from gateway.store import AppPasswordStatus, SqliteCredentialStore, TotpStatus, open_store

T0 = 1_700_000_015.0


@pytest.fixture
def store(tmp_path: Path) -> SqliteCredentialStore:
    s = open_store(tmp_path / "g.db", tmp_path / "k", create_key=True)
    yield s
    s.close()


def test_totp_enroll_verify_disable_json_and_text(store: SqliteCredentialStore) -> None:
    code, out = admin.totp_enroll(store, "alice", as_json=True, now=T0)
    assert code == 0 and set(out) == {"user", "secret", "uri"}  # type: ignore[arg-type]
    assert json.dumps(out)
    secret = out["secret"]  # type: ignore[index]
    assert store.totp_status("alice") is TotpStatus.PENDING
    code, msg = admin.totp_verify(
        store, "alice", "000000" if pyotp.TOTP(secret).at(T0) != "000000" else "111111", now=T0
    )
    assert code == 1 and "does not match" in msg  # type: ignore[operator]
    code, msg = admin.totp_verify(store, "alice", pyotp.TOTP(secret).at(T0), now=T0)
    assert (code, msg) == (0, "TOTP is now active for alice.")
    assert store.check_totp("alice", pyotp.TOTP(secret).at(T0 + 30), T0 + 30) is TotpResult.OK
    assert admin.totp_disable(store, "alice")[0] == 0
    assert admin.totp_disable(store, "alice") == (1, "alice has no TOTP enrollment.")
    code, msg = admin.totp_verify(store, "alice", "123456", now=T0)
    assert code == 1 and "totp enroll alice" in msg  # type: ignore[operator]


def test_totp_enroll_text_has_qr_uri_and_next_step(store: SqliteCredentialStore) -> None:
    code, text = admin.totp_enroll(store, "bob", now=T0)
    assert code == 0 and isinstance(text, str)
    assert "otpauth://totp/imap-gateway:bob?" in text
    assert "█" in text or "▀" in text  # a QR code drawn with block characters
    assert "imap-gateway totp verify bob CODE" in text


def test_totp_enroll_without_key_reports_the_key_file(tmp_path: Path) -> None:
    with open_store(tmp_path / "g.db", tmp_path / "missing.key") as s:
        code, out = admin.totp_enroll(s, "alice", as_json=True, now=T0)
    assert code == 1 and "missing.key does not exist" in out["error"]  # type: ignore[index]


def test_app_password_create_list_revoke(store: SqliteCredentialStore) -> None:
    code, out = admin.app_password_create(
        store,
        "alice",
        "iPhone",
        scopes=["read-only"],
        mailboxes="INBOX,Archive/*",
        expires="90d",
        as_json=True,
        now=T0,
    )
    assert code == 0
    assert out == {  # type: ignore[comparison-overlap]
        "user": "alice",
        "password": out["password"],  # type: ignore[index]
        "label": "iPhone",
        "scopes": ["read-only", "mailboxes=INBOX,Archive/*"],
        "expires": "2024-02-12T22:13:35Z",  # T0 + 90d, RFC 3339 UTC
    }
    password = out["password"]  # type: ignore[index]
    assert re.fullmatch(r"([a-z2-9]{5}-){3}[a-z2-9]{5}", password)
    assert store.verify_app_password("alice", password, T0).status is AppPasswordStatus.OK
    store.record_app_password_use(store.list_app_passwords("alice")[0].id, "192.0.2.5", T0 + 60,
                                  "K-9 Mail")

    code, listing = admin.app_password_list(store, "alice", as_json=True, now=T0 + 120)
    assert code == 0
    [item] = listing["app_passwords"]  # type: ignore[index]
    assert item == {
        "label": "iPhone",
        "scopes": ["read-only", "mailboxes=INBOX,Archive/*"],
        "created": "2023-11-14T22:13:35Z",
        "last_used": "2023-11-14T22:14:35Z",
        "last_ip": "192.0.2.5",
        "last_client": "K-9 Mail",
        "expires": "2024-02-12T22:13:35Z",
        "expired": False,
    }
    code, text = admin.app_password_list(store, "alice", now=T0 + 120)
    assert code == 0 and "iPhone" in text and "192.0.2.5" in text  # type: ignore[operator]
    assert password not in text and password not in json.dumps(listing)  # type: ignore[operator]

    assert admin.app_password_revoke(store, "alice", "iPhone")[0] == 0
    code, msg = admin.app_password_revoke(store, "alice", "iPhone")
    assert code == 1 and "no app password labelled 'iPhone'" in msg  # type: ignore[operator]
    assert admin.app_password_list(store, "alice", now=T0) == (0, "alice has no app passwords.")


def test_app_password_create_text_shows_password_once(store: SqliteCredentialStore) -> None:
    code, text = admin.app_password_create(store, "alice", "laptop", now=T0)
    assert code == 0 and "shown only this once" in text  # type: ignore[operator]
    assert "scopes: full" in text and "expires: never" in text  # type: ignore[operator]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"expires": "90"}, "bad duration '90'"),
        ({"expires": "3 days"}, "bad duration"),
        ({"scopes": ["admin"]}, "unknown scope 'admin'"),
        ({"mailboxes": ","}, "mailbox names"),
    ],
)
def test_app_password_create_bad_arguments_exit_2(
    store: SqliteCredentialStore, kwargs: dict, message: str
) -> None:
    code, out = admin.app_password_create(store, "alice", "x", as_json=True, now=T0, **kwargs)
    assert code == 2 and message in out["error"]  # type: ignore[index]
    assert store.list_app_passwords("alice") == []


def test_duplicate_label_exit_1(store: SqliteCredentialStore) -> None:
    assert admin.app_password_create(store, "alice", "phone", now=T0)[0] == 0
    code, msg = admin.app_password_create(store, "alice", "phone", now=T0)
    assert code == 1 and "already has an app password labelled 'phone'" in msg  # type: ignore[operator]


def test_parse_duration() -> None:
    assert admin.parse_duration("90d") == 90 * 86400
    assert admin.parse_duration("1d12h") == 36 * 3600
    assert admin.parse_duration("2w") == 14 * 86400
    assert admin.parse_duration("45m") == 2700
    for bad in ("", "d", "1x", "1d 2h", "-1d"):
        with pytest.raises(ValueError, match="use a number with a unit"):
            admin.parse_duration(bad)


def test_devices_list_and_forget(store: SqliteCredentialStore) -> None:
    d1 = store.remember("alice", "192.0.2.1", "Thunderbird", 3600, T0)
    store.remember("alice", "2001:db8::1", "", 60, T0)
    code, out = admin.devices_list(store, "alice", as_json=True, now=T0 + 120)
    assert code == 0
    devices = out["devices"]  # type: ignore[index]
    assert [(d["network"], d["client_name"], d["expired"]) for d in devices] == [
        ("192.0.2.0/24", "Thunderbird", False),
        ("2001:db8::/64", "", True),
    ]
    code, text = admin.devices_list(store, "alice", now=T0 + 120)
    assert code == 0 and "192.0.2.0/24" in text and "(expired)" in text  # type: ignore[operator]

    assert admin.devices_forget(store, "alice", str(d1.id)) == (
        0,
        "Forgot 1 remembered device(s) of alice.",
    )
    code, msg = admin.devices_forget(store, "alice", d1.id)
    assert code == 1 and "no remembered device" in msg  # type: ignore[operator]
    assert admin.devices_forget(store, "alice", all_devices=True) == (
        0,
        "Forgot 1 remembered device(s) of alice.",
    )
    assert admin.devices_list(store, "alice", now=T0) == (0, "alice has no remembered devices.")


@pytest.mark.parametrize(
    ("device_id", "all_devices", "message"),
    [(None, False, "give a device ID"), ("x1", False, "must be a number"), ("3", True, "not both")],
)
def test_devices_forget_usage_errors(
    store: SqliteCredentialStore, device_id, all_devices, message
) -> None:
    store.remember("alice", "192.0.2.1", "c", 3600, T0)
    code, msg = admin.devices_forget(store, "alice", device_id, all_devices=all_devices)
    assert code == 2 and message in msg
    assert len(store.list_devices("alice")) == 1


# --- devices waiting for approval ----------------------------------------------------------------


def test_devices_pending_and_approve(store: SqliteCredentialStore) -> None:
    assert admin.devices_pending(store, "alice", now=T0) == (
        0, "alice has no devices waiting for approval.")
    phone = store.note_device("alice", "203.0.113.9", "iPhone Mail", T0)
    store.note_device("alice", "2001:db8::7", "", T0 + 30)
    code, out = admin.devices_pending(store, "alice", as_json=True, now=T0 + 150)
    assert code == 0 and json.dumps(out)
    assert [(d["id"], d["address"], d["client_name"], d["state"], d["approved"],
             d["description"]) for d in out["devices"]] == [  # type: ignore[index]
        (phone.id, "203.0.113.9", "iPhone Mail", "pending", False,
         "iPhone Mail from 203.0.113.9, 2 min ago"),
        (phone.id + 1, "2001:db8::7", "", "pending", False,
         "Unnamed mail client from 2001:db8::7, 2 min ago"),
    ]
    code, text = admin.devices_pending(store, "alice", now=T0 + 150)
    assert code == 0 and "iPhone Mail from 203.0.113.9, 2 min ago" in text  # type: ignore[operator]
    assert "imap-gateway devices approve alice ID" in text  # type: ignore[operator]

    code, out = admin.devices_approve(store, "alice", str(phone.id), as_json=True, now=T0 + 200)
    assert code == 0 and out == {  # the default: the approval waits 24 h for the login
        "user": "alice", "approved": phone.id, "approved_until": "2023-11-15T22:16:55Z",
        "description": "iPhone Mail from 203.0.113.9, 3 min ago"}
    [approved] = [d for d in store.list_pending_devices("alice") if d.id == phone.id]
    assert approved.is_approved(T0 + 200 + 86399) and not approved.is_approved(T0 + 200 + 86400)
    code, text = admin.devices_approve(store, "alice", phone.id + 1, expires="1h", now=T0)
    assert code == 0 and f"Approved device {phone.id + 1} of alice" in text  # type: ignore[operator]
    assert "remember_device" in text  # type: ignore[operator]
    code, text = admin.devices_pending(store, "alice", now=T0 + 7200)
    assert "approved" in text and "ended" in text  # type: ignore[operator]


@pytest.mark.parametrize(
    ("device_id", "expires", "code", "message"),
    [("x1", None, 2, "must be a number"), ("1", "soon", 2, "bad duration"),
     ("1", "0s", 2, "validity"), ("99", None, 1, "devices pending alice")],
)
def test_devices_approve_errors(
    store: SqliteCredentialStore, device_id: str, expires: str | None, code: int, message: str
) -> None:
    store.note_device("alice", "203.0.113.9", "iPhone Mail", T0)
    result = admin.devices_approve(store, "alice", device_id, expires=expires, as_json=True,
                                   now=T0)
    assert result[0] == code and message in result[1]["error"]  # type: ignore[index]
    # another user's device is not found either
    bob = admin.devices_approve(store, "bob", "1", now=T0)
    assert bob[0] == 1
    assert all(not d.is_approved(T0) for d in store.list_pending_devices("alice"))


# --- invites ------------------------------------------------------------------------------------


def test_users_invite_prints_the_token_once_and_stores_its_hash(
    store: SqliteCredentialStore,
) -> None:
    code, out = admin.users_invite(store, "alice", as_json=True, now=T0)
    assert code == 0 and set(out) == {"user", "token", "url", "expires"}  # type: ignore[arg-type]
    assert out["url"] is None  # type: ignore[index]  # no [web] public_url
    assert out["expires"] == "2023-11-17T22:13:35Z"  # type: ignore[index]  # the default: 72h
    [info] = store.list_invites("alice")
    assert info.consumed is None and info.expires == T0 + 72 * 3600
    assert out["token"] not in repr(info)  # type: ignore[index]
    assert store.consume_invite(out["token"], T0 + 1).user == "alice"  # type: ignore[index,union-attr]
    code, text = admin.users_invite(store, "bob", expires="7d", now=T0)
    assert code == 0 and isinstance(text, str)
    token = text.split("\n\n")[1].strip()
    assert store.consume_invite(token, T0 + 6 * 86400).user == "bob"  # type: ignore[union-attr]
    assert "expires 2023-11-21 22:13:35Z" in text and "shown only this once" in text
    assert "[web] public_url" in text


def test_users_invite_prints_the_portal_link_with_a_public_url(
    store: SqliteCredentialStore,
) -> None:
    code, text = admin.users_invite(store, "alice", public_url="https://mail.example.org:8443/",
                                    now=T0)
    assert code == 0 and isinstance(text, str)
    link = text.split("\n\n")[1].strip()
    prefix = "https://mail.example.org:8443/invite/"
    assert link.startswith(prefix)
    assert store.consume_invite(link[len(prefix):], T0 + 1).user == "alice"  # type: ignore[union-attr]
    code, out = admin.users_invite(store, "bob", public_url="https://mail.example.org",
                                   as_json=True, now=T0)
    assert out["url"] == "https://mail.example.org/invite/" + out["token"]  # type: ignore[index,operator]


@pytest.mark.parametrize("expires", ["72", "soon", "0s", "-1h"])
def test_users_invite_bad_lifetime_is_a_usage_error(
    store: SqliteCredentialStore, expires: str
) -> None:
    code, out = admin.users_invite(store, "alice", expires=expires, as_json=True, now=T0)
    assert code == 2 and "error" in out, out  # type: ignore[operator]
    assert store.list_invites("alice") == []
