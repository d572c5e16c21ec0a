// Runs when an error-span view loads (gr.HTML js_on_load; once per page): remembers the last text selection
// made inside a view (the element with data-span-side and data-span-panel, drawn by app/annotation/spans.py
// render_html), so that clicking a severity or a category before "Add span" does not lose it. Offsets are
// UTF-16 code units, as the DOM counts them; the server converts them to Python indices and checks the text.
if (!window.mt5SpanSelection) {
  window.mt5SpanSelection = { last: null };
  const element = (node) => (node && node.nodeType === Node.ELEMENT_NODE ? node : node && node.parentElement);
  document.addEventListener("selectionchange", () => {
    const sel = window.getSelection();
    if (!sel || sel.rangeCount === 0 || sel.isCollapsed) return;
    const range = sel.getRangeAt(0);
    const start = element(range.startContainer);
    const root = start && start.closest("[data-span-side]");
    if (!root || !root.contains(range.endContainer)) return;
    const before = document.createRange();
    before.selectNodeContents(root);
    before.setEnd(range.startContainer, range.startOffset);
    const from = before.toString().length;
    const text = range.toString();
    window.mt5SpanSelection.last = { panel: root.dataset.spanPanel, side: root.dataset.spanSide, start: from,
                                     end: from + text.length, text };
  });
}
