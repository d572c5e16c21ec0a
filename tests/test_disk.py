"""The disk is bounded (issue 21): every file the app writes for a visitor lives under one folder (app.files,
MT5_STUDIO_FILES_DIR), is removed after an age limit (at start, on a schedule and before each new file), and an
export that would pass the size cap is refused with a message naming the limit, nothing of it kept."""
import os
import time
from pathlib import Path

import pytest

from app.annotation.api import export
from app.annotation.store import Annotation, AnnotationStore
from app.files import PREFIX, FilesFull, VisitorFiles, folder_bytes, start_sweeper, trim_oldest
from app.settings import Settings


def write(files: VisitorFiles, n: int, name: str = "export.jsonl") -> Path:
    return files.write(lambda folder: _bytes(folder / name, n))


def _bytes(path: Path, n: int) -> Path:
    path.write_bytes(b"x" * n)
    return path


def age(path: Path, seconds: float) -> None:
    """Makes `path` look `seconds` old."""
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_folders_older_than_the_age_limit_are_swept_and_nothing_else(tmp_path):
    files = VisitorFiles(tmp_path / "files", max_age_s=60, max_bytes=10_000)
    old, new = write(files, 10).parent, write(files, 10).parent
    age(old, 61)
    foreign = tmp_path / "files" / "someone-elses"   # not made here: never removed, whatever its age
    foreign.mkdir()
    age(foreign, 10_000)
    assert files.sweep() == [old]
    assert not old.exists() and new.exists() and foreign.exists()
    assert [p.name.startswith(PREFIX) for p in files.folders()] == [True]


def test_an_export_past_the_cap_is_refused_with_the_limit_and_nothing_is_kept(tmp_path):
    files = VisitorFiles(tmp_path / "files", max_age_s=60, max_bytes=3 * 2**20)
    first = write(files, 2 * 2**20)
    with pytest.raises(FilesFull, match=r"^this file \(2\.0 MB\) would pass this deployment's limit on files kept "
                                        r"for download \(3\.0 MB, MT5_STUDIO_FILES_MB; 2\.0 MB are taken by files "
                                        r"made in the last 1 minute\(s\)"):
        write(files, 2 * 2**20)
    assert files.folders() == [first.parent] and files.used() == 2 * 2**20   # the refused file is gone
    write(files, 2**20)   # what fits is kept
    with pytest.raises(FilesFull, match="a new file would pass"):   # full: refused before anything is written
        files.new_folder()
    for folder in files.folders():
        age(folder, 61)
    assert write(files, 2 * 2**20).is_file()   # aged out: room again


def test_a_failed_export_leaves_no_folder(tmp_path):
    files = VisitorFiles(tmp_path / "files", max_age_s=60, max_bytes=10_000)

    def broken(folder: Path) -> Path:
        (folder / "half.jsonl").write_text("{")
        raise OSError("disk full")

    with pytest.raises(OSError):
        files.write(broken)
    assert files.folders() == []


def test_annotation_exports_go_to_the_files_folder_and_respect_the_cap(tmp_path):
    store = AnnotationStore(tmp_path / "a.db")
    try:
        store.save(Annotation(task="summarization", model_id="demo/m", input="x" * 5000, output="y", rating=4,
                              annotator="ada"))
        files = VisitorFiles(tmp_path / "files", max_age_s=60, max_bytes=8000)
        path = export(store, "jsonl", files=files)
        assert path.parent.parent == tmp_path / "files" and path.stat().st_size > 5000
        with pytest.raises(ValueError, match=r"would pass this deployment's limit on files kept for download "
                                             r"\(7\.8 KB"):
            export(store, "jsonl", files=files)
        assert files.folders() == [path.parent]
    finally:
        store.close()


def test_the_sweeper_sweeps_at_start_and_then_on_schedule(tmp_path):
    files = VisitorFiles(tmp_path / "files", max_age_s=60, max_bytes=10_000)
    left = write(files, 10).parent   # what a previous run left
    age(left, 120)
    sweeper = start_sweeper(files, every_s=0.2)
    try:
        assert not left.exists()   # at start, before start_sweeper returns
        later = write(files, 10).parent
        age(later, 120)
        deadline = time.monotonic() + 10
        while later.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not later.exists()
    finally:
        sweeper.stop()
    assert not sweeper.thread.is_alive()


def test_the_settings_name_the_folder_its_age_and_its_cap(tmp_path):
    s = Settings.from_env({"MT5_STUDIO_FILES_DIR": str(tmp_path / "f"), "MT5_STUDIO_FILES_AGE_S": "90",
                           "MT5_STUDIO_FILES_MB": "2"})
    assert (s.files.root, s.files.max_age_s, s.files.max_bytes) == (tmp_path / "f", 90, 2 * 2**20)
    assert s.files is s.files   # one per deployment: one lock over the cap
    d = Settings.from_env({})
    assert (d.files_dir.name, d.files_max_age_s, d.files_max_bytes) == ("visitor-files", 3600, 500 * 2**20)


@pytest.mark.slow   # one app start: about 20 s on a busy 2-core machine
def test_thirty_exports_through_the_app_keep_the_disk_bounded(tmp_path):
    import apphost
    from gradio_client import Client, handle_file

    files, tmp = tmp_path / "files", tmp_path / "tmp"
    tmp.mkdir()
    env = {"MT5_STUDIO_DEMO_DIR": str(tmp_path / "demo"), "MT5_STUDIO_DB": str(tmp_path / "a.db"),
           "MT5_STUDIO_FILES_DIR": str(files), "MT5_STUDIO_FILES_AGE_S": "2", "MT5_STUDIO_FILES_MB": "1",
           "TMPDIR": str(tmp), "GRADIO_TEMP_DIR": str(tmp_path / "gradio")}
    srv = apphost.start(tmp_path / "server.log", env=env)
    try:
        client = Client(srv.url, verbose=False, download_files=str(tmp_path / "downloads"))
        client.predict("summarization", "demo/m", "سلام دنیا " * 200, "out", 4, None, [], "", "ada",
                       api_name="/annotate")

        def exports(n: int) -> None:
            for i in range(n):
                got = client.predict("jsonl", api_name="/export") if i % 2 else \
                    client.predict(fmt="jsonl", task="", api_name="/export_comparisons")
                assert Path(got).is_file()

        exports(15)
        assert not [p for p in tmp.rglob("*") if p.name.startswith("mt5studio")]   # nothing outside the folder,
        assert not list((tmp_path / "gradio").rglob("*.jsonl"))   # not even a copy in Gradio's cache
        first = {p.name for p in files.iterdir()}
        assert 0 < len(first) <= 15 and folder_bytes(files) <= 2**20   # (on a busy machine the first may be swept)
        time.sleep(3)   # past the age limit: the next export sweeps them
        exports(15)
        now = {p.name for p in files.iterdir()}
        assert now and not first & now   # (the second round's first ones may be swept too: it takes seconds)
        assert folder_bytes(files) <= 2**20 and not list((tmp_path / "gradio").rglob("*.jsonl"))
        # uploads: each under MT5_STUDIO_MAX_FILE_MB, and all of them held to the cap by the sweeper, oldest first
        blob = tmp_path / "upload.csv"
        blob.write_bytes(b"x" * 200_000)
        for _ in range(12):   # 2.4 MB in all; refused as imports, but Gradio keeps each upload
            with pytest.raises(Exception, match="Nothing imported"):
                client.predict(handle_file(str(blob)), api_name="/import")
        time.sleep(2.5)   # a sweep or two
        assert folder_bytes(tmp_path / "gradio") <= 2**20
    finally:
        srv.stop()


def test_trim_oldest_keeps_the_newest_within_the_cap(tmp_path):
    for i in range(5):
        (tmp_path / f"u{i}").mkdir()
        (tmp_path / f"u{i}" / "f.bin").write_bytes(b"x" * 1000)
        os.utime(tmp_path / f"u{i}", (1000 + i, 1000 + i))
    removed = trim_oldest(tmp_path, 2500)
    assert [p.name for p in removed] == ["u0", "u1", "u2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["u3", "u4"]
    assert trim_oldest(tmp_path / "missing", 1) == []
