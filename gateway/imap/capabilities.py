"""Which commands each IMAP capability brings, and which capabilities a client may see.

Rules of this module:

1. One table says which commands a capability adds (:data:`EXTENSION_COMMANDS`), and one
   says which capabilities add none (:data:`NO_COMMAND_CAPABILITIES`). Both the relay's
   list of commands it forwards and the capability list the client sees come from them,
   so the gateway never advertises a command it answers ``BAD Unknown command``: a
   capability that is in neither table (an extension the gateway does not know, e.g.
   ``URLAUTH``) is not shown to the client, and its commands are not relayed.
2. Pure functions of strings; no I/O.

Why the relay forwards only commands the backend announced: a command the backend does not
know is answered ``BAD`` without reading its arguments, so a forwarded literal would never be
read (the relay waits for the backend's ``+``, so that costs a round trip, not safety).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

__all__ = [
    "BASE_COMMANDS",
    "DEFAULT_COMMANDS",
    "EXTENSION_COMMANDS",
    "NO_COMMAND_CAPABILITIES",
    "client_capabilities",
    "commands_for_capabilities",
]

#: Answered by the gateway itself whatever the backend offers.
GATEWAY_COMMANDS: Final = frozenset({"CAPABILITY", "COMPRESS", "STARTTLS", "LOGIN", "AUTHENTICATE"})
#: RFC 3501 commands every IMAP4rev1 backend implements.
BASE_COMMANDS: Final = GATEWAY_COMMANDS | frozenset(
    """APPEND CHECK CLOSE COPY CREATE DELETE EXAMINE EXPUNGE FETCH LIST LOGOUT LSUB NOOP
    RENAME SEARCH SELECT STATUS STORE SUBSCRIBE UNSUBSCRIBE""".split()
    + ["UID COPY", "UID FETCH", "UID SEARCH", "UID STORE"]
)
#: Extension commands, by the capability that announces them (a key ending in "=" matches
#: every capability with that prefix).
EXTENSION_COMMANDS: Final[dict[str, tuple[str, ...]]] = {
    "IDLE": ("IDLE",),
    "NAMESPACE": ("NAMESPACE",),
    "UNSELECT": ("UNSELECT",),
    "ID": ("ID",),
    "ENABLE": ("ENABLE",),
    "MOVE": ("MOVE", "UID MOVE"),
    "UIDPLUS": ("UID EXPUNGE",),
    "SORT": ("SORT", "UID SORT"),
    "THREAD=": ("THREAD", "UID THREAD"),
    "CONTEXT=": ("CANCELUPDATE",),  # RFC 5267: CONTEXT=SEARCH, CONTEXT=SORT
    "QUOTA": ("GETQUOTA", "GETQUOTAROOT", "SETQUOTA"),
    "ACL": ("GETACL", "SETACL", "DELETEACL", "LISTRIGHTS", "MYRIGHTS"),
    "METADATA": ("GETMETADATA", "SETMETADATA"),
    "METADATA-SERVER": ("GETMETADATA", "SETMETADATA"),
    "NOTIFY": ("NOTIFY",),
    "REPLACE": ("REPLACE", "UID REPLACE"),
    "XLIST": ("XLIST",),
    "IMAP4REV2": ("IDLE", "NAMESPACE", "UNSELECT", "ENABLE", "MOVE", "UID MOVE", "UID EXPUNGE"),
}
#: Capabilities that change what existing commands accept or return, and add no command.
NO_COMMAND_CAPABILITIES: Final = frozenset(
    """IMAP4REV1 LITERAL+ LITERAL- SASL-IR LOGIN-REFERRALS MAILBOX-REFERRALS MULTIAPPEND
    CATENATE URL-PARTIAL CHILDREN LIST-EXTENDED LIST-STATUS LIST-MYRIGHTS CONDSTORE QRESYNC
    ESEARCH ESORT SEARCHRES WITHIN BINARY SPECIAL-USE CREATE-SPECIAL-USE PREVIEW SAVEDATE
    OBJECTID UTF8=ACCEPT UTF8=ONLY""".split()
)
#: Prefixes of parametrised capabilities that add no command.
_NO_COMMAND_PREFIXES: Final = (
    "SORT=", "I18NLEVEL=", "APPENDLIMIT=", "SNIPPET=", "PREVIEW=", "STATUS=", "QUOTA=",
    "RIGHTS=", "SEARCH=", "UTF8=",
)
#: Never shown to a logged-in client: TLS and authentication are the gateway's business,
#: COMPRESS would blind the relay's parser, UNAUTHENTICATE would let a LOGIN reach the
#: backend past every policy (the relay refuses these commands itself).
_HIDDEN: Final = frozenset({"STARTTLS", "LOGINDISABLED", "UNAUTHENTICATE"})
_HIDDEN_PREFIXES: Final = ("AUTH=", "COMPRESS=")


def _extension_key(cap: str) -> str:
    head, eq, _ = cap.partition("=")
    return head + eq if eq and head + eq in EXTENSION_COMMANDS else cap


def commands_for_capabilities(caps: Iterable[str]) -> frozenset[str]:
    """The commands to relay for a backend with capabilities ``caps`` (its post-login list)."""
    out = set(BASE_COMMANDS)
    for cap in caps:
        out.update(EXTENSION_COMMANDS.get(_extension_key(cap.upper()), ()))
    if "UNAUTHENTICATE" in {c.upper() for c in caps}:
        out.add("UNAUTHENTICATE")  # known, so the relay can refuse it with a clear NO
    return frozenset(out)


def client_capabilities(caps: Iterable[str]) -> list[str]:
    """The backend's capabilities as the gateway may show them to a logged-in client: those
    whose commands the relay forwards (rule 1), minus :data:`_HIDDEN`. Order is kept."""
    out = []
    for cap in caps:
        up = cap.upper()
        if up in _HIDDEN or up.startswith(_HIDDEN_PREFIXES):
            continue
        if (up in NO_COMMAND_CAPABILITIES or up.startswith(_NO_COMMAND_PREFIXES)
                or _extension_key(up) in EXTENSION_COMMANDS):
            out.append(cap)
    return out


#: What Dovecot 2.3 offers by default (no quota/acl/metadata plugins).
DEFAULT_COMMANDS: Final = commands_for_capabilities(
    "IDLE NAMESPACE UNSELECT ID ENABLE MOVE UIDPLUS SORT THREAD=REFS NOTIFY CONTEXT=SEARCH"
    .split()
)
