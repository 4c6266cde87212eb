"""Cut a model's parameters into F fragments, by transformer block.

A block's parameters are named ``blocks.<i>.*``. Block i goes to fragment ``i mod F`` (strided,
the Streaming DiLoCo paper's recommendation: every fragment spans the whole depth) or to fragment
``i * F // L`` (sequential: contiguous runs of blocks).

Parameters outside the blocks follow their neighbours, so the plan depends only on names:
those that come before the first block (the token embedding, and the output head when it is tied
to it) join block 0's fragment; those after the last block (the final norm and an untied head)
join block L-1's fragment. With the strided pattern that is fragment 0 for the embedding and
fragment (L-1) mod F for the final norm and head.

The plan is a pure function of the (name, numel) list, so every group computes the same plan from
the same model definition; `FragmentPlan.fingerprint` lets groups check that cheaply.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

_BLOCK = re.compile(r"^blocks\.(\d+)\.")


@dataclass(frozen=True)
class FragmentPlan:
    names: tuple[tuple[str, ...], ...]  # parameter names per fragment, in model order
    numels: tuple[int, ...]  # parameters (elements) per fragment
    blocks: tuple[tuple[int, ...], ...]  # transformer block indices per fragment

    @property
    def num_fragments(self) -> int:
        return len(self.names)

    @property
    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for names in self.names:
            h.update(("\n".join(names) + "\0").encode())
        return h.hexdigest()[:16]

    def report(self) -> str:
        """A human-readable balance table: blocks and parameters per fragment."""
        total = sum(self.numels)
        lines = [f"{'fragment':>8}  {'blocks':<24}{'params':>14}  share"]
        for p, (blocks, n) in enumerate(zip(self.blocks, self.numels, strict=True)):
            shown = ",".join(map(str, blocks))
            lines.append(f"{p:>8}  {shown:<24}{n:>14,}  {n / total:6.1%}")
        lines.append(f"{'total':>8}  {'':<24}{total:>14,}")
        return "\n".join(lines)


def block_to_fragment(block: int, num_blocks: int, num_fragments: int, pattern: str) -> int:
    if pattern == "strided":
        return block % num_fragments
    if pattern == "sequential":
        return block * num_fragments // num_blocks
    raise ValueError(f"fragment pattern {pattern!r} is not 'strided' or 'sequential'")


def partition(
    named_numels: Sequence[tuple[str, int]],
    num_fragments: int,
    pattern: Literal["strided", "sequential"] = "strided",
) -> FragmentPlan:
    """Assign every parameter to exactly one fragment (see the module doc for the rule)."""
    block_of = [_block_index(name) for name, _ in named_numels]
    blocks_present = sorted({b for b in block_of if b is not None})
    if not blocks_present:
        raise ValueError("partition: no parameters named 'blocks.<i>.*'; cannot cut into fragments")
    num_blocks = blocks_present[-1] + 1
    if blocks_present != list(range(num_blocks)):
        raise ValueError(f"partition: block indices are not contiguous from 0: {blocks_present}")
    if not 1 <= num_fragments <= num_blocks:
        raise ValueError(
            f"partition: F={num_fragments} fragments need 1 <= F <= {num_blocks} (blocks)"
        )
    names: list[list[str]] = [[] for _ in range(num_fragments)]
    numels = [0] * num_fragments
    seen_block = False
    for (name, numel), block in zip(named_numels, block_of, strict=True):
        if block is not None:
            seen_block = True
        else:  # embedding before the blocks, final norm / head after them
            block = num_blocks - 1 if seen_block else 0
        frag = block_to_fragment(block, num_blocks, num_fragments, pattern)
        names[frag].append(name)
        numels[frag] += numel
    frag_blocks = [
        tuple(
            b
            for b in range(num_blocks)
            if block_to_fragment(b, num_blocks, num_fragments, pattern) == p
        )
        for p in range(num_fragments)
    ]
    return FragmentPlan(
        names=tuple(tuple(n) for n in names), numels=tuple(numels), blocks=tuple(frag_blocks)
    )


def _block_index(name: str) -> int | None:
    m = _BLOCK.match(name)
    return int(m.group(1)) if m else None
