"""Temperature sampling over languages for the tokenizer's training sample (pure functions).

A language with ``n`` characters gets the weight ``p ∝ n^(1/T)`` (NLLB's rule): T=1 is
proportional to the data, T→∞ is uniform, the default T=5 lifts small languages a lot while the
big one still gets the largest share (`streamloco.text.mixture.temperature_weights`, the same
rule the training mixture over shards uses).

`sample_documents` turns the weights into a bounded training sample:

* sample size ``S = min(max_chars, total characters)``: a small corpus is not inflated, a big one
  is cut to ``max_chars`` so SentencePiece trains in minutes on a laptop;
* language budget ``b = S * p(lang)``;
* a language with more than its budget is **subsampled** without replacement: the documents
  with the smallest seeded hashes are kept while they fit in the budget (a bottom-k sample: a
  uniform random choice that needs memory for the budget only and does not depend on the order
  the documents arrive in); a document longer than the whole budget (a book in one text file)
  is cut to the budget rather than never fitting;
* a language with less than its budget is **repeated**: every document ``floor(r)`` times plus
  once more with probability ``r - floor(r)``, with ``r = min(b / n, MAX_REPEAT)``. Repetition
  raises the language's piece counts, which is how SentencePiece sees the weight. It is capped at
  ``MAX_REPEAT = 10`` because beyond that the sample is mostly copies of a few documents and the
  vocabulary over-fits them; a capped language simply contributes less than its budget (the
  leftover is not handed to the other languages, which would undo the temperature).

Two passes over the corpus when character counts are not given (count, then select): pass a
list or a callable that returns a fresh iterator, not a one-shot generator.
"""

from __future__ import annotations

import hashlib
import heapq
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace

from streamloco.text.documents import Document
from streamloco.text.mixture import temperature_weights

MAX_REPEAT = 10
Docs = Iterable[Document] | Callable[[], Iterable[Document]]


def _iterate(docs: Docs) -> Iterable[Document]:
    return docs() if callable(docs) else docs


def count_chars(docs: Docs) -> dict[str, int]:
    """Characters per language (one pass)."""
    chars: Counter[str] = Counter()
    for doc in _iterate(docs):
        chars[doc.lang] += len(doc.text)
    return dict(chars)


def doc_hash(doc: Document, seed: int) -> tuple[float, float]:
    """Two independent uniform numbers in [0, 1) fixed by (seed, language, text)."""
    digest = hashlib.blake2b(
        f"{seed}\x00{doc.lang}\x00{doc.text}".encode("utf-8", "surrogatepass"), digest_size=16
    ).digest()
    scale = float(1 << 64)
    return int.from_bytes(digest[:8], "little") / scale, int.from_bytes(
        digest[8:], "little"
    ) / scale


def sample_budgets(
    counts: Mapping[str, int], temperature: float, max_chars: int
) -> tuple[dict[str, float], dict[str, float]]:
    """(weights, character budget per language) for a corpus with `counts` characters."""
    if max_chars <= 0:
        raise ValueError(f"max_chars must be > 0, got {max_chars}")
    weights = temperature_weights(counts, temperature)
    size = min(max_chars, sum(counts.values()))
    return weights, {k: size * p for k, p in weights.items()}


def sample_documents(
    docs: Docs,
    *,
    temperature: float,
    max_chars: int,
    seed: int,
    counts: Mapping[str, int] | None = None,
) -> tuple[list[Document], dict[str, int]]:
    """A training sample following the temperature weights (module doc).

    Returns (documents, characters per language in the sample); repeated documents appear
    several times. The order is by seeded hash, so languages are interleaved and the result does
    not depend on the input order. Documents of a language absent from `counts` are dropped.
    """
    if counts is None:
        if not callable(docs) and iter(docs) is docs:
            raise ValueError(
                "sample_documents needs two passes without `counts`: pass a list or a callable "
                "returning a fresh iterator, not a one-shot iterator"
            )
        counts = count_chars(docs)
    _, budgets = sample_budgets(counts, temperature, max_chars)
    # A ratio within float noise of 1 means "everything once" (T=1 on a corpus under max_chars).
    ratio = {
        k: 1.0 if abs(budgets[k] / n - 1) < 1e-9 else budgets[k] / n
        for k, n in counts.items()
        if n > 0
    }
    heaps: dict[str, list[tuple[float, str, int, int, Document]]] = {}
    heap_chars: Counter[str] = Counter()
    keyed: list[tuple[float, str, int, int, Document]] = []
    for seq, doc in enumerate(_iterate(docs)):
        r = ratio.get(doc.lang, 0.0)
        if r <= 0 or not doc.text:
            continue
        h, h2 = doc_hash(doc, seed)
        if r >= 1:  # repeat: floor(r) copies plus one more with probability frac(r)
            r = min(r, MAX_REPEAT)
            copies = int(r) + (h2 < r - int(r))
            keyed.extend((h, doc.source, doc.line, k, doc) for k in range(copies))
            continue
        # Subsample: keep the smallest hashes that fit the budget (max-heap via negated hash;
        # `seq` only breaks ties between identical documents, so Documents are never compared).
        heap = heaps.setdefault(doc.lang, [])
        if len(doc.text) > budgets[doc.lang]:  # would never fit: keep its prefix instead
            doc = replace(doc, text=doc.text[: int(budgets[doc.lang])])
        heapq.heappush(heap, (-h, doc.source, -doc.line, -seq, doc))
        heap_chars[doc.lang] += len(doc.text)
        while heap_chars[doc.lang] > budgets[doc.lang]:
            heap_chars[doc.lang] -= len(heapq.heappop(heap)[4].text)
    for heap in heaps.values():
        keyed.extend((-neg, src, -line, 0, doc) for neg, src, line, _, doc in heap)
    keyed.sort(key=lambda item: item[:4])
    sample = [item[4] for item in keyed]
    chars: Counter[str] = Counter()
    for doc in sample:
        chars[doc.lang] += len(doc.text)
    return sample, dict(sorted(chars.items()))
