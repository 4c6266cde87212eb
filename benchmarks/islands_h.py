"""Which H (and round deadline) to choose for a link: the analytic model's answer (docs/islands.md).

For a model of N parameters, a compute time per inner step and M groups, prints for each link
bandwidth the steady-state compute utilization of Streaming DiLoCo (4-bit e3m0, F fragments,
overlap tau, our all-gather transport) at several H, the smallest H that reaches the target,
and the time one fragment's round takes on the link (own upload + M-1 downloads + latency) with a
deadline suggestion of 3x that. Pure model: src/streamloco/bench/utilization.py, no training.

    .venv/bin/python benchmarks/islands_h.py --params 124e6 --step-s 1.0 --groups 2
"""

from __future__ import annotations

import argparse

from streamloco.bench.utilization import CommPattern, even_split, simulate
from streamloco.outer_optim.transport import LinkModel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--params", type=float, default=124e6, help="model parameters N")
    ap.add_argument("--step-s", type=float, default=1.0, help="compute seconds per inner step")
    ap.add_argument("--groups", type=int, default=2, help="M worker groups (islands)")
    ap.add_argument("--fragments", type=int, default=4, help="F (every H must be a multiple)")
    ap.add_argument("--overlap", type=int, default=1, help="tau (< H/F for every H tried)")
    ap.add_argument("--latency-ms", type=float, default=50.0, help="one-way link latency")
    ap.add_argument("--target", type=float, default=0.95, help="utilization to reach")
    ap.add_argument("--mbps", default="10,25,100,1000", help="bandwidths, Mbit/s, comma-separated")
    ap.add_argument("--h", default="20,40,100,200,500,1000", help="H values to try")
    args = ap.parse_args()
    hs = [int(h) for h in args.h.split(",")]
    f = args.fragments
    if any(h % f or args.overlap >= h // f for h in hs):
        ap.error(f"--h: every H must be a multiple of --fragments={f} with --overlap < H/F")
    numels = even_split(int(args.params), f)
    print(
        f"N={args.params:.3g} params, {args.step_s:g} s/step, M={args.groups}, F={f}, "
        f"tau={args.overlap}, "
        f"e3m0, latency {args.latency_ms:g} ms; steady-state utilization:"
    )
    print("| Mbit/s | " + " | ".join(f"H={h}" for h in hs) + f" | least H for {args.target:.0%} "
          "| one round on the link | deadline 3x |")  # fmt: skip
    print("| ---: " * (len(hs) + 4) + "|")
    for mbps in (float(b) for b in args.mbps.split(",")):
        link = LinkModel.from_mbps(mbps, args.latency_ms)
        cells, best = [], None
        for h in hs:
            pat = CommPattern.from_numels("s", numels, h, args.overlap, "e3m0")
            tl = simulate(
                pat, groups=args.groups, steps=4 * h, step_s=args.step_s, link=link, steady=True
            )
            cells.append(f"{tl.utilization:.1%}")
            if best is None and tl.utilization >= args.target:
                best = h
        payload = CommPattern.from_numels("s", numels, hs[0], 1, "e3m0").payload_bytes[0]
        round_s = link.transfer_s(payload) + link.transfer_s((args.groups - 1) * payload)
        print(
            f"| {mbps:g} | " + " | ".join(cells) + f" | {best if best else 'none tried'} "
            f"| {round_s:.1f} s | {max(10.0, 3 * round_s):.0f} s |"
        )


if __name__ == "__main__":
    main()
