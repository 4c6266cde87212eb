"""`tokenizer extend`: new-language pieces appended to a Spanish tokenizer, every base id kept;
new embedding rows from the base segmentation; the extended tokenizer as transformers reads it."""

from __future__ import annotations

import pytest
import torch

from hf_helpers import demo_documents, tiny_model, train_small_tokenizer
from streamloco.hf.embeddings import base_segmentation, extend_embeddings, text_loss
from streamloco.tokenizer.extend import _proto, extend_tokenizer
from streamloco.tokenizer.model import Tokenizer
from streamloco.tokenizer.report import fertility_report

NEW = ("nah", "oto")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return demo_documents(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def extended(demo, tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    base = train_small_tokenizer(demo["spa"][:600], root / "spa", vocab=600)
    train = [d for lang in NEW for d in demo[lang][:-20]]  # the last 20 per language held out
    ext, added = extend_tokenizer(base, train, root / "ext", new_vocab=500, max_new=300)
    return base, ext, added


def test_every_base_id_is_kept(extended):
    base, ext, added = extended
    assert 0 < added <= 300 and ext.vocab_size == base.vocab_size + added
    old, new = _proto(base).pieces, _proto(ext).pieces
    for i, p in enumerate(old):
        assert (new[i].piece, new[i].type, new[i].score) == (p.piece, p.type, p.score), i
    for i in range(base.vocab_size, ext.vocab_size):
        assert new[i].type == new[i].NORMAL and new[i].piece not in {p.piece for p in old}
    assert ext.sidecar["extension"]["base_sha256"] == base.sha256
    assert Tokenizer.load(ext.path).sha256 == ext.sha256  # the written pair verifies
    assert (ext.bos_id, ext.eos_id, ext.pad_id, ext.unk_id) == (
        base.bos_id,
        base.eos_id,
        base.pad_id,
        base.unk_id,
    )


def test_new_languages_get_cheaper_and_round_trip_stays_exact(extended, demo):
    base, ext, _ = extended
    held_out = [d for lang in NEW for d in demo[lang][-20:]] + demo["spa"][-20:]
    before = {r["lang"]: r for r in fertility_report(base, held_out, "spa")}
    after = {r["lang"]: r for r in fertility_report(ext, held_out, "spa")}
    for lang in NEW:
        assert after[lang]["tokens_per_char"] < 0.9 * before[lang]["tokens_per_char"], lang
        assert after[lang]["parity"] < before[lang]["parity"]
    for d in held_out:
        assert ext.decode(ext.encode(d.text)) == ext.normalize(d.text)


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_new_rows_are_the_mean_of_the_base_segmentation(extended, tie):
    base, ext, _ = extended
    model = tiny_model(base.vocab_size, tie)
    state = model.state_dict()
    args, new = extend_embeddings(state, model.args, base, ext, "mean")
    assert args.vocab_size == ext.vocab_size
    for key in ("tok_emb.weight", "head.weight"):
        assert torch.equal(new[key][: base.vocab_size], state[key])  # base rows untouched
        for i in (base.vocab_size, ext.vocab_size - 1):
            ids = base_segmentation(base, ext, i)
            assert len(ids) >= 1
            assert torch.allclose(new[key][i], state[key][ids].mean(0))
    assert (new["head.weight"] is new["tok_emb.weight"]) is tie
    _, rand = extend_embeddings(state, model.args, base, ext, "random", seed=1)
    assert torch.equal(rand["tok_emb.weight"][: base.vocab_size], state["tok_emb.weight"])
    assert not torch.allclose(rand["tok_emb.weight"][-1], new["tok_emb.weight"][-1])
    bigger = type(model)(args)
    bigger.load_state_dict(new)  # the resized state is a complete model


def test_text_loss_scores_every_token_of_whole_documents(extended, demo):
    _, ext, _ = extended
    model = tiny_model(ext.vocab_size, True, max_seq_len=32)
    docs = demo["nah"][-3:]
    loss, tokens, nbytes = text_loss(model, ext, docs)
    assert tokens == sum(len(ext.encode(d.text)) + 1 for d in docs)
    assert nbytes == sum(len(ext.normalize(d.text).encode()) + 1 for d in docs)
    # the same as one forward pass per window, computed by hand
    stream = torch.tensor([ext.eos_id] + [i for d in docs for i in [*ext.encode(d.text), 3]])
    nats = 0.0
    for s in range(0, len(stream) - 1, 32):
        w = stream[s : s + 33]
        with torch.no_grad():
            logits = model(w[None, :-1])[0]  # (L, V)
        nats += float(torch.nn.functional.cross_entropy(logits, w[1:], reduction="sum"))
    assert abs(loss - nats / tokens) < 1e-4
    with pytest.raises(ValueError, match="no text"):
        text_loss(model, ext, [])


def test_transformers_reads_the_extended_tokenizer(tmp_path, extended, demo):
    transformers = pytest.importorskip("transformers")
    from streamloco.hf.export import write_export

    base, ext, _ = extended
    model = tiny_model(ext.vocab_size, True)
    out = write_export(tmp_path / "e", model.args, model.state_dict(), ext, {})
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    for d in [*demo["nah"][-10:], *demo["oto"][-10:], *demo["spa"][-5:]]:
        text = ext.normalize(d.text)
        ids = ext.encode(text)
        assert any(i >= base.vocab_size for i in ids) or d.lang == "spa"
        assert hf_tok.encode(text, add_special_tokens=False) == ids
