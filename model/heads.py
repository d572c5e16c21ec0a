"""The public classes: the network of `modeling.py` with its task heads, plus the Hub, generation and placement.

This is the compatibility edge: each class accepts the arguments transformers documents for it (`return_dict`,
`labels`, ...) and translates them here, so the network below keeps its small signatures. Loading, decoding and
device placement sit on higher floors than the network; this module imports them, the network never does.

Numerics stated once: logits are scaled by d_model**-0.5 only when lm_head is tied to the shared embedding.
"""
from __future__ import annotations

import math
import os
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import generation, loading, placement
from .config import CLASS_PREFIX, GenerationConfig, MT5Config, T5Config, UMT5Config
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

    def get_memory_footprint(self, return_buffers: bool = True) -> int:
        """transformers' total: bytes of the parameters, and of the buffers (quantized weights are buffers)
        unless return_buffers=False. Tied weights count once."""
        tensors = {id(t): t for t in self.parameters()}
        if return_buffers:
            tensors.update({id(t): t for t in self.buffers()})
        return sum(t.numel() * t.element_size() for t in tensors.values())

    def returned(self, output: ModelOutput, return_dict: bool | None) -> ModelOutput | tuple:
        """transformers' `return_dict`: the output object, or (False, or config.return_dict False) the tuple
        of its non-None fields in transformers' order."""
        if return_dict is None:
            return_dict = self.config.use_return_dict
        return output if return_dict else output.to_tuple()

    # Embeddings and stacks, as transformers' PreTrainedModel offers them ------------------------------------
    @property
    def base_model(self) -> nn.Module:
        return getattr(self, self.base_model_prefix) if self.base_model_prefix else self

    def get_input_embeddings(self) -> nn.Module:
        return self.base_model.shared

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.base_model.shared = value

    def get_output_embeddings(self) -> nn.Module | None:
        return getattr(self, "lm_head", None)

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.lm_head = value

    def get_encoder(self) -> "StackView":
        """The encoder stack, callable as transformers' (input_ids=..., attention_mask=...)."""
        return StackView(self.base_model, "encoder")

    def get_decoder(self) -> "StackView | None":
        """The decoder stack (None for encoder-only models), callable as transformers' decoder."""
        return StackView(self.base_model, "decoder") if hasattr(self.base_model, "decoder") else None

    def resize_token_embeddings(self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None,
                                mean_resizing: bool = True) -> nn.Embedding:
        """transformers' resize: keeps the old rows, adds rows drawn around the old embeddings' mean (or cuts),
        resizes an untied lm_head the same way, updates config.vocab_size. Returns the new embedding."""
        base, old = self.base_model, self.base_model.shared
        if type(old) is not nn.Embedding or (hasattr(self, "lm_head") and type(self.lm_head) is not nn.Linear):
            raise TypeError("resize_token_embeddings needs unquantized embeddings: resize before quantizing")
        if new_num_tokens is None and pad_to_multiple_of is None:
            return old
        rows = old.num_embeddings if new_num_tokens is None else new_num_tokens
        if pad_to_multiple_of is not None:
            if not isinstance(pad_to_multiple_of, int) or pad_to_multiple_of <= 0:
                raise ValueError(f"pad_to_multiple_of must be a positive integer, got {pad_to_multiple_of!r}")
            rows = math.ceil(rows / pad_to_multiple_of) * pad_to_multiple_of
        new = nn.Embedding(rows, old.embedding_dim, _weight=resized_rows(old.weight, rows, mean_resizing,
                                                                         self.config.initializer_factor))
        base.shared = new
        if hasattr(self, "lm_head"):  # tied: tie_weights() below gives it the new embedding's rows
            head = nn.Linear(self.lm_head.in_features, rows, bias=False, device="meta")
            if not self.config.tie_word_embeddings:
                head.weight = nn.Parameter(resized_rows(self.lm_head.weight, rows, mean_resizing,
                                                        self.config.initializer_factor))
            self.lm_head = head
        self.config.vocab_size = rows
        if hasattr(self, "tie_weights"):
            self.tie_weights()
        return new


@torch.no_grad()
def resized_rows(old: torch.Tensor, rows: int, mean_resizing: bool, factor: float) -> torch.Tensor:
    """(V, D) -> (rows, D): old rows kept; new ones, as transformers' mean_resizing, drawn from a normal with the
    old rows' mean and 1e-9 x their covariance (the mean itself when that is not positive definite), else
    normal(0, factor)."""
    kept = min(rows, old.shape[0])
    new = torch.empty(rows, old.shape[1], dtype=old.dtype, device=old.device)
    new[:kept] = old[:kept]
    added = rows - kept
    if added:
        new[kept:].normal_(0.0, factor)
        if mean_resizing:
            w = old.float()
            mean = w.mean(0)
            centered = w - mean
            covariance = centered.T @ centered / w.shape[0]
            scaled = 1e-9 * covariance
            if torch.distributions.constraints.positive_definite.check(scaled).all():
                sample = torch.distributions.MultivariateNormal(mean, covariance_matrix=scaled).sample((added,))
            else:
                sample = mean[None, :].repeat(added, 1)
            new[kept:] = sample.to(old.dtype)
    return new


class StackView:
    """What get_encoder()/get_decoder() return: the stack itself for everything but calls (parameters, blocks,
    .to(), .train(), ...), and a call that takes transformers' stack arguments and returns its output fields."""

    def __init__(self, model: PreTrainedModel, name: str):
        self._model, self._name = model, name

    def __getattr__(self, attr: str):
        return getattr(getattr(self._model, self._name), attr)

    def __call__(self, input_ids=None, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None,
                 inputs_embeds=None, head_mask=None, cross_attn_head_mask=None, past_key_values=None,
                 use_cache=None, output_attentions=None, output_hidden_states=None, return_dict=None,
                 cache_position=None) -> ModelOutput | tuple:
        model, cfg = self._model, self._model.config
        if self._name == "encoder":
            enc = encoder_forward(model, input_ids, attention_mask, head_mask, inputs_embeds, output_attentions,
                                  output_hidden_states)
            out = ModelOutput(last_hidden_state=enc.last_hidden_state, hidden_states=enc.hidden_states,
                              attentions=enc.attentions)
        else:
            one_input(input_ids, inputs_embeds, "decoder_")
            attn, hidden = output_flags(cfg, output_attentions, output_hidden_states)
            if inputs_embeds is None:
                model.check_ids(input_ids, "decoder_input_ids")
                inputs_embeds = model.shared(input_ids)
            use_cache = cfg.use_cache and not model.training if use_cache is None else use_cache
            cache = past_key_values if past_key_values is not None or not use_cache else KVCache(len(self.block))
            dtype = model.dtype
            dec = model.decode_embeds(inputs_embeds, encoder_hidden_states, encoder_attention_mask, attention_mask,
                                      cache, attn, hidden, layer_head_mask(head_mask, cfg.num_decoder_layers, dtype),
                                      layer_head_mask(cross_attn_head_mask, cfg.num_decoder_layers, dtype))
            out = ModelOutput(last_hidden_state=dec.last_hidden_state, past_key_values=cache,
                              hidden_states=dec.hidden_states, attentions=dec.attentions,
                              cross_attentions=dec.cross_attentions)
        return out if (cfg.use_return_dict if return_dict is None else return_dict) else out.to_tuple()


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


def output_flags(config: MT5Config, output_attentions: bool | None, output_hidden_states: bool | None):
    """transformers' defaults: an argument left at None takes the config's value."""
    return (config.output_attentions if output_attentions is None else output_attentions,
            config.output_hidden_states if output_hidden_states is None else output_hidden_states)


HEAD_MASK_WARNING = ("The input argument `head_mask` was split into two arguments `head_mask` and "
                     "`decoder_head_mask`. Currently, `decoder_head_mask` is set to copy `head_mask`, but this "
                     "feature is deprecated and will be removed in future versions.")


def layer_head_mask(mask: torch.Tensor | None, num_layers: int, dtype: torch.dtype) -> torch.Tensor | None:
    """(H,) or (L, H) of 1/0 -> (L, 1, H, 1, 1): what each layer multiplies its attention probabilities by."""
    if mask is None:
        return None
    if mask.dim() == 1:
        mask = mask[None, :].expand(num_layers, -1)
    if mask.dim() != 2 or mask.shape[0] != num_layers:
        raise ValueError(f"a head mask must have shape (num_heads,) or ({num_layers}, num_heads), got "
                         f"{tuple(mask.shape)}")
    return mask[:, None, :, None, None].to(dtype)


def head_masks(model: PreTrainedModel, head_mask=None, decoder_head_mask=None, cross_attn_head_mask=None) -> dict:
    """transformers' three head-mask arguments as run() takes them; `head_mask` alone also masks the decoder's
    self-attention when both stacks are equally deep (transformers' deprecated behaviour, with its warning)."""
    if head_mask is None and decoder_head_mask is None and cross_attn_head_mask is None:
        return {}
    cfg = model.config
    if head_mask is not None and decoder_head_mask is None and cfg.num_layers == cfg.num_decoder_layers:
        warnings.warn(HEAD_MASK_WARNING, FutureWarning, stacklevel=3)
        decoder_head_mask = head_mask
    dtype = model.dtype
    return dict(head_mask=layer_head_mask(head_mask, cfg.num_layers, dtype),
                decoder_head_mask=layer_head_mask(decoder_head_mask, cfg.num_decoder_layers, dtype),
                cross_attn_head_mask=layer_head_mask(cross_attn_head_mask, cfg.num_decoder_layers, dtype))


def one_input(ids, embeds, name: str) -> None:
    if ids is not None and embeds is not None:
        raise ValueError(f"You cannot specify both {name}input_ids and {name}inputs_embeds at the same time")


class MT5Model(HubMixin, EncoderDecoderBase):
    """The bare encoder-decoder: returns the decoder's last hidden state."""

    def __init__(self, config: MT5Config):
        super().__init__(config)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
                head_mask=None, decoder_head_mask=None, cross_attn_head_mask=None, encoder_outputs=None,
                past_key_values=None, inputs_embeds=None, decoder_inputs_embeds=None, use_cache=None,
                output_attentions=None, output_hidden_states=None, return_dict=None,
                cache_position=None) -> ModelOutput | tuple:
        """transformers' arguments; `cache_position` is accepted and ignored (positions follow the cache)."""
        if decoder_input_ids is None and decoder_inputs_embeds is None:
            raise ValueError("MT5Model needs decoder_input_ids (start them with decoder_start_token_id "
                             f"{self.config.decoder_start_token_id})")
        one_input(input_ids, inputs_embeds, "")
        one_input(decoder_input_ids, decoder_inputs_embeds, "decoder_")
        attn, hidden = output_flags(self.config, output_attentions, output_hidden_states)
        enc, dec, cache = self.run(input_ids=input_ids, attention_mask=attention_mask,
                                   decoder_input_ids=decoder_input_ids, decoder_attention_mask=decoder_attention_mask,
                                   encoder_outputs=encoder_outputs, past_key_values=past_key_values,
                                   use_cache=use_cache, output_attentions=attn, output_hidden_states=hidden,
                                   inputs_embeds=inputs_embeds, decoder_inputs_embeds=decoder_inputs_embeds,
                                   **head_masks(self, head_mask, decoder_head_mask, cross_attn_head_mask))
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
                head_mask=None, decoder_head_mask=None, cross_attn_head_mask=None, encoder_outputs=None,
                past_key_values=None, inputs_embeds=None, decoder_inputs_embeds=None, labels=None, use_cache=None,
                output_attentions=None, output_hidden_states=None, return_dict=None,
                cache_position=None) -> ModelOutput | tuple:
        """transformers' arguments; `cache_position` is accepted and ignored (positions follow the cache)."""
        if decoder_inputs_embeds is None:
            decoder_input_ids = decoder_inputs(self, decoder_input_ids, labels)
        one_input(input_ids, inputs_embeds, "")
        one_input(decoder_input_ids, decoder_inputs_embeds, "decoder_")
        attn, hidden = output_flags(self.config, output_attentions, output_hidden_states)
        enc, dec, cache = self.run(input_ids=input_ids, attention_mask=attention_mask,
                                   decoder_input_ids=decoder_input_ids, decoder_attention_mask=decoder_attention_mask,
                                   encoder_outputs=encoder_outputs, past_key_values=past_key_values,
                                   use_cache=use_cache, output_attentions=attn, output_hidden_states=hidden,
                                   inputs_embeds=inputs_embeds, decoder_inputs_embeds=decoder_inputs_embeds,
                                   **head_masks(self, head_mask, decoder_head_mask, cross_attn_head_mask))
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
    encode_embeds = EncoderDecoderBase.encode_embeds

    def forward(self, input_ids=None, attention_mask=None, head_mask=None, inputs_embeds=None,
                output_attentions=None, output_hidden_states=None, return_dict=None) -> ModelOutput | tuple:
        enc = encoder_forward(self, input_ids, attention_mask, head_mask, inputs_embeds, output_attentions,
                              output_hidden_states)
        return self.returned(ModelOutput(last_hidden_state=enc.last_hidden_state, hidden_states=enc.hidden_states,
                                         attentions=enc.attentions), return_dict)


def encoder_forward(model, input_ids, attention_mask, head_mask, inputs_embeds, output_attentions,
                    output_hidden_states) -> StackOutput:
    """The encoder with transformers' arguments (the fast `encode` unless embeddings or a head mask are given)."""
    one_input(input_ids, inputs_embeds, "")
    attn, hidden = output_flags(model.config, output_attentions, output_hidden_states)
    if inputs_embeds is None and head_mask is None:
        if input_ids is None:
            raise ValueError("You have to specify either input_ids or inputs_embeds")
        return model.encode(input_ids, attention_mask, attn, hidden)
    if inputs_embeds is None:
        model.check_ids(input_ids, "input_ids", attention_mask)
        inputs_embeds = model.shared(input_ids)
    mask = layer_head_mask(head_mask, model.config.num_layers, model.dtype)
    return model.encode_embeds(inputs_embeds, attention_mask, attn, hidden, mask)


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
        self.transformer = family_class(config, "Model")(config)
        self.classification_head = ClassificationHead(config)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
                head_mask=None, decoder_head_mask=None, cross_attn_head_mask=None, encoder_outputs=None,
                inputs_embeds=None, decoder_inputs_embeds=None, labels=None, use_cache=None,
                output_attentions=None, output_hidden_states=None, return_dict=None) -> ModelOutput | tuple:
        if inputs_embeds is not None:  # as transformers: the eos positions come from input_ids
            raise NotImplementedError(f"Passing input embeddings is currently not supported for {type(self).__name__}")
        if input_ids is None:
            raise ValueError("sequence classification needs input_ids: it reads the state at their last eos")
        if decoder_inputs_embeds is None:
            decoder_input_ids = decoder_inputs(self, decoder_input_ids, None, input_ids)
        one_input(decoder_input_ids, decoder_inputs_embeds, "decoder_")
        attn, hidden = output_flags(self.config, output_attentions, output_hidden_states)
        enc, dec, cache = self.transformer.run(
            input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
            decoder_attention_mask=decoder_attention_mask, encoder_outputs=encoder_outputs, past_key_values=None,
            use_cache=False if labels is not None else use_cache, output_attentions=attn,
            output_hidden_states=hidden, decoder_inputs_embeds=decoder_inputs_embeds,
            **head_masks(self, head_mask, decoder_head_mask, cross_attn_head_mask))
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
        self.transformer = family_class(config, "EncoderModel")(config)
        self.dropout = nn.Dropout(config.classifier_dropout)
        self.classifier = nn.Linear(config.d_model, config.num_labels)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, head_mask=None, inputs_embeds=None, labels=None,
                output_attentions=None, output_hidden_states=None, return_dict=None) -> ModelOutput | tuple:
        enc = encoder_forward(self.transformer, input_ids, attention_mask, head_mask, inputs_embeds,
                              *output_flags(self.config, output_attentions, output_hidden_states))
        logits = self.classifier(self.dropout(enc.last_hidden_state))
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.view(-1, self.config.num_labels), labels.to(logits.device).view(-1),
                                   ignore_index=-100)
        if not (self.config.use_return_dict if return_dict is None else return_dict):
            # transformers 4.57's tuple here is (loss, logits, outputs[2:-1]): that slice is always ()
            return tuple(v for v in (loss, logits) if v is not None) + ((),)
        return ModelOutput(loss=loss, logits=logits, hidden_states=enc.hidden_states, attentions=enc.attentions)


class MT5ForQuestionAnswering(HubMixin, EncoderDecoderBase):
    """Extractive QA: start/end logits over the input, read from the decoder fed the shifted input."""

    def __init__(self, config: MT5Config):
        super().__init__(config)
        self.qa_outputs = nn.Linear(config.d_model, 2)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
                head_mask=None, decoder_head_mask=None, cross_attn_head_mask=None, encoder_outputs=None,
                start_positions=None, end_positions=None, inputs_embeds=None, decoder_inputs_embeds=None,
                use_cache=None, output_attentions=None, output_hidden_states=None,
                return_dict=None) -> ModelOutput | tuple:
        if decoder_inputs_embeds is None:
            decoder_input_ids = decoder_inputs(self, decoder_input_ids, None, input_ids)
        one_input(input_ids, inputs_embeds, "")
        one_input(decoder_input_ids, decoder_inputs_embeds, "decoder_")
        attn, hidden = output_flags(self.config, output_attentions, output_hidden_states)
        labelled = start_positions is not None and end_positions is not None
        enc, dec, cache = self.run(input_ids=input_ids, attention_mask=attention_mask,
                                   decoder_input_ids=decoder_input_ids, decoder_attention_mask=decoder_attention_mask,
                                   encoder_outputs=encoder_outputs, past_key_values=None,
                                   use_cache=False if labelled else use_cache, output_attentions=attn,
                                   output_hidden_states=hidden, inputs_embeds=inputs_embeds,
                                   decoder_inputs_embeds=decoder_inputs_embeds,
                                   **head_masks(self, head_mask, decoder_head_mask, cross_attn_head_mask))
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


# ------------------------------------------------------------------------------------------------------------
# T5 (`model_type: t5`: aya-101, MADLAD-400, Flan-T5, t5-*): the mT5 network over T5Config, whose defaults are
# transformers' T5Config's (ReLU, tied). What varies between those checkpoints is read from config.json.
# ------------------------------------------------------------------------------------------------------------
class T5Model(MT5Model):
    config_class = T5Config


class T5ForConditionalGeneration(MT5ForConditionalGeneration):
    config_class = T5Config


class T5EncoderModel(MT5EncoderModel):
    config_class = T5Config


class T5ForSequenceClassification(MT5ForSequenceClassification):
    config_class = T5Config


class T5ForTokenClassification(MT5ForTokenClassification):
    config_class = T5Config


class T5ForQuestionAnswering(MT5ForQuestionAnswering):
    config_class = T5Config



def family_class(config: MT5Config, suffix: str) -> type:
    """The public class of `config`'s family for a class-name suffix ("Model", "EncoderModel", ...)."""
    return globals()[CLASS_PREFIX[config.model_type] + suffix]
