(text) => {
  // Inserts the next <extra_id_N> marker at the cursor of the span-filling text box (at the end when the
  // cursor was never placed), with a space before it when glued to a word.
  const box = document.querySelector("#span-input textarea");
  const value = text || "";
  const numbers = [...value.matchAll(/<extra_id_(\d+)>/g)].map((m) => parseInt(m[1], 10));
  const marker = `<extra_id_${numbers.length ? Math.max(...numbers) + 1 : 0}>`;
  const at = box && box.selectionEnd > 0 && box.selectionEnd <= value.length ? box.selectionEnd : value.length;
  const before = value.slice(0, at), after = value.slice(at);
  const pad = before && !/\s$/.test(before) ? " " : "";
  return before + pad + marker + after;
}
