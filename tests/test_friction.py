"""Friction a linguist meets in the page (issue 14, item 4), checked in a real browser in light and dark mode: one
annotator name for every tab and after a reload (no localStorage error in the console), messages next to the
button pressed, a readable Annotations table (newest first, short ids, model names, minutes, ten rows or more),
Delete that asks first and can be undone, readable colours in dark mode. Screenshots in data/screenshots/.

Plus the plain helpers behind them, without a browser.
"""
import os
import re
import shutil
import time
from pathlib import Path

import pytest

from app.annotation.store import Annotation, AnnotationStore
from app.annotation.tabs.annotations import minute, model_name, preview, PREVIEW_CHARS
from app.tabs.common import example_label

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "data" / "screenshots"
TIMEOUT = 30_000  # ms
NAME = "Zoë Ana"
TASK_PANELS = ("summarization", "span_filling", "classification", "tagging", "question_answering")
TAB_TITLES = {"summarization": "Summarization", "span_filling": "Span filling", "classification": "Classification",
              "tagging": "Token tagging", "question_answering": "Question answering"}
SEEDED = 12
ROW = ".virtual-row"   # the table's rows (Gradio 6 draws them as a virtual list)


def test_table_helpers():
    assert model_name("google/mt5-small") == "mt5-small"
    assert model_name("/home/ling/checkpoints/mt5-de/") == "mt5-de" and model_name("demo") == "demo"
    assert model_name(r"C:\models\umt5") == "umt5"
    assert minute("2026-01-31T12:34:56.123456Z") == "2026-01-31 12:34"
    assert preview("short") == "short"
    cut = preview("word " * 100)
    assert cut.endswith("…") and len(cut) <= PREVIEW_CHARS + 1


def test_example_labels_mark_only_cut_texts():
    assert example_label("de", "Kurz.") == "de: Kurz."
    assert example_label("en", "x" * 40) == "en: " + "x" * 40
    assert example_label("en", "a" * 41) == "en: " + "a" * 40 + "…"


# -- the browser run -------------------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def seed(db: Path) -> list[str]:
    """Annotations saved over twelve days by another annotator, one model given as a local folder; returns their
    ids, oldest first."""
    with AnnotationStore(db) as store:
        return [store.save(Annotation(
            task="summarization", model_id="/home/ling/checkpoints/mt5-de", annotator="Ben", rating=1 + i % 5,
            input=f"Eingabe {i}", output=f"Zusammenfassung Nummer {i}: Donaudampfschifffahrtsgesellschaft und "
                                         "Bundesausbildungsförderungsgesetz in einem Satz.",
            comment=f"Kommentar {i}", created_at=f"2026-01-{i + 1:02d}T10:{i:02d}:33.123456Z"))
            for i in range(SEEDED)]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    apphost = pytest.importorskip("apphost")
    root = tmp_path_factory.mktemp("friction")
    ids = seed(root / "annotations.db")
    srv = apphost.start(root / "server.log", env={"MT5_STUDIO_DEMO_DIR": str(root / "demo"),
                                                  "MT5_STUDIO_DB": str(root / "annotations.db")})
    srv.ids = ids
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser():
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        yield b
        b.close()


def shot(page, name: str, selector: str | None = None):
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(700)   # let Gradio lift the "pending" dimming of the outputs
    target = page.locator(selector).first if selector else page
    target.screenshot(path=str(SHOTS / f"{name}.png"), **({} if selector else {"full_page": True}))


def annotator_box(page, prefix: str):
    return page.locator(f"#{prefix}-annotator textarea, #{prefix}-annotator input").first


# The contrast ratio (WCAG) of an element's text against the first opaque background behind it.
CONTRAST = """el => {
  const rgb = s => (s.match(/[\\d.]+/g) || []).map(Number);
  const f = c => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; };
  const lum = ([r, g, b]) => 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  let bg = null;
  for (let e = el; e; e = e.parentElement) {
    const c = rgb(getComputedStyle(e).backgroundColor);
    if (c.length >= 3 && (c.length < 4 || c[3] > 0.5)) { bg = c; break; }
  }
  bg = bg || (document.documentElement.classList.contains('dark') || document.body.classList.contains('dark')
              ? [11, 15, 25] : [255, 255, 255]);
  const fg = rgb(getComputedStyle(el).color);
  const [a, b] = [lum(fg), lum(bg)].sort((x, y) => y - x);
  return (a + 0.05) / (b + 0.05);
}"""


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"), reason="chromium is not installed")
def test_friction_in_the_browser(server, browser, scheme):
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1280, "height": 1000}, color_scheme=scheme)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT)
    console = []
    page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    page.goto(server.url + ("/?__theme=dark" if scheme == "dark" else "/"))
    page.wait_for_selector("#summarize-run")
    if scheme == "dark":
        assert page.evaluate("document.body.classList.contains('dark')")

    # the demo banner and a status line read in this scheme
    banner = page.locator("#demo-banner")
    assert banner.evaluate(CONTRAST) >= 4.5, "the demo banner's text is hard to read"
    shot(page, f"friction-{scheme}-banner", "#demo-banner")

    # one annotator name: typed once in the first tab's panel, it is in every tab's and the Batch queue's
    page.locator("#summarization-annotation").get_by_text("Annotate this result").click()
    box = annotator_box(page, "summarization-annotation")
    box.click()
    box.press_sequentially(NAME, delay=20)   # as typed, key by key
    every_panel_shows(page, NAME)
    page.get_by_role("tab", name="Batch").click()
    expect(annotator_box(page, "batch")).to_have_value(NAME)

    # ... and after a reload, in every tab again
    page.reload()
    page.wait_for_selector("#summarize-run")
    every_panel_shows(page, NAME)
    page.get_by_role("tab", name="Batch").click()
    expect(annotator_box(page, "batch")).to_have_value(NAME)

    # a result, its status under the button, the heatmap's labels readable
    page.get_by_role("tab", name="Summarization").click()
    page.locator("#summarize-input textarea").fill("Ada Lovelace schrieb das erste Programm für eine Maschine.")
    page.click("#summarize-run")
    done = page.locator("#tab-summarization .status-info", has_text="Done")
    done.wait_for()
    assert done.evaluate(CONTRAST) >= 4.5
    tab = page.locator("#tab-summarization")
    tab.get_by_text("Attention", exact=True).click()
    tab.locator(".attention-show").click()
    label = tab.locator("th.attn-row").first
    label.wait_for()
    assert label.evaluate(CONTRAST) >= 4.5, "the heatmap's labels are hard to read"
    shot(page, f"friction-{scheme}-main")

    # the Annotations table: newest first, short ids, model names, minutes, ten rows or more in view
    page.get_by_role("tab", name="Annotations").click()
    page.click("#annotations-refresh")
    table = page.locator("#annotations-table")
    newest = server.ids[-1]
    expect(table.locator(ROW).first).to_contain_text(newest[:8])
    text = table.inner_text()
    assert newest not in text and "/home/ling" not in text and "mt5-de" in text
    assert re.search(r"2026-01-12 10:11(?!:)", text) and ":33" not in text
    first_rows = [r.split()[0] for r in table.locator(ROW).all_inner_texts()[:3]]
    assert first_rows == [i[:8] for i in server.ids[::-1][:3]], first_rows
    visible = table.evaluate("""el => { const box = el.getBoundingClientRect();
        return [...el.querySelectorAll('.virtual-row')].filter(r => { const b = r.getBoundingClientRect();
            return b.height > 0 && b.top >= box.top && b.bottom <= box.bottom + 1; }).length; }""")
    assert visible >= 10, f"only {visible} rows visible"
    cell = table.locator(f"{ROW} .body-cell .text").nth(7)
    assert cell.evaluate("el => getComputedStyle(el).wordBreak") == "normal"

    # select a row: the message shows under the editor's buttons, not up the page
    table.locator(ROW).first.locator(".body-cell").nth(3).click()
    status = page.locator("#annotations-status")
    expect(status).to_contain_text(f"Editing {newest[:8]}")
    near(page, "#annotations-status", "#annotations-update")

    # Delete asks first; the second press deletes; Undo puts it back
    delete = page.locator("#annotations-delete")
    delete.click()
    expect(delete).to_have_text("Confirm delete?")
    expect(status).to_contain_text("Confirm delete?")
    near(page, "#annotations-status", "#annotations-delete")
    assert newest[:8] in table.locator(ROW).first.inner_text()
    shot(page, f"friction-{scheme}-confirm-delete", "#annotations-status")
    delete.click()
    expect(status).to_contain_text(f"Deleted {newest[:8]}")
    expect(delete).to_have_text("Delete")
    expect(table.locator(ROW).first).not_to_contain_text(newest[:8])
    undo = page.locator("#annotations-undo")
    undo.click()
    expect(status).to_contain_text(f"Restored {newest[:8]}")
    expect(table.locator(ROW).first).to_contain_text(newest[:8])
    expect(undo).to_be_hidden()
    assert status.locator(".status").evaluate(CONTRAST) >= 4.5
    shot(page, f"friction-{scheme}-annotations")

    # an import refused: the message is in the export/import section, under its button
    page.locator(".tabitem:visible").get_by_text("Export and import").first.click()
    page.click("#annotations-import")
    expect(page.locator("#annotations-io-status")).to_contain_text("Choose a file")
    near(page, "#annotations-io-status", "#annotations-import")

    errors = [m for m in console if "localstorage" in m.lower()]
    assert not errors, errors
    context.close()


def every_panel_shows(page, name: str):
    """Each task tab's annotation panel (opened where closed) shows `name` as annotator."""
    from playwright.sync_api import expect

    for task in TASK_PANELS:
        page.get_by_role("tab", name=TAB_TITLES[task]).click()
        box = annotator_box(page, f"{task}-annotation")
        if not box.is_visible():
            page.locator(f"#{task}-annotation").get_by_text("Annotate this result").click()
        expect(box).to_have_value(name)


def near(page, status: str, button: str, within: float = 300):
    """The status element's top is within `within` px of the button's."""
    time.sleep(0.2)
    s, b = page.locator(status).bounding_box(), page.locator(button).bounding_box()
    assert s and b and abs(s["y"] - b["y"]) <= within, (status, s, button, b)
