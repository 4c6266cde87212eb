"""Are two `streamloco bench` runs the same training? Every loss and byte count must be equal.

CPU runs are deterministic, so a refactor of the engine, the trainer or the runner must leave them
bit-identical; wall-clock numbers (wall_s, tokens/s, utilization) are not compared.

    python benchmarks/compare_bench_results.py BEFORE/results.json AFTER/results.json

Prints one line per run and per utilization row; exits 1 if anything differs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RUN_KEYS = (
    "final_eval_loss",
    "eval_by_lang",
    "eval_history",
    "bytes_per_group",
    "peak_sync_bytes",
    "ratio_vs_ddp_bf16",
    "ratio_vs_ddp_fp32",
    "tokens",
    "globals_identical",
    "loss_gap_vs_ddp",
)
UTIL_KEYS = ("bytes_per_group", "model_bytes_per_group")


def compare(a: dict, b: dict) -> int:
    differences = 0
    print(f"{'run':<26}{'eval loss':>20}{'bytes/group':>14}  same")
    for ra, rb in zip(a["runs"], b["runs"], strict=True):
        assert ra["id"] == rb["id"], (ra["id"], rb["id"])
        diff = [k for k in RUN_KEYS if ra[k] != rb[k]]
        differences += bool(diff)
        print(
            f"{ra['id']:<26}{ra['final_eval_loss']!r:>20}{ra['bytes_per_group']!s:>14}  {not diff}"
        )
        for k in diff:
            print(f"    {k}: {ra[k]!r} != {rb[k]!r}")
    util_a, util_b = (r.get("utilization", {}).get("rows", []) for r in (a, b))
    for ua, ub in zip(util_a, util_b, strict=True):
        diff = [k for k in UTIL_KEYS if ua[k] != ub[k]]
        differences += bool(diff)
        print(f"utilization {ua['variant']} at {ua['mbps']:g} Mbit/s  {not diff}")
    print("all losses and bytes identical" if not differences else f"{differences} differ")
    return differences


if __name__ == "__main__":
    before, after = (json.loads(Path(p).read_text(encoding="utf-8")) for p in sys.argv[1:3])
    sys.exit(1 if compare(before, after) else 0)
