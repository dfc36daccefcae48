"""What list commands print: columns that line up, and times a script can parse."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from gateway.admin_client import format_bans, format_sessions
from gateway.auth import admin
from gateway.cliformat import json_times, rfc3339, table
from gateway.store import SqliteCredentialStore, open_store

T0 = 1_700_000_015.0


@pytest.fixture
def store(tmp_path: Path):
    s = open_store(tmp_path / "g.db", tmp_path / "k", create_key=True)
    yield s
    s.close()


def column_starts(line: str, values: list[str]) -> list[int]:
    """Where each value starts in ``line`` (searched left to right)."""
    starts, pos = [], 0
    for v in values:
        pos = line.index(v, pos)
        starts.append(pos)
        pos += len(v)
    return starts


def test_app_password_list_columns_line_up_whatever_the_label_length(
        store: SqliteCredentialStore):
    long_label = "Thunderbird on the kitchen laptop (work profile)"  # longer than any old column
    store.create_app_password("alice", "a", ["read-only", "mailboxes=INBOX,Archive/*"], None, T0)
    store.create_app_password("alice", long_label, [], T0 + 86400, T0 + 60)
    code, text = admin.app_password_list(store, "alice", now=T0 + 120)
    assert code == 0
    header, first, second = text.splitlines()
    assert header.split()[0] == "LABEL"
    created_col = header.index("CREATED")
    expires_col = header.index("EXPIRES")
    assert first.index("2023-11-14 22:13:35Z") == created_col, text
    assert second.index("2023-11-14 22:14:35Z") == created_col, text
    assert second.index("2023-11-15 22:13:35Z") == expires_col, text
    assert first[expires_col:].startswith("never"), text


def test_devices_lists_line_up(store: SqliteCredentialStore):
    store.remember("alice", "192.0.2.1", "K-9", 3600, T0)
    store.remember("alice", "2001:db8:abcd:1234::1", "Thunderbird on the kitchen laptop", 3600, T0)
    code, text = admin.devices_list(store, "alice", now=T0 + 120)
    assert code == 0
    header, *rows = text.splitlines()
    seen = header.index("LAST SEEN")
    assert {row.index("2023-11-14 22:13:35Z") for row in rows} == {seen}, text
    store.note_device("alice", "203.0.113.9", "iPhone Mail", T0)
    code, text = admin.devices_pending(store, "alice", now=T0 + 150)
    header, row, hint = text.splitlines()
    assert row.index("2023-11-14 22:13:35Z") == header.index("FIRST SEEN"), text
    assert hint.startswith("Approve one with:")


def test_table_right_aligns_number_columns_and_cuts_trailing_space():
    text = table(["ID", "NAME", "NOTE"], [["7", "a", ""], ["1234", "bbbbbb", "x"]], right=[0])
    assert text.splitlines() == ["  ID  NAME    NOTE", "   7  a", "1234  bbbbbb  x"]


def test_sessions_and_bans_tables_line_up():
    now = T0 + 3600
    sessions = [
        {"id": "s1", "user": "al", "client_ip": "192.0.2.1", "client_port": 1, "listener": "l",
         "started": T0, "factor": "none", "bytes_in": 5, "bytes_out": 70000, "state": "x"},
        {"id": "session-two", "user": "a-much-longer-user@example.org", "client_ip": "2001:db8::1",
         "client_port": 65000, "listener": "127.0.0.1:993", "started": T0, "factor": "totp",
         "bytes_in": 123456, "bytes_out": 1, "state": "authenticated"},
    ]
    header, *rows = format_sessions(sessions, now).splitlines()
    assert {r.index("1h") for r in rows} == {header.index("AGE")}
    bans = [{"network": n, "scope": "ip", "reason": r, "source": "admin", "created": T0,
             "expires": T0 + 7200} for n, r in (("192.0.2.7/32", "x"),
                                                  ("2001:db8::/64", "a long reason"))]
    header, *rows = format_bans(bans, now).splitlines()
    assert {r.index("1h ago") for r in rows} == {header.index("CREATED")}


def test_json_times_are_rfc3339_utc_strings():
    assert rfc3339(T0) == "2023-11-14T22:13:35Z"
    assert rfc3339(None) is None
    assert datetime.fromisoformat(rfc3339(T0 + 0.9)).timestamp() == T0  # type: ignore[arg-type]
    payload = {"bans": [{"network": "192.0.2.0/24", "created": T0, "expires": T0 + 60,
                         "reason": "admin"}],
               "sessions": [{"id": "x", "started": T0, "bytes_in": 5, "user": None}],
               "ts": "2023-11-14T22:13:35.5Z", "until": None, "expired": False}
    assert json_times(payload) == {
        "bans": [{"network": "192.0.2.0/24", "created": "2023-11-14T22:13:35Z",
                  "expires": "2023-11-14T22:14:35Z", "reason": "admin"}],
        "sessions": [{"id": "x", "started": "2023-11-14T22:13:35Z", "bytes_in": 5,
                      "user": None}],
        "ts": "2023-11-14T22:13:35.5Z", "until": None, "expired": False}
