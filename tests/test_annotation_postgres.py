"""The PostgreSQL store on a real server (.ci/with-postgres): writers in two processes, a server restart mid-run, a
connection lost inside a write, migrations of an older database, and clear messages for a URL that is wrong or
unreachable (those two need no server)."""
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from app.annotation import backends
from app.annotation.backends import POSTGRES, DatabaseUnavailable, PostgresBackend
from app.annotation.schema import MIGRATIONS, SCHEMA_VERSION, migrate
from app.annotation.store import Annotation, AnnotationStore
from apphost import free_port
from pgserver import Databases, restart

REPO = Path(__file__).resolve().parent.parent


def make(text: str, **kw) -> Annotation:
    return Annotation(task="summarize", model_id="google/mt5-small", input=text, output="out", annotator="A", **kw)


@pytest.fixture
def pg(tmp_path):
    dbs = Databases("postgresql", tmp_path)
    yield dbs
    dbs.drop()


WRITER = """
import json, sys, threading
sys.path.insert(0, sys.argv[2])
from app.annotation.store import Annotation, AnnotationStore
url, tag, shared, n = sys.argv[1], sys.argv[3], sys.argv[4], int(sys.argv[5])
store = AnnotationStore(url)
saved, errors = [], []
def work(t):
    for i in range(n):
        try:
            saved.append(store.save(Annotation(task="summarize", model_id="m", input=f"{tag} {t} {i}", output="o",
                                               annotator=f"{tag}{t}")))
            store.update(shared, comment=f"{tag} {t} {i}", by=f"{tag}{t}")   # every writer edits one record
        except Exception as e:
            errors.append(repr(e))
threads = [threading.Thread(target=work, args=(t,)) for t in range(10)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps({"saved": saved, "errors": errors}))
"""


def test_twenty_writers_in_two_processes_lose_nothing(pg):
    url, n = pg("team.db"), 25
    with AnnotationStore(url) as store:
        shared = store.save(make("shared by every writer"))
        children = [subprocess.Popen([sys.executable, "-c", WRITER, url, str(REPO), tag, shared, str(n)],
                                     stdout=subprocess.PIPE, text=True) for tag in ("p1", "p2")]
        results = [json.loads(c.communicate(timeout=300)[0]) for c in children]
        assert [c.returncode for c in children] == [0, 0]
        assert [r["errors"] for r in results] == [[], []]
        saved = [i for r in results for i in r["saved"]]
        assert len(saved) == len(set(saved)) == 2 * 10 * n
        assert store.count() == 2 * 10 * n + 1
        assert {a.input for a in store.query() if a.id != shared} == \
            {f"{p} {t} {i}" for p in ("p1", "p2") for t in range(10) for i in range(n)}
        # 500 edits of one record from 20 writers in 2 processes: each read-then-write of the history ran alone
        history = store.history(shared)
        assert [v.version for v in history] == list(range(1, 2 * 10 * n + 1))
        assert store.integrity_check() == "ok"
    print(f"20 writers in 2 processes: {len(saved)} saves and {len(history)} edits of one record, none lost")


def test_processes_starting_together_migrate_once(pg):
    url = pg("fresh.db")
    code = ("import sys; sys.path.insert(0, sys.argv[2]); from app.annotation.store import AnnotationStore; "
            "print(AnnotationStore(sys.argv[1]).schema_version)")
    children = [subprocess.Popen([sys.executable, "-c", code, url, str(REPO)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [c.communicate(timeout=120) for c in children]
    assert [(c.returncode, out.strip()) for c, (out, _) in zip(children, outs)] == [(0, str(SCHEMA_VERSION))] * 3, outs


def test_server_restart_mid_run_loses_no_acknowledged_save(pg):
    acknowledged, failures, crashes, lock = [], [], [], threading.Lock()
    stop = threading.Event()
    with AnnotationStore(pg("restart.db")) as store:
        def work(t):
            try:
                write(t)
            except BaseException as e:  # noqa: BLE001 - a writer that died is a failure of the test
                crashes.append(repr(e))

        def write(t):
            i = 0
            while not stop.is_set():
                a = make(f"writer {t} item {i}", id=f"w{t}-{i}")
                for _attempt in range(20):   # what a client does with a failed save: say so, and try again
                    try:
                        store.save(a)
                    except DatabaseUnavailable as e:
                        with lock:
                            failures.append(str(e))
                        time.sleep(0.2)
                        continue
                    except ValueError as e:   # "already exists": the commit went through before the link broke
                        assert "already exists" in str(e)
                    break
                else:
                    raise AssertionError(f"writer {t} could not save after the restart: {failures[-1]}")
                with lock:
                    acknowledged.append(a.id)
                i += 1

        threads = [threading.Thread(target=work, args=(t,)) for t in range(20)]
        for t in threads:
            t.start()
        time.sleep(1.5)
        before = len(acknowledged)
        restart()                                  # pg_ctl restart -m fast: every connection is cut
        time.sleep(1.5)
        stop.set()
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads)
        assert crashes == []
        present = {a.id for a in store.query()}
        assert set(acknowledged) <= present        # every acknowledged save is there
        assert len(present) == len(acknowledged)   # and nothing saved twice or unacknowledged
        assert len(acknowledged) > before > 0      # writes went on after the restart
        for message in failures:                   # a failed write said what happened
            assert "PostgreSQL at 127.0.0.1:" in message, message
    print(f"restart mid-run: {len(acknowledged)} acknowledged saves ({before} before the restart), all present; "
          f"{len(failures)} writes failed with an error and were retried")


def test_connection_lost_inside_a_write_raises_and_saves_nothing(pg):
    with AnnotationStore(pg("lost.db")) as store:
        with pytest.raises(DatabaseUnavailable, match=r"PostgreSQL at 127\.0\.0\.1:\d+ .*this write was not saved"):
            with store.transaction() as conn:
                conn.execute("INSERT INTO batch_jobs (id, name, task, settings, source, total, created_at) "
                             "VALUES ('j', 'n', 't', '{}', 's', 0, 'now')")
                restart()
                conn.execute("UPDATE batch_jobs SET total = 1 WHERE id = 'j'")
        assert store.read("SELECT COUNT(*) FROM batch_jobs")[0][0] == 0    # the store reconnected; nothing landed
        store.save(make("after the restart"))
        assert store.count() == 1


def test_v1_postgres_database_is_migrated_and_a_newer_one_refused(pg):
    url = pg("old.db")
    backend = PostgresBackend(url)
    with backend.connection() as conn:
        assert migrate(conn, MIGRATIONS[:1], POSTGRES) == 1
        conn.execute("INSERT INTO annotations VALUES ('old1', 'k', 'tag', 'm', 'main', 'umt5', 'bfloat16', '{}', "
                     "'in', 'out', 3, '', '[\"other\"]', 'kept', 'Bo', '2025-01-01T00:00:00.000000Z', "
                     "'2025-01-01T00:00:00.000000Z', '0.0')")
    with AnnotationStore(url) as store:
        assert store.schema_version == SCHEMA_VERSION == 9
        old = store.get("old1")
        assert (old.family, old.error_categories, old.comment, old.rating) == ("umt5", ["other"], "kept", 3)
        assert (old.protocol, old.spans, old.esa_score, old.mqm_score) == ("", [], None, None)
        new = store.save(make("x", protocol="mqm", spans=[{"start": 0, "end": 3, "side": "output",
                                                            "category": "accuracy", "severity": "minor"}]))
        assert store.get(new).mqm_score == 1.0
    with backend.connection() as conn:
        conn.execute("UPDATE schema_version SET version = 99")
    backend.close()
    with pytest.raises(RuntimeError, match="newer than this app"):
        AnnotationStore(url)


def test_unreachable_server_is_reported_quickly():
    port = free_port()   # nothing listens there
    start = time.monotonic()
    with pytest.raises(DatabaseUnavailable) as err:
        AnnotationStore(f"postgresql://annotator:secret@127.0.0.1:{port}/team")
    assert time.monotonic() - start < 8
    message = str(err.value)
    assert f"cannot connect to PostgreSQL at 127.0.0.1:{port} (database 'team', user 'annotator')" in message
    assert "Check that the server runs" in message and "secret" not in message


@pytest.mark.parametrize("url, words", [
    ("postgresql://me@db.example:port/team", "not a valid PostgreSQL URL"),
    ("postgresql://me@db.example:99999/team", "not a valid PostgreSQL URL"),
    ("postgresql://me@db.example:5432", "names no database"),
    ("postgresql://me@db.example/team?colour=blue", "not a valid PostgreSQL URL"),
])
def test_malformed_url_says_what_is_wrong(url, words):
    with pytest.raises(ValueError, match=rf"{words}.*postgresql://user:password@host:5432/database"):
        AnnotationStore(url)


def test_app_with_an_unreachable_database_exits_with_the_message_and_no_traceback(tmp_path):
    port = free_port()
    env = {**os.environ, "MT5_STUDIO_DB": f"postgresql://studio@127.0.0.1:{port}/team", "HF_HUB_OFFLINE": "1",
           "MT5_STUDIO_DEMO_DIR": str(tmp_path / "demo"), "GRADIO_ANALYTICS_ENABLED": "False"}
    done = subprocess.run([sys.executable, str(REPO / "app.py"), "--demo", "--port", str(free_port())], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert f"cannot open the annotation store: cannot connect to PostgreSQL at 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_a_writer_held_up_too_long_is_told_and_saves_nothing(pg, monkeypatch):
    monkeypatch.setattr(backends, "LOCK_TIMEOUT", "1s")   # 30 s in the app, as SQLite's busy timeout
    url = pg("busy.db")
    with AnnotationStore(url) as holder, AnnotationStore(url) as other:   # as two app instances
        inside = threading.Event()

        def hold():
            with holder.transaction():
                inside.set()
                time.sleep(2.5)

        t = threading.Thread(target=hold)
        t.start()
        inside.wait()
        with pytest.raises(DatabaseUnavailable, match=r"another writer held the store .* for over 1s: this write "
                                                      r"was not saved; try again"):
            other.save(make("waits"))
        t.join()
        other.save(make("after"))
        assert [a.input for a in other.query()] == ["after"]


def test_the_page_says_not_saved_while_the_server_is_down(pg):
    """A save pressed in the page while PostgreSQL is down: the message under the button, nothing half-saved;
    saving again once the server is back works."""
    import shlex

    from app.annotation.rights import OPEN
    from app.annotation.tabs import panel
    from pgserver import ENV_RESTART
    from test_annotation_ui import RECORD

    command = os.environ.get(ENV_RESTART, "")
    if " restart" not in command:
        pytest.skip(f"{ENV_RESTART} is not a pg_ctl restart command")
    with AnnotationStore(pg("down.db")) as store:
        def save_it(*values):
            return panel.save_it(store, OPEN, *values)
        subprocess.run(shlex.split(command.replace(" restart", " stop")), check=True, capture_output=True, timeout=60)
        try:
            out = " ".join(map(str, save_it(RECORD, "4", "", [], "", "Amina", None).values()))
        finally:
            # restart on a stopped server starts it with the options it ran with (postmaster.opts)
            subprocess.run(shlex.split(command), check=True, capture_output=True, timeout=60)
        assert "Not saved: " in out and "PostgreSQL at 127.0.0.1" in out, out
        assert store.count() == 0
        assert "Saved annotation" in " ".join(map(str, save_it(RECORD, "4", "", [], "", "Amina", None).values()))
        assert store.count() == 1
