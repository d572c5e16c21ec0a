"""Where does a string a model returned occur in the text it read? Character offsets into the original text.

A text-to-text checkpoint answers with strings (entity names, answers), not offsets. Three tiers, tried in order:
- **exact**: `str.find`, but never a match that cuts a base character from its combining marks;
- **normalized**: NFKC, case-folded, whitespace runs as one space, compared cluster by cluster (a base character
  with its combining marks), so every normalized offset maps back to a cluster boundary of the original string;
- **fuzzy** (only on request): `difflib.SequenceMatcher` over windows near the needle's length, on the
  normalized forms, with a bounded number of windows.

Offsets are Python `str` indices (code points) in logical order, for every script: no word boundaries are
assumed, so Chinese and Japanese work as any other text, and right-to-left text is indexed as stored. No torch,
no Gradio: the tagging and QA paths both use it.
"""
from __future__ import annotations

import difflib
import unicodedata
from dataclasses import dataclass

EXACT, NORMALIZED, FUZZY = "exact", "normalized", "fuzzy"
MAX_COARSE_WINDOWS = 4000    # fuzzy cost bound: coarse windows scanned per call (the stride grows with the text)
REFINE_CANDIDATES = 3        # best coarse windows whose start and length are then refined


@dataclass(frozen=True)
class Match:
    start: int      # character offsets into the ORIGINAL text (Python str indices)
    end: int
    how: str        # "exact" | "normalized" | "fuzzy"
    score: float    # 1.0 for exact/normalized; similarity in (0, 1) for fuzzy


@dataclass(frozen=True)
class _Normalized:
    """A normalized text and, per normalized character, the original cluster it came from."""
    text: str
    starts: tuple[int, ...]   # original start of the cluster of normalized char i
    ends: tuple[int, ...]     # original end of that cluster
    first: tuple[bool, ...]   # normalized char i is the first its cluster produced
    last: tuple[bool, ...]    # ... the last


def _clusters(text: str) -> list[tuple[int, int]]:
    """(start, end) of each base character with the combining marks that follow it."""
    bounds: list[tuple[int, int]] = []
    for i, ch in enumerate(text):
        if bounds and unicodedata.combining(ch):
            bounds[-1] = (bounds[-1][0], i + 1)
        else:
            bounds.append((i, i + 1))
    return bounds


def _normalize(text: str) -> _Normalized:
    """NFKC + casefold per cluster; each whitespace run becomes one space (leading/trailing runs kept as one)."""
    out: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    first: list[bool] = []
    last: list[bool] = []
    for a, b in _clusters(text):
        piece = unicodedata.normalize("NFKC", text[a:b]).casefold()
        if piece.isspace():
            if out and out[-1] == " ":          # extend the run's single space over this cluster
                ends[-1] = b
                continue
            piece = " "
        for k, ch in enumerate(piece):
            out.append(ch)
            starts.append(a)
            ends.append(b)
            first.append(k == 0)
            last.append(k == len(piece) - 1)
    return _Normalized("".join(out), tuple(starts), tuple(ends), tuple(first), tuple(last))


def _normalized_needle(needle: str) -> str:
    return _normalize(needle).text.strip(" ")


def _splits_cluster(text: str, start: int, end: int) -> bool:
    """A match from `start` to `end` would cut a base character from its combining marks."""
    return (end < len(text) and unicodedata.combining(text[end]) != 0) or \
        (start < len(text) and unicodedata.combining(text[start]) != 0)


def _exact(text: str, needle: str) -> list[Match]:
    found: list[Match] = []
    i = text.find(needle)
    while i >= 0:
        end = i + len(needle)
        if _splits_cluster(text, i, end):
            i = text.find(needle, i + 1)
            continue
        found.append(Match(i, end, EXACT, 1.0))
        i = text.find(needle, end)
    return found


def _normalized(text: str, needle: str) -> list[Match]:
    norm = _normalize(text)
    key = _normalized_needle(needle)
    found: list[Match] = []
    if not key:
        return found
    i = norm.text.find(key)
    while i >= 0:
        j = i + len(key) - 1                    # last normalized char of the match
        if norm.first[i] and norm.last[j]:      # whole clusters only (an expansion like "ﬁ" is not cut)
            found.append(Match(norm.starts[i], norm.ends[j], NORMALIZED, 1.0))
            i = norm.text.find(key, j + 1)
        else:
            i = norm.text.find(key, i + 1)
    return found


def _ratio(matcher: difflib.SequenceMatcher, window: str) -> float:
    matcher.set_seq1(window)
    if matcher.real_quick_ratio() <= 0.0 or matcher.quick_ratio() <= 0.0:
        return 0.0
    return matcher.ratio()


def _fuzzy(text: str, needle: str, min_score: float) -> Match | None:
    """The most similar window of the normalized text (length within ±20% of the needle's), if at or above
    `min_score`. Cost: at most MAX_COARSE_WINDOWS windows of the needle's length, then a small refinement of the
    best few over start ±stride and length ±20%."""
    norm = _normalize(text)
    key = _normalized_needle(needle)
    n, size = len(key), len(norm.text)
    if not key or not size:
        return None
    matcher = difflib.SequenceMatcher(None, autojunk=False)
    matcher.set_seq2(key)                       # seq2 is the side SequenceMatcher caches
    stride = max(1, n // 4, -(-size // MAX_COARSE_WINDOWS))
    coarse = sorted(((_ratio(matcher, norm.text[s:s + n]), s) for s in range(0, max(1, size - n + 1), stride)),
                    reverse=True)[:REFINE_CANDIDATES]
    slack = max(1, n // 5)
    best_score, best_span = 0.0, None
    for score, s0 in coarse:
        if score <= 0.0:
            continue
        for s in range(max(0, s0 - stride), min(size, s0 + stride + 1)):
            for length in range(max(1, n - slack), n + slack + 1):
                if s + length > size:
                    break
                r = _ratio(matcher, norm.text[s:s + length])
                if r > best_score:
                    best_score, best_span = r, (s, s + length)
    if best_span is None or best_score < min_score:
        return None
    s, e = best_span
    while s < e and norm.text[s] == " ":        # a span never starts or ends in whitespace
        s += 1
    while e > s and norm.text[e - 1] == " ":
        e -= 1
    if s >= e:
        return None
    start, end = norm.starts[s], norm.ends[e - 1]
    score = difflib.SequenceMatcher(None, _normalized_needle(text[start:end]), key, autojunk=False).ratio()
    if score < min_score or score >= 1.0:       # 1.0 would be a normalized match: that tier said no
        return None
    return Match(start, end, FUZZY, score)


def find_all(text: str, needle: str, fuzzy: bool = False, min_score: float = 0.8) -> list[Match]:
    """Every non-overlapping occurrence, left to right: exact if any, else normalized, else (fuzzy=True) the best
    fuzzy window. An empty (or all-whitespace) needle matches nothing."""
    if not needle or not needle.strip() or not text:
        return []
    found = _exact(text, needle) or _normalized(text, needle)
    if found or not fuzzy:
        return found
    match = _fuzzy(text, needle, min_score)
    return [match] if match else []


def best(text: str, needle: str, min_score: float = 0.8) -> Match | None:
    """The first exact, else first normalized, else the best fuzzy match at or above min_score; None if none."""
    found = find_all(text, needle, fuzzy=True, min_score=min_score)
    return found[0] if found else None
