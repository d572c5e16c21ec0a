"""Shared test settings and fixtures.

Reference tests (marker `reference`) compare with transformers 4.57 in `.venv-ref`. Without that venv they are
skipped with one reason, except in CI (`CI` set), where a missing reference is a failure.

Server tests (marker `server`) start an app server: `python app.py` (tests/apphost.py), an in-process
`Blocks.launch`, or the OAuth app of tests/test_fakeidp.py. They are found, not listed: a test is one when its own
body, or any fixture it uses (directly or through other fixtures), or a function of the same module that either of
them calls, starts a server (`SERVER_STARTS`). The fast loop leaves them out with `-m "not server"`.
"""
import inspect
import os
import re

import pytest

from pgserver import BACKENDS, Databases
from refutil import REF_PYTHON

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Module fixtures that run the reference: every test that uses one is a reference test.
REFERENCE_FIXTURES = {"reference", "parity"}
NO_REFERENCE = f"the transformers reference venv {REF_PYTHON} is missing: build it with `bash .ci/setup-reference`"


# What starting an app server looks like in a test's source: tests/apphost.py's `start` (imported as `apphost` or
# `server`), a Gradio `launch` (not chromium's), or running `app.py` in a child process
# (`Popen([..., "app.py", ...])`, `run([...])`).
SERVER_STARTS = re.compile(r"\b(apphost|server)\.start\(|(?<!chromium)\.launch\(|\b(Popen|run)\(\[[^\]]*\bapp\.py\b")
NAME = re.compile(r"\b[A-Za-z_]\w*\b")


def starts_server(fn, _known: dict = {}) -> bool:
    """Whether `fn`'s source starts a server, or a name of its module that it uses does: a function (looked at the
    same way) or a text (a script it runs, as tests/test_fakeidp.py's APP)."""
    fn = inspect.unwrap(fn)
    if fn not in _known:
        _known[fn] = False   # while looking: a call back into `fn` adds nothing
        try:
            source = inspect.getsource(fn)
        except (OSError, TypeError):
            return False
        module = inspect.getmodule(fn)
        used = [getattr(module, name, None) for name in set(NAME.findall(source))]
        _known[fn] = bool(SERVER_STARTS.search(source)) or any(
            isinstance(other, str) and SERVER_STARTS.search(other)
            or inspect.isfunction(other) and other.__module__ == fn.__module__ and starts_server(other)
            for other in used)
    return _known[fn]


def uses_server(item) -> bool:
    if starts_server(getattr(item, "function", None) or (lambda: None)):
        return True
    info = getattr(item, "_fixtureinfo", None)
    for defs in (info.name2fixturedefs.values() if info else ()):
        if defs and starts_server(defs[-1].func):
            return True
    return False


def pytest_collection_modifyitems(config, items):
    for item in items:
        if REFERENCE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.reference)
        if uses_server(item):
            item.add_marker(pytest.mark.server)
    if REF_PYTHON.exists() or os.environ.get("CI"):
        return
    skip = pytest.mark.skip(reason=NO_REFERENCE)
    for item in items:
        if item.get_closest_marker("reference"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def demo_server(tmp_path_factory):
    """One `python app.py --demo` for the API tests that only read (its own demo checkpoints and database)."""
    import apphost

    root = tmp_path_factory.mktemp("demo-app")
    env = {"MT5_STUDIO_DEMO_DIR": str(root / "demo"), "MT5_STUDIO_DB": str(root / "annotations.db")}
    srv = apphost.start(root / "server.log", env=env)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def demo_client(demo_server):
    gradio_client = pytest.importorskip("gradio_client")
    return gradio_client.Client(demo_server.url, verbose=False)


@pytest.fixture(params=BACKENDS)
def databases(request, tmp_path):
    """Where this test's stores live, once per backend: `databases("a.db")` is a file under tmp_path (sqlite) or
    a fresh schema on the test server (postgresql; skipped without one, failed in CI). See tests/pgserver.py."""
    dbs = Databases(request.param, tmp_path)
    yield dbs
    dbs.drop()
