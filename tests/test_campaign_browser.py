"""The Campaigns tab in a real browser (Debian's chromium via Playwright, as tests/test_app_browser.py): a campaign
made over the API from a plain JSONL of two systems' outputs (150-word sources), then judged with the keyboard
alone — scores, a span with its severity, submit-and-next, back and forward — at 1280×800 with nothing to scroll,
blind (no system name anywhere on the page), the guidelines shown at the start, unsaved changes guarded and the
draft restored, text contrast ≥ 4.5:1; screenshots in light and dark mode and at 390 px (data/screenshots/,
campaign-*.png). The store is read afterwards: judgements saved with the seconds spent and the span."""
import json
import os
import shutil
import sqlite3

import pytest

playwright = pytest.importorskip("playwright.sync_api")
gradio_client = pytest.importorskip("gradio_client")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"),
                                 reason="chromium is not installed: run .ci/setup-browser")]

import apphost  # noqa: E402

from test_app_browser import SHOTS, TIMEOUT  # noqa: E402

SYSTEMS = ("Zephyr-MT", "Quokka-NMT")
GUIDE = "Read the whole source first, then mark every error you see."
WORDS = ("the council approved a plan yesterday to plant twenty thousand trees along the river before winter "
         "and to open two new parks in the old harbour district").split()


def source(i: int) -> str:
    """A 150-word source."""
    return " ".join(WORDS[(i + k) % len(WORDS)] for k in range(150)).capitalize() + "."


def items_file(path, n=4):
    rows = [{"id": f"doc{i}", "source": source(i),
             "output_" + SYSTEMS[0]: f"Item {i}: the council plans twenty thousand trees and two parks by the river.",
             "output_" + SYSTEMS[1]: f"Item {i}: a plan for trees was approved; parks open in the harbour district."}
            for i in range(n)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    root = tmp_path_factory.mktemp("campaign-browser")
    db = root / "annotations.db"
    srv = apphost.start(root / "server.log", env={"MT5_STUDIO_DEMO_DIR": str(root / "demo"),
                                                  "MT5_STUDIO_DB": str(db)})
    client = gradio_client.Client(srv.url, verbose=False)
    made = client.predict("Park news", "summarization", "esa", gradio_client.handle_file(str(items_file(
        root / "items.jsonl"))), f"# How to judge\n\n{GUIDE}", 1, None, "", 0.0, "", api_name="/campaign_create")
    assert made["items"] == 4 and made["blind"]
    SHOTS.mkdir(parents=True, exist_ok=True)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.set_default_timeout(TIMEOUT)
        yield page, srv.url, db, made["id"]
        browser.close()
    srv.stop()


def open_campaign(page, url, theme="light"):
    page.goto(f"{url}/?__theme={theme}")
    page.wait_for_selector("#summarize-run")
    page.wait_for_timeout(1500)     # the page's load events (the name kept in the browser) first
    page.get_by_role("tab", name="Campaigns").click()
    name = page.locator("#campaign-annotator textarea, #campaign-annotator input").first
    name.fill("alice")
    page.locator("#campaign-choice input").click()
    page.get_by_role("option", name="Park news").click()


def keys(page, *presses):
    for k in presses:
        page.keyboard.press(k)


def item_id(page) -> str:
    page.locator(".cj-full").wait_for()
    return page.locator(".cj-title").inner_text().split("item ")[1].split()[0]


def fits(page) -> dict:
    return page.evaluate("""() => { const f = document.querySelector('.cj-full');
        return {doc: document.scrollingElement.scrollHeight, inner: innerHeight, full: f.scrollHeight,
                client: f.clientHeight, top: f.scrollTop, focused: document.activeElement.className}; }""")


CONTRAST = """(sel) => {
    const ctx = document.createElement('canvas').getContext('2d', {willReadFrequently: true});
    const rgb = (c) => { ctx.clearRect(0, 0, 1, 1); ctx.fillStyle = '#000'; ctx.fillStyle = c; ctx.fillRect(0, 0, 1, 1);
        const d = ctx.getImageData(0, 0, 1, 1).data; return [d[0], d[1], d[2], d[3] / 255]; };
    const lum = ([r, g, b]) => { const f = (v) => (v /= 255) <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
        return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b); };
    const out = [];
    document.querySelectorAll(sel).forEach((el) => {
        const fg = rgb(getComputedStyle(el).color);
        let node = el, bg = null;
        while (node && node.nodeType === 1) { const c = rgb(getComputedStyle(node).backgroundColor);
            if (c[3] > 0.9) { bg = c; break; } node = node.parentElement; }
        bg = bg || [255, 255, 255];
        const [a, b] = [lum(fg), lum(bg)].sort((x, y) => y - x);
        out.push({sel, text: el.textContent.slice(0, 30), ratio: (a + 0.05) / (b + 0.05)});
    });
    return out; }"""


def check_contrast(page):
    low = [c for sel in (".cj-keys", ".cj-sub", ".cj-full kbd", ".cj-title", ".cj-text", ".cj-span", ".cj-btn",
                         ".cj-bar", ".cj-progress", ".cj-chip")
           for c in page.evaluate(CONTRAST, sel) if c["ratio"] < 4.5]
    assert not low, low


def test_judging_with_the_keyboard_alone(app):
    page, url, db, cid = app
    open_campaign(page, url)
    # the guidelines first; g closes them
    guide = page.locator("#campaign-guidelines-box")
    guide.get_by_text(GUIDE).wait_for()
    page.wait_for_timeout(300)
    page.screenshot(path=str(SHOTS / "campaign-guidelines-light.png"))
    keys(page, "g")
    guide.wait_for(state="hidden")
    first = item_id(page)
    assert page.locator(".cj-progress").inner_text() == "0 of 4 yours done"
    html = page.content()
    assert not any(s in html for s in SYSTEMS)                         # blind: A and B only
    assert page.locator(".cj-panel h3").all_inner_texts()[1:] == ["a Output A", "b Output B"]
    # a 150-word source and both outputs on one screen: nothing to scroll
    size = fits(page)
    assert size["doc"] <= size["inner"] + 2 and size["full"] <= size["client"] + 2, size
    # scores by number keys, an error span by keys: m marks a word on B, → moves, Shift+→ extends, 2 = major,
    # then 0 = no category; Ctrl+Enter submits and the next item comes up at the top, focused
    keys(page, "a", "7", "3", "b", "4", "m", "ArrowRight", "Shift+ArrowRight", "2")
    page.locator(".cj-bar", has_text="Category of").wait_for()
    keys(page, "0")
    page.locator(".cj-text mark.cj-sev-major").wait_for()
    assert page.locator(".cj-panel[data-panel=A] output").inner_text() == "73"
    assert page.locator(".cj-panel[data-panel=B] output").inner_text() == "40"
    page.wait_for_timeout(400)
    page.screenshot(path=str(SHOTS / "campaign-item-light.png"))
    check_contrast(page)
    keys(page, "Control+Enter")
    page.locator(".cj-progress", has_text="1 of 4 yours done").wait_for()
    second = item_id(page)
    assert second != first
    size = fits(page)
    assert size["top"] == 0 and "cj-app" in size["focused"], size
    # unsaved changes: leaving asks first; "stay" keeps the item, "leave" keeps the draft for later
    keys(page, "a", "5")
    answers = []

    def answer(dialog):
        answers.append(dialog.message)
        dialog.dismiss() if len(answers) == 1 else dialog.accept()

    page.on("dialog", answer)
    keys(page, ",")
    page.wait_for_timeout(500)
    assert len(answers) == 1 and "not submitted" in answers[0] and item_id(page) == second
    keys(page, ",")
    page.locator(".cj-title", has_text=f"item {first} ").wait_for()
    assert page.locator(".cj-panel[data-panel=A] output").inner_text() == "73"   # the saved judgement
    page.remove_listener("dialog", answer)
    keys(page, ".")
    page.locator(".cj-title", has_text=f"item {second} ").wait_for()
    page.get_by_text("unsaved draft of this item is back").wait_for()
    assert page.locator(".cj-panel[data-panel=A] output").inner_text() == "50"
    # an incomplete judgement is not sent: the page says what is missing
    keys(page, "Control+Enter")
    page.get_by_text("Output B: give a score").wait_for()
    keys(page, "b", "6", "5", "Control+Enter")
    page.locator(".cj-progress", has_text="2 of 4 yours done").wait_for()
    # the keys list under ?
    keys(page, "?")
    page.locator(".cj-help", has_text="submit and go to the next item").wait_for()
    keys(page, "Escape")
    rows = sqlite3.connect(db).execute(
        "SELECT i.public_id, j.judgement, j.seconds FROM campaign_judgements j JOIN campaign_items i ON "
        "i.campaign_id = j.campaign_id AND i.item_id = j.item_id WHERE j.campaign_id=? AND j.annotator='alice' "
        "ORDER BY j.created_at", (cid,)).fetchall()   # the page shows the random public ids, never the file's
    assert [r[0] for r in rows] == [first, second] and all(r[2] > 0 for r in rows)
    one = json.loads(rows[0][1])["outputs"]
    assert (one["A"]["score"], one["B"]["score"]) == (73, 40)
    (span,) = one["B"]["spans"]
    assert span["severity"] == "major" and span["side"] == "output" and span["category"] == ""
    assert json.loads(rows[1][1])["outputs"]["A"]["score"] == 50


def test_dark_mode_and_a_phone(app):
    page, url, db, cid = app
    open_campaign(page, url, "dark")
    guide = page.locator("#campaign-guidelines-box")
    guide.get_by_text(GUIDE).wait_for()
    keys(page, "Enter")
    guide.wait_for(state="hidden")
    item_id(page)
    keys(page, "a", "8", "m", "2")
    page.locator(".cj-bar", has_text="Category of").wait_for()
    keys(page, "1")
    page.locator(".cj-text mark.cj-sev-major").wait_for()
    assert page.evaluate("() => document.body.classList.contains('dark') || "
                         "document.documentElement.classList.contains('dark')")
    page.wait_for_timeout(400)
    page.screenshot(path=str(SHOTS / "campaign-item-dark.png"))
    check_contrast(page)
    keys(page, "?")
    page.locator(".cj-help").wait_for()
    page.screenshot(path=str(SHOTS / "campaign-keys-dark.png"))
    keys(page, "Escape")
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_timeout(400)
    cols = page.evaluate("() => getComputedStyle(document.querySelector('.cj-texts')).gridTemplateColumns")
    assert len(cols.split()) == 1                       # stacked on a phone
    page.screenshot(path=str(SHOTS / "campaign-item-phone-dark.png"))
    page.set_viewport_size({"width": 1280, "height": 800})


@pytest.mark.parametrize("protocol, presses, stored", [
    ("pairwise", ["2"], lambda j: j["preference"] == "B"),
    ("likert", ["a", "4", "b", "2"], lambda j: (j["outputs"]["A"]["rating"], j["outputs"]["B"]["rating"]) == (4, 2)),
    ("postedit", ["a", "=", "b", "="], lambda j: j["outputs"]["A"]["corrected"].startswith("Item ")),
])
def test_other_protocols_by_keys(app, protocol, presses, stored):
    page, url, db, _ = app
    client = gradio_client.Client(url, verbose=False)
    made = client.predict(f"{protocol} news", "summarization", protocol, gradio_client.handle_file(str(items_file(
        db.parent / f"{protocol}.jsonl", 2))), "", 1, None, "", 0.0, "", api_name="/campaign_create")
    page.goto(f"{url}/")
    page.wait_for_selector("#summarize-run")
    page.wait_for_timeout(1500)
    page.get_by_role("tab", name="Campaigns").click()
    page.locator("#campaign-annotator textarea, #campaign-annotator input").first.fill("bob")
    page.locator("#campaign-choice input").click()
    page.get_by_role("option", name=f"{protocol} news").click()
    item_id(page)
    assert not any(s in page.content() for s in SYSTEMS)
    keys(page, "Control+Enter")       # nothing given yet: the page says what is missing, nothing is sent
    page.locator(".cj-msg .status-warn").wait_for()
    keys(page, *presses, "Control+Enter")
    page.locator(".cj-progress", has_text="1 of 2 yours done").wait_for()
    (row,) = sqlite3.connect(db).execute("SELECT judgement, seconds FROM campaign_judgements WHERE campaign_id=?",
                                         (made["id"],)).fetchall()
    assert stored(json.loads(row[0])) and row[1] > 0
