"""The annotation database's schema: every table of the three rooms (annotations and batch jobs, comparisons and
compare jobs, campaigns) and sign-in sessions, as an ordered list of migrations, and `migrate`, which brings any
database written by an earlier version of the app to the latest one."""
from __future__ import annotations

import re
import sqlite3
from collections.abc import Sequence
from typing import Any

from .backends import POSTGRES, SQLITE, Dialect

# Schema: an ordered list of migrations; `PRAGMA user_version` (SQLite) or the table schema_version (PostgreSQL)
# says how many have run. To change the schema, append a migration (never edit a released one): v(N+1) runs on
# every database at vN. Write it in the SQL both backends speak (app/annotation/backends.py): TEXT, INTEGER, REAL.

MIGRATIONS: list[tuple[str, ...]] = [
    # v1: annotations
    (
        """CREATE TABLE annotations (
            id TEXT PRIMARY KEY, item_key TEXT NOT NULL, task TEXT NOT NULL, model_id TEXT NOT NULL,
            model_revision TEXT NOT NULL, family TEXT NOT NULL, dtype TEXT NOT NULL, decoding TEXT NOT NULL,
            input TEXT NOT NULL, output TEXT NOT NULL, rating INTEGER CHECK (rating BETWEEN 1 AND 5),
            corrected_output TEXT NOT NULL, error_categories TEXT NOT NULL, comment TEXT NOT NULL,
            annotator TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL, app_version TEXT NOT NULL)""",
        "CREATE INDEX annotations_task ON annotations (task, created_at)",
        "CREATE INDEX annotations_model ON annotations (model_id, created_at)",
        "CREATE INDEX annotations_annotator ON annotations (annotator, created_at)",
        "CREATE INDEX annotations_created ON annotations (created_at)",
        "CREATE INDEX annotations_item ON annotations (item_key)",
    ),
    # v2: batch jobs and their rows (app/batch.py), so a batch resumes after a restart
    (
        """CREATE TABLE batch_jobs (
            id TEXT PRIMARY KEY, name TEXT NOT NULL, task TEXT NOT NULL, settings TEXT NOT NULL,
            source TEXT NOT NULL, total INTEGER NOT NULL, created_at TEXT NOT NULL)""",
        """CREATE TABLE batch_rows (
            job_id TEXT NOT NULL REFERENCES batch_jobs (id) ON DELETE CASCADE, idx INTEGER NOT NULL,
            text TEXT NOT NULL, question TEXT NOT NULL, context TEXT NOT NULL,
            output TEXT, error TEXT, processed_at TEXT,
            annotation_id TEXT REFERENCES annotations (id) ON DELETE SET NULL,
            PRIMARY KEY (job_id, idx))""",
    ),
    # v3: error spans (JSON list) and the ESA / MQM protocol and scores
    (
        "ALTER TABLE annotations ADD COLUMN protocol TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE annotations ADD COLUMN spans TEXT NOT NULL DEFAULT '[]'",
        "ALTER TABLE annotations ADD COLUMN esa_score INTEGER CHECK (esa_score BETWEEN 0 AND 100)",
        "ALTER TABLE annotations ADD COLUMN mqm_score REAL",
    ),
    # v4: owners, soft deletes and edit history. `owner` is the signed-in account that saved the annotation ("" in
    # open use, where nobody signs in); a deleted annotation keeps its row with `deleted_at` set, until an admin
    # restores it; every edit, delete, restore or import over it first copies the record as it was into
    # `annotation_versions`.
    (
        "ALTER TABLE annotations ADD COLUMN owner TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE annotations ADD COLUMN deleted_at TEXT",
        "ALTER TABLE annotations ADD COLUMN deleted_by TEXT NOT NULL DEFAULT ''",
        "CREATE INDEX annotations_owner ON annotations (owner, created_at)",
        """CREATE TABLE annotation_versions (
            annotation_id TEXT NOT NULL, version INTEGER NOT NULL, action TEXT NOT NULL, record TEXT NOT NULL,
            replaced_at TEXT NOT NULL, replaced_by TEXT NOT NULL, PRIMARY KEY (annotation_id, version))""",
    ),
    # v5: side-by-side comparisons (app/annotation/comparisons.py): the two outputs as shown (A, B) with each
    # side's provenance, the preference and spans on both sides; owner and soft delete as annotations (v4). Compare
    # jobs: a file of inputs through both systems, each row's A/B order drawn when the job is made.
    (
        """CREATE TABLE comparisons (
            id TEXT PRIMARY KEY, item_key TEXT NOT NULL, task TEXT NOT NULL, input TEXT NOT NULL,
            model_id_a TEXT NOT NULL, model_revision_a TEXT NOT NULL, family_a TEXT NOT NULL, dtype_a TEXT NOT NULL,
            decoding_a TEXT NOT NULL, output_a TEXT NOT NULL,
            model_id_b TEXT NOT NULL, model_revision_b TEXT NOT NULL, family_b TEXT NOT NULL, dtype_b TEXT NOT NULL,
            decoding_b TEXT NOT NULL, output_b TEXT NOT NULL,
            preference TEXT NOT NULL CHECK (preference IN ('A', 'B', 'tie', 'both_bad')),
            protocol TEXT NOT NULL, spans TEXT NOT NULL, comment TEXT NOT NULL, annotator TEXT NOT NULL,
            owner TEXT NOT NULL DEFAULT '', created_at TEXT NOT NULL, updated_at TEXT NOT NULL,
            app_version TEXT NOT NULL, deleted_at TEXT, deleted_by TEXT NOT NULL DEFAULT '')""",
        "CREATE INDEX comparisons_item ON comparisons (item_key)",
        "CREATE INDEX comparisons_created ON comparisons (created_at)",
        """CREATE TABLE comparison_jobs (
            id TEXT PRIMARY KEY, name TEXT NOT NULL, task TEXT NOT NULL, systems TEXT NOT NULL,
            source TEXT NOT NULL, total INTEGER NOT NULL, created_at TEXT NOT NULL, owner TEXT NOT NULL DEFAULT '')""",
        """CREATE TABLE comparison_job_rows (
            job_id TEXT NOT NULL REFERENCES comparison_jobs (id) ON DELETE CASCADE, idx INTEGER NOT NULL,
            text TEXT NOT NULL, question TEXT NOT NULL, context TEXT NOT NULL,
            output_1 TEXT, output_2 TEXT, error TEXT, processed_at TEXT, flipped INTEGER NOT NULL,
            comparison_id TEXT REFERENCES comparisons (id) ON DELETE SET NULL, PRIMARY KEY (job_id, idx))""",
    ),
    # v6: comparisons keep versions as annotations do (v4): every edit, import over a record, delete and restore
    # first copies the comparison as it was. Sign-in sessions recorded server-side (app/annotation/sessions.py), so
    # "Log out" and an admin's revocation end a session on every instance sharing the database: `id` is a hash of
    # the session's secret (never the secret itself).
    (
        """CREATE TABLE comparison_versions (
            comparison_id TEXT NOT NULL, version INTEGER NOT NULL, action TEXT NOT NULL, record TEXT NOT NULL,
            replaced_at TEXT NOT NULL, replaced_by TEXT NOT NULL, PRIMARY KEY (comparison_id, version))""",
        """CREATE TABLE sessions (
            id TEXT PRIMARY KEY, account TEXT NOT NULL, method TEXT NOT NULL, created_at TEXT NOT NULL,
            last_seen TEXT NOT NULL, expires_at TEXT, revoked_at TEXT, revoked_by TEXT NOT NULL DEFAULT '')""",
        "CREATE INDEX sessions_account ON sessions (account, created_at)",
    ),
    # v7: evaluation campaigns (app/annotation/campaigns.py): a campaign, its items (each system's output), who
    # has which item (one row per item and annotator, so nobody judges an item twice; the order the outputs were
    # shown in, recorded), and one judgement per assignment with its scores ({system: {score: value}}) and versions.
    (
        """CREATE TABLE campaigns (
            id TEXT PRIMARY KEY, name TEXT NOT NULL, task TEXT NOT NULL, protocol TEXT NOT NULL,
            guidelines TEXT NOT NULL, categories TEXT NOT NULL, overlap INTEGER NOT NULL CHECK (overlap >= 1),
            blind INTEGER NOT NULL, labels TEXT NOT NULL, systems TEXT NOT NULL, check_fraction REAL NOT NULL,
            source TEXT NOT NULL, created_by TEXT NOT NULL, created_at TEXT NOT NULL,
            batch_size INTEGER NOT NULL DEFAULT 0 CHECK (batch_size >= 0))""",
        """CREATE TABLE campaign_items (
            campaign_id TEXT NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE, item_id TEXT NOT NULL,
            idx INTEGER NOT NULL, source TEXT NOT NULL, reference TEXT NOT NULL, outputs TEXT NOT NULL,
            metadata TEXT NOT NULL, check_kind TEXT NOT NULL CHECK (check_kind IN ('', 'expected', 'degraded')),
            expected TEXT NOT NULL, public_id TEXT NOT NULL, PRIMARY KEY (campaign_id, item_id))""",
        """CREATE TABLE campaign_assignments (
            campaign_id TEXT NOT NULL, item_id TEXT NOT NULL, annotator TEXT NOT NULL, shown_order TEXT NOT NULL,
            assigned_at TEXT NOT NULL, submitted_at TEXT, seconds REAL, skipped TEXT NOT NULL DEFAULT '',
            PRIMARY KEY (campaign_id, item_id, annotator),
            FOREIGN KEY (campaign_id, item_id) REFERENCES campaign_items (campaign_id, item_id) ON DELETE CASCADE)""",
        "CREATE INDEX campaign_assignments_annotator ON campaign_assignments (campaign_id, annotator)",
        "CREATE UNIQUE INDEX campaign_items_public ON campaign_items (campaign_id, public_id)",
        """CREATE TABLE campaign_judgements (
            id TEXT PRIMARY KEY, campaign_id TEXT NOT NULL, item_id TEXT NOT NULL, annotator TEXT NOT NULL,
            protocol TEXT NOT NULL, scores TEXT NOT NULL, judgement TEXT NOT NULL, comment TEXT NOT NULL,
            seconds REAL NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL,
            UNIQUE (campaign_id, item_id, annotator),
            FOREIGN KEY (campaign_id, item_id, annotator)
                REFERENCES campaign_assignments (campaign_id, item_id, annotator) ON DELETE CASCADE)""",
        """CREATE TABLE campaign_judgement_versions (
            judgement_id TEXT NOT NULL, version INTEGER NOT NULL, record TEXT NOT NULL, replaced_at TEXT NOT NULL,
            replaced_by TEXT NOT NULL, PRIMARY KEY (judgement_id, version))""",
    ),
    # v8: an annotation's scores in one JSON object keyed by protocol id ({"likert": 4, "esa": 73, "mqm": 6.5}; "mqm"
    # is the MQM penalty, as Annotation.mqm_score), as campaign judgements keep theirs, instead of one column per
    # protocol. Every value is copied; JSON is written with text operators both dialects have (a REAL prints with 15
    # digits in SQLite: exact for MQM scores, which are rounded to 6 decimals). A column with a CHECK of its own
    # drops in SQLite 3.35+ and PostgreSQL alike (no table rebuild, so batch_rows' links are never touched).
    (
        "ALTER TABLE annotations ADD COLUMN scores TEXT NOT NULL DEFAULT '{}'",
        """UPDATE annotations SET scores = '{' || SUBSTR(
            COALESCE(', "likert": ' || rating, '') || COALESCE(', "esa": ' || esa_score, '') ||
            COALESCE(', "mqm": ' || mqm_score, ''), 3) || '}'""",
        "ALTER TABLE annotations DROP COLUMN rating",
        "ALTER TABLE annotations DROP COLUMN esa_score",
        "ALTER TABLE annotations DROP COLUMN mqm_score",
    ),
    # v9: a compare job row's human reference (the input file's `reference` column; '' when it has none), which
    # the job's automatic metrics (chrF, BLEU, MetricX) score both systems against, and each system's MetricX score
    # (NULL until the deployment's MetricX has scored the row; app.scoring.MetricXService).
    (
        "ALTER TABLE comparison_job_rows ADD COLUMN reference TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE comparison_job_rows ADD COLUMN metricx_1 REAL",
        "ALTER TABLE comparison_job_rows ADD COLUMN metricx_2 REAL",
    ),
]
SCHEMA_VERSION = len(MIGRATIONS)
TABLES = tuple(m.group(1) for step in MIGRATIONS for sql in step if (m := re.match(r"\s*CREATE TABLE (\w+)", sql)))


def migrate(conn: Any, migrations: Sequence[tuple[str, ...]] = MIGRATIONS, dialect: Dialect | None = None) -> int:
    """Bring the database to the latest schema, one write transaction per version; the version is read inside
    it, so app instances starting together each see the others' steps. Returns the final version.
    `dialect`: SQLite for a sqlite3 connection, else PostgreSQL (app.annotation.backends)."""
    dialect = dialect or (SQLITE if isinstance(conn, sqlite3.Connection) else POSTGRES)
    while True:
        with dialect.write(conn):
            version = dialect.version(conn)
            if version > len(migrations):
                raise RuntimeError(f"database schema is v{version}, newer than this app's v{len(migrations)}: "
                                   "update the app, or point MT5_STUDIO_DB at another database")
            if version == len(migrations):
                return version
            for statement in migrations[version]:
                conn.execute(dialect.ddl(statement))
            dialect.set_version(conn, version + 1)
