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

A SQLite registry file is created whole or not at all: the schema is written to a temporary
file that is then hard-linked into place, and every later connection opens it with
``mode=rw``, which never creates a file. So a registry file that exists but is empty, holds
no Kiln tables, or is not a database at all was damaged (or written by something else), and
opening it raises `RegistryCorrupted` instead of starting a new registry over it: a new,
empty registry would make every artifact blob look unreferenced to `gc`.
"""

from __future__ import annotations

import os
import random
import secrets
import sqlite3
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DatabaseError, OperationalError

from kiln.errors import (
    InvalidArgument,
    RegistryBusy,
    RegistryCorrupted,
    RegistryUnavailable,
    Unavailable,
)
from kiln.registry import schema
from kiln.registry.blobs import fsync_dir

T = TypeVar("T")

_WRITE = "kiln_write"
_SINGLE = "kiln_single_statement"
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_SQLITE_CORRUPT = 11
_SQLITE_CANTOPEN = 14
_SQLITE_NOTADB = 26
CONNECT_TIMEOUT_S = 10
"""How long opening a connection to a database server may take before it is an error."""
# PostgreSQL SQLSTATEs: a conflict with another transaction, worth retrying like SQLite's busy.
_RETRIED_STATES = frozenset({"40001", "40P01", "55P03"})
# ... and the connection's failures: refused, lost, no such database, authentication.
_CONNECTION_STATES = frozenset(
    {
        "08000",
        "08001",
        "08003",
        "08004",
        "08006",
        "3D000",
        "28000",
        "28P01",
        "57P01",
        "57P02",
        "57P03",
    }
)
_WAL_HEADER_BYTES = 32  # a write-ahead log this long or shorter holds no transactions
# The tables of schema version 1; later versions add to them (see schema.MIGRATIONS).
_CORE_TABLES = frozenset({"schema_version", "models", "versions", "artifacts", "aliases"})


class Database:
    """A SQLAlchemy engine (`db`) plus retrying read and write transactions."""

    def __init__(
        self, url: str, *, busy_timeout_s: float = 5.0, retry_budget_s: float = 120.0
    ) -> None:
        try:
            self.url = sa.engine.make_url(url)
        except sa.exc.ArgumentError:
            raise InvalidArgument(
                "the registry URL is not a database URL: use sqlite:///PATH or "
                "postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE (KILN_REGISTRY_URL)"
            ) from None
        backend = self.url.get_backend_name()
        self.is_sqlite = backend == "sqlite"
        if backend not in ("sqlite", "postgresql"):
            raise InvalidArgument(
                f"the registry URL {self.url.render_as_string(hide_password=True)} names a "
                f"{backend} database: "
                "Kiln's registry runs on SQLite (sqlite:///PATH) or PostgreSQL "
                "(postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE)"
            )
        self.retry_budget_s = retry_budget_s
        self._lock_ms = int(busy_timeout_s * 1000)
        """How long one attempt waits for the write lock (SQLite's busy timeout, PostgreSQL's
        lock_timeout)."""
        self.file = _sqlite_file(self.url)
        """The SQLite database file, when the registry is one (None for a server database)."""
        engine_url = self.url
        if self.file is not None:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            engine_url = _existing_only(self.url, self.file)
        options: dict[str, Any] = {}
        if backend == "postgresql":
            # A server that is down or unreachable is an error in seconds, never a hang; a
            # pooled connection the server closed (a restart) is replaced, not handed out.
            options = {
                "connect_args": {"connect_timeout": CONNECT_TIMEOUT_S},
                "pool_pre_ping": True,
            }
        try:
            self.db: Engine = sa.create_engine(engine_url, **options)
            """The SQLAlchemy engine: connection pool and dialect (not an inference engine)."""
        except ModuleNotFoundError as exc:
            raise Unavailable(
                f"the registry {self.shown} needs the {exc.name} database driver, which is not "
                "installed: Kiln uses psycopg 3 (postgresql+psycopg://...), pip install "
                "'kiln[postgres]'"
            ) from None
        except sa.exc.NoSuchModuleError:
            raise InvalidArgument(
                f"the registry URL {self.shown} names a database Kiln does not know: use "
                "sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST:PORT/DATABASE"
            ) from None
        if self.is_sqlite:
            _tune_sqlite(self.db, busy_timeout_ms=self._lock_ms)

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

    @property
    def shown(self) -> str:
        """The database as messages name it: the file relative to the working directory when
        it is below it, else as given; a server URL without its password."""
        if self.file is None:
            return self.url.render_as_string(hide_password=True)
        try:
            return str(self.file.relative_to(Path.cwd()))
        except (ValueError, OSError):
            return str(self.file)

    def ensure_schema(self) -> None:
        """Create the tables or bring them forward; cheap when they are current.

        Raises `RegistryCorrupted` for an existing SQLite file that is not a whole registry,
        `RegistryIncompatible` for one written by a newer Kiln.
        """
        if self.file is not None:
            self._create_file_if_absent(self.file)
            self._inspect_file(self.file)
        current = self.read(_schema_version)
        if current != schema.SCHEMA_VERSION:
            # The lock row may not exist yet: creation is serialised by BEGIN IMMEDIATE on
            # SQLite and by a transaction-scoped advisory lock on PostgreSQL.
            self._run(_create_or_migrate, write=True, snapshot=True, lock_row=False)

    def dispose(self) -> None:
        self.db.dispose()

    def check_integrity(self, conn: Connection) -> None:
        """Raise `RegistryCorrupted` unless SQLite's quick check of every page passes.

        Linear in the database size (milliseconds for a registry): for operations that act
        on what the database says is *absent*, like `gc`, where a damaged page would read as
        "not referenced". A no-op on other databases.
        """
        if not self.is_sqlite:
            return
        problems = [str(r[0]) for r in conn.exec_driver_sql("PRAGMA quick_check(5)")]
        if problems != ["ok"]:
            raise self._damaged(f"is damaged (SQLite's quick check: {'; '.join(problems)})")

    def _damaged(self, what: str, *, foreign: bool = False) -> RegistryCorrupted:
        where = "point KILN_HOME or KILN_REGISTRY_URL at the right registry, " if foreign else ""
        return RegistryCorrupted(
            f"the registry database {self.shown} {what}. Kiln will not start a new registry "
            "over it (every artifact it indexed would look unreferenced): "
            f"{where}restore it from a backup, or move it aside (a new registry is created "
            "where none exists) and re-import your versions with kiln models import BUNDLE"
        )

    def _create_file_if_absent(self, path: Path) -> None:
        """Create the registry file with its schema in one step, unless it exists."""
        if path.exists():
            return
        wal = path.with_name(f"{path.name}-wal")
        if wal.is_file() and wal.stat().st_size > _WAL_HEADER_BYTES:
            raise RegistryCorrupted(
                f"the registry database {self.shown} is missing, but its write-ahead log "
                f"{self.shown}-wal holds transactions: the database was deleted or moved "
                "without it. Put the database back beside it, or restore it from a backup; "
                f"to start a new registry instead, delete {self.shown}-wal and "
                f"{self.shown}-shm (kiln models import BUNDLE re-imports exported versions)"
            )
        partial = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.partial")
        try:
            # A plain engine: no WAL yet (the file must be whole on its own when linked), and
            # the tuned engine's mode=rw could not create it anyway.
            maker = sa.create_engine(sa.engine.URL.create("sqlite", database=str(partial)))
            try:
                with maker.begin() as conn:
                    schema.ensure_schema(conn)
            finally:
                maker.dispose()
            with partial.open("rb") as done:
                os.fsync(done.fileno())
            try:
                os.link(partial, path)  # fails if another process created it first: use theirs
            except FileExistsError:
                pass
            except OSError:
                # No hard links on this file system: a rename, which could only replace a
                # registry created in the last few milliseconds by a concurrent first open.
                if not path.exists():
                    os.replace(partial, path)
            fsync_dir(path.parent)
        finally:
            partial.unlink(missing_ok=True)
            Path(f"{partial}-journal").unlink(missing_ok=True)

    def _inspect_file(self, path: Path) -> None:
        """Refuse a file that is not a whole Kiln registry, reading it only: the tuned engine
        would switch a foreign database to WAL mode, writing to it."""
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise self._damaged("disappeared while it was being opened") from None
        if size == 0:
            raise self._damaged(
                "is empty (0 bytes): it was truncated or replaced (Kiln creates it whole)"
            )
        uri = f"file:{urllib.parse.quote(str(path))}?mode=ro"
        try:
            conn = sqlite3.connect(uri, uri=True)
        except sqlite3.Error as exc:
            raise (self._translate(exc) or exc) from None
        try:
            tables = {
                str(row[0])
                for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
            if schema.schema_version.name not in tables:
                raise self._damaged(
                    "holds no Kiln registry (it has no schema_version table)", foreign=True
                )
            missing = sorted(_CORE_TABLES - tables)
            if missing:
                raise self._damaged(f"is damaged: its tables {', '.join(missing)} are missing")
            if conn.execute("SELECT count(*) FROM schema_version").fetchone()[0] != 1:
                raise self._damaged("is damaged: its schema_version table has lost its row")
        except sqlite3.Error as exc:
            raise (self._translate(exc) or exc) from None
        finally:
            conn.close()

    def _translate(self, exc: BaseException | None) -> BaseException | None:
        """What a driver error means to the user: damage is `RegistryCorrupted`."""
        code = _sqlite_code(exc)
        if code == _SQLITE_NOTADB:
            return self._damaged(
                "is not an SQLite database: it was overwritten or its header is damaged"
            )
        if code == _SQLITE_CORRUPT:
            return self._damaged(
                "is damaged (SQLite: database disk image is malformed; a truncated copy looks "
                f"like this). sqlite3 {self.shown} .recover may save part of it"
            )
        if code == _SQLITE_CANTOPEN and self.file is not None and not self.file.exists():
            return self._damaged("was deleted or moved while Kiln was using it")
        return exc

    def _run(
        self, work: Callable[[Connection], T], *, write: bool, snapshot: bool, lock_row: bool
    ) -> T:
        deadline = time.monotonic() + self.retry_budget_s
        delay = 0.005
        while True:
            try:
                with self.db.connect() as conn:
                    if write:
                        conn.execution_options(**{_WRITE: True})
                    elif not snapshot:
                        conn.execution_options(**{_SINGLE: True})
                    with conn.begin():
                        if lock_row and not self.is_sqlite:
                            # As SQLite's busy timeout: wait this long for the lock, then
                            # retry the whole unit of work (55P03), up to the retry budget.
                            conn.exec_driver_sql(f"SET LOCAL lock_timeout = {self._lock_ms}")
                            conn.execute(
                                sa.select(schema.schema_version.c.id).with_for_update()
                            ).all()
                        return work(conn)
            except DatabaseError as exc:
                if not self.is_sqlite and _unreachable(exc):
                    raise RegistryUnavailable(
                        f"cannot use the registry database {self.shown}: "
                        f"{_first_line(exc.orig)}; check that the server runs, that the "
                        "database exists and that KILN_REGISTRY_URL names it"
                    ) from None
                if not (isinstance(exc, OperationalError) and _is_busy(exc)):
                    translated = self._translate(exc.orig)
                    if translated is exc.orig or translated is None:
                        raise
                    raise translated from exc
                if time.monotonic() + delay > deadline:
                    raise RegistryBusy(
                        f"the registry at {self.shown} "
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
    """The schema version; None for a database without Kiln's tables (a server database's
    first use: SQLite files were inspected before, see `Database._inspect_file`)."""
    if not sa.inspect(conn).has_table(schema.schema_version.name):
        return None
    value: int | None = conn.execute(sa.select(schema.schema_version.c.version)).scalar()
    return value


def _sqlite_file(url: sa.engine.URL) -> Path | None:
    """The file of a SQLite URL; None for memory and for URI-mode URLs (taken as given)."""
    if url.get_backend_name() != "sqlite":
        return None
    database = url.database or ""
    if database in ("", ":memory:") or str(url.query.get("uri", "")).lower() in ("true", "1"):
        return None
    return Path(database).absolute()


def _existing_only(url: sa.engine.URL, path: Path) -> sa.engine.URL:
    """`url` opening `path` with ``mode=rw``: SQLite then refuses a missing file instead of
    creating an empty one (which would later pass for a registry that lost everything)."""
    return url.set(
        database=f"file:{urllib.parse.quote(str(path))}",
        query={**url.query, "mode": "rw", "uri": "true"},
    )


def _sqlite_code(exc: BaseException | None) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else int(code) & 0xFF


def _unreachable(exc: DatabaseError) -> bool:
    """A server database that refused or lost the connection (not a lock conflict)."""
    if not isinstance(exc, OperationalError) or _is_busy(exc):
        return False
    return getattr(exc.orig, "sqlstate", None) in (None, *_CONNECTION_STATES)


def _first_line(exc: BaseException | None) -> str:
    text = str(exc).strip().splitlines()
    return text[0].strip() if text else "no answer"


def _is_busy(exc: OperationalError) -> bool:
    orig = exc.orig
    if getattr(orig, "sqlstate", None) in _RETRIED_STATES:
        return True
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
