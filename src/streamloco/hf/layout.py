"""Our parameter names and shapes <-> transformers' LlamaForCausalLM, exactly.

Our model (workers/model.py) is a Llama already; compared with transformers' modeling_llama:

==================  ============================================  =============================
part                ours                                          LlamaForCausalLM
==================  ============================================  =============================
RoPE                rotates (x[i], x[i + D/2]): half-split,        rotate_half: the same pairs,
                    inv_freq = theta^(-2i/D), fp32 angles          the same frequencies
attention           fused ``qkv`` (3C, C): rows q | k | v, each    q_proj, k_proj, v_proj (C, C)
                    head-major (h * D + d), scale 1/sqrt(D)        head-major, scale D^-0.5
norms               RMSNorm before attention and MLP and at the   LlamaRMSNorm, same places;
                    end, weight only, eps ``norm_eps`` (1e-6)      rms_norm_eps
MLP                 w2(silu(w1 x) * w3 x)                          down(silu(gate x) * up x)
bias                none                                           attention_bias, mlp_bias false
head                ``head`` (tied: ``tok_emb.weight``)            lm_head (tie_word_embeddings)
==================  ============================================  =============================

So the conversion is a renaming plus a split of ``qkv`` into three row blocks: no permutation of
q/k rows is needed (that permutation converts Meta's *interleaved* RoPE checkpoints; ours is
already half-split). The test compares logits of both implementations on real text.
Tensors are only sliced and concatenated, never cast or computed, so ours -> HF -> ours is
bit-identical.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from streamloco.tokenizer.model import BOS_ID, EOS_ID, PAD_ID
from streamloco.workers.model import ModelArgs

ARCHITECTURE = "LlamaForCausalLM"
# what (name, suffix) of ours becomes in HF, per block
_BLOCK_MAP = {
    "attn.out.weight": "self_attn.o_proj.weight",
    "mlp.w1.weight": "mlp.gate_proj.weight",
    "mlp.w3.weight": "mlp.up_proj.weight",
    "mlp.w2.weight": "mlp.down_proj.weight",
    "attn_norm.weight": "input_layernorm.weight",
    "mlp_norm.weight": "post_attention_layernorm.weight",
}
_TOP_MAP = {"tok_emb.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight"}


class LayoutError(ValueError):
    """A model directory or state dict does not fit; the message names the file and the field."""


def to_hf(state: Mapping[str, torch.Tensor], args: ModelArgs) -> dict[str, torch.Tensor]:
    """Our state dict (named as ``Transformer.state_dict()``) -> HF tensor names.

    With tied embeddings ``lm_head.weight`` is left out, as transformers saves tied models.
    Every tensor is a fresh contiguous copy (safetensors refuses shared or strided storage).
    """
    out: dict[str, torch.Tensor] = {}
    for name, hf_name in _TOP_MAP.items():
        out[hf_name] = state[name]
    if not args.tie_embeddings:
        out["lm_head.weight"] = state["head.weight"]
    c = args.d_model
    for i in range(args.n_layers):
        ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
        qkv = state[ours + "attn.qkv.weight"]  # (3C, C): q rows, k rows, v rows
        for j, proj in enumerate(("q_proj", "k_proj", "v_proj")):
            out[f"{theirs}self_attn.{proj}.weight"] = qkv[j * c : (j + 1) * c]
        for suffix, hf_suffix in _BLOCK_MAP.items():
            out[theirs + hf_suffix] = state[ours + suffix]
    return {k: v.detach().contiguous().clone() for k, v in out.items()}


def expected_hf_shapes(args: ModelArgs) -> dict[str, tuple[int, ...]]:
    """Every tensor an HF directory of this shape must hold, with its shape."""
    c, h, v = args.d_model, args.mlp_hidden, args.vocab_size
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (v, c),
        "model.norm.weight": (c,),
    }
    if not args.tie_embeddings:
        shapes["lm_head.weight"] = (v, c)
    for i in range(args.n_layers):
        p = f"model.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            shapes[f"{p}self_attn.{proj}.weight"] = (c, c)
        shapes[p + "mlp.gate_proj.weight"] = (h, c)
        shapes[p + "mlp.up_proj.weight"] = (h, c)
        shapes[p + "mlp.down_proj.weight"] = (c, h)
        shapes[p + "input_layernorm.weight"] = (c,)
        shapes[p + "post_attention_layernorm.weight"] = (c,)
    return shapes


def from_hf(
    tensors: Mapping[str, torch.Tensor], args: ModelArgs, where: str = "weights"
) -> dict[str, torch.Tensor]:
    """HF tensors -> our state dict (``head.weight`` is ``tok_emb.weight`` when tied).

    Checks first: every expected tensor present with its shape, nothing unexpected (a tied
    checkpoint may still carry ``lm_head.weight``; it must then equal the embedding). Errors name
    `where` (the file) and the tensor.
    """
    expected = expected_hf_shapes(args)
    have = dict(tensors)
    if args.tie_embeddings and "lm_head.weight" in have:
        head = have.pop("lm_head.weight")
        if not torch.equal(head, have.get("model.embed_tokens.weight", head)):
            raise LayoutError(
                f"{where}: tie_word_embeddings is true but lm_head.weight differs from "
                "model.embed_tokens.weight"
            )
    missing = sorted(set(expected) - set(have))
    unexpected = sorted(set(have) - set(expected))
    if missing or unexpected:
        raise LayoutError(
            f"{where}: not a {args.n_layers}-layer Llama of this shape: "
            f"missing {missing[:4]}{'...' if len(missing) > 4 else ''}, "
            f"unexpected {unexpected[:4]}{'...' if len(unexpected) > 4 else ''}"
        )
    for name, shape in expected.items():
        if tuple(have[name].shape) != shape:
            raise LayoutError(
                f"{where}: {name} has shape {tuple(have[name].shape)}, expected {shape}"
            )
    state: dict[str, torch.Tensor] = {}
    for name, hf_name in _TOP_MAP.items():
        state[name] = have[hf_name]
    for i in range(args.n_layers):
        ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
        state[ours + "attn.qkv.weight"] = torch.cat(
            [have[f"{theirs}self_attn.{p}.weight"] for p in ("q_proj", "k_proj", "v_proj")]
        )
        for suffix, hf_suffix in _BLOCK_MAP.items():
            state[ours + suffix] = have[theirs + hf_suffix]
    state["head.weight"] = (
        state["tok_emb.weight"] if args.tie_embeddings else have["lm_head.weight"]
    )
    return state


def hf_config(args: ModelArgs, dtype: str = "float32") -> dict[str, Any]:
    """config.json of a LlamaForCausalLM equal to our model (both rope_theta spellings: the
    top-level key of transformers 4 and the rope_parameters of transformers 5)."""
    return {
        "architectures": [ARCHITECTURE],
        "model_type": "llama",
        "vocab_size": args.vocab_size,
        "hidden_size": args.d_model,
        "intermediate_size": args.mlp_hidden,
        "num_hidden_layers": args.n_layers,
        "num_attention_heads": args.n_heads,
        "num_key_value_heads": args.n_heads,
        "head_dim": args.d_model // args.n_heads,
        "hidden_act": "silu",
        "max_position_embeddings": args.max_seq_len,
        "rms_norm_eps": args.norm_eps,
        "rope_theta": args.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": args.rope_theta},
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "tie_word_embeddings": args.tie_embeddings,
        "initializer_range": 0.02,
        "use_cache": True,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "pad_token_id": PAD_ID,
        "torch_dtype": dtype,
        "dtype": dtype,
    }


def args_from_hf_config(cfg: Mapping[str, Any], where: str) -> ModelArgs:
    """ModelArgs of a config.json, refusing anything our model cannot compute exactly."""

    def get(key: str, kind: type | tuple[type, ...]) -> Any:
        if key not in cfg:
            raise LayoutError(f"{where}: {key} is missing")
        value = cfg[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise LayoutError(f"{where}: {key} = {value!r} has the wrong type")
        return value

    archs = cfg.get("architectures") or []
    if cfg.get("model_type") != "llama" and ARCHITECTURE not in archs:
        raise LayoutError(
            f"{where}: model_type {cfg.get('model_type')!r} / architectures {archs}: "
            f"only {ARCHITECTURE} is supported"
        )
    d, heads = get("hidden_size", int), get("num_attention_heads", int)
    checks = [
        ("hidden_act", cfg.get("hidden_act", "silu"), "silu"),
        ("num_key_value_heads", cfg.get("num_key_value_heads", heads), heads),
        ("head_dim", cfg.get("head_dim", d // heads), d // heads),
        ("attention_bias", cfg.get("attention_bias", False), False),
        ("mlp_bias", cfg.get("mlp_bias", False), False),
        ("pretraining_tp", cfg.get("pretraining_tp", 1), 1),
    ]
    for key, value, want in checks:
        if value != want:
            raise LayoutError(f"{where}: {key} = {value!r}; streamloco's model needs {want!r}")
    rope = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling")
    if rope.get("rope_type", "default") != "default" or scaling:
        raise LayoutError(
            f"{where}: rope scaling {scaling or rope!r}: only the default RoPE is supported"
        )
    theta = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
    try:
        return ModelArgs(
            vocab_size=get("vocab_size", int),
            d_model=d,
            n_layers=get("num_hidden_layers", int),
            n_heads=heads,
            max_seq_len=get("max_position_embeddings", int),
            mlp_hidden=get("intermediate_size", int),
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),  # HF default
            rope_theta=float(theta),
            norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        )
    except ValueError as e:
        raise LayoutError(f"{where}: {e}") from None
