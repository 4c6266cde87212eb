"""Codec names and ids, without torch: `config` lists them in its help and `streamloco.cli`
imports `config`, so keeping torch out of here keeps the CLI's start (and every spawned
tokenizer worker, which re-imports the CLI's main module) about 1.2 s shorter."""

from __future__ import annotations

CODEC_IDS: dict[str, int] = {"fp32": 1, "bf16": 2, "int8": 3, "int4": 4, "e3m0": 5, "sparse": 6}
CODEC_NAMES: tuple[str, ...] = tuple(CODEC_IDS)
BLOCKED_CODECS = frozenset({"int8", "int4", "e3m0", "sparse"})
# sparse: the u32 block_size field holds two u16, chunk size C (low) and values kept per chunk k
# (high), so a payload alone says how it was made
MAX_SPARSE_CHUNK = 2**16 - 1
NIBBLE_CODECS = frozenset({"int4", "e3m0"})
