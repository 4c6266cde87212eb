"""How far transformers' LlamaForCausalLM is from our model on the same weights and text.

    .venv/bin/python benchmarks/hf_logits.py [--tokenizer data/tokenizer/demo.model] [--docs 20]

Builds small models (tied and untied embeddings, every weight moved off its initial value),
exports each with `write_export`, loads it with transformers and prints the largest absolute
logit difference over held-out documents of every language of the demo corpus (data/demo, from
`make data`), and the largest difference after the round trip ours -> HF -> ours (0 = exact).
Deterministic; nothing is timed or asserted (tests/unit/test_hf.py asserts < 1e-4).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
import zstandard
from transformers import AutoModelForCausalLM

from streamloco.hf.export import read_export, write_export
from streamloco.tokenizer.model import Tokenizer
from streamloco.workers.model import ModelArgs, Transformer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokenizer", type=Path, default=Path("data/tokenizer/demo.model"))
    ap.add_argument("--corpus", type=Path, default=Path("data/demo"))
    ap.add_argument("--docs", type=int, default=20, help="last documents per language")
    a = ap.parse_args()
    tok = Tokenizer.load(a.tokenizer)
    texts = []
    for f in sorted(a.corpus.glob("*.jsonl.zst")):
        lines = zstandard.ZstdDecompressor().stream_reader(f.open("rb")).read().decode()
        texts += [json.loads(x)["text"] for x in lines.splitlines()[-a.docs :]]
    for tie in (True, False):
        torch.manual_seed(0)
        args = ModelArgs(tok.vocab_size, 128, 4, 4, 256, 352, tie_embeddings=tie)
        model = Transformer(args).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.05)
        with tempfile.TemporaryDirectory() as tmp:
            out = write_export(Path(tmp) / "m", args, model.state_dict(), tok, {})
            hf = AutoModelForCausalLM.from_pretrained(out).eval()
            _, back, _ = read_export(out)
        worst, tokens = 0.0, 0
        for text in texts:
            ids = torch.tensor([tok.encode(text)[: args.max_seq_len]])  # (1, T)
            with torch.no_grad():
                worst = max(worst, float((model(ids) - hf(ids).logits).abs().max()))
            tokens += ids.shape[1]
        trip = max(float((back[k] - v).abs().max()) for k, v in model.state_dict().items())
        print(
            f"{'tied' if tie else 'untied'}: {len(texts)} documents, {tokens} tokens: "
            f"max |logit ours - transformers| = {worst:.3g}; round trip max |diff| = {trip}"
        )


if __name__ == "__main__":
    main()
