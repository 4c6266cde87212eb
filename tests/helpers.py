"""Shared by both test tiers: the repository root and a small multilingual corpus."""

from __future__ import annotations

import random
from pathlib import Path

from streamloco.text.documents import Document

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.toml"

_PHRASES = {
    "nya": "moni bwanji zikomo kwambiri dzina langa ndi mulungu anati kuwala",
    "oto": "hñä̱hñu nzaki ma̱ ra ya nu'bu ma hñä mbo̱ho",  # combining marks
    "spa": "hola buenos días gracias el la de que y en dijo dios luz",
}
WORDS = {lang: phrase.split() for lang, phrase in _PHRASES.items()}


def _corpus(n: int = 480, seed: int = 0) -> list[Document]:
    rng = random.Random(seed)
    langs = ["spa", "spa", "nya", "oto"]
    docs = []
    for i in range(n):
        lang = langs[i % 4]
        words = [rng.choice(WORDS[lang]) for _ in range(rng.randint(3, 40))]
        docs.append(Document("  ".join(words) + "\n" + str(i), lang, f"mem/{lang}", i + 1))
    docs.append(Document("\u200b", "nya", "mem/nya", n + 1))  # normalizes to nothing
    return docs


DOCS = _corpus()
OPTS = dict(shard_tokens=900, validation_fraction=0.1, seed=7, progress=False, chunk_docs=40)


def _files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}
