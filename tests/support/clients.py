"""Real third-party IMAP clients driven as subprocesses: curl and mbsync (isync).

They matter because they are what users run: curl's SASL-IR AUTHENTICATE PLAIN and
--ssl-reqd STARTTLS, mbsync's pipelined UID FETCH of a whole mailbox.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def curl(url: str, *, user: str, password: str, cacert: Path, extra: list[str] | None = None,
         timeout: float = 30, config: str = "") -> subprocess.CompletedProcess:
    """``curl -sS --cacert CA -u user:pass URL``; the password goes via a config on stdin
    (``-K -``), not argv, so it never shows in the process list. ``config``: more lines
    for that config (e.g. ``oauth2-bearer = "<token>"``)."""
    exe = shutil.which("curl")
    assert exe, "curl is not installed (make deps)"
    cfg = f'user = "{user}:{password}"\n' + config
    return subprocess.run([exe, "-sS", "--max-time", str(int(timeout)), "--cacert", str(cacert),
                           "-K", "-", *(extra or []), url],
                          input=cfg.encode(), capture_output=True, timeout=timeout + 5)


def mbsync(workdir: Path, *, host: str, port: int, user: str, password: str, cacert: Path,
           mailbox: str, ssl_type: str = "IMAPS", timeout: float = 60
           ) -> tuple[subprocess.CompletedProcess, Path]:
    """Pull ``mailbox`` into a fresh local Maildir with mbsync; returns (process, maildir).

    The rc file holds the password, so it is written 0600 inside the test's temp dir.
    ``Host`` must be a DNS name matching the certificate: isync 1.4 checks DNS SANs only.
    """
    exe = shutil.which("mbsync")
    assert exe, "mbsync is not installed: apt-get install isync (make deps)"
    workdir.mkdir(parents=True, exist_ok=True)
    local = workdir / "Maildir"
    local.mkdir(exist_ok=True)
    rc = workdir / "mbsyncrc"
    rc.touch(mode=0o600)
    rc.write_text(f"""\
IMAPAccount remote
Host {host}
Port {port}
User {user}
Pass "{password}"
SSLType {ssl_type}
SSLVersions TLSv1.2 TLSv1.3
CertificateFile {cacert}
AuthMechs PLAIN
PipelineDepth 50

IMAPStore remote
Account remote

MaildirStore local
Path {local}/
Inbox {local}/INBOX
SubFolders Verbatim

Channel pull
Far :remote:{mailbox}
Near :local:{mailbox}
Create Near
Sync Pull
SyncState *
""")
    proc = subprocess.run([exe, "-c", str(rc), "pull"], capture_output=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    return proc, local / mailbox


def maildir_files(box: Path) -> list[Path]:
    """Message files of a local Maildir folder (cur/ and new/)."""
    return [p for sub in ("cur", "new") if (box / sub).is_dir() for p in (box / sub).iterdir()]
