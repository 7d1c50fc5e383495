"""The registry's database connection: SQLite tuned for many processes, any SQLAlchemy URL.

Every unit of work runs through `Database.read` or `Database.write`, which retry when the
database is busy, so "database is locked" never reaches a user:

- SQLite runs in WAL mode: readers never block the writer nor each other.
- A write transaction starts with ``BEGIN IMMEDIATE``: it takes the write lock up front, so two
  writers never both read ``next_version`` and then collide on commit (a deferred transaction
  upgrading to a write lock fails with SQLITE_BUSY immediately, without waiting).
- Each connection waits up to `busy_timeout_s` for a lock; past that the whole unit of work is
  retried with jittered backoff until `retry_budget_s` is spent, then `RegistryBusy` is raised.

Other databases (PostgreSQL) get the same serialisation of writers by locking the single
`schema_version` row at the start of every write transaction.
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError

from kiln.errors import RegistryBusy
from kiln.registry import schema

T = TypeVar("T")

_WRITE = "kiln_write"
_SINGLE = "kiln_single_statement"
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6


class Database:
    """A SQLAlchemy engine plus retrying read and write transactions."""

    def __init__(
        self, url: str, *, busy_timeout_s: float = 5.0, retry_budget_s: float = 120.0
    ) -> None:
        self.url = sa.engine.make_url(url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        self.retry_budget_s = retry_budget_s
        if self.is_sqlite and self.url.database and self.url.database != ":memory:":
            Path(self.url.database).parent.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = sa.create_engine(self.url)
        if self.is_sqlite:
            _tune_sqlite(self.engine, busy_timeout_ms=int(busy_timeout_s * 1000))

    def read(self, work: Callable[[Connection], T], *, snapshot: bool = True) -> T:
        """Run `work` in a read transaction (one consistent snapshot) and return its result.

        `snapshot=False` skips the explicit BEGIN on SQLite: for work whose answer comes from
        one statement (each statement is atomic on its own), it saves a round trip on the
        hottest path, alias resolution.
        """
        return self._run(work, write=False, snapshot=snapshot, lock_row=False)

    def write(self, work: Callable[[Connection], T]) -> T:
        """Run `work` in a write transaction holding the database's write lock; commit.

        `work` may run more than once (when the database was busy), so it must not have
        effects outside the transaction that a second run would duplicate.
        """
        return self._run(work, write=True, snapshot=True, lock_row=True)

    def ensure_schema(self) -> None:
        """Create the tables or bring them forward; cheap when they are current."""
        current = self.read(_schema_version)
        if current != schema.SCHEMA_VERSION:
            # The lock row may not exist yet: creation is serialised by BEGIN IMMEDIATE on
            # SQLite and by a transaction-scoped advisory lock on PostgreSQL.
            self._run(_create_or_migrate, write=True, snapshot=True, lock_row=False)

    def dispose(self) -> None:
        self.engine.dispose()

    def _run(
        self, work: Callable[[Connection], T], *, write: bool, snapshot: bool, lock_row: bool
    ) -> T:
        deadline = time.monotonic() + self.retry_budget_s
        delay = 0.005
        while True:
            try:
                with self.engine.connect() as conn:
                    if write:
                        conn.execution_options(**{_WRITE: True})
                    elif not snapshot:
                        conn.execution_options(**{_SINGLE: True})
                    with conn.begin():
                        if lock_row and not self.is_sqlite:
                            conn.execute(
                                sa.select(schema.schema_version.c.id).with_for_update()
                            ).all()
                        return work(conn)
            except OperationalError as exc:
                if not _is_busy(exc):
                    raise
                if time.monotonic() + delay > deadline:
                    raise RegistryBusy(
                        f"the registry at {self.url.render_as_string(hide_password=True)} "
                        f"stayed locked by other processes for {self.retry_budget_s:.0f} s; "
                        "retry when the other writers are done"
                    ) from exc
                # Jitter keeps processes that collided once from colliding again in lockstep.
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 0.25)


def insert_row(conn: Connection, statement: sa.Insert) -> int:
    """Execute a one-row INSERT and return the new row's integer primary key."""
    key = conn.execute(statement).inserted_primary_key
    assert key is not None  # every registry table has an integer primary key
    return int(key[0])


def _create_or_migrate(conn: Connection) -> int:
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(7403772)"))  # any fixed key
    return schema.ensure_schema(conn)


def _schema_version(conn: Connection) -> int | None:
    if not sa.inspect(conn).has_table(schema.schema_version.name):
        return None
    value: int | None = conn.execute(sa.select(schema.schema_version.c.version)).scalar()
    return value


def _is_busy(exc: OperationalError) -> bool:
    orig = exc.orig
    code = getattr(orig, "sqlite_errorcode", None)
    if isinstance(orig, sqlite3.OperationalError) and code is not None:
        return code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
    text = str(orig).lower()
    return "database is locked" in text or "database table is locked" in text


def _tune_sqlite(engine: Engine, *, busy_timeout_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy emit BEGIN (below) instead of the sqlite3 module's legacy guesswork.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
            cursor.execute("PRAGMA foreign_keys = ON")
            (mode,) = cursor.execute("PRAGMA journal_mode").fetchone()
            if str(mode).lower() != "wal":
                cursor.execute("PRAGMA journal_mode = WAL")
            # FULL: a committed registration survives power loss, not only a process crash.
            cursor.execute("PRAGMA synchronous = FULL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        options = conn.get_execution_options()
        if options.get(_WRITE, False):
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        elif not options.get(_SINGLE, False):
            conn.exec_driver_sql("BEGIN")
        # else: autocommit; the later ROLLBACK is a no-op without a transaction
