"""Decoder-only transformer (pre-norm, RoPE, SwiGLU, RMSNorm) and its analytic cost model.

Parameter names are an interface: the outer optimizer partitions the model into fragments by name,
so the top-level attributes are exactly ``tok_emb``, ``blocks``, ``norm`` and ``head`` and
``named_parameters()`` yields them in that order. With tied embeddings the head weight *is*
``tok_emb.weight`` and is yielded once, under that name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from streamloco.config import MODEL_SIZES


@dataclass(frozen=True)
class ModelArgs:
    """Shape of a model; everything needed to build it or to count its parameters and FLOPs."""

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    max_seq_len: int
    mlp_hidden: int
    tie_embeddings: bool = True
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError(f"head dim {self.d_model // self.n_heads} must be even for RoPE")


def swiglu_hidden(d_model: int, multiple_of: int = 256) -> int:
    """SwiGLU hidden size: 8/3 * d_model (same params as a 4*d GELU MLP), rounded up."""
    return multiple_of * math.ceil(8 * d_model / 3 / multiple_of)


def model_args(
    size: str, vocab_size: int, max_seq_len: int, tie_embeddings: bool | None = None
) -> ModelArgs:
    """ModelArgs for a named size; ``tie_embeddings=None`` keeps the default (tied)."""
    if size not in MODEL_SIZES:
        raise ValueError(f"unknown model size {size!r}; valid sizes: {', '.join(MODEL_SIZES)}")
    extra = {} if tie_embeddings is None else {"tie_embeddings": tie_embeddings}
    shape = dict(MODEL_SIZES[size])
    mlp_hidden = swiglu_hidden(shape["d_model"], shape.pop("mlp_multiple_of"))
    return ModelArgs(
        vocab_size=vocab_size, max_seq_len=max_seq_len, mlp_hidden=mlp_hidden, **shape, **extra
    )


def rope_tables(
    head_dim: int, max_seq_len: int, theta: float = 10000.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotation angles, each (max_seq_len, head_dim // 2), in fp32."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # (D/2,)
    angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float32), inv_freq)  # (T, D/2)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[i], x[i + D/2]) of x (B, H, T, D) by the position angles (T, D/2).

    The math runs in fp32 because bf16 angles lose the low-frequency rotations at long positions.
    """
    x1, x2 = x.float().chunk(2, dim=-1)  # (B, H, T, D/2) each
    out = torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)  # (B, H, T, D)
    return out.type_as(x)


class Attention(nn.Module):
    """Causal multi-head self-attention with a fused qkv projection and rotary positions."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.n_heads = args.n_heads
        self.qkv = nn.Linear(args.d_model, 3 * args.d_model, bias=False)
        self.out = nn.Linear(args.d_model, args.d_model, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.n_heads, C // self.n_heads)  # (B, T, 3, H, D)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, T, D) each
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, D)
        return self.out(y.transpose(1, 2).reshape(B, T, C))  # (B, T, C)


class SwiGLU(nn.Module):
    """w2(silu(w1 x) * w3 x): gated MLP of LLaMA."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.w1 = nn.Linear(args.d_model, args.mlp_hidden, bias=False)
        self.w3 = nn.Linear(args.d_model, args.mlp_hidden, bias=False)
        self.w2 = nn.Linear(args.mlp_hidden, args.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))  # (B, T, C)


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.attn_norm = nn.RMSNorm(args.d_model, eps=args.norm_eps)
        self.attn = Attention(args)
        self.mlp_norm = nn.RMSNorm(args.d_model, eps=args.norm_eps)
        self.mlp = SwiGLU(args)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin)  # (B, T, C)
        return x + self.mlp(self.mlp_norm(x))  # (B, T, C)


class Transformer(nn.Module):
    """Token embedding -> n_layers blocks -> RMSNorm -> linear head (optionally tied)."""

    def __init__(self, args: ModelArgs) -> None:
        super().__init__()
        self.args = args
        self.tok_emb = nn.Embedding(args.vocab_size, args.d_model)
        self.blocks = nn.ModuleList(Block(args) for _ in range(args.n_layers))
        self.norm = nn.RMSNorm(args.d_model, eps=args.norm_eps)
        self.head = nn.Linear(args.d_model, args.vocab_size, bias=False)
        # Non-persistent: derived from args, so checkpoints and fragment syncs never carry them.
        self.register_buffer("rope_cos", torch.empty(0), persistent=False)
        self.register_buffer("rope_sin", torch.empty(0), persistent=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """(Re)initialize parameters and RoPE tables, and (re)tie the head, e.g. after
        ``to_empty()`` from meta, which allocates the two tied tensors separately.

        N(0, 0.02) for the embedding and linears, norms 1; the two projections that write into the
        residual stream are scaled by 1/sqrt(2 * n_layers) so its variance does not grow with
        depth (GPT-2).
        """
        args = self.args
        if args.tie_embeddings:
            self.head.weight = self.tok_emb.weight
        std = 0.02
        nn.init.normal_(self.tok_emb.weight, std=std)
        for block in self.blocks:
            for lin in (block.attn.qkv, block.mlp.w1, block.mlp.w3):
                nn.init.normal_(lin.weight, std=std)
            for lin in (block.attn.out, block.mlp.w2):
                nn.init.normal_(lin.weight, std=std / math.sqrt(2 * args.n_layers))
            nn.init.ones_(block.attn_norm.weight)
            nn.init.ones_(block.mlp_norm.weight)
        nn.init.ones_(self.norm.weight)
        if not args.tie_embeddings:
            nn.init.normal_(self.head.weight, std=std)
        device = self.tok_emb.weight.device
        cos, sin = rope_tables(args.d_model // args.n_heads, args.max_seq_len, args.rope_theta)
        self.rope_cos, self.rope_sin = cos.to(device), sin.to(device)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) int64 -> logits (B, T, V)."""
        seq_len = idx.shape[1]
        if seq_len > self.args.max_seq_len:
            raise ValueError(
                f"sequence length {seq_len} exceeds max_seq_len={self.args.max_seq_len}"
            )
        cos, sin = self.rope_cos[:seq_len], self.rope_sin[:seq_len]  # (T, D/2)
        x = self.tok_emb(idx)  # (B, T, C)
        for block in self.blocks:
            x = block(x, cos, sin)  # (B, T, C)
        return self.head(self.norm(x))  # (B, T, V)

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return lm_loss(self(idx), targets)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy; logits are cast to fp32 so bf16 runs get a stable loss."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


def param_count(args: ModelArgs, *, embedding: bool = True) -> int:
    """Parameter count from the formula, equal to ``sum(p.numel() for p in model.parameters())``.

    ``embedding=False`` excludes the input embedding ``tok_emb`` (with tied embeddings that is also
    the head); an untied head is a real matmul and counts as non-embedding.
    """
    d, h = args.d_model, args.mlp_hidden
    per_block = 4 * d * d + 3 * d * h + 2 * d  # qkv + out, w1 + w3 + w2, two norms
    non_embedding = args.n_layers * per_block + d  # + final norm
    if not args.tie_embeddings:
        non_embedding += args.vocab_size * d
    return non_embedding + (args.vocab_size * d if embedding else 0)


def flops_per_token(args: ModelArgs, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward), PaLM appendix B: 6 N + 12 L d T.

    N counts the weights of every matmul: qkv, out, w1, w3, w2 per block plus the head (V x d,
    tied or not; the embedding lookup and norms are not matmuls). 6 = 2 (multiply-add) x 3
    (forward, plus backward w.r.t. activations and weights). 12 L d T is the attention scores and
    the weighted sum of values; it counts the full T x T matrix, ignoring causal masking, as PaLM
    does, so MFU numbers compare with published ones.
    """
    d = args.d_model
    matmul_params = args.n_layers * (4 * d * d + 3 * d * args.mlp_hidden) + args.vocab_size * d
    return 6.0 * matmul_params + 12.0 * args.n_layers * d * seq_len


def mfu(tokens_per_s: float, args: ModelArgs, seq_len: int, peak_flops: float) -> float:
    """Model FLOPs utilization: achieved training FLOP/s over the hardware peak FLOP/s."""
    return tokens_per_s * flops_per_token(args, seq_len) / peak_flops


# Dense bf16 tensor-core peaks from the vendors' data sheets (FLOP/s), matched on the device name.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


def peak_flops(device_name: str) -> float | None:
    """The bf16 peak of a known accelerator, or None (then MFU is not reported)."""
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in device_name), None)
