"""Tests for the transformer model, its parameter naming contract and its analytic cost model."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

from streamloco.workers.model import (
    MODEL_SIZES,
    ModelArgs,
    Transformer,
    apply_rope,
    flops_per_token,
    mfu,
    model_args,
    param_count,
    rope_tables,
)

REFERENCE_VOCAB = {
    "pico": 2048,
    "nano": 2048,
    "micro": 2048,
    "tiny": 4096,
    "35m": 32000,
    "124m": 50304,
    "1b": 32000,
}
NOMINAL_PARAMS = {"35m": 35e6, "124m": 124e6, "1b": 1e9}


def small_args(**overrides) -> ModelArgs:
    """Tiny size at a small vocab: fast on CPU, still the real layer structure."""
    args = model_args("tiny", vocab_size=64, max_seq_len=32)
    return ModelArgs(**{**args.__dict__, **overrides})


def build(args: ModelArgs, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(args)


@pytest.mark.parametrize("size", sorted(MODEL_SIZES))
@pytest.mark.parametrize("tied", [True, False])
def test_param_count_matches_instantiated_model(size: str, tied: bool) -> None:
    args = model_args(size, REFERENCE_VOCAB[size], max_seq_len=2048, tie_embeddings=tied)
    with torch.device("meta"):  # shapes only: the 1B model costs no memory
        model = Transformer(args)
    params = dict(model.named_parameters())
    assert param_count(args) == sum(p.numel() for p in params.values())
    non_embedding = sum(p.numel() for n, p in params.items() if not n.startswith("tok_emb."))
    assert param_count(args, embedding=False) == non_embedding
    assert ("head.weight" in params) is not tied


def test_named_sizes_are_close_to_their_names() -> None:
    tiny = param_count(model_args("tiny", REFERENCE_VOCAB["tiny"], 256))
    assert 0.5e6 < tiny < 2e6
    # the quality bench's sizes, as config.py's comments state them
    small = {s: param_count(model_args(s, 2048, 64)) for s in ("pico", "nano", "micro")}
    assert small == {"pico": 119_072, "nano": 209_328, "micro": 344_640}
    for size, nominal in NOMINAL_PARAMS.items():
        n = param_count(model_args(size, REFERENCE_VOCAB[size], 2048))
        assert abs(n - nominal) / nominal < 0.2, (size, n)


def test_model_args_rejects_bad_head_split() -> None:
    with pytest.raises(ValueError, match="not divisible by n_heads=3"):
        ModelArgs(vocab_size=10, d_model=8, n_layers=1, n_heads=3, max_seq_len=4, mlp_hidden=8)
    with pytest.raises(ValueError, match="must be even for RoPE"):
        ModelArgs(vocab_size=10, d_model=12, n_layers=1, n_heads=4, max_seq_len=4, mlp_hidden=8)


def test_model_args_unknown_size_and_tie_override() -> None:
    with pytest.raises(ValueError, match=r"'7b'.*tiny, 35m, 124m, 1b"):
        model_args("7b", 32000, 1024)
    assert model_args("35m", 32000, 1024).tie_embeddings is True
    untied = model_args("35m", 32000, 1024, tie_embeddings=False)
    assert untied.tie_embeddings is False and untied.max_seq_len == 1024


def test_forward_shape_and_max_seq_len() -> None:
    args = small_args()
    model = build(args)
    idx = torch.randint(0, args.vocab_size, (3, args.max_seq_len))
    assert model(idx).shape == (3, args.max_seq_len, args.vocab_size)
    assert model(idx[:, :5]).shape == (3, 5, args.vocab_size)
    with pytest.raises(ValueError, match="max_seq_len=32"):
        model(torch.zeros(1, args.max_seq_len + 1, dtype=torch.long))


def test_causality() -> None:
    args = small_args()
    model = build(args).eval()
    idx = torch.randint(0, args.vocab_size, (2, 16))
    t = 7
    changed = idx.clone()
    changed[:, t + 1 :] = (idx[:, t + 1 :] + 1) % args.vocab_size
    with torch.no_grad():
        a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], rtol=0, atol=1e-6)
    assert (a[:, t + 1] - b[:, t + 1]).abs().max() > 1e-3  # the change is visible right after t


def test_rope_scores_depend_only_on_relative_position() -> None:
    head_dim, seq = 8, 12
    cos, sin = rope_tables(head_dim, seq)
    torch.manual_seed(0)
    q = torch.randn(head_dim).expand(1, 1, seq, head_dim)  # same vector at every position
    k = torch.randn(head_dim).expand(1, 1, seq, head_dim)
    qr, kr = apply_rope(q, cos, sin)[0, 0], apply_rope(k, cos, sin)[0, 0]  # (T, D)
    scores = qr @ kr.T  # (T, T): scores[m, n] = <R_m q, R_n k>
    for shift in (1, 3):
        torch.testing.assert_close(scores[shift:, shift:], scores[:-shift, :-shift])
    torch.testing.assert_close(qr.norm(dim=-1), q[0, 0].norm(dim=-1))  # rotations keep norms
    assert not torch.allclose(scores[0, 1], scores[0, 2])  # but distance does matter


def test_positions_matter() -> None:
    # Without positional information causal attention sees the prefix as a set, so the last
    # position's logits would not change when two earlier tokens swap; with RoPE they must.
    args = small_args()
    model = build(args).eval()
    idx = torch.tensor([[5, 9, 12, 3, 7, 21]])
    swapped = idx[:, [1, 0, 2, 3, 4, 5]]
    with torch.no_grad():
        assert (model(idx)[0, -1] - model(swapped)[0, -1]).abs().max() > 1e-3


def test_overfits_a_fixed_batch() -> None:
    args = small_args()
    model = build(args)
    gen = torch.Generator().manual_seed(1)
    data = torch.randint(0, args.vocab_size, (4, args.max_seq_len + 1), generator=gen)
    idx, targets = data[:, :-1], data[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    first = model.loss(idx, targets).item()
    assert abs(first - math.log(args.vocab_size)) < 0.3  # small init: near-uniform predictions
    for _ in range(50):
        opt.zero_grad()
        model.loss(idx, targets).backward()
        opt.step()
    assert model.loss(idx, targets).item() < first / 20  # memorized (~0.02 vs 4.2 at start)


def test_loss_is_mean_cross_entropy_in_fp32() -> None:
    args = small_args()
    model = build(args)
    idx = torch.randint(0, args.vocab_size, (2, 8))
    targets = torch.randint(0, args.vocab_size, (2, 8))
    expected = F.cross_entropy(model(idx).reshape(-1, args.vocab_size), targets.reshape(-1))
    torch.testing.assert_close(model.loss(idx, targets), expected)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(idx).dtype == torch.bfloat16
        assert model.loss(idx, targets).dtype == torch.float32


def test_flops_per_token_by_hand() -> None:
    args = ModelArgs(vocab_size=10, d_model=8, n_layers=2, n_heads=2, max_seq_len=4, mlp_hidden=16)
    # matmul weights: 2 layers * (qkv 3*64 + out 64 + w1, w3, w2 3*8*16) + head 10*8 = 1360
    # 6 * 1360 = 8160; attention 12 * 2 layers * 8 * 4 tokens = 768
    assert flops_per_token(args, seq_len=4) == 8928
    untied = ModelArgs(**{**args.__dict__, "tie_embeddings": False})
    assert flops_per_token(untied, seq_len=4) == 8928  # the head matmul runs either way
    assert flops_per_token(args, seq_len=8) == 8928 + 768
    # 1000 tokens/s * 8928 FLOPs/token = 8.928e6 FLOP/s achieved
    assert mfu(1000.0, args, 4, peak_flops=8.928e7) == pytest.approx(0.1)


def test_parameter_names_and_order() -> None:
    for tied in (True, False):
        args = small_args(tie_embeddings=tied)
        model = build(args)
        names = [n for n, _ in model.named_parameters()]
        pattern = re.compile(r"^(tok_emb\.|blocks\.(\d+)\.|norm\.|head\.)")
        groups = []
        for name in names:
            match = pattern.match(name)
            assert match, name
            group = f"blocks.{match.group(2)}" if match.group(2) else match.group(1)[:-1]
            if not groups or groups[-1] != group:
                groups.append(group)
        blocks = [f"blocks.{i}" for i in range(args.n_layers)]
        assert groups == ["tok_emb", *blocks, "norm"] + ([] if tied else ["head"])
        assert "blocks.0.attn.qkv.weight" in names and "blocks.5.mlp.w2.weight" in names
        assert (model.head.weight is model.tok_emb.weight) is tied


def test_init_statistics() -> None:
    args = small_args()
    model = build(args)
    base, residual = 0.02, 0.02 / math.sqrt(2 * args.n_layers)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            assert torch.all(p == 1), name
        else:
            expected = residual if name.endswith(("attn.out.weight", "mlp.w2.weight")) else base
            assert abs(p.std().item() / expected - 1) < 0.1, name


def test_determinism_and_state_dict_contents() -> None:
    args = small_args()
    a, b, c = build(args, seed=3), build(args, seed=3), build(args, seed=4)
    sd_a, sd_b = a.state_dict(), b.state_dict()
    assert sd_a.keys() == sd_b.keys()
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    assert not torch.equal(sd_a["tok_emb.weight"], c.state_dict()["tok_emb.weight"])
    assert not any(k.startswith("rope_") for k in sd_a)  # RoPE tables are derived, not state
    assert a.rope_cos.shape == (args.max_seq_len, args.d_model // args.n_heads // 2)


def test_meta_build_then_materialize() -> None:
    # The large-model path: build on meta, allocate with to_empty, then init_weights fills both
    # the parameters and the non-persistent RoPE tables (to_empty leaves them uninitialized).
    args = small_args()
    with torch.device("meta"):
        model = Transformer(args)
    model.to_empty(device="cpu")
    torch.manual_seed(0)
    model.init_weights()
    cos, sin = rope_tables(args.d_model // args.n_heads, args.max_seq_len, args.rope_theta)
    assert torch.equal(model.rope_cos, cos) and torch.equal(model.rope_sin, sin)
    assert model.head.weight is model.tok_emb.weight  # to_empty unties; init_weights re-ties
    assert [n for n, _ in model.named_parameters()][-1] == "norm.weight"
    logits = model(torch.randint(0, args.vocab_size, (1, 8)))
    assert torch.isfinite(logits).all()
