"""Secret files: the TOTP key, the admin token, the Dovecot master password.

Rules of this module:
1. A secret file gives group and others no access at all (mode 0600 or narrower). The
   bits are checked rather than reading as another user: the check must hold whoever
   runs the gateway. A file that is empty (or holds only whitespace) is refused too: it
   is a mistake (a failed ``openssl rand > file``), never a secret.
2. A secret file the gateway creates is never visible half written or with a wider
   mode: it is written to a private temporary file next to it and then hard-linked into
   place. The link fails rather than replace a file that appeared in the meantime, so
   of two processes starting at once, one creates it and both use that one.
3. Errors name the file and say what to do; they never contain the file's content.
   Standard library only: the config, the store and the admin API all import this.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from pathlib import Path

#: A secret file holds one short value; anything larger is the wrong file.
MAX_SECRET_BYTES = 64 * 1024


class SecretFileError(Exception):
    """A secret file that must not be used: too open, empty, unreadable, not a file.

    ``str()`` is ``"<path> <problem>"``; callers that name the file their own way
    (``"TOTP key file <path>"``) use ``path`` and ``problem``.
    """

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path} {problem}")


class SecretTextError(Exception):
    """A one-line secret (``read_secret_text``) that cannot be used; the message says
    which config key, which file and what is wrong."""


def _check_stat(path: Path, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise SecretFileError(path, "is not a regular file")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        who = "others" if mode & 0o007 else "group"
        bits = mode & (0o007 if who == "others" else 0o070)
        verb = "readable" if bits & 0o044 else "accessible"
        raise SecretFileError(
            path, f"has mode {mode:04o}: must not be {verb} by {who}; chmod 600 {path}")
    if st.st_size == 0:
        raise SecretFileError(path, "is empty")
    if st.st_size > MAX_SECRET_BYTES:
        raise SecretFileError(
            path, f"is larger than {MAX_SECRET_BYTES // 1024} KiB: not a secret file")


def check_secret_file(path: str | os.PathLike[str]) -> None:
    """Refuse ``path`` if group or others have any access to it, or if it is empty.

    Does not read the file (the config checks its secret files this way and keeps only
    the path). Raises ``FileNotFoundError`` when it does not exist, ``SecretFileError``
    for everything else.
    """
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise SecretFileError(
            p, f"cannot be read: {exc.strerror}; check its owner and mode") from None
    _check_stat(p, st)


def read_secret_file(path: str | os.PathLike[str]) -> bytes:
    """The content of secret file ``path``, after the checks of ``check_secret_file``.

    The mode is checked on the opened file (no race between check and read), and
    content that is only whitespace counts as empty. Raises ``FileNotFoundError`` when
    the file does not exist (callers decide whether that is an error) and
    ``SecretFileError`` for everything else.
    """
    p = Path(path)
    try:
        # O_NONBLOCK: a FIFO put in the file's place must not hang the gateway here.
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise SecretFileError(
            p, f"cannot be read: {exc.strerror}; check its owner and mode") from None
    with os.fdopen(fd, "rb") as f:
        _check_stat(p, os.fstat(f.fileno()))
        data = f.read(MAX_SECRET_BYTES + 1)
    if not data.strip():
        raise SecretFileError(p, "is empty")
    return data


def read_secret_text(path: str | os.PathLike[str], where: str) -> str:
    """The one-line UTF-8 secret in ``path`` (a password or token), trailing newline cut.

    Every failure, a missing file included, raises ``SecretTextError`` whose message
    starts with ``where`` (the config key the path came from), for callers that turn it
    into their own startup or store error.
    """
    try:
        data = read_secret_file(path)
    except SecretFileError as exc:
        raise SecretTextError(f"{where}: {exc}") from None
    except OSError as exc:
        raise SecretTextError(f"{where}: cannot read {path}: {exc.strerror}") from None
    try:
        return data.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise SecretTextError(f"{where}: {path} is not UTF-8 text") from None


def create_secret_file(path: str | os.PathLike[str], data: bytes) -> bool:
    """Create ``path`` holding ``data``, mode 0600, its directory 0700 if it is new.

    Returns False, writing nothing, when ``path`` exists already (whoever made it
    first wins; read it). Never replaces a file. OSError for anything else.
    """
    p = Path(path)
    p.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, p)
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP):
                raise
            # A file system without hard links: create in place, exclusively. A
            # concurrent reader may then see the file before it is complete.
            return _create_in_place(p, data)
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _create_in_place(path: Path, data: bytes) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return True
