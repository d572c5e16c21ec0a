"""The PostgreSQL server the store's tests run against (started by `.ci/with-postgres`), and one fresh schema per
database a test asks for, so tests never see each other's rows.

Without a server (`MT5_STUDIO_TEST_PG` unset) the PostgreSQL variants skip with NO_SERVER; in CI (`CI` set) they
fail instead.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import urllib.parse
import uuid
from pathlib import Path

import psycopg
import pytest

ENV_URL = "MT5_STUDIO_TEST_PG"
ENV_RESTART = "MT5_STUDIO_TEST_PG_RESTART"
BACKENDS = ["sqlite", "postgresql"]
NO_SERVER = (f"no PostgreSQL server for the tests: run them under `bash .ci/with-postgres <pytest command>` (it "
             f"starts one), or set {ENV_URL}=postgresql://… to a database they may fill")


def server_url() -> str:
    """The test server's URL; skips the test without one (fails it in CI)."""
    url = os.environ.get(ENV_URL, "").strip()
    if not url:
        if os.environ.get("CI"):
            pytest.fail(NO_SERVER + " (CI is set, so this is a failure)")
        pytest.skip(NO_SERVER)
    return url


def with_schema(url: str, schema: str) -> str:
    """`url` with the connection's search_path set to `schema` (libpq's `options`)."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query) + [("options", f"-csearch_path={schema}")]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def restart() -> None:
    """Restart the test server (pg_ctl restart -m fast: every connection is cut)."""
    command = os.environ.get(ENV_RESTART, "").strip()
    if not command:
        pytest.skip(f"{ENV_RESTART} is not set: .ci/with-postgres sets it to the server's restart command")
    subprocess.run(shlex.split(command), check=True, capture_output=True, timeout=120)


class Databases:
    """`databases(name)`: where a store named `name` lives in this test — a file under tmp_path (SQLite) or a
    schema of its own on the test server (PostgreSQL). The same name gives the same database."""

    def __init__(self, backend: str, tmp_path: Path):
        self.backend, self.tmp_path = backend, tmp_path
        self.server = server_url() if backend == "postgresql" else ""
        self.schemas: dict[str, str] = {}

    def __call__(self, name: str) -> str | Path:
        if self.backend == "sqlite":
            return self.tmp_path / name
        if name not in self.schemas:
            schema = f"t_{uuid.uuid4().hex[:12]}"
            with psycopg.connect(self.server, autocommit=True) as conn:
                conn.execute(f"CREATE SCHEMA {schema}")
            self.schemas[name] = schema
        return with_schema(self.server, self.schemas[name])

    def drop(self) -> None:
        if not self.schemas:
            return
        with psycopg.connect(self.server, autocommit=True) as conn:
            for schema in self.schemas.values():
                conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
