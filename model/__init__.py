"""mT5 Studio's model layer: mT5, UMT5 and T5 in plain PyTorch, loading the Hub's checkpoints, no transformers."""
from .config import MT5Config, T5Config, UMT5Config
from .hub import CheckpointNotFoundError
from .heads import (
    MT5EncoderModel,
    MT5ForConditionalGeneration,
    MT5ForQuestionAnswering,
    MT5ForSequenceClassification,
    MT5ForTokenClassification,
    MT5Model,
    T5EncoderModel,
    T5ForConditionalGeneration,
    T5ForQuestionAnswering,
    T5ForSequenceClassification,
    T5ForTokenClassification,
    T5Model,
    UMT5EncoderModel,
    UMT5ForConditionalGeneration,
    UMT5ForQuestionAnswering,
    UMT5ForSequenceClassification,
    UMT5ForTokenClassification,
    UMT5Model,
)
from .loading import AlreadyQuantizedError, CheckpointError, LoadingInfo
from .metricx import MT5ForRegression
from .modeling import KVCache, ModelOutput
from .placement import PlacementError
from .registry import load_model, model_class
from .tokenizer import MT5Tokenizer, MT5TokenizerFast

# transformers' names for the same tokenizers (T5 checkpoints: Flan-T5, MADLAD-400, aya-101)
T5Tokenizer, T5TokenizerFast = MT5Tokenizer, MT5TokenizerFast

__all__ = [
    "MT5Config", "UMT5Config", "MT5Tokenizer", "MT5TokenizerFast", "T5Tokenizer", "T5TokenizerFast", "load_model",
    "model_class",
    "MT5Model", "MT5ForConditionalGeneration", "MT5EncoderModel", "MT5ForSequenceClassification",
    "MT5ForTokenClassification", "MT5ForQuestionAnswering", "MT5ForRegression",
    "UMT5Model", "UMT5ForConditionalGeneration", "UMT5EncoderModel", "UMT5ForSequenceClassification",
    "UMT5ForTokenClassification", "UMT5ForQuestionAnswering",
    "T5Config", "T5Model", "T5ForConditionalGeneration", "T5EncoderModel", "T5ForSequenceClassification",
    "T5ForTokenClassification", "T5ForQuestionAnswering",
    "KVCache", "ModelOutput", "LoadingInfo", "CheckpointError", "AlreadyQuantizedError", "CheckpointNotFoundError",
    "PlacementError",
]
