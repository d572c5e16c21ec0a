"""`load_model`: picks the family (mT5 / UMT5 / T5) and the class for a task from the checkpoint's own config."""
from __future__ import annotations

import os
from typing import Any

from . import heads, metricx
from .config import CLASS_PREFIX, CONFIG_NAME, family_of, read_json
from .hub import hub_options, resolve_file

# Task names users type (and the app uses) -> class name suffix.
TASKS = {
    "text2text": "ForConditionalGeneration", "generation": "ForConditionalGeneration",
    "summarization": "ForConditionalGeneration", "span-filling": "ForConditionalGeneration",
    "classification": "ForSequenceClassification", "sequence-classification": "ForSequenceClassification",
    "token-classification": "ForTokenClassification", "tagging": "ForTokenClassification",
    "question-answering": "ForQuestionAnswering", "qa": "ForQuestionAnswering",
    "encoder": "EncoderModel", "feature-extraction": "EncoderModel", "model": "Model",
    "regression": "ForRegression", "metricx": "ForRegression",
}


def model_class(family: str, task: str | None = None, architectures: list[str] | None = None) -> type:
    """The class for `family` ('mt5'|'umt5'|'t5') and `task`; with no task, the checkpoint's `architectures`."""
    prefix = CLASS_PREFIX[family]
    if task is None:
        for arch in architectures or []:
            suffix = arch.removeprefix("U").removeprefix("M").removeprefix("T5")
            if suffix in TASKS.values():
                return head_class(family, suffix)
        return getattr(heads, prefix + "ForConditionalGeneration")
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}: use one of {', '.join(sorted(TASKS))}")
    return head_class(family, TASKS[task])


def head_class(family: str, suffix: str) -> type:
    """The class named by a family and a suffix; MetricX's regression class exists for mT5 only (a t5 config reads
    as mT5: the same network)."""
    if suffix == "ForRegression":
        if family == "umt5":
            raise ValueError("MetricX (MT5ForRegression) is an mT5 model; this checkpoint is umt5")
        return metricx.MT5ForRegression
    return getattr(heads, CLASS_PREFIX[family] + suffix)


def load_model(repo_or_dir: str | os.PathLike, task: str | None = None, **options: Any):
    """Loads any mT5/UMT5/T5 checkpoint for `task`, reading the family from its config.json.

    Options are those of `from_pretrained` (revision, token, dtype, ...).
    """
    hub = hub_options(options)
    data = read_json(resolve_file(repo_or_dir, CONFIG_NAME, **hub))
    cls = model_class(family_of(data), task, data.get("architectures"))
    return cls.from_pretrained(repo_or_dir, **hub, **options)
