"""Open the credential store of either backend the same way, for tests that run on both.

``StoreOpener`` names one database (an SQLite file in tmp_path, or a fresh database in
the session's PostgreSQL) and one key file; calling it opens a store on them, as often
as a test likes (a reopen is a gateway restart; two open stores are two gateways).
``sql`` runs a raw statement in SQLite's spelling (what an attacker with database
access, or an operator with a SQL shell, could do); ``dump`` returns every byte the
database holds, to check that no secret is stored in clear.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from gateway.store import SqlCredentialStore, open_store

from .postgres import PostgresServer

BACKENDS = ("sqlite", "postgresql")


@dataclass
class StoreOpener:
    backend: str
    key: Path
    db_path: Path
    pg: PostgresServer | None = None
    database: str = ""
    password_file: Path | None = None

    @property
    def url(self) -> str:
        assert self.pg is not None
        return self.pg.url(self.database)

    def __call__(self, *, create_key: bool = False) -> SqlCredentialStore:
        if self.backend == "sqlite":
            self.db_path.parent.mkdir(parents=True, exist_ok=True)
            return open_store(self.db_path, self.key, create_key=create_key)
        from gateway.store.postgres import PostgresCredentialStore

        if create_key:
            self.key.parent.mkdir(parents=True, exist_ok=True)
        return PostgresCredentialStore(self.url, self.key, password_file=self.password_file,
                                       create_key=create_key)

    def sql(self, statement: str, params: tuple = ()) -> list[tuple]:
        """One raw statement (SQLite spelling), committed; its rows if it returns any."""
        if self.backend == "sqlite":
            conn = sqlite3.connect(self.db_path, isolation_level=None)
            try:
                cur = conn.execute(statement, params)
                return cur.fetchall() if cur.description else []
            finally:
                conn.close()
        import psycopg

        from gateway.store.postgres import translate

        assert self.pg is not None
        with psycopg.connect(self.pg.conninfo(self.database), autocommit=True) as conn:
            cur = conn.execute(translate(statement), params)
            return [tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)
                    for row in cur.fetchall()] if cur.description else []

    def dump(self) -> bytes:
        """Every byte stored: SQLite's files (main and WAL), or every row of every table."""
        if self.backend == "sqlite":
            d = self.db_path.parent
            return b"".join(p.read_bytes() for p in d.iterdir()
                            if p.name.startswith(self.db_path.name))
        tables = [r[0] for r in self.sql(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")]
        out = []
        for table in tables:
            for row in self.sql(f'SELECT * FROM "{table}"'):
                for value in row:
                    out.append(value if isinstance(value, bytes) else str(value).encode())
        return b"\n".join(out)


def make_opener(backend: str, tmp_path: Path, pg: PostgresServer | None) -> StoreOpener:
    key = tmp_path / "state" / "store.key"
    db = tmp_path / "state" / "gateway.db"
    if backend == "sqlite":
        return StoreOpener("sqlite", key, db)
    assert pg is not None
    return StoreOpener("postgresql", key, db, pg=pg, database=pg.new_database(),
                       password_file=pg.write_password_file(tmp_path / "pg.password"))


def pg_store_section(pg: PostgresServer, tmp_path: Path, database: str = "") -> dict[str, str]:
    """``[store]`` keys for a gateway on a (new) database of ``pg``; gateways given the same
    section share the database, the password file and the TOTP key file."""
    return {"url": pg.url(database or pg.new_database()),
            "password_file": str(pg.write_password_file(tmp_path / "pg.password")),
            "key_file": str(tmp_path / "shared-store.key")}


def gateway_store(config_path: Path) -> SqlCredentialStore:
    """The store a gateway's config names, opened as its admin CLI would."""
    from gateway.config import load_config
    from gateway.store import open_configured_store

    return open_configured_store(load_config(config_path).store)
