"""transformers 4.57 + bitsandbytes 4-bit logits, for the 4-bit parity tests (runs in .venv-ref).

    ref_quant.py CHECKPOINT_DIR QUANT_TYPE INPUTS.safetensors OUT.safetensors [SAVE_DIR]

QUANT_TYPE nf4 or fp4 quantizes the fp32 checkpoint on load; "saved" loads a checkpoint saved in 4 bits (its
config.json carries the quantization). With SAVE_DIR, the 4-bit model is then saved there (transformers' format).
"""
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import BitsAndBytesConfig, MT5ForConditionalGeneration

path, quant_type, inputs, out = sys.argv[1:5]
save_to = sys.argv[5] if len(sys.argv) > 5 else None
if quant_type == "saved":
    model = MT5ForConditionalGeneration.from_pretrained(path, torch_dtype=torch.float32, device_map="cpu").eval()
else:
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type,
                                bnb_4bit_compute_dtype=torch.float32)
    model = MT5ForConditionalGeneration.from_pretrained(path, quantization_config=config, torch_dtype=torch.float32,
                                                        device_map="cpu").eval()
if save_to:
    # Before any forward pass: on CPUs with AVX512-BF16, bitsandbytes repacks the weights at the first eval call,
    # and saving afterwards unpacks them lossily (absmax changes by up to a quantization step).
    model.save_pretrained(save_to)
with torch.no_grad():
    logits = model(**load_file(inputs)).logits
save_file({"logits": logits.contiguous()}, out)
