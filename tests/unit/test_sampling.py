"""Temperature weights and the bounded, deterministic, streaming training sample."""

from __future__ import annotations

import random

import pytest

from streamloco.text.documents import Document
from streamloco.text.mixture import temperature_weights
from streamloco.tokenizer.sampling import MAX_REPEAT, count_chars, sample_budgets, sample_documents


def test_t1_is_proportional():
    assert temperature_weights({"spa": 300, "nya": 100}, 1.0) == pytest.approx(
        {"spa": 0.75, "nya": 0.25}, abs=1e-12
    )


def test_t5_exact_values():
    # Fifth roots 2, 1, 3: p = 2/6, 1/6, 3/6.
    w = temperature_weights({"a": 32, "b": 1, "c": 243}, 5.0)
    assert w == pytest.approx({"a": 2 / 6, "b": 1 / 6, "c": 3 / 6}, rel=1e-12)
    assert sum(w.values()) == pytest.approx(1.0, abs=1e-12)


def test_large_temperature_tends_to_uniform():
    w = temperature_weights({"a": 10**10, "b": 10, "c": 1}, 1e9)
    assert w == pytest.approx({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}, abs=1e-7)


def test_higher_temperature_lifts_the_small_language():
    counts = {"spa": 10_000_000, "oto": 50_000}
    shares = [temperature_weights(counts, t)["oto"] for t in (1, 2, 5, 100)]
    assert shares == sorted(shares)
    assert shares[0] == pytest.approx(50_000 / 10_050_000)


def test_zero_count_gets_zero_weight():
    assert temperature_weights({"a": 5, "b": 0}, 5.0) == {"a": 1.0, "b": 0.0}


@pytest.mark.parametrize(
    "counts, temperature, match",
    [
        ({"a": 1}, 0.0, "temperature must be > 0"),
        ({"a": 1}, -1.0, "temperature must be > 0"),
        ({}, 1.0, "no languages"),
        ({"a": 0, "b": 0}, 1.0, "all counts are zero"),
        ({"a": -1, "b": 2}, 1.0, "negative"),
    ],
)
def test_weight_errors(counts, temperature, match):
    with pytest.raises(ValueError, match=match):
        temperature_weights(counts, temperature)


def corpus(sizes: dict[str, int], doc_chars: int = 50, seed: int = 0) -> list[Document]:
    """`sizes[lang]` documents of `doc_chars` random letters each."""
    rng = random.Random(seed)
    docs = []
    for lang, n in sizes.items():
        for i in range(n):
            text = "".join(rng.choice("abcdefghij ") for _ in range(doc_chars))
            docs.append(Document(text, lang, f"{lang}.txt", i + 1))
    return docs


def test_sample_is_bounded_by_the_budgets():
    docs = corpus({"spa": 2000, "nya": 500})  # 125,000 characters
    sample, chars = sample_documents(docs, temperature=1.0, max_chars=20_000, seed=0)
    _, budgets = sample_budgets(count_chars(docs), 1.0, 20_000)
    assert sum(chars.values()) <= 20_000
    for lang, budget in budgets.items():
        # Both languages are subsampled: they fill their budget up to one document.
        assert budget - 50 < chars[lang] <= budget
    assert chars == count_chars(sample)


def test_sample_is_deterministic_and_order_independent():
    docs = corpus({"spa": 800, "nya": 200, "oto": 20})
    kwargs = dict(temperature=5.0, max_chars=15_000, seed=3)
    first = sample_documents(docs, **kwargs)
    assert sample_documents(docs, **kwargs) == first
    shuffled = docs[:]
    random.Random(1).shuffle(shuffled)
    assert sample_documents(shuffled, **kwargs) == first
    other_seed = sample_documents(docs, **{**kwargs, "seed": 4})
    assert other_seed[0] != first[0]


def test_small_language_is_repeated_up_to_the_budget():
    docs = corpus({"spa": 1000, "oto": 50})  # 50,000 vs 2,500 characters
    counts = count_chars(docs)
    _, budgets = sample_budgets(counts, 5.0, 10**9)
    assert budgets["oto"] / counts["oto"] < MAX_REPEAT  # below the cap: follows the budget
    sample, chars = sample_documents(docs, temperature=5.0, max_chars=10**9, seed=0)
    # Sample size is the corpus size (never inflated); the small language is repeated.
    assert sum(budgets.values()) == pytest.approx(sum(counts.values()))
    assert chars["oto"] > 5 * counts["oto"]
    assert chars["oto"] == pytest.approx(budgets["oto"], rel=0.15)
    assert chars["spa"] <= budgets["spa"]
    oto = [d for d in sample if d.lang == "oto"]
    assert set(oto) == {d for d in docs if d.lang == "oto"}


def test_repetition_is_capped():
    docs = corpus({"spa": 1000, "oto": 2})
    sample, chars = sample_documents(docs, temperature=1000.0, max_chars=10**9, seed=0)
    assert chars["oto"] == MAX_REPEAT * 100
    assert sum(d.lang == "oto" for d in sample) == 2 * MAX_REPEAT


def test_t1_without_bound_returns_the_corpus_once():
    docs = corpus({"spa": 100, "nya": 30})
    sample, _ = sample_documents(docs, temperature=1.0, max_chars=10**9, seed=0)
    assert sorted(sample, key=lambda d: (d.lang, d.line)) == sorted(
        docs, key=lambda d: (d.lang, d.line)
    )


def test_streaming_one_pass_with_counts_two_without():
    docs = corpus({"spa": 300, "nya": 100})
    passes = []

    def factory():
        passes.append(1)
        yield from docs

    expected = sample_documents(docs, temperature=5.0, max_chars=5000, seed=0)
    assert sample_documents(factory, temperature=5.0, max_chars=5000, seed=0) == expected
    assert len(passes) == 2
    counts = count_chars(docs)
    one_shot = (d for d in docs)
    got = sample_documents(one_shot, temperature=5.0, max_chars=5000, seed=0, counts=counts)
    assert got == expected


def test_one_shot_iterator_without_counts_is_rejected():
    with pytest.raises(ValueError, match="two passes"):
        sample_documents(iter(corpus({"a": 3})), temperature=1.0, max_chars=100, seed=0)


def test_language_missing_from_counts_is_dropped():
    docs = corpus({"spa": 50, "xxx": 50})
    sample, chars = sample_documents(
        docs, temperature=1.0, max_chars=10**6, seed=0, counts={"spa": 2500}
    )
    assert set(chars) == {"spa"}
    assert all(d.lang == "spa" for d in sample)


def test_document_longer_than_its_budget_is_cut_not_dropped():
    docs = [Document("x" * 10_000, "big", "book.txt", 1), Document("y" * 100, "small", "s", 1)]
    sample, chars = sample_documents(docs, temperature=1.0, max_chars=1000, seed=0)
    _, budgets = sample_budgets(count_chars(docs), 1.0, 1000)
    assert chars["big"] == int(budgets["big"])
    assert [d.text for d in sample if d.lang == "big"] == ["x" * int(budgets["big"])]
