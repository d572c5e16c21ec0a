(side, start, end, picked) => {
  // Reads the page's text selection inside an error-span view (the element with data-span-side, drawn by
  // app/annotation/spans.py render_html) and returns [side, start, end, selected text]. Offsets are UTF-16
  // code units, as the DOM counts them; the server converts them to Python indices and checks the text.
  // ["", -1, -1, ""] when nothing is selected there.
  const none = ["", -1, -1, ""];
  const sel = window.getSelection();
  if (!sel || sel.rangeCount === 0 || sel.isCollapsed) return none;
  const range = sel.getRangeAt(0);
  const element = (node) => (node && node.nodeType === Node.ELEMENT_NODE ? node : node && node.parentElement);
  const root = element(range.startContainer) && element(range.startContainer).closest("[data-span-side]");
  if (!root || !root.contains(range.endContainer)) return none;
  const before = document.createRange();
  before.selectNodeContents(root);
  before.setEnd(range.startContainer, range.startOffset);
  const from = before.toString().length;
  const text = range.toString();
  return [root.dataset.spanSide, from, from + text.length, text];
}
