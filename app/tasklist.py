"""The tasks the app serves, in one table: what each is called, the head it loads, the inputs it reads, how it
runs, how its result reads as one text, and what its attention is computed from.

The tabs, the batch jobs, the annotation records and the /attention endpoint read this table instead of
switching on task names. Adding a task: a row here, a tab under `app/tabs/` (listed in `app/main.py`), a help
file in `assets/help/`, and its entry in `assets/models.json` (and examples in `assets/examples.json`).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import answering, prompted_tagging, ranking, tasks, translation
from .assets import Assets
from .attention import AttentionInput
from .models import QUANTIZATIONS, Loaded
from .prompts import qa_prompt
from .tasks import Decoding

Inputs = Mapping[str, str]   # the task's fields by name: {"text": ...} or {"question": ..., "context": ...}
TEXT = ("text",)
QUESTION_CONTEXT = ("question", "context")
TEXT_TARGET = ("text", "target")   # translation: the source text and the target language's name


@dataclass(frozen=True)
class Task:
    """One task. `run` and `stream` take (loaded model, inputs, decoding settings); tasks that do not decode
    ignore the settings."""
    name: str                 # its key in assets/models.json, assets/examples.json and the annotation records
    title: str                # as the page names it
    head: str                 # the model-layer head it needs (a key of models.HEADS)
    fields: tuple[str, ...]   # the inputs it reads, in order
    run: Callable[[Loaded, Inputs, Decoding], Any]              # the result (a dataclass of app.tasks)
    as_text: Callable[[Any], str]                               # the result as the one text a batch row stores
    attention: Callable[[Inputs, Any], AttentionInput]          # what the result's attention is computed from
    decodes: bool = False     # it takes decoding settings (a text-to-text head)
    stream: Callable[[Loaded, Inputs, Decoding], Iterator[Any]] | None = None   # results so far, last complete
    # heads a checkpoint may bring instead of `head`: its config's `architectures` suffix -> head (read by
    # AppContext.head_for before loading; a classification fine-tune says ...ForSequenceClassification)
    heads: Mapping[str, str] = field(default_factory=dict)
    # batch and compare jobs store rows of text (or question and context): a task with other inputs (the
    # translation's target language) runs in its tab and the API only
    jobs: bool = True

    @property
    def streams(self) -> bool:
        return self.stream is not None

    def input_text(self, inputs: Inputs) -> str:
        """The inputs as the one text an annotation records ("question: … context: …" for QA, as typed)."""
        if self.fields == QUESTION_CONTEXT:
            return qa_prompt(inputs.get("question", ""), inputs.get("context", ""))
        return str(inputs.get("text", ""))

    def missing(self, inputs: Inputs) -> list[str]:
        """The fields `inputs` leaves empty."""
        return [f for f in self.fields if not str(inputs.get(f) or "").strip()]


def _last(results: Iterator[Any]) -> Any:
    result = None
    for result in results:
        pass
    return result


def _summaries(loaded: Loaded, inputs: Inputs, decoding: Decoding) -> Iterator[tasks.Summary]:
    return tasks.stream_summary(loaded, inputs["text"], decoding)


def _translations(loaded: Loaded, inputs: Inputs, decoding: Decoding) -> Iterator[translation.Translation]:
    return translation.stream_translation(loaded, inputs["text"], inputs["target"], decoding)


def _classify(loaded: Loaded, inputs: Inputs, decoding: Decoding):
    """A head checkpoint's own labels, or rank classification with the default preset's labels and template."""
    preset = ranking.preset_named(None)
    return ranking.classify_checkpoint(loaded, inputs, list(preset.labels), preset.template, preset=preset)


def _classification_attention(inputs: Inputs, result: Any) -> AttentionInput:
    """Rank classification: the prompt the encoder read, the winning label on the decoder."""
    if getattr(result, "prompt", ""):
        return AttentionInput(result.prompt, target=result.label)
    return AttentionInput(inputs["text"])


def _qa_attention(inputs: Inputs, result: Any) -> AttentionInput:
    """A generated answer: the prompt the encoder read, the answer on the decoder; else (a QA head) the question
    and context as the head reads them."""
    if getattr(result, "prompt", ""):
        return AttentionInput(result.prompt, target=result.answer.text if result.answer else None)
    return AttentionInput(inputs["context"], question=inputs["question"])


def _answer_text(result: tasks.QAResult) -> str:
    return result.answer.text if result.answer is not None else ""


TASKS: dict[str, Task] = {t.name: t for t in (
    Task("summarization", "Summarization", "generation", TEXT,
         run=lambda m, x, d: _last(_summaries(m, x, d)), stream=_summaries, decodes=True,
         as_text=lambda r: r.text,
         attention=lambda x, r: AttentionInput(x["text"], target=r.text if r else None)),
    Task("translation", "Translation", "generation", TEXT_TARGET,
         run=lambda m, x, d: _last(_translations(m, x, d)), stream=_translations, decodes=True, jobs=False,
         as_text=lambda r: r.text,
         attention=lambda x, r: AttentionInput(r.prompt if r else x["text"], target=r.text if r else None)),
    Task("span_filling", "Span filling", "generation", TEXT,
         run=lambda m, x, d: tasks.fill(m, x["text"], d), decodes=True,
         as_text=lambda r: r.text,
         attention=lambda x, r: AttentionInput(x["text"], target=r.raw if r else None)),
    Task("classification", "Classification", "generation", TEXT, run=_classify, as_text=lambda r: r.label,
         attention=_classification_attention, heads={"ForSequenceClassification": "classification"}),
    Task("tagging", "Token tagging", "generation", TEXT,
         run=lambda m, x, d: prompted_tagging.tag_checkpoint(m, x["text"]),
         as_text=lambda r: "; ".join(f"{e.text} ({e.label})" for e in r.entities),
         attention=lambda x, r: AttentionInput(x["text"]), heads={"ForTokenClassification": "token-classification"}),
    Task("question_answering", "Question answering", "question-answering", QUESTION_CONTEXT,
         run=lambda m, x, d: answering.answer_checkpoint(m, x["question"], x["context"]),
         as_text=_answer_text, attention=_qa_attention, heads={"ForConditionalGeneration": "generation"}),
    Task("generative_qa", "Question answering (generative)", "generation", QUESTION_CONTEXT,
         run=lambda m, x, d: answering.answer_generative(m, x["question"], x["context"], d), decodes=True,
         as_text=_answer_text,
         attention=lambda x, r: _qa_attention(x, r) if r else AttentionInput(answering.render(
             answering.default_template(), x["question"].strip(), x["context"].strip()))),
)}

JOB_TASKS = [name for name, t in TASKS.items() if t.jobs]   # the tasks batch and compare jobs offer


def task(name: str) -> Task:
    """The task called `name`; a ValueError naming the known ones otherwise (callers at a boundary turn it into
    their own error)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}: use one of {', '.join(TASKS)}")
    return TASKS[name]


def check_registry(assets: Assets) -> None:
    """The model registry (assets/models.json) must name every task, with the head the task needs: a wrong entry
    would load models whose outputs mean nothing, so the app refuses to start and says which."""
    where = "assets/models.json"
    missing = [name for name in TASKS if name not in assets.models]
    if missing:
        raise ValueError(f"{where} has no entry for {missing}: add one per task (head, default, suggestions)")
    for name, t in TASKS.items():
        if assets.models[name].quantization not in QUANTIZATIONS:
            raise ValueError(f"{where}: task {name!r} starts with quantization "
                             f"{assets.models[name].quantization!r}: use one of {', '.join(QUANTIZATIONS)}")
        if assets.models[name].head != t.head:
            raise ValueError(f"{where}: task {name!r} has head {assets.models[name].head!r}, but the task needs "
                             f"{t.head!r}: set it to {t.head!r}")
