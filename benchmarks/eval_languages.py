"""Held-out loss and bits per byte per language for models in the Hugging Face layout.

    .venv/bin/python benchmarks/eval_languages.py --config configs/adapt.toml \\
        base=runs/export-spa-base adapted=runs/export-adapted scratch=runs/export-scratch

Every model is scored with its own tokenizer (the one in its export directory) on the same
documents: the validation split (`data.validation_fraction`, `data.split_seed`) of the config's
corpus.inputs, up to --max-tokens tokens per language. Bits per byte (loss in bits times tokens
over UTF-8 bytes) compares models with different tokenizers; the nats-per-token loss does not.
Numbers are deterministic (no timing), so one run is the figure; nothing is asserted.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from streamloco.config import load_config
from streamloco.data_pipeline.pipeline import CorpusReader
from streamloco.hf.embeddings import text_loss
from streamloco.hf.export import read_export
from streamloco.workers.model import Transformer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--max-tokens", type=int, default=20000, help="per language and model")
    ap.add_argument("models", nargs="+", metavar="LABEL=DIR")
    a = ap.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(a.config)
    held_out: dict[str, list] = {}
    for d in CorpusReader(cfg, "validation")():
        held_out.setdefault(d.lang, []).append(d)
    langs = sorted(held_out, key=lambda x: (x != "spa", x))
    print("| model | " + " | ".join(f"{x} loss | {x} bpb" for x in langs) + " |")
    print("|---|" + "---:|---:|" * len(langs))
    for spec in a.models:
        label, _, path = spec.partition("=")
        args, state, tok = read_export(Path(path))
        assert tok is not None, f"{path}: no tokenizer"
        model = Transformer(args)
        model.load_state_dict(state)
        cells = []
        for lang in langs:
            loss, tokens, nbytes = text_loss(model, tok, held_out[lang], a.max_tokens)
            bpb = loss * tokens / (nbytes * math.log(2))
            cells.append(f"{loss:.3f} | {bpb:.3f}")
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
