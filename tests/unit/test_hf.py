"""The Hugging Face Llama layout: transformers reproduces our logits and token ids, the round
trip ours -> HF -> ours is bit-identical, export from a checkpoint, import checks, sampling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hf_helpers import demo_documents, tiny_model, train_small_tokenizer
from streamloco.config import load_config
from streamloco.hf.export import read_export, write_export
from streamloco.hf.generate import sample, top_p_filter
from streamloco.hf.init import load_init_state
from streamloco.hf.layout import LayoutError
from streamloco.tokenizer.model import Tokenizer

transformers = pytest.importorskip("transformers")  # the `hf` extra; CI installs it


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return demo_documents(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def tok(demo, tmp_path_factory) -> Tokenizer:
    docs = [d for lang in sorted(demo) for d in demo[lang][:400]]
    return train_small_tokenizer(docs, tmp_path_factory.mktemp("tok") / "demo")


def _texts(tok: Tokenizer, demo, per_lang: int = 3) -> list[str]:
    """Normalized real demo text (transformers does not apply our normalization)."""
    return [tok.normalize(d.text) for lang in sorted(demo) for d in demo[lang][-per_lang:]]


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_transformers_reproduces_our_logits(tmp_path, tok, demo, tie):
    model = tiny_model(tok.vocab_size, tie)
    out = write_export(tmp_path / "export", model.args, model.state_dict(), tok, {"test": 1})
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    assert hf.config.tie_word_embeddings is tie
    checked = 0
    for text in _texts(tok, demo):
        ids = torch.tensor([tok.encode(text)[: model.args.max_seq_len]])  # (1, T)
        with torch.no_grad():
            ours, theirs = model(ids), hf(ids).logits  # (1, T, V)
        assert ours.shape == theirs.shape
        assert (ours - theirs).abs().max().item() < 1e-4
        checked += ids.shape[1]
    assert checked > 500


def test_round_trip_is_bit_identical(tmp_path, tok):
    for tie in (True, False):
        model = tiny_model(tok.vocab_size, tie, seed=3)
        out = write_export(tmp_path / f"e{tie}", model.args, model.state_dict(), tok, {})
        args, state, tok2 = read_export(out)
        assert args == model.args
        ours = model.state_dict()
        assert set(state) == set(ours)
        for k, v in ours.items():
            assert state[k].dtype == v.dtype and torch.equal(state[k], v), k
        assert tok2.sha256 == tok.sha256 and tok2.encode("Ndipo anati") == tok.encode("Ndipo anati")
        # and back into a model that computes the same thing
        again = type(model)(args)
        again.load_state_dict(state)
        x = torch.tensor([tok.encode("moni bwanji zikomo")])
        assert torch.equal(again.eval()(x), model(x))


def test_auto_tokenizer_gives_our_ids(tmp_path, tok, demo):
    model = tiny_model(tok.vocab_size, True)
    out = write_export(tmp_path / "export", model.args, model.state_dict(), tok, {})
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    texts = [tok.normalize(d.text) for lang in sorted(demo) for d in demo[lang][:60]]
    extra = ["a  b   c", "\n\nx\n", "emoji 😀👍🏽 and 日本語", "12345 67.89", " lead", "ʼaʼ"]
    texts += [tok.normalize(t) for t in extra]  # what transformers gets must be normalized
    for text in texts:
        ids = tok.encode(text)
        assert hf_tok.encode(text, add_special_tokens=False) == ids, text[:80]
        assert hf_tok.decode(ids) == tok.decode(ids)
    assert hf_tok.eos_token_id == tok.eos_id and hf_tok.pad_token_id == tok.pad_id
    assert hf_tok.bos_token_id == tok.bos_id


def test_export_is_atomic_and_refuses_to_overwrite(tmp_path, tok, monkeypatch):
    model = tiny_model(tok.vocab_size, True)
    out = write_export(tmp_path / "export", model.args, model.state_dict(), tok, {})
    with pytest.raises(ValueError, match="exists"):
        write_export(out, model.args, model.state_dict(), tok, {})

    def boom(*a, **k):
        raise OSError("disk full")

    import streamloco.hf.export as export

    monkeypatch.setattr(export, "tokenizer_files", boom)
    with pytest.raises(OSError, match="disk full"):
        write_export(tmp_path / "second", model.args, model.state_dict(), tok, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no half-written dir


def _cfg(tmp_path: Path, *extra: str):
    return load_config(
        None,
        [
            "--model.size=tiny",
            "--model.vocab_size=64",
            f"--run.out_dir={tmp_path}",
            "--train.groups=1",
            *extra,
        ],
    )


def test_init_from_loads_a_model_of_the_configured_shape(tmp_path):
    cfg = _cfg(tmp_path)
    from streamloco.workers.trainer import build_model

    base = build_model(cfg)
    with torch.no_grad():
        base.tok_emb.weight.mul_(3)
    write_export(tmp_path / "base", base.args, base.state_dict(), None, {})
    cfg = _cfg(tmp_path, f"--model.init_from={tmp_path / 'base'}")
    state = load_init_state(cfg)
    for k, v in base.state_dict().items():
        assert torch.equal(state[k], v), k


@pytest.mark.parametrize(
    "override, message",
    [
        ("--model.vocab_size=65", r"vocab_size = 64 but 65 \(model.vocab_size\)"),
        ("--model.tie_embeddings=false", r"tie_word_embeddings = True but False"),
        ("--model.size=35m", r"hidden_size = 96 but 512 \(d_model of model.size='35m'\)"),
    ],
)
def test_init_from_shape_mismatch_names_the_field(tmp_path, override, message):
    base = tiny_model(64, True)
    from streamloco.workers.trainer import build_model

    base = build_model(_cfg(tmp_path))
    write_export(tmp_path / "base", base.args, base.state_dict(), None, {})
    cfg = _cfg(tmp_path, f"--model.init_from={tmp_path / 'base'}", override)
    with pytest.raises(ValueError, match=r"model\.init_from: .*" + message):
        load_init_state(cfg)


def test_init_from_bad_directories(tmp_path):
    cfg = _cfg(tmp_path, f"--model.init_from={tmp_path / 'nothing'}")
    with pytest.raises(ValueError, match=r"model\.init_from: .*not a directory"):
        load_init_state(cfg)
    from streamloco.workers.trainer import build_model

    base = build_model(_cfg(tmp_path))
    out = write_export(tmp_path / "base", base.args, base.state_dict(), None, {})
    cfg = _cfg(tmp_path, f"--model.init_from={out}")
    conf = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**conf, "num_key_value_heads": 2}))
    with pytest.raises(ValueError, match="num_key_value_heads = 2"):
        load_init_state(cfg)
    (out / "config.json").write_text(json.dumps(conf))
    from safetensors.torch import load_file, save_file

    tensors = load_file(out / "model.safetensors")
    tensors["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(96)
    save_file(tensors, out / "model.safetensors")
    with pytest.raises(LayoutError, match=r"unexpected \['model.layers.0.self_attn.q_proj.bias'\]"):
        read_export(out)
    (out / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="cannot read safetensors"):
        load_init_state(cfg)
    (out / "model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"no model\.safetensors"):
        load_init_state(cfg)


def test_top_p_keeps_the_smallest_nucleus():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    kept = torch.isfinite(top_p_filter(logits, 0.7))
    assert kept.tolist() == [True, True, False, False]
    assert torch.isfinite(top_p_filter(logits, 0.01)).tolist() == [True, False, False, False]
    assert torch.equal(top_p_filter(logits, 1.0), logits)


def test_greedy_sampling_equals_transformers_generate(tmp_path, tok):
    model = tiny_model(tok.vocab_size, False, seed=5)
    out = write_export(tmp_path / "export", model.args, model.state_dict(), tok, {})
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    prompt = [tok.eos_id, *tok.encode("Ndipo Mulungu anati")]
    ours = sample(model, prompt, max_tokens=12, temperature=0)
    theirs = hf.generate(
        torch.tensor([prompt]),
        max_new_tokens=12,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=tok.pad_id,
    )[0, len(prompt) :].tolist()
    assert ours == theirs


def test_sampling_is_seeded(tok):
    model = tiny_model(tok.vocab_size, True)
    a = sample(model, [tok.eos_id], max_tokens=20, temperature=1.0, top_p=0.9, seed=1)
    b = sample(model, [tok.eos_id], max_tokens=20, temperature=1.0, top_p=0.9, seed=1)
    c = sample(model, [tok.eos_id], max_tokens=20, temperature=1.0, top_p=0.9, seed=2)
    assert a == b and a != c and len(a) == 20
    with pytest.raises(ValueError, match="--top-p"):
        sample(model, [1], max_tokens=1, top_p=0)


@pytest.mark.slow
def test_simulate_starts_every_group_from_init_from(tmp_path):
    """A run continued from an exported model starts where the base run ended, on every group."""
    from streamloco.simulate import run_simulation

    # 16 tokens: the synthetic order-2 language is learnt in a few dozen steps
    opts = ["--train.groups=2", "--train.steps=60", "--train.batch_size=8", "--inner.lr=1e-2"]
    opts += ["--model.vocab_size=16", "--data.branching=2"]
    opts += ["--train.log_every=1", "--train.eval_every=0", "--inner.warmup_steps=10"]
    base = run_simulation(_cfg(tmp_path, *opts))
    cfg = _cfg(tmp_path, *opts)
    from streamloco.workers.model import model_args

    args = model_args("tiny", 16, cfg.model.seq_len, True)
    state = dict(base.groups[0].global_state)
    state["head.weight"] = state["tok_emb.weight"]
    write_export(tmp_path / "base", args, state, None, {})
    short = [*opts, "--train.steps=2", "--inner.warmup_steps=0"]
    scratch = run_simulation(_cfg(tmp_path, *short))
    cont = run_simulation(_cfg(tmp_path, *short, f"--model.init_from={tmp_path / 'base'}"))
    first = [g.train_loss[0] for g in cont.groups]
    # both groups start from the base model: their first losses are near its last, far below
    # a random init's (ln 16 = 2.77)
    assert all(abs(x - base.groups[0].train_loss[-1]) < 0.3 for x in first), first
    assert all(x < scratch.groups[0].train_loss[0] - 0.5 for x in first)
