"""The files the app writes for visitors (exports of annotations and comparisons): all under one folder per
deployment (MT5_STUDIO_FILES_DIR), kept for an age limit and within a size cap, so no visitor can fill the disk.

Each file gets a fresh folder `root/mt5studio-<time>-<random>/` (`write`, or `new_folder` then `admit`). A folder
older than the age limit is removed by `sweep`: at start and on a schedule (`start_sweeper`), and before every new
folder. A file that would take the whole past the cap is refused (`admit` raises FilesFull, whose message names
the limit) and removed at once, so nothing of it stays. Only folders made here are ever removed: a root set by
mistake to a folder holding other things loses nothing else.

The page serves these files from this folder as they are, not copied into Gradio's cache
(app.annotation.api.serve_visitor_files says why), so the cap bounds them all. Everything in the folder can be
downloaded by whoever has its URL: give it a folder of its own.
"""
from __future__ import annotations

import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

PREFIX = "mt5studio-"


class FilesFull(ValueError):
    """A file for a visitor would take the files folder past its size cap; nothing of it was kept."""


def folder_bytes(path: Path) -> int:
    """Bytes of the regular files under `path` (0 if it is gone)."""
    total = 0
    for folder, _, names in os.walk(path):
        for name in names:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except FileNotFoundError:   # swept or replaced meanwhile
                pass
    return total


def size_label(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 2**10:.1f} KB"


def age_label(seconds: float) -> str:
    for unit, length in (("hour", 3600), ("minute", 60)):
        if seconds >= length:
            return f"{seconds / length:g} {unit}(s)"
    return f"{seconds:g} second(s)"


class VisitorFiles:
    """The deployment's folder for visitors' files: `root`, folders kept `max_age_s` seconds, `max_bytes` in all.
    Safe across threads: a file is admitted by measuring what is on disk once it is written, the others' files
    included, so files admitted together never pass the cap."""

    def __init__(self, root: str | Path, max_age_s: float, max_bytes: int):
        self.root, self.max_age_s, self.max_bytes = Path(root), float(max_age_s), int(max_bytes)
        self._lock = threading.Lock()

    def folders(self) -> list[Path]:
        """The folders made here, oldest first."""
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.iterdir() if p.name.startswith(PREFIX) and p.is_dir() and not p.is_symlink()]
        return sorted(found, key=lambda p: p.name)

    def used(self) -> int:
        """Bytes held under the folders made here."""
        return sum(folder_bytes(p) for p in self.folders())

    def sweep(self, now: float | None = None) -> list[Path]:
        """Removes the folders older than the age limit (by their last change); returns them."""
        now = time.time() if now is None else now
        gone = []
        with self._lock:
            for path in self.folders():
                try:
                    if now - path.stat().st_mtime > self.max_age_s:
                        shutil.rmtree(path, ignore_errors=True)
                        gone.append(path)
                except FileNotFoundError:
                    pass
        return gone

    def new_folder(self) -> Path:
        """A fresh, empty folder for one visitor's file(s), after a sweep. FilesFull when the cap is reached."""
        self.sweep()
        self.reserve(0)
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / f"{PREFIX}{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(16)}"
        path.mkdir()
        return path

    def reserve(self, n: int, within: Path | None = None) -> None:
        """FilesFull, naming the limit, unless `n` more bytes fit under the cap (not counting `within`)."""
        with self._lock:
            used = sum(folder_bytes(p) for p in self.folders() if p != within)
        if used + n > self.max_bytes or (n == 0 and used >= self.max_bytes):
            raise FilesFull(self.full_message(n, used))

    def admit(self, path: Path) -> Path:
        """`path` (a file written in a `new_folder`) if the folder still fits under the cap; else its folder is
        removed and FilesFull raised. Returns `path`."""
        folder = path.parent
        try:
            self.reserve(folder_bytes(folder), within=folder)
        except FilesFull:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return path

    def write(self, make: Callable[[Path], Path]) -> Path:
        """The file `make(folder)` writes in a new folder, admitted under the cap; FilesFull (nothing kept) when
        the cap is reached or the file would pass it. A `make` that raises leaves nothing either."""
        folder = self.new_folder()
        try:
            path = make(folder)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return self.admit(path)

    def full_message(self, n: int, used: int) -> str:
        size = f"this file ({size_label(n)})" if n else "a new file"
        return (f"{size} would pass this deployment's limit on files kept for download ({size_label(self.max_bytes)}"
                f", MT5_STUDIO_FILES_MB; {size_label(used)} are taken by files made in the last "
                f"{age_label(self.max_age_s)}, removed as they age): try again later, or export fewer records")


def trim_oldest(folder: Path, max_bytes: int) -> list[Path]:
    """Removes the oldest entries right under `folder` (Gradio's upload folder: one sub-folder per upload) until
    what is left holds at most `max_bytes`; returns what was removed. Uploads are read once, when their handler
    runs (a batch file goes into the database at once), so only a file uploaded and not yet used can be lost, and
    its handler then says it is gone."""
    try:
        entries = sorted(folder.iterdir(), key=lambda p: p.lstat().st_mtime)
    except FileNotFoundError:
        return []
    sizes = [folder_bytes(p) if p.is_dir() else p.lstat().st_size for p in entries]
    total, removed = sum(sizes), []
    for path, size in zip(entries, sizes):
        if total <= max_bytes:
            break
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        total -= size
        removed.append(path)
    return removed


class Sweeper:
    """A daemon thread that sweeps `files` every `every_s` seconds, and trims `uploads` (Gradio's upload folder)
    to the same size cap, until `stop()`."""

    def __init__(self, files: VisitorFiles, every_s: float, uploads: Path | None = None):
        self.files, self.every_s, self.uploads = files, every_s, uploads
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="visitor-files-sweeper", daemon=True)

    def sweep(self) -> None:
        self.files.sweep()
        if self.uploads is not None:
            trim_oldest(self.uploads, self.files.max_bytes)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.sweep()
            except OSError:   # a full or read-only disk must not end the sweeping
                pass

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(timeout=10)


def start_sweeper(files: VisitorFiles, every_s: float | None = None, uploads: Path | None = None) -> Sweeper:
    """Sweeps `files` now (what a previous run left) and then on a schedule: by default every quarter of the age
    limit, between 1 s and 5 min, so a folder outlives its age limit by at most that. `uploads` (Gradio's upload
    folder, whose files Gradio deletes after an hour, each at most MT5_STUDIO_MAX_FILE_MB) is held to the same
    size cap, oldest first, so many uploads within the hour cannot fill the disk either."""
    every_s = every_s if every_s is not None else min(300.0, max(1.0, files.max_age_s / 4))
    sweeper = Sweeper(files, every_s, uploads)
    sweeper.sweep()
    sweeper.thread.start()
    return sweeper
