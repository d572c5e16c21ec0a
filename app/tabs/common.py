"""Pieces every tab uses: the model picker, decoding controls, the status line, error handling, and the handle a
tab gives to panels mounted under its result."""
from __future__ import annotations

import dataclasses
import functools
import html
import inspect
import logging
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

import gradio as gr

from model.placement import available_devices

from ..context import AppContext, RunRecord
from ..errors import UserError, describe
from ..limits import DECODING_BOUNDS
from ..models import DTYPES, QUANTIZATIONS, Loaded, ModelCache, ModelRequest
from ..tasklist import Task
from ..tasks import Decoding

log = logging.getLogger("mt5studio")


@dataclass
class ModelPicker:
    source: gr.Dropdown
    dtype: gr.Dropdown
    device: gr.Dropdown
    quantization: gr.Dropdown

    def components(self) -> list[gr.components.Component]:
        return [self.source, self.dtype, self.device, self.quantization]


@dataclass
class DecodingControls:
    """Sliders named as `Decoding`'s fields; `values(*args)` turns the components' values into a Decoding."""
    components: dict[str, gr.components.Component]

    def inputs(self) -> list[gr.components.Component]:
        return list(self.components.values())

    def decoding(self, values: list[Any]) -> Decoding:
        given = dict(zip(self.components, values))
        if given.get("seed") is not None and float(given["seed"]) < 0:
            given["seed"] = None
        return Decoding(**given)

    def prefill(self, decoding: Decoding) -> dict:
        """Updates setting each control to the checkpoint's default, held within the deployment's bounds."""
        return {c: clamp(name, getattr(decoding, name)) for name, c in self.components.items()
                if getattr(decoding, name) is not None}


def clamp(name: str, value: Any) -> Any:
    """`value` held within DECODING_BOUNDS[name] (a checkpoint's default may lie beyond what is served)."""
    bound = DECODING_BOUNDS.get(name)
    if bound is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    return type(value)(min(max(value, bound.low), bound.high))


@dataclass
class TabHandle:
    """What a task tab exposes to panels mounted under its result (the annotation panel reads these)."""
    task: str
    inputs: dict[str, gr.components.Component]     # the text fields, by name
    outputs: dict[str, gr.components.Component]    # the result components, by name
    settings: dict[str, gr.components.Component]   # decoding / task settings, by name
    model: ModelPicker
    record: gr.State                               # the last RunRecord as a dict (None before the first run)
    status: gr.HTML
    slot: gr.Column                                # empty, under the result: the annotation panel goes here
    extra: dict[str, Any] = field(default_factory=dict)


def devices() -> list[str]:
    """The device choices: the same list the server checks requests against (`models.check_request`)."""
    return ["auto", *available_devices()]


def model_picker(ctx: AppContext, task: str) -> ModelPicker:
    entry = ctx.assets.models[task]
    with gr.Accordion("Model", open=False):
        source = gr.Dropdown(entry.suggestions or [entry.default], value=entry.default, allow_custom_value=True,
                             label="Checkpoint (Hub id or local folder)",
                             info=" ".join(part for part in (entry.facts(), entry.note) if part),
                             elem_classes=["model-source"])
        with gr.Row():
            dtype = gr.Dropdown(list(DTYPES), value="auto", label="dtype")
            device = gr.Dropdown(devices(), value="auto", label="Device")
            quant = gr.Dropdown([(label, value) for value, (label, _) in QUANTIZATIONS.items()],
                                value=entry.quantization,
                                label="Quantized weights",
                                info="nf4/fp4 need bitsandbytes; int4 and int8 run on PyTorch alone (fast on CPU)")
    return ModelPicker(source, dtype, device, quant)


# The decoding settings in rows a reader takes in at once: length and beams, sampling, penalties and seed.
DECODING_ROWS = (("max_new_tokens", "num_beams", "no_repeat_ngram_size", "length_penalty"),
                 ("do_sample", "temperature", "top_k", "top_p"),
                 ("repetition_penalty", "seed"))


def decoding_controls(names: tuple[str, ...] = ("max_new_tokens", "num_beams", "no_repeat_ngram_size",
                                                "length_penalty", "do_sample", "temperature", "top_k", "top_p",
                                                "repetition_penalty", "seed")) -> DecodingControls:
    """The decoding settings, in an accordion; values start empty-ish and are prefilled from the checkpoint."""
    b = DECODING_BOUNDS   # the server checks the same bounds (limits.check_bounds)
    slider = lambda name, value, **kw: gr.Slider(b[name].low, b[name].high, value=value, step=b[name].step,
                                                 label=b[name].label, **kw)
    make = {
        "max_new_tokens": lambda: slider("max_new_tokens", 64),
        "num_beams": lambda: slider("num_beams", 1, info="more than 1: beam search (the output arrives at once)"),
        "no_repeat_ngram_size": lambda: slider("no_repeat_ngram_size", 0),
        "length_penalty": lambda: slider("length_penalty", 1.0),
        "do_sample": lambda: gr.Checkbox(value=False, label="Sample"),
        "temperature": lambda: slider("temperature", 1.0),
        "top_k": lambda: slider("top_k", 50),
        "top_p": lambda: slider("top_p", 1.0),
        "repetition_penalty": lambda: slider("repetition_penalty", 1.0),
        "seed": lambda: gr.Number(value=-1, precision=0, label="Seed (-1: random)"),
    }
    made: dict[str, gr.components.Component] = {}
    with gr.Accordion("Decoding settings", open=False):
        for group in DECODING_ROWS:
            present = [name for name in group if name in names]
            if present:
                with gr.Row(equal_height=True):
                    made.update({name: make[name]() for name in present})
        rest = [name for name in names if name not in made]
        if rest:
            with gr.Row(equal_height=True):
                made.update({name: make[name]() for name in rest})
    return DecodingControls({name: made[name] for name in names})   # in `names` order: values() zips by it


def status_html(message: str = "", kind: str = "info", detail: str = "") -> str:
    """The status line under a tab's button: info, warn or error (errors say what to do); `detail` is a
    smaller second line (the model as loaded, under a result)."""
    if not message:
        return ""
    more = f'<div class="status-detail">{html.escape(detail)}</div>' if detail else ""
    return f'<div class="status status-{kind}" role="status">{html.escape(message)}{more}</div>'


def fail(message: str) -> str:
    return status_html(message, "error")


def guarded(status: gr.HTML, fn: Callable, clear: tuple = ()) -> Callable:
    """Wraps a handler so a UserError (or a bug) shows in the status line and the app keeps serving; the
    `clear` components are emptied then, so no earlier result stands beside the message.

    Works for plain handlers and generators; either returns/yields dicts {component: value}.
    """
    def report(e: Exception) -> dict:
        if not isinstance(e, UserError):
            log.error("handler failed: %s", traceback.format_exc())
        return {**{c: None for c in clear}, status: fail(describe(e))}

    # functools.wraps keeps fn's signature visible: Gradio reads it to inject gr.Progress() defaults
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - shown in the page
                yield report(e)
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - shown in the page
            return report(e)
    return wrapper


def progress_reporter(progress: gr.Progress) -> Callable[[float, str], None]:
    return lambda fraction, text: progress(fraction, desc=text)


def prefill_decoding(controls: DecodingControls, status: gr.HTML, source: str, cache: ModelCache) -> dict:
    """Reads the checkpoint's decoding defaults (json files only) into the controls, as `cache` would load it:
    a locked deployment's policy is checked first, so no other repo is ever read."""
    try:
        decoding = Decoding.from_config(cache.generation_config(source))
    except UserError as e:
        return {status: status_html(f"Decoding settings not prefilled: {e}", "warn")}
    return {**controls.prefill(decoding), status: status_html(f"Decoding settings prefilled from {source}'s "
                                                              "defaults.")}


def example_label(lang: str, text: str, chars: int = 40) -> str:
    """An example button's label: the language and the text's start, "…" only when the text was cut."""
    return f"{lang}: {text if len(text) <= chars else text[:chars].rstrip() + '…'}"


def examples(assets, task: str, inputs: list, fields: tuple[str, ...] = ("text",)) -> gr.Examples:
    rows = assets.examples[task]
    return gr.Examples([[row[f] for f in fields] for row in rows], inputs=inputs,
                       example_labels=[example_label(f"{row['lang']} → {row['target']}" if "target" in row
                                                     else row["lang"], row[fields[0]]) for row in rows],
                       label="Examples", examples_per_page=10)


def mount_panels(ctx: AppContext, handle: TabHandle) -> None:
    with handle.slot:
        for panel in ctx.panels:
            panel(handle)


def run_record(task: Task, loaded: Loaded, inputs: dict[str, str], result: Any, output: Any,
               settings: dict[str, Any] | None = None) -> dict:
    """A tab's result with its provenance, as its `record` state holds it (what the panels under it read): the
    text to correct and the attention's input come from the task table."""
    return dataclasses.asdict(RunRecord(task.name, loaded.provenance(), dict(settings or {}), dict(inputs), output,
                                        task.as_text(result), dataclasses.asdict(task.attention(inputs, result))))


def loaded_of(ctx: AppContext, record: dict) -> Loaded:
    """The model a tab's result was made with (its record's provenance), from the cache: panels rerun it."""
    fields = ModelRequest.__dataclass_fields__
    return ctx.cache.get(ModelRequest(**{k: v for k, v in record["model"].items() if k in fields}))


def plain(obj: Any) -> Any:
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj
