"""The API for `gradio_client` (and AI agents, through the MCP server): /summarize, /translate, /fill_spans,
/classify, /tag, /answer, /attention, /explain, /score.

Text inputs first, settings after with defaults; an empty `model` means the task's default checkpoint; decoding
settings left as None take the checkpoint's own defaults. Each returns a JSON object. A bad input raises an
error whose message says what was wrong (gradio_client raises it as `AppError`).
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import traceback

import gradio as gr

from model.textgen import MARKER, generate_text

from .answering import answer_checkpoint, answer_generative
from .attention import AttentionInput, select
from .batching import batched
from .context import AppContext
from .errors import UserError, describe
from .explanations import explain
from .gpu import on_gpu
from .limits import MAX_ANSWERS, generation_work
from .metrics import corpus_scores, sentence_scores
from .models import HEADS
from .prompted_tagging import method_of as tagging_method, source_of, tag_checkpoint
from .ranking import classify_checkpoint, method_of, preset_named
from .scoring import parse_metrics
from .tasklist import TASKS
from .tasks import (MAX_INPUT_TOKENS, Decoding, answer_extractive, as_plain, check_decoding, fill, input_cap,
                    require_text, stream_summary)
from .translation import stream_translation

log = logging.getLogger("mt5studio")


def user_errors(fn):
    """Turns exceptions into gr.Error with `errors.describe`'s message (gradio_client raises it as AppError);
    bugs are logged with their traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except Exception as e:  # noqa: BLE001 - reported to the caller
            if not isinstance(e, UserError):
                log.error("API call failed: %s", traceback.format_exc())
            raise gr.Error(describe(e), print_exception=False) from e
    return wrapper


def register(ctx: AppContext) -> None:
    """Adds the endpoints to the Blocks being built."""

    @user_errors
    def summarize(text: str, model: str = "", max_new_tokens: int | None = None, num_beams: int | None = None,
                  no_repeat_ngram_size: int | None = None, length_penalty: float | None = None,
                  do_sample: bool | None = None, temperature: float | None = None, top_k: int | None = None,
                  top_p: float | None = None, repetition_penalty: float | None = None, seed: int | None = None,
                  dtype: str = "auto", device: str = "auto", quantization: str = "none") -> dict:
        """Summarizes `text`. Returns {summary, truncated, input_tokens, settings, model}."""
        loaded = ctx.load("summarization", model, dtype, device, quantization)
        decoding = Decoding(max_new_tokens, num_beams, no_repeat_ngram_size, length_penalty, do_sample,
                            temperature, top_k, top_p, repetition_penalty, seed)
        *_, last = stream_summary(loaded, text, decoding)
        return {"summary": last.text, "truncated": last.truncated, "input_tokens": last.input_tokens,
                "settings": last.settings, "model": loaded.provenance()}

    @user_errors
    def translate(text: str, target: str, model: str = "", max_new_tokens: int | None = None,
                  num_beams: int | None = None, no_repeat_ngram_size: int | None = None,
                  length_penalty: float | None = None, do_sample: bool | None = None, temperature: float | None = None,
                  top_k: int | None = None, top_p: float | None = None, repetition_penalty: float | None = None,
                  seed: int | None = None, dtype: str = "auto", device: str = "auto", quantization: str = "") -> dict:
        """Translates `text` into `target` (an English language name such as "German", or a code such as "de").
        An empty `quantization` is the registry's choice for the default checkpoint (MADLAD-400: int8-all), else
        none. Returns {translation, target, code, method ('<2de> token' | 'prompt'), prompt, truncated,
        input_tokens, settings, model}."""
        entry = ctx.assets.models["translation"]
        quantization = quantization or (entry.quantization if model.strip() in ("", entry.default) else "none")
        loaded = ctx.load("translation", model, dtype, device, quantization)
        decoding = Decoding(max_new_tokens, num_beams, no_repeat_ngram_size, length_penalty, do_sample,
                            temperature, top_k, top_p, repetition_penalty, seed)
        *_, last = stream_translation(loaded, text, target, decoding)
        return {"translation": last.text, "target": last.target, "code": last.code, "method": last.method,
                "prompt": last.prompt, "truncated": last.truncated, "input_tokens": last.input_tokens,
                "settings": last.settings, "model": loaded.provenance()}

    @user_errors
    def fill_spans(text: str, model: str = "", max_new_tokens: int | None = None, num_beams: int | None = None,
                   do_sample: bool | None = None, temperature: float | None = None, top_k: int | None = None,
                   top_p: float | None = None, seed: int | None = None, dtype: str = "auto", device: str = "auto",
                   quantization: str = "none") -> dict:
        """Fills the <extra_id_N> markers of `text`. Returns {text, spans: [{marker, sentinel_id, text, start,
        end}], segments, missing, extra, raw, truncated, settings, model}."""
        loaded = ctx.load("span_filling", model, dtype, device, quantization)
        decoding = Decoding(max_new_tokens, num_beams, None, None, do_sample, temperature, top_k, top_p, None, seed)
        return {**as_plain(fill(loaded, text, decoding)), "model": loaded.provenance()}

    @user_errors
    def classify_text(text: str, model: str = "", dtype: str = "auto", device: str = "auto",
                      quantization: str = "none", labels: str = "", template: str = "", normalize: bool = False,
                      preset: str = "", hypothesis: str = "") -> dict:
        """Classifies `text` the way the checkpoint can: a classification head with its own labels, else (a
        text-to-text checkpoint such as bigscience/mt0-base) rank classification over `labels` (comma-separated,
        or one per line) with the prompt `template` ({text}, {choices}); `normalize` divides each label's summed
        log-probability by its token count. Empty labels/template: the `preset`'s (sentiment, topic, nli; default
        sentiment); for nli, `text` is the premise and `hypothesis` the hypothesis. Returns {label,
        probabilities: {label: p} (most probable first), method ('rank classification' | 'classification
        head'), truncated, model; rank classification adds scores (summed log-probs), prompt, normalized}."""
        p = preset_named(preset or None)
        inputs = {"premise": text, "hypothesis": hypothesis} if "premise" in p.fields else {"text": text}
        loaded = ctx.load("classification", model, dtype, device, quantization)
        result = classify_checkpoint(loaded, inputs, labels if labels.strip() else list(p.labels),
                                     template if template.strip() else p.template, bool(normalize), p)
        return {**as_plain(result), "method": method_of(result), "model": loaded.provenance()}

    @user_errors
    def tag_text(text: str, model: str = "", dtype: str = "auto", device: str = "auto",
                 quantization: str = "none", entity_types: str = "", template: str = "") -> dict:
        """Tags `text` the way the checkpoint can: a token-classification head with its own labels, else (a
        text-to-text checkpoint such as bigscience/mt0-base) zero-shot (approximate): one prompt per entity type
        (`entity_types`, comma-separated; empty: person, location, organisation, date) with `template` ({text},
        {type}; empty: the default), each returned string tagged where the text holds it. Returns {entities:
        [{text, label, score, start, end, source}], words, segments, rtl, truncated, source ('head' | 'prompt'),
        method, rejected: [{text, type, reason}], model}; the prompt path adds outputs, prompts, how, settings.
        Offsets are character offsets into `text`."""
        loaded = ctx.load("tagging", model, dtype, device, quantization)
        result = tag_checkpoint(loaded, text, entity_types if entity_types.strip() else None,
                                template if template.strip() else None)
        plain, source = as_plain(result), source_of(result)
        return {**plain, "entities": [{**e, "source": source} for e in plain["entities"]], "source": source,
                "method": tagging_method(result), "rejected": plain.get("rejected", []),
                "model": loaded.provenance()}

    @user_errors
    def answer(question: str, context: str, mode: str = "auto", model: str = "", top_k: int = 5,
               max_new_tokens: int | None = None, num_beams: int | None = None, dtype: str = "auto",
               device: str = "auto", quantization: str = "none", template: str = "",
               constrained: bool = False) -> dict:
        """Answers `question` from `context`. mode 'auto': the checkpoint decides (a question-answering head:
        extractive; a text-to-text checkpoint such as bigscience/mt0-base: generative); 'extractive' needs a QA
        head (the span, its score, top_k alternatives); 'generative' answers the prompt `template` ({context},
        {question}; empty: xP3's), with `constrained` only runs of the context's tokens. Returns {mode, method
        ('extractive head' | 'generative' | 'generative, constrained'), answer: {text, score, start, end, how
        ('span' | 'exact' | 'normalized' | 'fuzzy' | 'token span' | ''), found}, alternatives, segments,
        truncated, prompt, settings, model}; start/end are character offsets into `context` (-1 when not found)."""
        if mode not in ("auto", "extractive", "generative"):
            raise UserError(f"Unknown mode {mode!r}: use 'auto', 'extractive' or 'generative'.")
        if not 1 <= int(top_k) <= MAX_ANSWERS:
            raise UserError(f"top_k={top_k!r} is out of range: ask for 1 to {MAX_ANSWERS} answers.")
        decoding = Decoding(max_new_tokens, num_beams)
        if mode == "extractive":
            loaded = ctx.load("question_answering", model, dtype, device, quantization)
            result = answer_extractive(loaded, question, context, top_k=int(top_k))
        elif mode == "generative":
            loaded = ctx.load("generative_qa", model, dtype, device, quantization)
            result = answer_generative(loaded, question, context, decoding, template, bool(constrained))
        else:
            loaded = ctx.load("question_answering", model, dtype, device, quantization)
            result = answer_checkpoint(loaded, question, context, decoding, template, bool(constrained), int(top_k))
        return {**as_plain(result), "model": loaded.provenance()}

    @user_errors
    def attention(text: str, task: str = "span_filling", model: str = "", question: str = "", target: str = "",
                  kind: str = "encoder", layer: int = -1, head: str = "mean", dtype: str = "auto",
                  device: str = "auto", quantization: str = "none") -> dict:
        """Attention weights of one layer (negative: from the last) and head ('mean': averaged) for `text` (with
        `question` for extractive QA) on `task`'s model. For text-to-text models the decoder reads `target`
        (generated first when empty). kind: encoder | decoder | cross. Returns {kind, layer, head, num_layers,
        num_heads, queries, keys, weights: [[...]] (queries x keys), kinds}."""
        if task not in TASKS:
            raise UserError(f"Unknown task {task!r}: use one of {', '.join(TASKS)}.")
        loaded = ctx.load(task, model, dtype, device, quantization)
        fields = TASKS[task].fields
        # a question/context task reads its pair as the task does; without a question, the text alone
        what = (TASKS[task].attention({"question": question, "context": text}, None)
                if "question" in fields and question else AttentionInput(text))
        require_text(what.source, "text")
        if HEADS[loaded.head].decoder == "generated" and not target.strip():
            source = what.source[: input_cap(MAX_INPUT_TOKENS)]
            if MARKER.search(source):
                target = fill(loaded, source, Decoding()).raw
            else:
                gen = check_decoding(loaded.model, Decoding())
                loaded.afford(generation_work(gen, 1, MAX_INPUT_TOKENS, "the output to show"), "shorten the text.")
                target = generate_text(loaded.model, loaded.tokenizer, source)[0]
        what = AttentionInput(what.source, what.question, target or None)
        maps = ctx.attention.get(loaded, what)
        view = select(maps, kind, layer, head)
        kinds = [k for k in ("encoder", "decoder", "cross") if getattr(maps, k) is not None]
        return {**view.as_dict(), "kinds": kinds, "target": target}

    @user_errors
    def explain_text(text: str, output: str = "", task: str = "summarization", method: str = "gradient_x_input",
                     position: int = 0, alternative: str = "", steps: int = 16, model: str = "", dtype: str = "auto",
                     device: str = "auto", quantization: str = "none") -> dict:
        """Explains output token `position` of `output` (generated from `text` by `task`'s model when empty):
        method gradient_x_input | saliency | integrated_gradients (`steps`, at most 64) | value_zeroing |
        alti_plus | contrastive (why this token and not `alternative`, a word). Returns {method, position, output,
        source_pieces, target_pieces (the text each token adds), source (a score per source token), prefix (per
        earlier output position, the start token first), source_share (ALTI+: per output token, the part from the
        source), contrast ({produced, alternative, produced_logprob, alternative_logprob, difference}), delta
        (integrated gradients' convergence delta)}."""
        if task not in TASKS:
            raise UserError(f"Unknown task {task!r}: use one of {', '.join(TASKS)}.")
        loaded = ctx.load(task, model, dtype, device, quantization)
        source = text[: input_cap(MAX_INPUT_TOKENS)]
        if not output.strip():
            require_text(source, "text")
            gen = check_decoding(loaded.model, Decoding())
            loaded.afford(generation_work(gen, 1, MAX_INPUT_TOKENS, "the output to explain"), "shorten the text.")
            output = generate_text(loaded.model, loaded.tokenizer, source)[0]
        e = explain(loaded, AttentionInput(source, target=output), method, int(position), alternative, int(steps))
        return {**dataclasses.asdict(e), "output": output}

    @user_errors
    def score(hypotheses: str, references: str, metrics: str = "chrf,bleu", lang: str = "",
              n_bootstrap: int = 1000) -> dict:
        """Scores outputs against references with sacreBLEU's BLEU, chrF++ and TER or ROUGE (`metrics`:
        comma-separated names of bleu, chrf, ter, rouge). `hypotheses` and `references`: one segment per line, the
        same number of lines; `lang`: the outputs' language code (picks the tokenizer for zh, ja, ko, th, ...).
        Returns {corpus: {metric: {score, low, high, n, signature}} with 95% bootstrap intervals, rows: [{metric:
        sentence score}] one per line}. Scores are 0-100; for TER lower is better."""
        names = parse_metrics(metrics)
        if "metricx" in names:
            raise UserError("MetricX scores files: `python -m app score --metric metricx` (it loads its own model).")
        hyps, refs = hypotheses.split("\n"), references.split("\n")
        if len(hyps) != len(refs):
            raise UserError(f"{len(hyps)} hypothesis line(s) but {len(refs)} reference line(s): give one reference "
                            "per hypothesis")
        lang = lang.strip() or None
        return {"corpus": corpus_scores(hyps, refs, lang, names, int(n_bootstrap)),
                "rows": sentence_scores(hyps, refs, lang, names)}

    # summaries of concurrent visitors share batched decodes (app/batching.py): their own, wider, limit
    gr.api(on_gpu(summarize), api_name="summarize", **batched(ctx.settings))
    gr.api(on_gpu(translate), api_name="translate", **batched(ctx.settings))
    for fn, name in ((fill_spans, "fill_spans"), (classify_text, "classify"),
                     (tag_text, "tag"), (answer, "answer"), (attention, "attention"), (explain_text, "explain")):
        gr.api(on_gpu(fn), api_name=name, concurrency_id="models")
    gr.api(score, api_name="score")   # CPU only: sacrebleu and rouge-score
