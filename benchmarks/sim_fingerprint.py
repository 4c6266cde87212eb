"""Fingerprint of a short simulated run: eval losses, every group's bytes, a hash of its training
losses and the sha256 of its global parameters. Run it on two checkouts to prove that a change
left the default path bit-identical:

    PYTHONPATH=/path/to/other/checkout/src .venv/bin/python benchmarks/sim_fingerprint.py \\
        configs/smoke.toml --train.groups=4 > before.txt
    .venv/bin/python benchmarks/sim_fingerprint.py configs/smoke.toml --train.groups=4 > after.txt
    diff before.txt after.txt
"""

from __future__ import annotations

import hashlib
import sys

from streamloco.config import load_config
from streamloco.simulate import run_simulation


def main() -> None:
    cfg = load_config(sys.argv[1], sys.argv[2:])
    res = run_simulation(cfg)
    print("eval", res.eval_history)
    for g, gr in enumerate(res.groups):
        h = hashlib.sha256()
        for k in sorted(gr.global_state):
            h.update(k.encode())
            h.update(gr.global_state[k].numpy().tobytes())
        losses = hashlib.sha256(repr(gr.train_loss).encode()).hexdigest()[:16]
        print(
            f"group {g} sent {gr.bytes_sent} received {gr.bytes_received} "
            f"train losses {losses} globals sha256 {h.hexdigest()}"
        )
    print("globals identical on all groups:", res.globals_identical())


if __name__ == "__main__":
    main()
