"""Where the annotation store keeps its tables: one SQLite file (the embedded default), or a PostgreSQL database
shared by several app instances (`MT5_STUDIO_DB=postgresql://user:password@host:5432/database`).

The store (app.annotation.store) writes its SQL once, in the common subset of both: `?` placeholders, TEXT /
INTEGER / REAL columns, no dialect functions. A backend gives it connections whose `execute(sql, params)` returns
a cursor with `fetchone`/`fetchall`/`rowcount`, and rows readable by column name and by index, on either
database. What differs lives here and in a `Dialect`:

=====================  ==========================================  ===============================================
                       SQLite                                      PostgreSQL (psycopg 3)
=====================  ==========================================  ===============================================
connections            one per thread, WAL mode                    a small pool; a lost connection is replaced
write transaction      BEGIN IMMEDIATE (one writer per file)       BEGIN + a transaction-level advisory lock (one
                                                                   writer per database, across every process)
schema version         PRAGMA user_version                         table schema_version (one row)
DDL                    as written                                  REAL -> DOUBLE PRECISION; TEXT sorts as "C"
                                                                   (byte order, as SQLite's BINARY)
a number in JSON text  json_extract(col, '$.key')                  CAST(CAST(col AS jsonb) ->> 'key' AS DOUBLE
                                                                   PRECISION)
a broken constraint    IntegrityError (sqlite3's)                  IntegrityError (a subclass of sqlite3's)
text with NUL chars    stored as is                                escaped reversibly (PostgreSQL text has no NUL)
=====================  ==========================================  ===============================================

Serialising writes keeps every guarantee the SQLite store gives (a save is all-or-nothing; read-then-write code,
like the next version number of an edit history, never races), at the throughput of one writer: plenty for
people annotating. A write whose connection breaks raises DatabaseUnavailable to its caller, never passes
silently; the next one reconnects (for a few seconds, while a restarting server comes back).
"""
from __future__ import annotations

import contextlib
import functools
import re
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import psycopg
from psycopg import errors as pg_errors

URL_SCHEMES = ("postgresql://", "postgres://")
CONNECT_TIMEOUT_S = 5          # an unreachable server is reported within this (per address tried)
RECONNECT_S = 10.0             # a write or read waits this long for a restarting server before it fails
LOCK_TIMEOUT = "30s"           # as SQLite's busy timeout: a writer waits this long for the one before it
POOL_IDLE = 8                  # idle PostgreSQL connections kept per store
WRITE_LOCK_KEY = 0x6D7435       # pg_advisory_xact_lock key shared by every mT5 Studio store ("mt5")


def is_database_url(value: str | Path) -> bool:
    return isinstance(value, str) and value.strip().lower().startswith(URL_SCHEMES)


class DatabaseUnavailable(ConnectionError, ValueError):
    """The database server cannot be reached, or the connection broke during a read or write. The message says
    where, and whether the write was saved. Also a ValueError: every page handler that shows a refusal next to its
    button ("Not saved: …") shows this too, instead of Gradio's generic error."""


class IntegrityError(sqlite3.IntegrityError):
    """A broken constraint (duplicate id, failed CHECK) on PostgreSQL: a subclass of sqlite3's, so code that
    catches `sqlite3.IntegrityError` catches it on either backend."""


# ---------------------------------------------------------------------------------------------------------------
# Dialects: the few statements that differ, for the migration runner and the store.


class Dialect:
    name = ""

    def begin_write(self, conn: Any) -> None:
        raise NotImplementedError

    def version(self, conn: Any) -> int:
        raise NotImplementedError

    def set_version(self, conn: Any, version: int) -> None:
        raise NotImplementedError

    def ddl(self, statement: str) -> str:
        return statement

    def json_number(self, column: str, key: str) -> str:
        """SQL for the number under `key` of the JSON object in text `column` (NULL when absent)."""
        raise NotImplementedError

    @contextlib.contextmanager
    def write(self, conn: Any) -> Iterator[Any]:
        """One write transaction on `conn`: committed when the block ends, rolled back if it raises."""
        self.begin_write(conn)
        try:
            yield conn
        except BaseException:
            with contextlib.suppress(DatabaseUnavailable, sqlite3.Error):   # a broken link rolls back itself
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


class SQLiteDialect(Dialect):
    name = "sqlite"

    def begin_write(self, conn: Any) -> None:
        conn.execute("BEGIN IMMEDIATE")

    def version(self, conn: Any) -> int:
        return conn.execute("PRAGMA user_version").fetchone()[0]

    def set_version(self, conn: Any, version: int) -> None:
        conn.execute(f"PRAGMA user_version = {int(version)}")

    def ddl(self, statement: str) -> str:
        if "DROP COLUMN" in statement and sqlite3.sqlite_version_info < (3, 35):
            raise RuntimeError(f"this Python's SQLite {sqlite3.sqlite_version} cannot drop a column, which the "
                               "annotation database's next schema needs: use a Python built with SQLite 3.35 or "
                               "newer (nothing was changed)")
        return statement

    def json_number(self, column: str, key: str) -> str:
        return f"json_extract({column}, '$.{key}')"


class PostgresDialect(Dialect):
    name = "postgresql"

    def begin_write(self, conn: Any) -> None:
        conn.execute("BEGIN")
        conn.execute("SELECT pg_advisory_xact_lock(?)", (WRITE_LOCK_KEY,))

    def version(self, conn: Any) -> int:
        exists = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()[0]
        row = conn.execute("SELECT version FROM schema_version").fetchone() if exists else None
        return row[0] if row else 0

    def set_version(self, conn: Any, version: int) -> None:
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        conn.execute("DELETE FROM schema_version")
        conn.execute("INSERT INTO schema_version (version) VALUES (?)", (int(version),))

    def ddl(self, statement: str) -> str:
        # REAL is 4 bytes in PostgreSQL (8 in SQLite); TEXT compares by bytes in SQLite, by locale in PostgreSQL.
        statement = re.sub(r"\bREAL\b", "DOUBLE PRECISION", statement)
        return re.sub(r"\bTEXT\b", 'TEXT COLLATE "C"', statement)

    def json_number(self, column: str, key: str) -> str:
        return f"CAST(CAST({column} AS jsonb) ->> '{key}' AS DOUBLE PRECISION)"


SQLITE, POSTGRES = SQLiteDialect(), PostgresDialect()


# ---------------------------------------------------------------------------------------------------------------
# SQLite: a connection per thread (readers never wait for writers in WAL mode).


class Backend(Protocol):
    """What the store needs of a database, declared once: SQLiteBackend and PostgresBackend implement it.
    Connections run `execute(sql, params)` with `?` placeholders and return rows readable by name and index."""
    dialect: Dialect
    location: str             # for messages: the file, or the URL without its password

    def connection(self) -> contextlib.AbstractContextManager[Any]:
        """A connection for reads (and the migrations, which open their own write transactions)."""

    def write(self) -> contextlib.AbstractContextManager[Any]:
        """A connection inside one write transaction, serialised with every other writer of the database
        (across processes); committed when the block ends, rolled back when it raises."""

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """All rows of one query."""

    def integrity_check(self, tables: Sequence[str] = ()) -> str:
        """"ok", or what is wrong with the database."""

    def close(self) -> None:
        """Closes every connection it opened."""


class SQLiteBackend:
    dialect = SQLITE

    def __init__(self, path: Path):
        self.path = path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.location = str(path)
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._conns_lock = threading.Lock()

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a transaction is exactly what we say.
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode = WAL")
            # NORMAL in WAL mode: a commit survives a killed process; only a power cut can lose the last ones.
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            self._local.conn = conn
            with self._conns_lock:
                self._conns.append(conn)
        return conn

    @contextlib.contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        yield self._conn()

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        with self.dialect.write(self._conn()) as conn:
            yield conn

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return self._conn().execute(sql, params).fetchall()

    def integrity_check(self, tables: Sequence[str] = ()) -> str:
        return self._conn().execute("PRAGMA integrity_check").fetchone()[0]

    def close(self) -> None:
        with self._conns_lock:
            for conn in self._conns:
                conn.close()
            self._conns.clear()
        self._local = threading.local()


# ---------------------------------------------------------------------------------------------------------------
# PostgreSQL


@dataclass(frozen=True)
class PgTarget:
    """A checked PostgreSQL URL: where it points, for messages (never the password)."""
    url: str
    host: str
    port: int
    dbname: str
    user: str

    @property
    def shown(self) -> str:
        who = f"{self.user}@" if self.user else ""
        return f"postgresql://{who}{self.host}:{self.port}/{self.dbname}"


def parse_url(url: str) -> PgTarget:
    """Check a `postgresql://user:password@host:port/database[?options]` URL; ValueError saying what is wrong."""
    form = "write it as postgresql://user:password@host:5432/database"
    try:
        parts = urllib.parse.urlsplit(url.strip())
        port = parts.port or 5432
    except ValueError as e:   # a port that is not a number, or out of range; brackets that do not close
        raise ValueError(f"MT5_STUDIO_DB is not a valid PostgreSQL URL ({e}): {form}") from None
    if parts.scheme.lower() not in ("postgresql", "postgres"):
        raise ValueError(f"MT5_STUDIO_DB must start with postgresql:// for PostgreSQL: {form}")
    dbname = urllib.parse.unquote(parts.path.lstrip("/"))
    if not dbname or "/" in dbname:
        raise ValueError(f"MT5_STUDIO_DB names no database (the part after the host's `/`): {form}")
    try:
        psycopg.conninfo.conninfo_to_dict(url.strip())
    except psycopg.ProgrammingError as e:
        raise ValueError(f"MT5_STUDIO_DB is not a valid PostgreSQL URL ({str(e).strip()}): {form}") from None
    host = parts.hostname or "localhost (Unix socket)"
    return PgTarget(url.strip(), host, port, dbname, urllib.parse.unquote(parts.username or ""))


@functools.lru_cache(maxsize=1024)
def _pg_sql(sql: str) -> str:
    """`?` placeholders (outside quoted text) as psycopg's `%s`; a literal `%` doubled."""
    out, quote = [], ""
    for ch in sql:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "?":
            out.append("%s")
            continue
        out.append("%%" if ch == "%" else ch)
    return "".join(out)


# PostgreSQL text cannot hold U+0000: such text is stored with NUL as \x01\x02 and \x01 as \x01\x01, which reads
# back exactly and keeps equal texts equal. Text without either character (all real text) is stored unchanged.
def _escape(value: Any) -> Any:
    if type(value) is str and ("\x00" in value or "\x01" in value):
        return value.replace("\x01", "\x01\x01").replace("\x00", "\x01\x02")
    return value


def _unescape(value: Any) -> Any:
    if type(value) is str and "\x01" in value:
        return re.sub("\x01([\x01\x02])", lambda m: "\x01" if m.group(1) == "\x01" else "\x00", value)
    return value


class Row(tuple):
    """A result row read by index (`row[0]`), by column name (`row["id"]`) or unpacked, as sqlite3.Row."""

    def __new__(cls, values: Sequence[Any], names: dict[str, int]) -> Row:
        row = super().__new__(cls, [_unescape(v) for v in values])
        row._names = names
        return row

    def __getitem__(self, key: Any) -> Any:
        return tuple.__getitem__(self, self._names[key] if isinstance(key, str) else key)

    def keys(self) -> list[str]:
        return list(self._names)


def _row_factory(cursor: Any) -> Any:
    names = {c.name: i for i, c in reversed(list(enumerate(cursor.description or ())))}
    return lambda values: Row(values, names)


class PgConnection:
    """A psycopg connection that speaks the store's SQL: `?` placeholders, psycopg errors as ours."""

    def __init__(self, raw: psycopg.Connection, target: PgTarget):
        self.raw, self.target = raw, target

    @property
    def broken(self) -> bool:
        return self.raw.closed or self.raw.broken

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        with self._errors():
            return self.raw.execute(_pg_sql(sql), [_escape(p) for p in params])

    def executemany(self, sql: str, seq: Sequence[Sequence[Any]]) -> Any:
        with self._errors():
            cur = self.raw.cursor()
            cur.executemany(_pg_sql(sql), [[_escape(p) for p in params] for params in seq])
            return cur

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.raw.close()

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except pg_errors.IntegrityError as e:
            raise IntegrityError(str(e).strip()) from e
        except pg_errors.LockNotAvailable as e:   # as SQLite's "database is locked" after its busy timeout
            raise DatabaseUnavailable(f"another writer held the store at PostgreSQL {self.target.host}:"
                                      f"{self.target.port} for over {LOCK_TIMEOUT}") from e
        except psycopg.OperationalError as e:
            if not self.broken:
                raise   # a query's own failure (a lock timeout, a cancelled statement)
            raise DatabaseUnavailable(f"lost the connection to PostgreSQL at {self.target.host}:{self.target.port} "
                                      f"({_first_line(e)})") from e


def _first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[-1] if lines else type(e).__name__


class PostgresBackend:
    """Connections to one PostgreSQL database, pooled; each is in autocommit mode, so a transaction is exactly
    the BEGIN ... COMMIT the store issues, and a read outside one sees every committed write."""

    dialect = POSTGRES

    def __init__(self, url: str):
        self.target = parse_url(url)
        self.location = self.target.shown
        self._idle: list[PgConnection] = []
        self._idle_lock = threading.Lock()
        self._local = threading.local()     # the connection a thread's transaction holds, for its reads
        self._closed = False
        self._put(self._connect())          # fail now, with the message, when the server is out of reach

    def _connect(self) -> PgConnection:
        t = self.target
        try:
            raw = psycopg.connect(t.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S, row_factory=_row_factory)
        except psycopg.OperationalError as e:
            raise DatabaseUnavailable(
                f"cannot connect to PostgreSQL at {t.host}:{t.port} (database {t.dbname!r}"
                f"{f', user {t.user!r}' if t.user else ''}): {_first_line(e)}. Check that the server runs and "
                f"accepts connections on that host and port, that the database exists and the user and password "
                f"in MT5_STUDIO_DB are right") from None
        raw.execute(f"SET lock_timeout = '{LOCK_TIMEOUT}'")
        return PgConnection(raw, t)

    def _reconnect(self) -> PgConnection:
        """A new connection, trying again for RECONNECT_S while the server (re)starts."""
        deadline = time.monotonic() + RECONNECT_S
        while True:
            try:
                return self._connect()
            except DatabaseUnavailable:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.25)

    def _take(self) -> PgConnection:
        with self._idle_lock:
            if self._idle:
                return self._idle.pop()
        return self._reconnect()

    def _put(self, conn: PgConnection) -> None:
        with self._idle_lock:
            if not self._closed and not conn.broken and len(self._idle) < POOL_IDLE:
                self._idle.append(conn)
                return
        conn.close()

    @contextlib.contextmanager
    def connection(self) -> Iterator[PgConnection]:
        held = getattr(self._local, "conn", None)
        if held is not None:        # inside this thread's transaction: read what it wrote
            yield held
            return
        conn = self._take()
        self._local.conn = conn
        try:
            yield conn
        finally:
            self._local.conn = None
            self._put(conn)

    @contextlib.contextmanager
    def write(self) -> Iterator[PgConnection]:
        conn = self._begin(self._take())
        self._local.conn = conn
        try:
            try:
                yield conn
            except DatabaseUnavailable as e:
                raise DatabaseUnavailable(f"{e}: this write was not saved; try again") from e.__cause__
            except BaseException:
                with contextlib.suppress(DatabaseUnavailable):
                    conn.execute("ROLLBACK")
                raise
            try:
                conn.execute("COMMIT")
            except DatabaseUnavailable as e:
                raise DatabaseUnavailable(f"{e} while committing: the write may or may not be saved; look "
                                          "before repeating it") from e.__cause__
        finally:
            self._local.conn = None
            self._put(conn)

    def _begin(self, conn: PgConnection) -> PgConnection:
        """BEGIN on `conn`, or on a new connection when `conn` was lost while idle (nothing is written yet)."""
        try:
            self.dialect.begin_write(conn)
            return conn
        except DatabaseUnavailable as e:
            if not conn.broken:   # the write lock was not free in time: the connection itself is fine
                with contextlib.suppress(DatabaseUnavailable):
                    conn.execute("ROLLBACK")
                self._put(conn)
                raise DatabaseUnavailable(f"{e}: this write was not saved; try again") from e.__cause__
            conn.close()
        conn = self._reconnect()
        try:
            self.dialect.begin_write(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        if getattr(self._local, "conn", None) is not None:
            return self._local.conn.execute(sql, params).fetchall()
        for attempt in (1, 2):   # a read is safe to repeat on a new connection
            conn = self._take()
            try:
                rows = conn.execute(sql, params).fetchall()
            except DatabaseUnavailable:
                conn.close()
                if attempt == 2:
                    raise
                continue
            self._put(conn)
            return rows
        raise AssertionError("unreachable")

    def integrity_check(self, tables: Sequence[str] = ()) -> str:
        """"ok" when the server answers and every one of `tables` is in the schema."""
        have = {r[0] for r in self.read("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")}
        missing = sorted(set(tables) - have)
        return "ok" if not missing else f"missing table(s): {', '.join(missing)}"

    def close(self) -> None:
        with self._idle_lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def open_backend(location: str | Path) -> Backend:
    """The backend for a SQLite file path or a postgresql:// URL."""
    if is_database_url(location):
        return PostgresBackend(str(location))
    return SQLiteBackend(Path(location).expanduser())
