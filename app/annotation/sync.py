"""Space persistence: push annotation snapshots to a Hub dataset repo with huggingface_hub's CommitScheduler.

Only when both `MT5_STUDIO_DATASET_REPO` and `HF_TOKEN` are set; otherwise nothing is created and nothing
leaves the machine. The scheduler uploads a folder every few minutes (`MT5_STUDIO_SYNC_MINUTES`, default 5);
just before each upload we write `annotations.jsonl` there, a full JSONL export (the same format that
`AnnotationStore.import_file` reads), while holding the scheduler's lock so it never uploads a half-written
file. The dataset repo is created private if it does not exist.

Before the first push, the repo's existing snapshot is merged into the local store (newer edits win): on a Space
without persistent storage the database starts empty after a restart, and pushing its snapshot as is would
replace every annotation in the dataset's current file. If that snapshot cannot be read, sync stays off.

UI use, at launch (never at import)::

    sync = start_sync(store)          # None when not configured
    banner = sync_status(sync)        # a line for the page: where annotations go
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import CommitScheduler, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

from .store import AnnotationStore, export_annotations

ENV_REPO = "MT5_STUDIO_DATASET_REPO"
ENV_TOKEN = "HF_TOKEN"
ENV_MINUTES = "MT5_STUDIO_SYNC_MINUTES"
SNAPSHOT_NAME = "annotations.jsonl"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyncConfig:
    repo_id: str
    token: str
    every_minutes: float
    folder: Path


def sync_config(store: AnnotationStore, environ: dict[str, str] | None = None) -> SyncConfig | None:
    """The push configuration from the environment, or None (nothing leaves the machine) unless both the
    dataset repo and the token are set. The upload folder sits next to the database file (on PostgreSQL, in
    the local data folder: `store.local_dir`)."""
    environ = os.environ if environ is None else environ
    repo, token = environ.get(ENV_REPO, "").strip(), environ.get(ENV_TOKEN, "").strip()
    if not (repo and token):
        if repo or token:
            log.warning("annotation sync is off: set both %s and %s to push annotations to the Hub",
                        ENV_REPO, ENV_TOKEN)
        return None
    try:
        every = float(environ.get(ENV_MINUTES, "5"))
    except ValueError:
        raise ValueError(f"{ENV_MINUTES} must be a number of minutes, got {environ[ENV_MINUTES]!r}") from None
    if every <= 0:
        raise ValueError(f"{ENV_MINUTES} must be positive, got {every}")
    return SyncConfig(repo, token, every, store.local_dir / "hub_sync")


class AnnotationSync:
    """Writes JSONL snapshots of the store into the scheduler's folder, under the scheduler's lock."""

    def __init__(self, store: AnnotationStore, config: SyncConfig):
        self.store = store
        self.config = config
        self.scheduler: Any = None   # set by start_sync; anything with a `.lock` (a CommitScheduler)

    @property
    def snapshot_path(self) -> Path:
        return self.config.folder / SNAPSHOT_NAME

    def write_snapshot(self) -> bool:
        """Export every annotation to `annotations.jsonl` in the upload folder, atomically (a temporary file
        renamed into place) and under the scheduler's lock. An unchanged snapshot is not rewritten, so the
        scheduler (which uploads files whose time changed) makes no empty commits. True when written.

        The scheduler reads the file after releasing its lock, so call this only from the scheduler's own
        thread (it does, before each push); to push now, use `push_now()`."""
        records = self.store.query()   # read before taking the lock: the upload waits only for the write
        self.config.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.config.folder.parent / f".{SNAPSHOT_NAME}.tmp"   # outside the uploaded folder
        export_annotations(records, tmp, "jsonl")
        with self.scheduler.lock:
            if self.snapshot_path.exists() and self.snapshot_path.read_bytes() == tmp.read_bytes():
                tmp.unlink()
                return False
            os.replace(tmp, self.snapshot_path)
        return True

    def push_now(self) -> Any:
        """Ask the scheduler for a push now (snapshot, then upload); returns its Future."""
        return self.scheduler.trigger()


SchedulerFactory = Callable[..., Any]


def hub_scheduler(*, repo_id: str, token: str, folder_path: Path, every: float,
                  before_push: Callable[[Any], object], hf_api: Any = None) -> Any:
    """A CommitScheduler on a private dataset repo that calls `before_push(scheduler)` before each upload. It
    creates the repo if needed and pushes once at once (from its own thread, possibly before this function
    returns), then every `every` minutes and at exit."""
    class SnapshotScheduler(CommitScheduler):
        def push_to_hub(self):
            before_push(self)      # takes self.lock itself; the upload below takes it again
            return super().push_to_hub()

    return SnapshotScheduler(repo_id=repo_id, repo_type="dataset", folder_path=folder_path, every=every,
                             token=token, private=True, hf_api=hf_api)


def hub_snapshot(repo_id: str, token: str) -> Path | None:
    """The dataset repo's current snapshot file, or None when the repo or the file does not exist yet."""
    try:
        return Path(hf_hub_download(repo_id, SNAPSHOT_NAME, repo_type="dataset", token=token))
    except LocalEntryNotFoundError:
        raise  # the Hub could not be reached: unknown whether a snapshot exists (a subclass of the next one)
    except (EntryNotFoundError, RepositoryNotFoundError):
        return None


def restore(store: AnnotationStore, config: SyncConfig,
            download: Callable[[str, str], Path | None] = hub_snapshot) -> str:
    """Merges the repo's snapshot into the store (import_file: newer edits win); returns what happened."""
    path = download(config.repo_id, config.token)
    if path is None:
        return "no snapshot in the dataset repo yet"
    return store.import_file(path).message


def start_sync(store: AnnotationStore, environ: dict[str, str] | None = None,
               scheduler_factory: SchedulerFactory = hub_scheduler,
               download: Callable[[str, str], Path | None] = hub_snapshot) -> AnnotationSync | None:
    """Start pushing annotations when configured; None (and no scheduler, no network) otherwise.
    `scheduler_factory` gets repo_id, token, folder_path, every (minutes) and before_push (to call with the
    scheduler before each upload); `download` fetches
    the repo's existing snapshot, merged into the store first (sync stays off when that fails)."""
    config = sync_config(store, environ)
    if config is None:
        return None
    try:
        log.info("annotation sync: %s", restore(store, config, download))
    except Exception:  # noqa: BLE001 - a network or file error: pushing now could overwrite the remote file
        log.exception("annotation sync is off: could not read the snapshot in %s, and pushing without it "
                      "would replace it", config.repo_id)
        return None
    sync = AnnotationSync(store, config)
    config.folder.mkdir(parents=True, exist_ok=True)

    def before_push(scheduler: Any = None) -> None:
        # The scheduler's first push runs in its thread while its constructor may still be running, before
        # the assignment below: the scheduler passes itself so the snapshot can take its lock already.
        if sync.scheduler is None and scheduler is not None:
            sync.scheduler = scheduler
        try:
            sync.write_snapshot()
        except Exception:   # a failed snapshot must not stop the scheduler thread; the last one is uploaded
            log.exception("could not write the annotation snapshot")

    sync.scheduler = scheduler_factory(repo_id=config.repo_id, token=config.token, folder_path=config.folder,
                                       every=config.every_minutes, before_push=before_push)
    return sync


def sync_status(sync: AnnotationSync | None) -> str:
    """One line for the page saying where annotations are kept."""
    if sync is None:
        return "Annotations are kept on this machine only."
    return (f"Annotations are also pushed to the dataset {sync.config.repo_id} every "
            f"{sync.config.every_minutes:g} min.")
