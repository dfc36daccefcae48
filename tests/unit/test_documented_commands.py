"""Every ``imap-gateway ...`` command the documentation shows is one the CLI accepts.

The README, docs/deploy.md, the example config, the shipped policy file and the systemd
unit are scanned for command lines (in code blocks, inline code and comments), the
placeholders they use are filled in, and each line goes through the real argument
parser. A renamed flag or sub-command then fails here, not in an administrator's shell.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from gateway.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
DOCUMENTS = [
    "README.md", "docs/deploy.md", "deploy/gateway.example.toml", "policies/99-default.toml",
    "policies/examples/README.md", "deploy/systemd/imap-gateway.service",
]
COMMANDS = ("check-config", "serve", "policy", "totp", "app-password", "devices", "users",
            "sessions", "bans", "events", "--config", "--json")
_COMMAND_RE = re.compile(
    # a command ends at a backtick, a comment, the end of the line or two spaces (a
    # second command or a comment follows)
    r"(?:^|[\s`/])imap-gateway ((?:" + "|".join(map(re.escape, COMMANDS))
    + r")\b(?:[^\s`#]|[ \t](?![ \t\n]))*)", re.M)
#: Placeholders the documents use for values, and a value of the right shape.
PLACEHOLDERS = {"K": "login", "U": "alice", "A": "192.0.2.0/24", "ID": "1", "F": "gateway.toml",
                "FILE": "gateway.toml", "CODE": "123456", "USER": "alice"}


def documented_commands() -> list[tuple[str, str]]:
    found = []
    for name in DOCUMENTS:
        text = re.sub(r"\s*\\\n\s*", " ", (REPO / name).read_text())  # join continued lines
        for match in _COMMAND_RE.finditer(text):
            command = match.group(1).strip()
            if "..." not in command:
                found.append((name, command))
    return found


def test_the_documents_show_the_commands_an_administrator_needs():
    shown = {c.split()[0] for _, c in documented_commands()}
    assert {"check-config", "serve", "policy", "totp", "app-password", "devices", "users",
            "sessions", "bans", "events", "--config"} <= shown, shown


@pytest.mark.parametrize(("document", "command"), documented_commands())
def test_documented_command_is_accepted_by_the_cli(document: str, command: str):
    argv = [PLACEHOLDERS.get(word, word)
            for word in shlex.split(command.replace("[", "").replace("]", ""))]
    try:
        args = build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"{document}: `imap-gateway {command}` is refused by the CLI")
    assert callable(args.func)
