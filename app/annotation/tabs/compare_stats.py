"""The Annotations tab's section on side-by-side comparisons: win rates per system pair with 95% Wilson intervals,
and the agreement between annotators on preferences (Krippendorff's alpha, nominal)."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr
import pandas as pd

from ..agreement import preference_agreement, win_rate_frame
from ..comparisons import query_comparisons
from ..store import AnnotationStore
from ...tabs.common import status_html

EXPLAINED = (
    "Per pair of systems (X and Y in a fixed order): **X's win rate over the decisive judgements** (X better or Y "
    "better), with its **95% Wilson score interval**. Ties and *both bad* are counted separately, not as half a "
    "win, so a pair judged mostly *both bad* does not look like an even match. Every judgement counts, also "
    "several annotators' judgements of one item. **Agreement**: Krippendorff's alpha (nominal: X better, Y "
    "better, tie, both bad) over items judged by two or more annotators, in terms of the systems, whatever "
    "order each annotator saw them in.")


@dataclass
class CompareStats:
    table: gr.Dataframe
    agreement: gr.HTML

    def outputs(self) -> list:
        return [self.table, self.agreement]

    def refresh(self, store: AnnotationStore) -> dict:
        records = query_comparisons(store)
        a = preference_agreement(records)
        if a.alpha_nominal is None:
            line = f"Agreement on preferences: {a.note}."
        else:
            line = (f"Agreement on preferences: Krippendorff's alpha (nominal) = {a.alpha_nominal:.3f} over "
                    f"{a.items} item(s) judged by 2+ annotators ({a.annotators} annotators, {a.judgements} "
                    "judgements).")
        return {self.table: win_rate_frame(records),
                self.agreement: status_html(f"{len(records)} comparison(s) stored. {line}")}


def build(store: AnnotationStore) -> CompareStats:
    """Lays out the section (an accordion); the tab calls `refresh(store)` with its own refresh."""
    with gr.Accordion("Side-by-side comparisons: win rates and agreement on preferences", open=False,
                      elem_id="annotations-compare"):
        gr.Markdown(EXPLAINED)
        agreement = gr.HTML(elem_id="annotations-compare-agreement")
        # the systems' names get the room; the counts' headers keep their words whole (style.css)
        table = gr.Dataframe(pd.DataFrame(), interactive=False, wrap=True, label="Win rates per system pair",
                             column_widths=["10%", "20%", "20%", "8%", "6%", "6%", "5%", "6%", "9%", "10%"],
                             elem_id="annotations-win-rates")
    return CompareStats(table, agreement)
