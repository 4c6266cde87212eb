"""Language-mixture weights by temperature: ``p(lang) ∝ n^(1/T)`` (NLLB's rule).

One rule for both users: the tokenizer's training sample (tokenizer/sampling.py) and the
training mixture over shards (data_pipeline/loader.py). T=1 is proportional to the data,
T→∞ is uniform.
"""

from __future__ import annotations

import math
from collections.abc import Mapping


def temperature_weights(counts: Mapping[str, float], temperature: float) -> dict[str, float]:
    """``p(lang) ∝ counts[lang]^(1/T)``, summing to 1 (languages with 0 get 0)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (1 = proportional), got {temperature}")
    if not counts:
        raise ValueError("temperature_weights: no languages")
    bad = {k: v for k, v in counts.items() if v < 0}
    if bad:
        raise ValueError(f"temperature_weights: negative counts {bad}")
    if not any(v > 0 for v in counts.values()):
        raise ValueError(f"temperature_weights: all counts are zero ({sorted(counts)})")
    # Log space: n^(1/T) of a 10^11-character language is fine in float64, but ratios stay
    # accurate for any T this way.
    logs = {k: math.log(v) / temperature for k, v in counts.items() if v > 0}
    top = max(logs.values())
    raw = {k: math.exp(logs[k] - top) if k in logs else 0.0 for k in counts}
    total = sum(raw.values())
    return {k: v / total for k, v in raw.items()}
