"""A real login in a real browser (chromium via Playwright) on the app behind Gradio's `auth=`: the login page,
the signed-in line, the annotator box filled with the account and locked, a save recorded under the account, and
the Annotations tab showing the annotator's own rows only. Screenshots (light and dark) in data/screenshots/."""
import os
import re
import shutil
import sqlite3

import pytest

playwright = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"),
                                 reason="chromium is not installed: run .ci/setup-browser")]

import apphost  # noqa: E402
from test_app_browser import SHOTS, TIMEOUT  # noqa: E402

USERS = {"alice": "alice-pw", "root": "root-pw"}


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    root = tmp_path_factory.mktemp("rights-browser")
    env = {"MT5_STUDIO_DEMO_DIR": str(root / "demo"), "MT5_STUDIO_DB": str(root / "a.db"),
           "MT5_STUDIO_USERS": ",".join(f"{u}:{p}" for u, p in USERS.items()), "MT5_STUDIO_ADMINS": "root"}
    srv = apphost.start(root / "server.log", env=env)
    SHOTS.mkdir(parents=True, exist_ok=True)
    yield srv, root / "a.db"
    srv.stop()


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_log_in_save_and_see_only_ones_own(app, scheme):
    srv, db = app
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1280, "height": 1000}, color_scheme=scheme)
        page.set_default_timeout(TIMEOUT)
        page.goto(srv.url)
        # Gradio's login page: a wrong password is refused, the right one opens the app
        page.get_by_label("username").fill("alice")
        page.get_by_label("password").fill("wrong")
        page.get_by_role("button", name="Login").click()
        page.get_by_text("Incorrect Credentials").wait_for()
        page.get_by_label("username").fill("alice")       # the login page clears both fields after a refusal
        page.get_by_label("password").fill(USERS["alice"])
        page.get_by_role("button", name="Login").click()
        page.wait_for_selector("#summarize-run")
        line = page.locator("#signed-in")
        line.get_by_text("alice").wait_for()
        assert "Signed in as alice." in line.inner_text()
        assert page.locator("#logout-button").is_visible()
        page.locator("#sign-in-row").screenshot(path=str(SHOTS / f"signed-in-{scheme}.png"))

        page.locator("#summarize-input textarea").fill("Ein kurzer Text über das Wetter in Berlin.")
        page.click("#summarize-run")
        page.locator("#tab-summarization .status-info", has_text="Done").wait_for()
        tab = page.locator("#tab-summarization")
        tab.get_by_text("Annotate this result").click()
        box = page.locator("#summarization-annotation-annotator input, "
                           "#summarization-annotation-annotator textarea").first
        page.wait_for_function("(el) => el.value === 'alice'", arg=box.element_handle())
        assert box.is_disabled()   # the account, not a name to type
        page.locator("#summarization-annotation-rating").get_by_text("4", exact=True).click()   # not empty
        tab.get_by_role("button", name="Save annotation").click()
        # the second run (dark) gets alice's earlier judgement of the same output back: saving updates it
        tab.locator(".status-info", has_text=re.compile("(Saved|Updated) annotation")).wait_for()
        with sqlite3.connect(db) as conn:
            owners = conn.execute("SELECT annotator, owner FROM annotations").fetchall()
        assert owners and set(owners) == {("alice", "alice")}

        page.get_by_role("tab", name="Annotations").click()
        page.click("#annotations-refresh")
        summary = page.locator("#annotations-summary")
        # the refresh's own count (the page load wrote one before the save)
        summary.get_by_text(f"{len(owners)} annotation(s) of yours match").wait_for()
        page.screenshot(path=str(SHOTS / f"annotations-signed-in-{scheme}.png"), full_page=False)
        browser.close()
