"""One real browser run: Debian's chromium driven by Playwright over the demo app. Every tab, the attention panel
and an error; screenshots in data/screenshots/ (look at them).

Needs `.ci/setup-browser` (apt chromium, pip playwright); skipped where chromium is not installed, except in CI
(CI=true), where a missing browser is a failure.
"""
import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest

playwright = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"),
                                 reason="chromium is not installed: run .ci/setup-browser")]

import apphost as server  # noqa: E402
from app.assets import load_assets  # noqa: E402

SHOTS = Path(__file__).resolve().parent.parent / "data" / "screenshots"
EX = load_assets().examples
TIMEOUT = 30_000  # ms


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    srv = server.start(root / "server.log", env={"MT5_STUDIO_DEMO_DIR": str(root / "demo"),
                                                 "MT5_STUDIO_DB": str(root / "annotations.db")})
    SHOTS.mkdir(parents=True, exist_ok=True)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        pg = browser.new_page(viewport={"width": 1280, "height": 1000})
        pg.set_default_timeout(TIMEOUT)
        start = time.perf_counter()
        pg.goto(srv.url)
        pg.wait_for_selector("#summarize-run")
        pg.load_seconds = time.perf_counter() - start
        yield pg
        browser.close()
    srv.stop()


def open_tab(page, name: str):
    page.get_by_role("tab", name=name).click()


def shot(page, name: str, selector: str | None = None):
    page.wait_for_timeout(700)   # let Gradio lift the "pending" dimming of the outputs
    target = page.locator(selector) if selector else page
    target.screenshot(path=str(SHOTS / f"{name}.png"), **({} if selector else {"full_page": True}))


def wait_status(page, tab: str, kind: str = "info"):
    return page.locator(f"#tab-{tab} .status-{kind}").first.wait_for()


def test_page_loads_with_the_demo_banner(page):
    banner = page.locator("#demo-banner")
    assert "weights are random" in banner.inner_text() and "meaningless" in banner.inner_text()
    assert page.load_seconds < 30


def test_summarization_streams_and_shows_attention(page):
    open_tab(page, "Summarization")
    page.locator("#summarize-input textarea").fill(EX["summarization"][2]["text"])
    page.click("#summarize-run")
    page.locator("#tab-summarization .status-info", has_text="Done").wait_for()
    detail = page.locator("#tab-summarization .status-info .status-detail").first.inner_text()
    assert "of weights on cpu (embeddings" in detail and "float32" in detail   # the model as loaded
    tab = page.locator("#tab-summarization")
    tab.get_by_text("Attention", exact=True).click()
    tab.locator(".attention-show").click()
    cell = tab.locator("table.attn-map td").first
    cell.wait_for()
    assert "→" in cell.get_attribute("title")                     # the weight on hover
    assert tab.locator("th.attn-row").count() > 5
    assert "full colour =" in tab.locator(".attn-caption").inner_text()          # true in both themes
    key = tab.locator("th.attn-col span").first
    assert key.evaluate("e => getComputedStyle(e).transform") == "none"            # CJK keys upright
    cell.hover()
    shot(page, "1-summarization-attention")
    window = tab.locator("input[aria-label='number input for Tokens per axis']")
    window.fill("8")
    window.blur()
    tab.locator(".attn-caption", has_text="queries 0–7").wait_for()
    first_query = tab.locator("input[aria-label='number input for First query token']")
    first_query.fill("3")
    first_query.blur()
    tab.locator(".attn-caption", has_text="queries 3").wait_for()
    tab.get_by_label("encoder", exact=True).check()                                # another kind: ranges start again
    tab.locator(".attn-caption", has_text="encoder self-attention").wait_for()
    assert "queries 0–" in tab.locator(".attn-caption").inner_text() and first_query.input_value() == "0"


def test_translation_picks_a_language_by_name(page):
    """The target is searched by name; MADLAD's <2xx> token reaches the status line; light, dark and a phone."""
    open_tab(page, "Translation")
    page.locator("#translate-input textarea").fill(EX["translation"][5]["text"])   # Arabic, right to left
    target = page.locator("#translate-target input")
    target.click()
    target.fill("Swah")
    page.get_by_role("option", name="Swahili").click()
    page.click("#translate-run")
    status = page.locator("#tab-translation .status-info", has_text="Done")
    status.wait_for()
    assert "into Swahili (<2sw> token)" in status.inner_text()
    assert page.locator("#translate-output textarea").input_value().strip()
    tab = page.locator("#tab-translation")
    tab.get_by_text("Confidence", exact=True).click()
    tab.locator(".confidence-show").click()
    tab.locator(".confidence-shaded .conf-token").first.wait_for()
    assert "p=" in tab.locator(".confidence-shaded .conf-token").first.get_attribute("title")
    assert "mean probability" in tab.locator(".status-info", has_text="output tokens").inner_text()
    tab.get_by_text("Explain", exact=True).click()
    tab.locator(".explain-word input").click()
    page.get_by_role("option").nth(1).click()                                      # the second output word
    tab.locator(".explain-go").click()
    tab.locator(".explain-view .expl-source .expl-token").first.wait_for()
    assert tab.locator(".explain-view mark.expl-target").count() == 1             # the word, marked
    assert tab.locator(".explain-view .expl-source").get_attribute("dir") == "auto"
    tab.locator(".explain-why-not textarea").fill("Haus")                         # why not …?
    tab.locator(".explain-go").click()
    tab.locator(".explain-view .expl-contrast").wait_for()
    assert "nats" in tab.locator(".explain-view .expl-contrast").first.inner_text()
    shot(page, "1b-translation", "#tab-translation")
    page.emulate_media(color_scheme="dark")
    shot(page, "1c-translation-dark", "#tab-translation")
    page.set_viewport_size({"width": 390, "height": 844})
    shot(page, "1d-translation-phone-dark", "#tab-translation")
    page.set_viewport_size({"width": 1280, "height": 1000})
    page.emulate_media(color_scheme="light")


def test_span_filling_inserts_markers_and_labels_spans(page):
    open_tab(page, "Span filling")
    box = page.locator("#span-input textarea")
    box.fill("The capital of France is")
    page.click("#span-insert")
    box.press("End")
    box.type(", a city famous for")
    page.click("#span-insert")
    assert box.input_value() == "The capital of France is <extra_id_0>, a city famous for <extra_id_1>"
    page.click("#span-run")
    page.locator("#tab-span_filling .status-info, #tab-span_filling .status-warn").first.wait_for()
    shown = page.locator("#span-output").inner_text().lower()   # the theme shows labels in capitals
    assert "<extra_id_0>" in shown and "<extra_id_1>" in shown
    shot(page, "2-span-filling")


def test_classification_chart(page):
    open_tab(page, "Classification")
    page.locator("#classify-input textarea").fill(EX["classification"][1]["text"])
    page.click("#classify-run")
    wait_status(page, "classification")
    text = page.locator("#classify-output").inner_text().lower()
    assert all(label in text for label in ("negative", "neutral", "positive"))
    status = page.locator("#tab-classification .status-info").first.inner_text()
    assert "rank classification over 3 labels with demo/generation" in status
    shot(page, "3-classification")
    page.locator("#classify-labels textarea").fill("Sports, Politics, Cooking, Music")
    page.click("#classify-run")
    page.locator("#tab-classification .status-info", has_text="over 4 labels").wait_for()
    assert "Cooking" in page.locator("#classify-output").inner_text()
    page.emulate_media(color_scheme="dark")
    shot(page, "3b-classification-dark")
    page.emulate_media(color_scheme="light")
    page.locator("#classify-labels textarea").fill("Sports")
    page.click("#classify-run")
    page.locator("#tab-classification .status-error", has_text="Only one label").wait_for()
    page.locator("#classify-labels textarea").fill("positive, neutral, negative")


def test_token_tagging_right_to_left(page):
    open_tab(page, "Token tagging")
    arabic = next(r["text"] for r in EX["tagging"] if r["lang"] == "ar")
    page.locator("#tag-input textarea").fill(arabic)
    page.click("#tag-run")
    wait_status(page, "tagging")
    output = page.locator("#tag-output")
    output.locator("text=زار").first.wait_for()
    direction = output.evaluate("el => [...el.querySelectorAll('*')].map(e => getComputedStyle(e).direction)")
    assert "rtl" in direction
    tab = page.locator("#tab-tagging")
    tab.get_by_text("Attention", exact=True).click()
    tab.locator(".attention-show").click()
    tab.locator("table.attn-map td").first.wait_for()
    shot(page, "4-token-tagging")


def test_token_tagging_zero_shot_aligns_or_rejects(page):
    """A text-to-text checkpoint is prompted once per entity type: the status says "Zero-shot (approximate)",
    and what the model returned is either highlighted in the text or listed as rejected, the counts in the status
    matching the page (light and dark); no entity types is a clear error."""
    page.emulate_media(color_scheme="light")
    open_tab(page, "Token tagging")
    tab = page.locator("#tab-tagging")
    tab.get_by_text("Model", exact=True).first.click()
    source = tab.locator(".model-source input").first
    source.click()
    source.fill("demo/generation")
    source.press("Enter")
    text = EX["tagging"][0]["text"]
    page.locator("#tag-input textarea").fill(text)
    types = page.locator("#tag-types textarea, #tag-types input").first
    default_types = types.input_value()
    types.fill("person, location")
    page.click("#tag-run")
    status = tab.locator(".status", has_text="Zero-shot (approximate)")
    status.wait_for()
    line = status.inner_text()
    assert "over 2 entity types" in line and "prompted demo/generation" in line
    found = int(re.search(r"(\d+) entities over", line).group(1))
    refused = re.search(r"(\d+) returned strings not in the text \(rejected\)", line)
    refused = int(refused.group(1)) if refused else 0
    marked = page.locator("#tag-output .token.highlighted")
    rejected = page.locator("#tag-rejected")
    if refused:   # the table's rows are a virtual body of div[role=row], rendered after the table shows
        rejected.locator(".virtual-body [role=row]").first.wait_for()
    rows = rejected.evaluate("""el => [...el.querySelectorAll('.virtual-body [role=row]')]
        .map(row => [...row.querySelectorAll('[role=gridcell]')].map(cell => cell.innerText.trim()))""") \
        if rejected.is_visible() else []
    assert found + refused > 0, line                  # the model returned something: aligned or rejected
    assert marked.count() == found, (line, marked.all_inner_texts())
    assert len(rows) == refused, (line, rows)
    assert all(r[1] in ("person", "location") and r[2] for r in rows), rows
    for i in range(found):
        assert marked.nth(i).locator(".text").inner_text() in text
    shot(page, "4b-tagging-zero-shot", "#tab-tagging")
    page.emulate_media(color_scheme="dark")
    shot(page, "4c-tagging-zero-shot-dark", "#tab-tagging")
    page.emulate_media(color_scheme="light")
    types.fill("")
    page.click("#tag-run")
    tab.locator(".status-error", has_text="No entity types given: type at least one").wait_for()
    types.fill(default_types)


def test_question_answering_extractive(page):
    open_tab(page, "Question answering")
    row = EX["question_answering"][0]
    page.locator("#qa-question textarea, #qa-question input").first.fill(row["question"])
    page.locator("#qa-context textarea").fill(row["context"])
    page.click("#qa-run")
    wait_status(page, "question_answering")
    answer = page.locator("#qa-answer textarea, #qa-answer input").first.input_value()
    assert answer and answer in row["context"]
    shot(page, "5-question-answering")


def test_question_answering_generative_highlights_the_answer(page):
    """A text-to-text checkpoint answers from the passage only: the status names the method and the match, and
    the answer is highlighted in the passage (light and dark)."""
    open_tab(page, "Question answering")
    tab = page.locator("#tab-question_answering")
    tab.get_by_text("Model", exact=True).first.click()
    source = tab.locator(".model-source input").first
    source.click()
    source.fill("demo/generation")
    source.press("Enter")
    row = EX["question_answering"][0]
    page.locator("#qa-question textarea, #qa-question input").first.fill(row["question"])
    page.locator("#qa-context textarea").fill(row["context"])
    page.locator("#qa-constrained input").check()
    page.click("#qa-run")
    status = tab.locator(".status", has_text="constrained to runs of the passage")
    status.wait_for()
    assert "Generated answer found in the passage at characters" in status.inner_text()
    assert "demo/generation" in status.inner_text()
    output = page.locator("#qa-output")
    assert "answer" in output.inner_text()
    marked = output.locator(".token.highlighted")
    assert marked.count() == 1 and marked.locator(".label").text_content() == "answer"
    assert marked.locator(".text").inner_text() in row["context"]
    shot(page, "5b-question-answering-generative", "#tab-question_answering")
    page.emulate_media(color_scheme="dark")
    shot(page, "5c-question-answering-generative-dark", "#tab-question_answering")
    page.emulate_media(color_scheme="light")
    tab.get_by_text("Prompt template (text-to-text checkpoints)").click()
    page.locator("#qa-template textarea").fill("{context} What?")
    page.click("#qa-run")
    tab.locator(".status-error", has_text="has no {question} placeholder").wait_for()
    page.locator("#qa-template textarea").fill("")
    page.locator("#qa-constrained input").uncheck()


def test_bad_input_shows_a_clear_message(page):
    open_tab(page, "Classification")
    page.locator("#classify-input textarea").fill("")
    page.click("#classify-run")
    # an earlier test may have left another error there (one label): wait for this click's own message
    error = page.locator("#tab-classification .status-error", has_text="empty")
    error.wait_for()
    assert "empty" in error.inner_text()
    open_tab(page, "Span filling")
    page.locator("#span-input textarea").fill("no markers here")
    page.click("#span-run")
    page.locator("#tab-span_filling .status-error", has_text="no <extra_id_N> marker").wait_for()
    shot(page, "6-error-message")


def test_annotation_is_saved_and_exported(page):
    """Annotate the summarization result, find it in the Annotations tab, export it as JSONL."""
    open_tab(page, "Summarization")
    page.locator("#summarize-input textarea").fill(EX["summarization"][0]["text"])
    page.click("#summarize-run")
    page.locator("#tab-summarization .status-info", has_text="Done").wait_for()
    page.locator("#summarization-annotation").get_by_text("Annotate this result").click()
    # the panel resets for each new result (the corrected output starts empty: none given): judge after that
    page.wait_for_function("""() => {
        const out = document.querySelector('#summarize-output textarea');
        const corrected = document.querySelector('#summarization-annotation-corrected textarea');
        return out && corrected && out.value !== '' && corrected.value === '';
    }""", timeout=TIMEOUT)
    page.locator("#summarization-annotation-annotator textarea, #summarization-annotation-annotator input").first \
        .fill("Ana")
    page.locator("#summarization-annotation-rating").get_by_text("4", exact=True).click()
    comment = "Zu kurz. <script>alert(1)</script> مرحبا"
    page.locator("#summarization-annotation-comment textarea").fill(comment)
    page.click("#summarization-annotation-save")
    page.locator("#summarization-annotation-status", has_text="Saved annotation").wait_for()
    shot(page, "7-annotation-saved", "#summarization-annotation")
    open_tab(page, "Annotations")
    page.click("#annotations-refresh")
    table = page.locator("#annotations-table")
    playwright.expect(table).to_contain_text("Ana", timeout=TIMEOUT)
    playwright.expect(table).to_contain_text("<script>alert(1)</script>")   # shown as text, never run
    page.locator("#tab-annotations, .tabitem:visible").get_by_text("Export and import").first.click()
    page.click("#annotations-export")
    link = page.locator("#annotations-export-file a").first
    link.wait_for()
    with page.expect_download() as download:
        link.click()
    rows = [json.loads(line) for line in open(download.value.path(), encoding="utf-8")]
    assert any(r["comment"] == comment and r["rating"] == 4 and r["annotator"] == "Ana" and
               r["task"] == "summarization" for r in rows)
    shot(page, "8-annotations-tab")


def test_error_span_by_mouse_selection(page):
    """Select a stretch of the summarization output with the mouse, add it as a major ESA span, save: the span
    is highlighted, listed and stored with Python offsets of the selected text (light and dark screenshots)."""
    page.emulate_media(color_scheme="light")
    open_tab(page, "Summarization")
    page.locator("#summarize-input textarea").fill(EX["summarization"][1]["text"])
    page.click("#summarize-run")
    page.locator("#tab-summarization .status-info", has_text="Done").wait_for()
    panel = page.locator("#summarization-annotation")
    if not page.locator("#summarization-annotation-protocol").is_visible():
        panel.get_by_text("Annotate this result").click()
    view = page.locator('#summarization-annotation-view-output [data-span-side="output"]')
    page.wait_for_function("""() => {
        const out = document.querySelector('#summarize-output textarea');
        const view = document.querySelector('#summarization-annotation-view-output [data-span-side="output"]');
        return out && view && out.value.trim() !== '' && view.textContent === out.value;
    }""", timeout=TIMEOUT)
    # a real drag over the first word-like stretch of the output (its characters' boxes from a DOM range)
    view.scroll_into_view_if_needed()
    box = view.evaluate("""(el) => {
        const node = el.firstChild, text = node.textContent;
        let a = 0;
        while (a < text.length && /\\s/.test(text[a])) a++;
        const b = Math.min(text.length, a + 6);
        const r = document.createRange();
        r.setStart(node, a); r.setEnd(node, b);
        const rects = r.getClientRects(), first = rects[0], last = rects[rects.length - 1];
        return {x0: first.left + 1, y0: first.top + first.height / 2, x1: last.right - 1,
                y1: last.top + last.height / 2};
    }""")
    page.mouse.move(box["x0"], box["y0"])
    page.mouse.down()
    page.mouse.move(box["x1"], box["y1"], steps=8)
    page.mouse.up()
    selected = page.evaluate("() => window.getSelection().toString()")
    assert selected.strip(), "the drag selected nothing"
    page.locator("#summarization-annotation-span-severity").get_by_text("Major", exact=True).click()
    page.click("#summarization-annotation-add-span")
    mark = page.locator("#summarization-annotation-view-output mark.span-major")
    mark.wait_for()
    assert mark.inner_text() == selected.strip()
    playwright.expect(page.locator("#summarization-annotation-spans")).to_contain_text(selected.strip())
    page.locator("#summarization-annotation-esa-score input").fill("70")
    page.locator("#summarization-annotation-annotator textarea, #summarization-annotation-annotator input").first \
        .fill("Ana")
    page.click("#summarization-annotation-save")
    page.locator("#summarization-annotation-status", has_text="with 1 span(s)").wait_for()
    shot(page, "9a-error-span-light", "#summarization-annotation")
    page.emulate_media(color_scheme="dark")
    shot(page, "9b-error-span-dark", "#summarization-annotation")
    page.emulate_media(color_scheme="light")
    output = page.locator("#summarize-output textarea").input_value()

    # reload; the same input gives the same output, and the saved span comes back highlighted
    page.reload()
    page.wait_for_selector("#summarize-run")
    open_tab(page, "Summarization")
    page.locator("#summarize-input textarea").fill(EX["summarization"][1]["text"])
    page.click("#summarize-run")
    page.locator("#tab-summarization .status-info", has_text="Done").wait_for()
    if not page.locator("#summarization-annotation-protocol").is_visible():
        panel.get_by_text("Annotate this result").click()
    name = page.locator("#summarization-annotation-annotator textarea, #summarization-annotation-annotator input") \
        .first
    if name.input_value() != "Ana":   # the name typed after the result came recalls the judgement too
        name.fill("Ana")
    page.locator("#summarization-annotation-status", has_text="annotated this output before").wait_for()
    again = page.locator("#summarization-annotation-view-output mark.span-major")
    again.wait_for()
    assert again.inner_text() == selected.strip()
    shot(page, "9c-error-span-after-reload", "#summarization-annotation")
    # the stored span marks exactly the selected text, in Python offsets
    open_tab(page, "Annotations")
    if not page.locator("#annotations-export").is_visible():   # the accordion may be open from a test before
        page.locator("#tab-annotations, .tabitem:visible").get_by_text("Export and import").first.click()
    before = page.evaluate("() => (document.querySelector('#annotations-export-file a') || {}).href || ''")
    page.click("#annotations-export")
    page.wait_for_function("""(before) => {
        const a = document.querySelector('#annotations-export-file a');
        return a && a.href && a.href !== before;
    }""", arg=before, timeout=TIMEOUT)   # a new file, not the one a test before exported
    with page.expect_download() as download:
        page.locator("#annotations-export-file a").first.click()
    rows = [json.loads(line) for line in open(download.value.path(), encoding="utf-8")]
    (row,) = [r for r in rows if r["spans"]]
    (span,) = row["spans"]
    assert (row["protocol"], row["esa_score"], span["side"], span["severity"]) == ("esa", 70, "output", "major")
    assert output[span["start"]:span["end"]] == selected.strip() and row["output"] == output
