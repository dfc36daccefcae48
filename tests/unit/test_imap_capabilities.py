"""The capability list a logged-in client sees, and the commands the relay forwards for it."""

from __future__ import annotations

from gateway.imap.capabilities import (
    EXTENSION_COMMANDS,
    client_capabilities,
    commands_for_capabilities,
)

#: Dovecot 2.3.19's post-login list (Debian 12), as the test rig's Dovecot sends it.
DOVECOT = (
    "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT SORT=DISPLAY THREAD=REFERENCES "
    "THREAD=REFS THREAD=ORDEREDSUBJECT MULTIAPPEND URL-PARTIAL CATENATE UNSELECT CHILDREN "
    "NAMESPACE UIDPLUS LIST-EXTENDED I18NLEVEL=1 CONDSTORE QRESYNC ESEARCH ESORT SEARCHRES "
    "WITHIN CONTEXT=SEARCH LIST-STATUS BINARY MOVE SNIPPET=FUZZY PREVIEW=FUZZY PREVIEW "
    "STATUS=SIZE SAVEDATE LITERAL+ NOTIFY COMPRESS=DEFLATE"
).split()


def _commands_of(cap: str) -> tuple[str, ...]:
    up = cap.upper()
    head, eq, _ = up.partition("=")
    return EXTENSION_COMMANDS.get(head + eq if eq and head + eq in EXTENSION_COMMANDS else up, ())


def test_every_command_of_every_capability_shown_is_relayed():
    shown = client_capabilities(DOVECOT)
    relayed = commands_for_capabilities(DOVECOT)
    assert "CONTEXT=SEARCH" in shown and "CANCELUPDATE" in relayed
    for cap in shown:
        assert set(_commands_of(cap)) <= relayed, cap
    assert shown == [c for c in DOVECOT if c != "COMPRESS=DEFLATE"]


def test_a_capability_the_gateway_does_not_know_is_not_shown():
    caps = ["IMAP4rev1", "URLAUTH", "X-DOVECOT-FOO", "UNAUTHENTICATE", "AUTH=PLAIN", "STARTTLS"]
    assert client_capabilities(caps) == ["IMAP4rev1"]
    relayed = commands_for_capabilities(caps)
    assert not {"GENURLAUTH", "URLFETCH", "RESETKEY"} & relayed
