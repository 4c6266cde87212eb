"""How much e3m0's round-to-nearest shrinks a pseudo-gradient, and what stochastic rounding does.

Gain = <x, decode(encode(x))> / <x, x>: the factor the codec multiplies the pseudo-gradient by on
average, i.e. a cut of the effective outer lr when < 1. Also the relative L2 error, the price of
unbiasedness. Data: Gaussian, a heavy-tailed (Student-t-like) stand-in, and real pseudo-gradients
(the tiny model after H AdamW steps, as in bench_sparse_index.py). Medians over --repeats seeds
(the stochastic encoder's seed, and the stand-ins' data seed); nearest rounding has no seed.

    .venv/bin/python benchmarks/bench_e3m0_bias.py [--repeats 5] [--block-size 128]
"""

from __future__ import annotations

import argparse
import statistics

import torch

from bench_sparse_index import real_deltas
from streamloco.outer_optim.codecs import make_codec


def gain_and_error(x: torch.Tensor, rounding: str, block: int, seed: int) -> tuple[float, float]:
    codec = make_codec("e3m0", block, rounding=rounding)
    y = codec.decode(codec.encode(x, seed=seed)).double()
    xd = x.double()
    return float((xd * y).sum() / (xd * xd).sum()), float((y - xd).norm() / xd.norm())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--block-size", type=int, default=128)
    ap.add_argument("--numel", type=int, default=1 << 20)
    args = ap.parse_args()
    real = real_deltas(30)
    print(f"e3m0, block {args.block_size}; median of {args.repeats}")
    print(f"{'data':>10} {'rounding':>11} {'gain':>8} {'rel L2 err':>11}")
    for label in ("gaussian", "heavy", "real"):
        for rounding in ("nearest", "stochastic"):
            gains, errs = [], []
            for seed in range(args.repeats):
                g = torch.Generator().manual_seed(seed)
                if label == "gaussian":
                    x = torch.randn(args.numel, generator=g)
                elif label == "heavy":
                    x = torch.randn(args.numel, generator=g) / torch.rand(
                        args.numel, generator=g
                    ).add(0.05)
                else:
                    x = real
                # an encoder stream unrelated to the data generator (same seed = correlated draws)
                gain, err = gain_and_error(x, rounding, args.block_size, 1000 + seed)
                gains.append(gain)
                errs.append(err)
            print(
                f"{label:>10} {rounding:>11} {statistics.median(gains):>8.4f} "
                f"{statistics.median(errs):>11.4f}"
            )


if __name__ == "__main__":
    main()
