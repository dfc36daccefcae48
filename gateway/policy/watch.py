"""Decide when to reload the policy, and never trade a good policy for a broken one.

The trio shell owns timing (SIGHUP, a 2 s tick) and runs the file I/O in a worker
thread; this module owns the decision. Theory of operation:

- ``snapshot(dir)`` stats the policy files: ``(name, mtime_ns, size)`` per file, in
  load order. Cheap enough to run every 2 s.
- ``PolicyReloader.check(snapshot)`` compares it with the snapshot of the last load
  *attempt*. Unchanged: ``(None, None)``, nothing read. Changed: load the directory.
  A good load whose content fingerprint differs from the current policy returns
  ``(policy, None)``; a ``touch`` that changes nothing returns ``(None, None)``.
  A failed load returns ``(None, error)`` once and keeps ``current`` as it was;
  the same broken snapshot is not retried (no log spam every 2 s), the next edit is.
- ``force=True`` (SIGHUP) loads whatever the snapshot says and reports the result,
  even if unchanged, so an operator sees an answer to every SIGHUP.

Trap: a file edited between ``snapshot()`` and the load is read in its newer form;
the next tick sees a different snapshot and loads again, which is harmless.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from .engine import Policy
from .errors import PolicyError
from .loader import load_policy, policy_files


class FileStamp(NamedTuple):
    name: str
    mtime_ns: int
    size: int


Snapshot = tuple[FileStamp, ...]


def snapshot(dir: Path) -> Snapshot:
    """Stat the files load_policy would read. A missing directory is an empty snapshot
    (the following load reports it), so this never raises PolicyError."""
    try:
        files = policy_files(Path(dir))
    except PolicyError:
        return ()
    stamps = []
    for p in files:
        try:
            st = p.stat()
        except OSError:
            continue  # deleted between listing and stat: the load will notice
        stamps.append(FileStamp(p.name, st.st_mtime_ns, st.st_size))
    return tuple(stamps)


class PolicyReloader:
    """Holds the last good Policy of one directory; see the module docstring."""

    def __init__(self, dir: Path, current: Policy | None = None) -> None:
        self.dir = Path(dir)
        self.current: Policy | None = current
        self.last_error: PolicyError | None = None
        self._attempted: Snapshot | None = None

    def check(self, now_mtimes: Snapshot, *, force: bool = False) -> tuple[Policy | None, PolicyError | None]:
        """Reload if ``now_mtimes`` differs from the last attempt (or ``force``).

        Returns ``(new_policy, None)`` when the shell should swap policies,
        ``(None, error)`` when a reload failed (keep running on ``current``),
        ``(None, None)`` when there is nothing to do.
        """
        now_mtimes = tuple(now_mtimes)
        if not force and now_mtimes == self._attempted:
            return None, None
        self._attempted = now_mtimes
        try:
            policy = load_policy(self.dir)
        except PolicyError as exc:
            self.last_error = exc
            return None, exc
        self.last_error = None
        if not force and self.current is not None and policy.fingerprint == self.current.fingerprint:
            return None, None
        self.current = policy
        return policy, None
