"""Post-login anomalies through the real gateway: a session pulling a whole mailbox
(``high_volume_fetch``) and a session deleting many messages (``mass_delete``).

Mailboxes are filled directly in Dovecot (``dovecot.populate``) under names unique to
the test, because the session's Dovecot is shared with every other e2e test.
"""

from __future__ import annotations

import imaplib
import uuid

import pytest

from tests.support.attack import fast_limits, metrics_on, quiet_anomalies
from tests.support.imap import imaps
from tests.support.scrape import anomalies_counted

pytestmark = pytest.mark.e2e

# The relay reports backend->client bytes to the detector in 1 MiB steps
# (gateway.proxy.relay.BYTES_REPORT_INTERVAL), so the fetch must exceed 1 MiB to be seen.
MESSAGES, SIZE = 24, 64 * 1024


def test_high_volume_fetch_of_a_whole_mailbox(gateway, dovecot):
    threshold = 512 * 1024
    gw = gateway(limits=fast_limits(), anomaly=quiet_anomalies(high_volume_fetch_bytes=threshold),
                 metrics=metrics_on())
    box = f"hv-{uuid.uuid4().hex[:8]}"
    assert dovecot.populate("carol", box, MESSAGES, SIZE, tag=box) == MESSAGES
    m = imaps(gw, source="127.0.2.90")
    port = m.sock.getsockname()[1]
    assert m.login("carol", "carolpass")[0] == "OK"
    assert m.select(box, readonly=True)[0] == "OK"
    typ, data = m.fetch("1:*", "(BODY.PEEK[])")
    assert typ == "OK"
    fetched = sum(len(part[1]) for part in data if isinstance(part, tuple))
    assert fetched == MESSAGES * SIZE

    events = [gw.wait_for_event("anomaly", kind="high_volume_fetch", evidence_scope=scope)
              for scope in ("session", "user")]
    m.logout()
    sid = gw.session_id_for(port)
    for e in events:
        assert e["user"] == "carol" and e["ip"] == "127.0.2.90"
        assert threshold <= e["evidence_bytes"] <= fetched + 64 * 1024  # + protocol overhead
        assert e["action"] == "logged"
        assert e["session_id"] == sid  # the log line is joinable with the session
    assert events[0]["evidence_session_id"] == sid
    assert len(gw.events("anomaly", kind="high_volume_fetch")) == 2  # once per subject
    assert anomalies_counted(gw, "high_volume_fetch") == 2


def test_fetch_below_the_threshold_is_not_high_volume(gateway, dovecot):
    """Control: the same 1.5 MiB fetch (so the relay does report bytes to the detector)
    under a 3 MiB threshold raises nothing."""
    gw = gateway(limits=fast_limits(),
                 anomaly=quiet_anomalies(high_volume_fetch_bytes=3 * 1024 * 1024),
                 metrics=metrics_on())
    box = f"hv-{uuid.uuid4().hex[:8]}"
    dovecot.populate("carol", box, MESSAGES, SIZE, tag=box)
    m = imaps(gw, source="127.0.2.91")
    assert m.login("carol", "carolpass")[0] == "OK"
    assert m.select(box, readonly=True)[0] == "OK"
    assert m.fetch("1:*", "(BODY.PEEK[])")[0] == "OK"
    m.logout()
    end = gw.wait_for_event("session.end", user="carol")
    assert end["bytes_out"] > MESSAGES * SIZE
    assert gw.events("anomaly") == []
    assert anomalies_counted(gw, "high_volume_fetch") == 0


def test_mass_delete_by_store_deleted_and_expunge(gateway, dovecot):
    gw = gateway(limits=fast_limits(), anomaly=quiet_anomalies(mass_delete_messages=10),
                 metrics=metrics_on())
    box = f"del-{uuid.uuid4().hex[:8]}"
    assert dovecot.populate("bob", box, 15, 1024, tag=box) == 15
    m = imaps(gw, source="127.0.2.92")
    assert m.login("bob", "bobpass")[0] == "OK"
    assert m.select(box)[0] == "OK"
    # a first, small cleanup stays under the threshold
    assert m.store("1:4", "+FLAGS", "(\\Deleted)")[0] == "OK"
    typ, expunged = m.expunge()
    assert typ == "OK" and len(expunged) == 4, expunged
    assert gw.events("anomaly") == []
    # then the rest of the mailbox goes: 4 + 11 = 15 >= 10 within the window
    assert m.store("1:*", "+FLAGS", "(\\Deleted)")[0] == "OK"
    typ, expunged = m.expunge()
    assert typ == "OK" and len(expunged) == 11, expunged
    event = gw.wait_for_event("anomaly", kind="mass_delete")
    m.logout()
    assert event["user"] == "bob" and event["ip"] == "127.0.2.92"
    assert 10 <= event["evidence_messages"] <= 15
    assert event["action"] == "logged"
    assert len(gw.events("anomaly", kind="mass_delete")) == 1
    assert anomalies_counted(gw, "mass_delete") == 1


def test_mass_delete_counts_messages_moved_away(gateway, dovecot):
    """MOVE (RFC 6851) empties a mailbox as surely as EXPUNGE: the backend answers with
    EXPUNGE responses, and those count."""
    imaplib.Commands.setdefault("MOVE", ("SELECTED",))  # imaplib (3.11) lacks MOVE
    gw = gateway(limits=fast_limits(), anomaly=quiet_anomalies(mass_delete_messages=10),
                 metrics=metrics_on())
    box = f"mv-{uuid.uuid4().hex[:8]}"
    assert dovecot.populate("bob", box, 12, 1024, tag=box) == 12
    m = imaps(gw, source="127.0.2.94")
    assert m.login("bob", "bobpass")[0] == "OK"
    assert m.create(f"{box}-away")[0] == "OK"
    assert m.select(box)[0] == "OK"
    typ, data = m._simple_command("MOVE", "1:*", f"{box}-away")
    assert typ == "OK", data
    event = gw.wait_for_event("anomaly", kind="mass_delete")
    m.logout()
    assert event["user"] == "bob" and event["ip"] == "127.0.2.94"
    assert 10 <= event["evidence_messages"] <= 12
    assert anomalies_counted(gw, "mass_delete") == 1
