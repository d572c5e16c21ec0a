"""The Compare tab in a real browser (Debian's chromium via Playwright, as tests/test_app_browser.py), in light and
dark mode: a model compared with itself under the same settings is refused with nothing run; with another decoding
setting on one side both run, the outputs come back as A and B with nothing said about which is which, a span is
marked on A with a real mouse selection, a preference saved, and only then the systems are revealed. The stored
record (read from the app's SQLite file) holds the span on the selected text. Screenshots in data/screenshots/."""
import json
import os
import shutil
import sqlite3

import pytest

playwright = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"),
                                 reason="chromium is not installed: run .ci/setup-browser")]

import apphost  # noqa: E402
from app.annotation.batch import BatchInput, create_job, job_rows  # noqa: E402
from app.annotation.comparisons import query_comparisons  # noqa: E402
from app.annotation.store import AnnotationStore  # noqa: E402

from test_app_browser import SHOTS, TIMEOUT, shot  # noqa: E402

TEXTS = {"light": "El ayuntamiento de Valencia aprobó ayer un plan para plantar veinte mil árboles.",
         "dark": "قالت الحكومة إن المشروع سينتهي في عام ٢٠٣٠ بعد موافقة البرلمان."}


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare-browser")
    db = root / "annotations.db"
    srv = apphost.start(root / "server.log", env={"MT5_STUDIO_DEMO_DIR": str(root / "demo"),
                                                  "MT5_STUDIO_DB": str(db)})
    SHOTS.mkdir(parents=True, exist_ok=True)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.set_default_timeout(TIMEOUT)
        page.goto(srv.url)
        page.wait_for_selector("#summarize-run")
        yield page, db
        browser.close()
    srv.stop()


def drag_select(page, view, chars: int = 6) -> str:
    """A real mouse drag over the first `chars` characters of a span view; returns what the page selected."""
    view.scroll_into_view_if_needed()
    box = view.evaluate("""(el, n) => {
        const node = el.firstChild, text = node.textContent;
        let a = 0;
        while (a < text.length && /\\s/.test(text[a])) a++;
        const r = document.createRange();
        r.setStart(node, a); r.setEnd(node, Math.min(text.length, a + n));
        const rects = r.getClientRects(), first = rects[0], last = rects[rects.length - 1];
        return {x0: first.left + 1, y0: first.top + first.height / 2, x1: last.right - 1,
                y1: last.top + last.height / 2};
    }""", chars)
    page.mouse.move(box["x0"], box["y0"])
    page.mouse.down()
    page.mouse.move(box["x1"], box["y1"], steps=8)
    page.mouse.up()
    return page.evaluate("() => window.getSelection().toString()")


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_blind_side_by_side_comparison(app, scheme):
    page, db = app
    page.reload()          # both systems back to the same settings
    page.wait_for_selector("#summarize-run")
    page.emulate_media(color_scheme=scheme)
    page.get_by_role("tab", name="Compare").click()
    page.locator("#compare-input textarea").fill(TEXTS[scheme])
    # the same checkpoint with the same settings on both sides: refused, nothing run
    page.click("#compare-run")
    refused = page.locator("#compare-run-status .status-error", has_text="same system")
    refused.wait_for()
    assert "Nothing run" in refused.inner_text()
    assert page.locator('#compare-view-A [data-span-side="A"]').text_content() == ""
    # system 2 decodes differently (at most 8 new tokens)
    system2 = page.locator("#compare-system-2")
    if not system2.locator("input[type=number]").first.is_visible():
        system2.get_by_text("Decoding settings").click()
    tokens = system2.locator("input[type=number]").first
    for _ in range(20):   # the page's load fills the checkpoint's defaults in, and can land after our typing
        tokens.fill("8")
        tokens.press("Enter")
        page.wait_for_timeout(500)
        if tokens.input_value() == "8":
            break
    assert tokens.input_value() == "8"
    page.click("#compare-run")
    page.locator("#compare-run-status .status-info", has_text="Both systems ran").wait_for()
    view_a = page.locator('#compare-view-A [data-span-side="A"]')
    page.wait_for_function("""() => {
        const a = document.querySelector('#compare-view-A [data-span-side="A"]');
        const b = document.querySelector('#compare-view-B [data-span-side="B"]');
        return a && b && a.textContent.trim() !== '' && b.textContent.trim() !== '';
    }""", timeout=TIMEOUT)
    shown_a = view_a.text_content()
    # blind: nothing on the page says which system is A before saving
    assert page.locator("#compare-status").inner_text().strip() == ""
    assert "was system" not in page.locator("#tab-compare, .tabitem:visible").first.inner_text()
    selected = drag_select(page, view_a)
    assert selected.strip(), "the drag selected nothing"
    page.locator("#compare-span-severity").get_by_text("Major", exact=True).click()
    page.click("#compare-add-span")
    mark = page.locator("#compare-view-A mark.span-major")
    mark.wait_for()
    assert mark.inner_text() == selected.strip()
    playwright.expect(page.locator("#compare-spans")).to_contain_text(selected.strip())
    page.locator("#compare-preference").get_by_text("B is better", exact=True).click()
    name = page.locator("#compare-annotator textarea, #compare-annotator input").first
    name.fill(f"Ana-{scheme}")
    page.locator("#compare-comment textarea").fill("B is shorter; «A» repeats")
    shot(page, f"10a-compare-before-save-{scheme}", "#component-0, body")
    page.click("#compare-save")
    saved = page.locator("#compare-status .status-info", has_text="Saved comparison")
    saved.wait_for()
    revealed = saved.inner_text()
    assert "A was system" in revealed and "B was system" in revealed and "max_new_tokens=8" in revealed
    shot(page, f"10b-compare-saved-{scheme}")
    # the stored record: the span marks exactly the selected text of the output shown as A
    with AnnotationStore(db) as store:
        (c,) = [c for c in query_comparisons(store) if c.annotator == f"Ana-{scheme}"]
    assert c.preference == "B" and c.output_a == shown_a and c.input == TEXTS[scheme]
    (span,) = c.spans
    assert (span["side"], span["severity"]) == ("A", "major")
    assert c.output_a[span["start"]:span["end"]] == selected.strip()
    a_is_8 = "max_new_tokens=8" in revealed.split("B was system")[0]
    assert (c.system_a.decoding["max_new_tokens"] == 8) == a_is_8
    assert {c.system_a.decoding["max_new_tokens"], c.system_b.decoding["max_new_tokens"]} == {8, 64}
    # saving the same pair twice is refused
    page.click("#compare-save")
    page.locator("#compare-status .status-warn", has_text="saved already").wait_for()


def test_win_rates_show_in_the_annotations_tab(app):
    page, db = app
    page.emulate_media(color_scheme="light")
    with sqlite3.connect(db) as conn:
        n = conn.execute("SELECT COUNT(*) FROM comparisons").fetchone()[0]
    assert n >= 1        # the comparisons the tests before saved (two when both colour schemes ran)
    page.get_by_role("tab", name="Annotations").click()
    page.click("#annotations-refresh")
    page.get_by_text("Side-by-side comparisons: win rates").click()
    table = page.locator("#annotations-win-rates")
    playwright.expect(table).to_contain_text("max_new_tokens=8", timeout=TIMEOUT)
    playwright.expect(page.locator("#annotations-compare-agreement")).to_contain_text(f"{n} comparison(s) stored")
    listing = page.locator("#annotations-comparisons")
    playwright.expect(listing).to_contain_text("B is better")
    shot(page, "10c-annotations-win-rates", "#annotations-compare")
    # export the comparisons from the page: every one is in the file, spans and all
    page.click("#annotations-compare-export")
    link = page.locator("#annotations-compare-export-file a").first
    link.wait_for()
    with page.expect_download() as download:
        link.click()
    rows = [json.loads(line) for line in open(download.value.path(), encoding="utf-8")]
    with AnnotationStore(db) as store:
        assert sorted(r["id"] for r in rows) == sorted(c.id for c in query_comparisons(store))
    assert all(r["spans"] and r["spans"][0]["side"] == "A" for r in rows)
    # delete one (asks first), then it is gone from the list and marked deleted in the file
    short = rows[0]["id"][:8]
    listing.get_by_text(short, exact=True).last.click()
    page.click("#annotations-compare-delete")
    page.locator("#annotations-compare-status .status-warn", has_text="Confirm").wait_for()
    page.click("#annotations-compare-delete")
    page.locator("#annotations-compare-status .status-info", has_text=f"Deleted comparison {short}").wait_for()
    playwright.expect(listing).not_to_contain_text(short)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT deleted_at IS NOT NULL FROM comparisons WHERE id=?", (rows[0]["id"],)) \
            .fetchone() == (1,)


def test_annotations_editor_shows_and_edits_error_spans(app):
    """An annotation saved with one span (through /annotate) shows it highlighted in the Annotations tab's editor;
    a second span marked there with the mouse is saved with the changes."""
    page, db = app
    gradio_client = pytest.importorskip("gradio_client")
    client = gradio_client.Client(page.url, verbose=False)
    output = "Der Stadtrat beschloss gestern einen Plan für Bäume."
    saved = client.predict("summarization", "demo/generation", TEXTS["light"], output, 3, None, [], "editor test",
                           "Cleo", protocol="esa", esa_score=40,
                           spans=[{"start": 30, "end": 35, "side": "output", "category": "", "severity": "major"}],
                           api_name="/annotate")
    page.reload()
    page.wait_for_selector("#summarize-run")
    page.get_by_role("tab", name="Annotations").click()
    page.click("#annotations-refresh")
    table = page.locator("#annotations-table")
    row = table.get_by_text(saved["id"][:8], exact=True).last
    row.wait_for()
    row.click()
    first = page.locator("#annotations-edit-view-output mark.span-major")
    first.wait_for()
    assert first.inner_text() == output[30:35]
    selected = drag_select(page, page.locator('#annotations-edit-view-output [data-span-side="output"]'), 3)
    assert selected.strip() == output[:3]
    page.click("#annotations-edit-add-span")
    page.locator("#annotations-edit-view-output mark.span-minor").wait_for()
    page.click("#annotations-update")
    page.locator("#annotations-status .status-info", has_text="Saved changes").wait_for()
    shot(page, "10d-annotations-editor-spans", "#annotations-edit-spans-box >> nth=0")
    with AnnotationStore(db) as store:
        spans = store.get(saved["id"]).spans
    assert [(s["start"], s["end"], s["severity"]) for s in spans] == [(0, 3, "minor"), (30, 35, "major")]


def test_batch_compare_job_queue_is_blind(app, tmp_path):
    """A file through two systems (one with at most 8 new tokens) in the Batch tab; the queue shows A and B, a
    preference saved is linked to the row, and the queue stays blind: no system is revealed after a save."""
    page, db = app
    page.reload()
    page.wait_for_selector("#summarize-run")
    page.emulate_media(color_scheme="light")
    page.get_by_role("tab", name="Batch").click()
    page.locator("#batch-compare").get_by_text("Compare job: every row").click()
    inputs = tmp_path / "pairs.csv"
    inputs.write_text("text\n\"שלום עולם, זה טקסט\"\nDas ist ein Text.\n", encoding="utf-8")
    page.locator("#batch-compare-upload input[type=file]").set_input_files(str(inputs))
    system2 = page.locator("#batch-compare-system-2")
    system2.get_by_text("Decoding settings").click()
    tokens = system2.locator("input[type=number]").first
    # the page's load fills the decoding settings from the checkpoint's defaults: type 8 once that has happened
    for _ in range(20):
        tokens.fill("8")
        tokens.press("Enter")
        page.wait_for_timeout(500)
        if tokens.input_value() == "8":
            break
    page.click("#batch-compare-create")
    page.locator("#batch-compare-create-status .status-info", has_text="Processed 2 row(s)").wait_for()
    a = page.locator('#batch-compare-view-A [data-span-side="A"]')
    page.wait_for_function("""() => {
        const a = document.querySelector('#batch-compare-view-A [data-span-side="A"]');
        const b = document.querySelector('#batch-compare-view-B [data-span-side="B"]');
        return a && b && a.textContent.trim() !== '' && b.textContent.trim() !== '';
    }""", timeout=TIMEOUT)
    shown_a = a.text_content()
    assert "was system" not in page.locator("#batch-compare").inner_text()
    page.locator("#batch-compare-preference").get_by_text("A is better", exact=True).click()
    page.locator("#batch-compare-annotator textarea, #batch-compare-annotator input").first.fill("Dan")
    page.click("#batch-compare-save")
    saved = page.locator("#batch-compare-status .status-info", has_text="Saved comparison")
    saved.wait_for()
    playwright.expect(page.locator("#batch-compare-where")).to_contain_text("1 of 2 judged")
    assert "was system" not in page.locator("#batch-compare").inner_text()
    shot(page, "10e-batch-compare-queue", "#batch-compare")
    with sqlite3.connect(db) as conn:
        linked = conn.execute("SELECT c.output_a, c.preference, c.annotator FROM comparison_job_rows r JOIN "
                              "comparisons c ON c.id = r.comparison_id").fetchall()
    assert linked == [(shown_a, "A", "Dan")]


def luminance(rgb: str) -> float:
    r, g, b = (int(v) / 255 for v in rgb[rgb.index("(") + 1:rgb.index(")")].split(",")[:3])
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in (r, g, b)]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def contrast(fg: str, bg: str) -> float:
    hi, lo = sorted((luminance(fg), luminance(bg)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def test_batch_queue_marks_spans_and_the_page_reads_in_dark(app):
    """A batch job's row in the queue: its output drawn as a span view, a span marked with the mouse saved with the
    judgement. In dark mode the span buttons are buttons (a border, apart from each other) and the heatmap's
    token labels read against their background (contrast ≥ 4.5)."""
    page, db = app
    with AnnotationStore(db) as store:
        job = create_job(store, [BatchInput("Das ist ein Text über Bäume.")], task="summarization",
                         settings={"model_id": "demo/generation", "family": "mt5", "decoding": {}}, source="q.csv")
        with store.transaction() as conn:
            conn.execute("UPDATE batch_rows SET output='Ein Text über Bäume.', processed_at='t' WHERE job_id=?",
                         (job.id,))
    page.reload()
    page.wait_for_selector("#summarize-run")
    page.emulate_media(color_scheme="dark")
    page.get_by_role("tab", name="Batch").click()
    box = page.locator("#batch-job input").first
    box.click()
    page.get_by_role("option", name="q.csv", exact=False).first.click()
    view = page.locator('#batch-queue-view-output [data-span-side="output"]')
    playwright.expect(view).to_have_text("Ein Text über Bäume.", timeout=TIMEOUT)
    selected = drag_select(page, view, 3)
    assert selected.strip() == "Ein"
    page.locator("#batch-queue-span-severity").get_by_text("Critical", exact=True).click()
    page.click("#batch-queue-add-span")
    page.locator("#batch-queue-view-output mark.span-critical").wait_for()
    page.locator("#batch-annotator textarea, #batch-annotator input").first.fill("Eva")
    page.click("#batch-save")
    page.locator("#batch-status .status-info", has_text="Saved").wait_for()
    with AnnotationStore(db) as store:
        (row,) = job_rows(store, job.id)
        a = store.get(row.annotation_id)
    assert (a.protocol, a.spans) == ("esa", [{"start": 0, "end": 3, "side": "output", "category": "",
                                              "severity": "critical"}])
    buttons = page.locator("#batch-queue-spans-box button").evaluate_all("""els => els.map(b => {
        const s = getComputedStyle(b), r = b.getBoundingClientRect();
        return [b.id, parseFloat(s.borderTopWidth), s.borderTopStyle, r.left, r.right];
    })""")
    ours = [b for b in buttons if b[0].endswith(("-add-span", "-change-span", "-remove-span"))]
    assert len(ours) == 3 and all(width >= 1 and style == "solid" for _, width, style, _, _ in ours), ours
    assert ours[1][3] - ours[0][4] >= 4 and ours[2][3] - ours[1][4] >= 4, ours     # a gap between them
    shot(page, "10f-batch-queue-spans-dark", "#batch-queue-spans-box >> nth=0")
    # the heatmap in dark mode
    page.get_by_role("tab", name="Summarization").click()
    page.locator("#summarize-input textarea").fill(TEXTS["light"])
    page.click("#summarize-run")
    page.locator("#tab-summarization .status-info", has_text="Done").wait_for()
    tab = page.locator("#tab-summarization")
    tab.get_by_text("Attention", exact=True).click()
    tab.locator(".attention-show").click()
    label = tab.locator("th.attn-row").first
    label.wait_for()
    fg, bg = label.evaluate("e => [getComputedStyle(e).color, getComputedStyle(e).backgroundColor]")
    assert luminance(bg) < 0.2 and contrast(fg, bg) >= 4.5, (fg, bg)
    shot(page, "10g-attention-dark", "#tab-summarization .attention-heatmap >> nth=0")
    page.emulate_media(color_scheme="light")
