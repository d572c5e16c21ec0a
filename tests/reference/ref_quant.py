"""transformers 4.57 + bitsandbytes 4-bit logits, for the Linear-only parity test (runs in .venv-ref).

    ref_quant.py CHECKPOINT_DIR QUANT_TYPE INPUTS.safetensors OUT.safetensors
"""
import sys

import torch
from safetensors.torch import load_file, save_file
from transformers import BitsAndBytesConfig, MT5ForConditionalGeneration

path, quant_type, inputs, out = sys.argv[1:5]
config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=quant_type, bnb_4bit_compute_dtype=torch.float32)
model = MT5ForConditionalGeneration.from_pretrained(path, quantization_config=config, torch_dtype=torch.float32,
                                                    device_map="cpu").eval()
with torch.no_grad():
    logits = model(**load_file(inputs)).logits
save_file({"logits": logits.contiguous()}, out)
