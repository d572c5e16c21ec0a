"""Shared test settings and fixtures.

Reference tests (marker `reference`) compare with transformers 4.57 in `.venv-ref`. Without that venv they are
skipped with one reason, except in CI (`CI` set), where a missing reference is a failure.
"""
import os

import pytest

from pgserver import BACKENDS, Databases
from refutil import REF_PYTHON

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Module fixtures that run the reference: every test that uses one is a reference test.
REFERENCE_FIXTURES = {"reference", "parity"}
NO_REFERENCE = f"the transformers reference venv {REF_PYTHON} is missing: build it with `bash .ci/setup-reference`"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if REFERENCE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.reference)
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
