"""The public classes: the network of `modeling.py` with its task heads, plus the Hub, generation and placement.

This is the compatibility edge: each class accepts the arguments transformers documents for it (`return_dict`,
`labels`, ...) and translates them here, so the network below keeps its small signatures. Loading, decoding and
device placement sit on higher floors than the network; this module imports them, the network never does.

Numerics stated once: logits are scaled by d_model**-0.5 only when lm_head is tied to the shared embedding.
"""
from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import generation, loading, placement
from .config import GenerationConfig, MT5Config, UMT5Config
from .modeling import (
    EncoderDecoderBase,
    KVCache,
    ModelOutput,
    PreTrainedModel,
    Stack,
    StackOutput,
    embedding,
    shift_right,
)


class HubMixin:
    """Hub and device-placement methods every public class has (see `model.loading`, `model.placement`)."""

    @classmethod
    def from_pretrained(cls, repo_or_dir: str | os.PathLike, **options: Any):
        """Loads a Hub repo id or local directory (see `model.loading.from_pretrained` for the options)."""
        return loading.from_pretrained(cls, repo_or_dir, **options)

    def save_pretrained(self, directory: str | os.PathLike, **options: Any) -> None:
        """Writes config.json + model.safetensors (sharded with max_shard_size=bytes) that transformers loads."""
        loading.save_pretrained(self, directory, **options)

    def parallelize(self, device_map: dict[int, list[int]] | None = None):
        """Spreads the blocks over CUDA GPUs ({gpu: [block indices]}, even split when None), transformers' old
        API; the embedding and heads go with the first GPU."""
        base = getattr(self, self.base_model_prefix) if self.base_model_prefix else self
        mapping = placement.parallelize_map(base, device_map)
        prefix = f"{self.base_model_prefix}." if self.base_model_prefix else ""
        full = {prefix + k: v for k, v in mapping.items()}
        for name in ("classification_head", "classifier", "dropout"):
            if hasattr(self, name) and list(getattr(self, name).parameters()):
                full[name] = next(iter(mapping.values()))
        return placement.place(self, full)

    def deparallelize(self):
        """Undoes parallelize() / a device map: every weight back on the CPU, hooks removed."""
        return placement.unplace(self)

    def memory_footprint(self) -> dict[str, dict[str, int]]:
        """Bytes of weights by component ("embeddings", "lm_head", "transformer", "heads") and device."""
        return placement.memory_footprint(self)

    def returned(self, output: ModelOutput, return_dict: bool | None) -> ModelOutput | tuple:
        """transformers' `return_dict`: the output object, or (False, or config.return_dict False) the tuple
        of its non-None fields in transformers' order."""
        if return_dict is None:
            return_dict = self.config.return_dict
        return output if return_dict else output.to_tuple()


# ------------------------------------------------------------------------------------------------------------
# Encoder-decoder models
# ------------------------------------------------------------------------------------------------------------
def seq2seq_output(enc: StackOutput, dec: StackOutput, cache: KVCache | None, **fields) -> ModelOutput:
    return ModelOutput(
        past_key_values=cache, decoder_hidden_states=dec.hidden_states, decoder_attentions=dec.attentions,
        cross_attentions=dec.cross_attentions, encoder_last_hidden_state=enc.last_hidden_state,
        encoder_hidden_states=enc.hidden_states, encoder_attentions=enc.attentions, **fields,
    )


def decoder_inputs(model: PreTrainedModel, decoder_input_ids, labels, input_ids=None) -> torch.Tensor:
    """The decoder's input: given, else labels shifted right, else (heads) input_ids shifted right."""
    cfg = model.config
    source = labels if labels is not None else input_ids
    if decoder_input_ids is None:
        if source is None:
            raise ValueError("pass decoder_input_ids or labels, so the decoder has an input")
        decoder_input_ids = shift_right(source, cfg.decoder_start_token_id, cfg.pad_token_id)
    return decoder_input_ids


class MT5Model(HubMixin, EncoderDecoderBase):
    """The bare encoder-decoder: returns the decoder's last hidden state."""

    def __init__(self, config: MT5Config):
        super().__init__(config)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
                encoder_outputs=None, past_key_values=None, use_cache=None, output_attentions=False,
                output_hidden_states=False, return_dict=None) -> ModelOutput | tuple:
        if decoder_input_ids is None:
            raise ValueError("MT5Model needs decoder_input_ids (start them with decoder_start_token_id "
                             f"{self.config.decoder_start_token_id})")
        enc, dec, cache = self.run(input_ids=input_ids, attention_mask=attention_mask,
                                   decoder_input_ids=decoder_input_ids, decoder_attention_mask=decoder_attention_mask,
                                   encoder_outputs=encoder_outputs, past_key_values=past_key_values,
                                   use_cache=use_cache, output_attentions=output_attentions,
                                   output_hidden_states=output_hidden_states)
        return self.returned(seq2seq_output(enc, dec, cache, last_hidden_state=dec.last_hidden_state), return_dict)


class MT5ForConditionalGeneration(HubMixin, EncoderDecoderBase):
    """Encoder-decoder with the language-model head: text to text, span filling, summarization."""

    def __init__(self, config: MT5Config):
        super().__init__(config)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.post_init()

    def tie_weights(self) -> None:
        # Quantized with quantize_embeddings, shared and lm_head each hold their own quantized copy.
        if self.config.tie_word_embeddings and type(self.lm_head) is nn.Linear \
                and type(self.shared) is nn.Embedding:
            self.lm_head.weight = self.shared.weight

    @property
    def generation_config(self) -> GenerationConfig:
        """Decoding defaults from the checkpoint (generation_config.json, else config.json)."""
        if getattr(self, "_generation_config", None) is None:
            self._generation_config = GenerationConfig.from_model_config(self.config)
        return self._generation_config

    @generation_config.setter
    def generation_config(self, value: GenerationConfig) -> None:
        self._generation_config = value

    def generate(self, input_ids=None, attention_mask=None, **kwargs):
        """Greedy, sampling or beam search with transformers' argument names; see model.generation."""
        return generation.generate(self, input_ids, attention_mask, **kwargs)

    def logits(self, states: torch.Tensor) -> torch.Tensor:
        """Decoder states (B, T, D) -> logits (B, T, V); scaled only when lm_head is tied to the embedding."""
        if self.config.tie_word_embeddings:
            states = states * self.config.d_model ** -0.5
        return self.lm_head(states)

    def forward(self, input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
                labels=None, encoder_outputs=None, past_key_values=None, use_cache=None, output_attentions=False,
                output_hidden_states=False, return_dict=None) -> ModelOutput | tuple:
        decoder_input_ids = decoder_inputs(self, decoder_input_ids, labels)
        if labels is not None and use_cache is None:
            use_cache = False
        enc, dec, cache = self.run(input_ids=input_ids, attention_mask=attention_mask,
                                   decoder_input_ids=decoder_input_ids, decoder_attention_mask=decoder_attention_mask,
                                   encoder_outputs=encoder_outputs, past_key_values=past_key_values,
                                   use_cache=use_cache, output_attentions=output_attentions,
                                   output_hidden_states=output_hidden_states)
        logits = self.logits(dec.last_hidden_state)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.to(logits.device).view(-1),
                                   ignore_index=-100)
        return self.returned(seq2seq_output(enc, dec, cache, loss=loss, logits=logits), return_dict)


class MT5EncoderModel(HubMixin, PreTrainedModel):
    """The encoder alone (`shared` + `encoder`)."""

    def __init__(self, config: MT5Config):
        super().__init__(config)
        self.shared = embedding(config.vocab_size, config.d_model)
        self.encoder = Stack(config, is_decoder=False, gated=config.is_gated_act)
        self.post_init()

    encode = EncoderDecoderBase.encode

    def forward(self, input_ids=None, attention_mask=None, output_attentions=False, output_hidden_states=False,
                return_dict=None) -> ModelOutput | tuple:
        if input_ids is None:
            raise ValueError("pass input_ids")
        enc = self.encode(input_ids, attention_mask, output_attentions, output_hidden_states)
        return self.returned(ModelOutput(last_hidden_state=enc.last_hidden_state, hidden_states=enc.hidden_states,
                                         attentions=enc.attentions), return_dict)


# ------------------------------------------------------------------------------------------------------------
# Task heads
# ------------------------------------------------------------------------------------------------------------
class ClassificationHead(nn.Module):
    """dropout -> dense -> tanh -> dropout -> out_proj, on the sentence representation."""

    def __init__(self, config: MT5Config):
        super().__init__()
        self.dense = nn.Linear(config.d_model, config.d_model)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.out_proj = nn.Linear(config.d_model, config.num_labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(x)
        x = torch.tanh(self.dense(x))
        return self.out_proj(self.dropout(x))


def classification_loss(config: MT5Config, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Loss by problem_type (inferred like transformers when unset): MSE, cross-entropy or BCE."""
    problem = config.problem_type
    if problem is None:
        if config.num_labels == 1:
            problem = "regression"
        elif labels.dtype in (torch.long, torch.int):
            problem = "single_label_classification"
        else:
            problem = "multi_label_classification"
    labels = labels.to(logits.device)
    if problem == "regression":
        if config.num_labels == 1:
            return F.mse_loss(logits.squeeze(), labels.squeeze().to(logits.dtype))
        return F.mse_loss(logits, labels.to(logits.dtype))
    if problem == "single_label_classification":
        return F.cross_entropy(logits.view(-1, config.num_labels), labels.view(-1))
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))


class MT5ForSequenceClassification(HubMixin, PreTrainedModel):
    """Full encoder-decoder; the head reads the decoder state at the last eos of each row."""

    base_model_prefix = "transformer"

    def __init__(self, config: MT5Config):
        super().__init__(config)
        self.transformer = (UMT5Model if config.per_layer_bias else MT5Model)(config)
        self.classification_head = ClassificationHead(config)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
                labels=None, encoder_outputs=None, use_cache=None, output_attentions=False,
                output_hidden_states=False, return_dict=None) -> ModelOutput | tuple:
        if input_ids is None:
            raise ValueError("sequence classification needs input_ids: it reads the state at their last eos")
        decoder_input_ids = decoder_inputs(self, decoder_input_ids, None, input_ids)
        enc, dec, cache = self.transformer.run(
            input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask, encoder_outputs=encoder_outputs, past_key_values=None,
            use_cache=False if labels is not None else use_cache, output_attentions=output_attentions,
            output_hidden_states=output_hidden_states)
        states = dec.last_hidden_state
        eos = input_ids.eq(self.config.eos_token_id).to(states.device)
        counts = eos.sum(1)
        if counts.min() == 0 or (counts != counts[0]).any():
            raise ValueError(f"every row must hold the same number of eos tokens (id {self.config.eos_token_id}); "
                             f"found {counts.tolist()}: tokenize with the model's tokenizer, which appends </s>")
        sentence = states[eos, :].view(states.shape[0], -1, states.shape[-1])[:, -1, :]
        logits = self.classification_head(sentence)
        loss = classification_loss(self.config, logits, labels) if labels is not None else None
        return self.returned(seq2seq_output(enc, dec, cache, loss=loss, logits=logits), return_dict)


class MT5ForTokenClassification(HubMixin, PreTrainedModel):
    """Encoder only; a linear classifier on every token's state."""

    base_model_prefix = "transformer"

    def __init__(self, config: MT5Config):
        super().__init__(config)
        self.transformer = (UMT5EncoderModel if config.per_layer_bias else MT5EncoderModel)(config)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(config.d_model, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, labels=None, output_attentions=False,
                output_hidden_states=False, return_dict=None) -> ModelOutput | tuple:
        enc = self.transformer(input_ids, attention_mask, output_attentions, output_hidden_states, return_dict=True)
        logits = self.classifier(self.dropout(enc.last_hidden_state))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.view(-1, self.config.num_labels), labels.to(logits.device).view(-1),
                                   ignore_index=-100)
        return self.returned(ModelOutput(loss=loss, logits=logits, hidden_states=enc.hidden_states,
                                         attentions=enc.attentions), return_dict)


class MT5ForQuestionAnswering(HubMixin, EncoderDecoderBase):
    """Extractive QA: start/end logits over the input, read from the decoder fed the shifted input."""

    def __init__(self, config: MT5Config):
        super().__init__(config)
        self.qa_outputs = nn.Linear(config.d_model, 2)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
                start_positions=None, end_positions=None, encoder_outputs=None, use_cache=None,
                output_attentions=False, output_hidden_states=False, return_dict=None) -> ModelOutput | tuple:
        decoder_input_ids = decoder_inputs(self, decoder_input_ids, None, input_ids)
        labelled = start_positions is not None and end_positions is not None
        enc, dec, cache = self.run(input_ids=input_ids, attention_mask=attention_mask,
                                   decoder_input_ids=decoder_input_ids, decoder_attention_mask=decoder_attention_mask,
                                   encoder_outputs=encoder_outputs, past_key_values=None,
                                   use_cache=False if labelled else use_cache, output_attentions=output_attentions,
                                   output_hidden_states=output_hidden_states)
        start, end = self.qa_outputs(dec.last_hidden_state).split(1, dim=-1)
        start, end = start.squeeze(-1).contiguous(), end.squeeze(-1).contiguous()
        loss = None
        if labelled:
            ignored = start.shape[1]  # positions outside the input are ignored, as in transformers
            s = start_positions.view(-1).clamp(0, ignored).to(start.device)
            e = end_positions.view(-1).clamp(0, ignored).to(end.device)
            loss = (F.cross_entropy(start, s, ignore_index=ignored) + F.cross_entropy(end, e, ignore_index=ignored)) / 2
        return self.returned(seq2seq_output(enc, dec, cache, loss=loss, start_logits=start, end_logits=end),
                             return_dict)


# ------------------------------------------------------------------------------------------------------------
# UMT5: the same classes over UMT5Config (a relative-bias table in every self-attention layer).
# ------------------------------------------------------------------------------------------------------------
class UMT5Model(MT5Model):
    config_class = UMT5Config


class UMT5ForConditionalGeneration(MT5ForConditionalGeneration):
    config_class = UMT5Config


class UMT5EncoderModel(MT5EncoderModel):
    config_class = UMT5Config


class UMT5ForSequenceClassification(MT5ForSequenceClassification):
    config_class = UMT5Config


class UMT5ForTokenClassification(MT5ForTokenClassification):
    config_class = UMT5Config


class UMT5ForQuestionAnswering(MT5ForQuestionAnswering):
    config_class = UMT5Config
