"""The bounds of every decoding setting: one table that the page's sliders are drawn from and that the server
checks on every call (page or API), so an API caller cannot ask for more than the page offers.

Why bounded at all: beams and returned sequences multiply the decoder's memory (2,500 beams took 6 GB of the
tiny demo model); new tokens multiply its time; a huge length penalty overflows (`OverflowError`) and a top-k
above the vocabulary fails inside torch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .errors import UserError


@dataclass(frozen=True)
class Bound:
    """An allowed range, inclusive, with the page's slider step and label."""
    low: float
    high: float
    step: float
    label: str


DECODING_BOUNDS: dict[str, Bound] = {
    "max_new_tokens": Bound(1, 512, 1, "Max new tokens"),
    "num_beams": Bound(1, 8, 1, "Beams"),
    "num_return_sequences": Bound(1, 8, 1, "Returned sequences"),
    "no_repeat_ngram_size": Bound(0, 6, 1, "No-repeat n-gram size"),
    "length_penalty": Bound(-2.0, 3.0, 0.1, "Length penalty (beams)"),
    "temperature": Bound(0.05, 2.0, 0.05, "Temperature (sampling)"),
    "top_k": Bound(0, 200, 1, "Top-k (sampling)"),
    "top_p": Bound(0.05, 1.0, 0.05, "Top-p (sampling)"),
    "repetition_penalty": Bound(1.0, 3.0, 0.05, "Repetition penalty"),
    "seed": Bound(-1, 2**32 - 1, 1, "Seed (-1: random)"),
}
# The extractive answer endpoint's `top_k` (alternatives returned), not the sampling one.
MAX_ANSWERS = 20


def check_bounds(settings: dict[str, Any]) -> None:
    """Raises a UserError naming the first setting outside DECODING_BOUNDS (or not a finite number)."""
    for name, value in settings.items():
        bound = DECODING_BOUNDS.get(name)
        if bound is None or value is None or isinstance(value, bool):
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise UserError(f"Invalid decoding settings: {name} must be a number, got {value!r}.") from None
        if not math.isfinite(number) or not bound.low <= number <= bound.high:
            raise UserError(f"Invalid decoding settings: {name}={value!r} is out of range: this deployment "
                            f"allows {name} from {bound.low:g} to {bound.high:g}.")
