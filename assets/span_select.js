(panel, side, start, end, picked) => {
  // "Add span": the last selection made in this panel's output or input view (kept by span_track.js), as
  // [panel, side, start, end, text] with UTF-16 offsets; ["", -1, -1, ""] after the panel id when there is none.
  // It is used once: select again for the next span.
  const store = window.mt5SpanSelection;
  const last = store && store.last;
  if (!last || last.panel !== panel) return [panel, "", -1, -1, ""];
  store.last = null;
  return [panel, last.side, last.start, last.end, last.text];
}
