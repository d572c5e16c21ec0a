"""app.align: model-returned strings mapped to character offsets of the original text."""
import time

import pytest

from app.align import Match, best, find_all


def spans(text, needle, **kw):
    return [(m.start, m.end, m.how) for m in find_all(text, needle, **kw)]


def test_chinese_without_spaces_every_occurrence():
    text = "北京是中国的首都。我爱北京。"
    found = find_all(text, "北京")
    assert [(m.start, m.end) for m in found] == [(0, 2), (11, 13)]
    assert all(text[m.start:m.end] == "北京" and m.how == "exact" and m.score == 1.0 for m in found)


def test_japanese_mixed_scripts():
    text = "東京タワーは東京にあります。トヨタ自動車も。"
    assert [text[m.start:m.end] for m in find_all(text, "東京")] == ["東京", "東京"]
    (m,) = find_all(text, "トヨタ自動車")
    assert (m.start, m.end) == (14, 20)


def test_rtl_offsets_are_logical_indices():
    arabic = "زار محمد القاهرة ثم عاد محمد إلى الرياض"
    found = find_all(arabic, "محمد")
    assert len(found) == 2 and all(arabic[m.start:m.end] == "محمد" for m in found)
    assert found[0].start == arabic.index("محمد") < found[1].start
    hebrew = "דוד נסע לירושלים"
    (m,) = find_all(hebrew, "ירושלים")
    assert hebrew[m.start:m.end] == "ירושלים" and m.end == len(hebrew)


def test_repeats_are_non_overlapping_left_to_right():
    assert [(s, e) for s, e, _ in spans("aaaa", "aa")] == [(0, 2), (2, 4)]
    text = "Paris, paris and PARIS"
    assert spans(text, "Paris") == [(0, 5, "exact")]            # exact wins: no normalized search then
    assert spans(text, "pARIS") == [(0, 5, "normalized"), (7, 12, "normalized"), (17, 22, "normalized")]


def test_combining_characters_map_back_to_the_original_string():
    decomposed = "Jose\u0301 met Jose\u0301 and Zoe\u0308"       # NFD é twice, NFD ë
    found = find_all(decomposed, "Jos\u00e9")                 # needle in NFC
    assert [(m.start, m.end, m.how) for m in found] == [(0, 5, "normalized"), (10, 15, "normalized")]
    assert all(decomposed[m.start:m.end] == "Jose\u0301" for m in found)
    # the contract: an exact occurrence anywhere means only exact ones are returned
    mixed = "Jose\u0301 and Jos\u00e9"
    assert spans(mixed, "Jos\u00e9") == [(10, 14, "exact")]
    (z,) = find_all(decomposed, "ZOË")
    assert decomposed[z.start:z.end] == "Zoe\u0308" and z.end == len(decomposed)
    # a base letter is never cut from its marks: "Jose" is not inside "José"
    assert find_all("Jose\u0301", "Jose") == []


def test_nfkc_and_whitespace_insensitive():
    text = "Ｔｏｋｙｏ and New \n  York"
    (m,) = find_all(text, "tokyo")
    assert (m.start, m.end, m.how) == (0, 5, "normalized")
    (ny,) = find_all(text, " new york ")
    assert text[ny.start:ny.end] == "New \n  York"
    assert find_all("The ﬁrst", "i") == []                   # inside one expanded character: no cut


def test_empty_needle_and_empty_text_match_nothing():
    assert find_all("some text", "") == [] and find_all("some text", "   ") == []
    assert find_all("", "x") == [] and best("some text", "") is None


def test_fuzzy_only_on_request_and_marked():
    text = "Barack Obama visited Berlin in 2008."
    assert find_all(text, "Barak Obama") == []
    (m,) = find_all(text, "Barak Obama", fuzzy=True)
    assert m.how == "fuzzy" and 0.8 <= m.score < 1.0 and text[m.start:m.end] == "Barack Obama"
    assert best(text, "Barak Obama") == m
    assert best(text, "Barak Obama", min_score=0.99) is None
    assert best(text, "Angela Merkel") is None


def test_best_prefers_exact_then_normalized():
    assert best("berlin Berlin", "Berlin") == Match(7, 13, "exact", 1.0)
    assert best("berlin BERLIN", "Berlin") == Match(0, 6, "normalized", 1.0)


@pytest.mark.parametrize("needle", ["Angela Merkl", "zzzzqqqqxxxx"])
def test_fuzzy_cost_is_bounded_on_long_text(needle):
    filler = "lorem ipsum dolor sit amet " * 200               # ~5,400 characters
    text = filler + "Angela Merkel" + filler
    start = time.perf_counter()
    m = best(text, needle)
    assert time.perf_counter() - start < 2.0
    if needle.startswith("Angela"):
        assert m is not None and text[m.start:m.end] == "Angela Merkel"
    else:
        assert m is None
