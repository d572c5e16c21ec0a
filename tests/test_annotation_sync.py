"""Hub sync: nothing without configuration; with it, JSONL snapshots under the scheduler's lock, pushed by a real
CommitScheduler talking to a fake HfApi (no network)."""
import threading
import time
from concurrent.futures import Future
from types import SimpleNamespace

import pytest

from app.annotation.store import Annotation, AnnotationStore
from app.annotation.sync import hub_scheduler, start_sync, sync_config, sync_status


def make(i: int) -> Annotation:
    return Annotation(task="summarize", model_id="m", input=f"نص {i}\n🙂", output=f"out {i}", annotator="Amina",
                      rating=1 + i % 5, comment="=1+1 <script>")


@pytest.fixture
def store(databases, tmp_path):
    with AnnotationStore(databases("ann.db"), local_dir=tmp_path / "db") as s:
        for i in range(3):
            s.save(make(i))
        yield s


def refuse(**kw):
    raise AssertionError("a scheduler was created without configuration")


@pytest.mark.parametrize("env", [{}, {"MT5_STUDIO_DATASET_REPO": "me/anns"}, {"HF_TOKEN": "hf_x"},
                                 {"MT5_STUDIO_DATASET_REPO": " ", "HF_TOKEN": "hf_x"}])
def test_nothing_leaves_the_machine_without_configuration(store, env):
    assert start_sync(store, env, scheduler_factory=refuse) is None
    assert not (store.local_dir / "hub_sync").exists()
    assert sync_status(None) == "Annotations are kept on this machine only."


def test_bad_interval_is_reported(store):
    env = {"MT5_STUDIO_DATASET_REPO": "me/anns", "HF_TOKEN": "hf_x", "MT5_STUDIO_SYNC_MINUTES": "soon"}
    with pytest.raises(ValueError, match="MT5_STUDIO_SYNC_MINUTES must be a number of minutes"):
        sync_config(store, env)


class CountingLock:
    def __init__(self):
        self.lock, self.entered = threading.Lock(), 0

    def __enter__(self):
        self.lock.acquire()
        self.entered += 1

    def __exit__(self, *exc):
        self.lock.release()


def test_configured_sync_writes_snapshots_under_the_lock(store, databases):
    made = {}

    def fake_factory(**kw):
        made.update(kw)
        return SimpleNamespace(lock=CountingLock())

    env = {"MT5_STUDIO_DATASET_REPO": "me/anns", "HF_TOKEN": "hf_x", "MT5_STUDIO_SYNC_MINUTES": "2.5"}
    sync = start_sync(store, env, scheduler_factory=fake_factory, download=no_snapshot)
    assert (made["repo_id"], made["token"], made["every"]) == ("me/anns", "hf_x", 2.5)
    assert made["folder_path"] == store.local_dir / "hub_sync" and made["folder_path"].is_dir()
    assert "me/anns every 2.5 min" in sync_status(sync)

    made["before_push"]()                                   # what the scheduler does before each upload
    assert sync.scheduler.lock.entered == 1
    with AnnotationStore(databases("restored.db")) as restored:
        assert restored.import_file(sync.snapshot_path).added == 3
        assert restored.query() == store.query()
    assert sync.write_snapshot() is False                   # unchanged: no rewrite, so no empty commit
    store.save(make(9))

    sync.scheduler.lock.lock.acquire()                      # an upload in progress holds the lock…
    writer = threading.Thread(target=sync.write_snapshot)
    writer.start()
    time.sleep(0.2)
    assert "out 9" not in sync.snapshot_path.read_text(encoding="utf-8")   # …so the snapshot waits
    sync.scheduler.lock.lock.release()
    writer.join()
    assert "out 9" in sync.snapshot_path.read_text(encoding="utf-8")
    assert list(sync.config.folder.iterdir()) == [sync.snapshot_path]     # no temporary file uploaded


class FakeHfApi:
    """The three HfApi calls CommitScheduler makes, recorded instead of sent."""

    def __init__(self):
        self.commits, self.repo = [], None

    def create_repo(self, repo_id, private=None, repo_type=None, exist_ok=False, **kw):
        self.repo = (repo_id, private, repo_type)
        return SimpleNamespace(repo_id=repo_id)

    def run_as_future(self, fn, *args, **kwargs):
        future = Future()
        future.set_result(fn(*args, **kwargs))
        return future

    def create_commit(self, repo_id, operations, **kw):
        files = {}
        for op in operations:
            with op.as_file() as f:
                files[op.path_in_repo] = f.read().decode("utf-8")
        self.commits.append(files)
        return SimpleNamespace(oid=str(len(self.commits)))


def test_real_commit_scheduler_pushes_the_snapshot(store):
    api = FakeHfApi()
    env = {"MT5_STUDIO_DATASET_REPO": "me/anns", "HF_TOKEN": "hf_x"}

    def slow_factory(**kw):
        # The scheduler's thread pushes once at start, maybe before start_sync has the scheduler in hand:
        # returning late makes that ordering certain (CI once hit it by chance and lost the first push).
        scheduler = hub_scheduler(**kw, hf_api=api)
        deadline = time.time() + 10
        while not api.commits and time.time() < deadline:
            time.sleep(0.02)
        return scheduler

    sync = start_sync(store, env, scheduler_factory=slow_factory, download=no_snapshot)
    try:
        deadline = time.time() + 10
        while not api.commits and time.time() < deadline:   # the scheduler pushes once when it starts
            time.sleep(0.02)
        assert api.repo == ("me/anns", True, "dataset")
        assert list(api.commits[0]) == ["annotations.jsonl"]
        assert api.commits[0]["annotations.jsonl"].count("\n") == 3
        store.save(make(7))
        sync.push_now().result()
        assert len(api.commits) == 2 and "out 7" in api.commits[1]["annotations.jsonl"]
        sync.push_now().result()
        assert len(api.commits) == 2                          # nothing changed, nothing committed
    finally:
        sync.scheduler.stop()


def no_snapshot(repo_id, token):
    return None


def test_existing_snapshot_is_merged_before_the_first_push(databases, store, tmp_path):
    """A Space restarted without persistent storage starts empty: the dataset's snapshot comes back first."""
    from app.annotation.store import Annotation, AnnotationStore

    earlier = AnnotationStore(databases("earlier.db"))
    saved = earlier.save(Annotation(task="summarization", model_id="m", input="שלום עולם", output="out",
                                    annotator="Dana", rating=5))
    snapshot = earlier.export(tmp_path / "snapshot.jsonl", "jsonl")
    env = {"MT5_STUDIO_DATASET_REPO": "me/ann", "HF_TOKEN": "t"}
    sync = start_sync(store, env, scheduler_factory=lambda **kw: SimpleNamespace(lock=threading.Lock()),
                      download=lambda repo, token: snapshot)
    assert sync is not None and store.get(saved).input == "שלום עולם"


def test_unreadable_snapshot_keeps_sync_off_and_the_store_unchanged(store):
    def unreachable(repo, token):
        raise ConnectionError("no network")

    env = {"MT5_STUDIO_DATASET_REPO": "me/ann", "HF_TOKEN": "t"}
    before = store.count()
    scheduler = lambda **kw: SimpleNamespace(lock=threading.Lock())  # noqa: E731
    assert start_sync(store, env, scheduler_factory=scheduler, download=unreachable) is None
    assert store.count() == before
