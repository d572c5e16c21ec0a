"""What the generation reference scripts share: one transformers model per checkpoint folder, and the entry a
`generate()` result is recorded as. Runs in .venv-ref only (imports transformers)."""
import transformers


class Models(dict):
    """Checkpoint folder -> transformers' (U)MT5ForConditionalGeneration, loaded once, in eval mode."""

    def __init__(self, **options):
        super().__init__()
        self.options = options

    def for_case(self, case):
        key = case["dir"]
        if key not in self:
            prefix = "UMT5" if case["family"] == "umt5" else "MT5"
            cls = getattr(transformers, prefix + "ForConditionalGeneration")
            self[key] = cls.from_pretrained(key, **self.options).eval()
        return self[key]


def sequences_entry(res) -> dict:
    """`sequences`, and `sequences_scores` where the search has them (beams)."""
    entry = {"sequences": res.sequences.tolist()}
    if getattr(res, "sequences_scores", None) is not None:
        entry["sequences_scores"] = res.sequences_scores.tolist()
    return entry
