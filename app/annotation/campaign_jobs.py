"""Campaign items from the app's own jobs: a batch job (one system: its model) or a compare job (two systems).
Rows that have no output (not run yet, or failed) are left out."""
from __future__ import annotations

from .agreement import system_label
from .batch import get_job, job_rows
from .campaign_items import CampaignItem
from .comparisons import compare_rows, get_compare_job, row_input_text, system_from_settings
from .store import AnnotationStore


def job_items(store: AnnotationStore, job_id: str) -> tuple[list[CampaignItem], str]:
    """The items of batch or compare job `job_id`, and a line naming the job; ValueError when there is no such
    job or it has no outputs yet."""
    job_id = str(job_id).strip()
    try:
        items, label = _batch_items(store, job_id)
    except KeyError:
        try:
            items, label = _compare_items(store, job_id)
        except KeyError:
            raise ValueError(f"no batch or compare job with id {job_id!r}: pick one from the Batch or Compare "
                             "tab, or give a file of plain records") from None
    if not items:
        raise ValueError(f"{label} has no outputs yet: run it first")
    return items, label


def _batch_items(store: AnnotationStore, job_id: str) -> tuple[list[CampaignItem], str]:
    job = get_job(store, job_id)
    system = str(job.settings.get("model_id") or "system")
    items = [CampaignItem(str(r.index + 1), r.input_text, {system: r.output}, metadata={"job_row": r.index})
             for r in job_rows(store, job_id) if r.output is not None and not r.error]
    return items, f"batch job {job.name or job.id}"


def _compare_items(store: AnnotationStore, job_id: str) -> tuple[list[CampaignItem], str]:
    job = get_compare_job(store, job_id)
    one, two = (system_from_settings(s) for s in job.systems)
    names = (system_label(one, two), system_label(two, one))
    if names[0] == names[1]:
        names = (names[0] + " (1)", names[1] + " (2)")
    items = [CampaignItem(str(r.index + 1), row_input_text(r), {names[0]: r.output_1, names[1]: r.output_2},
                          reference=r.reference, metadata={"job_row": r.index})
             for r in compare_rows(store, job_id) if r.processed]
    return items, f"compare job {job.name or job.id}"
