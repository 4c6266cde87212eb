"""`model.init_from`: start a run from a model in the Hugging Face layout on local disk.

The directory is read where the run is configured (the driver, or `simulate`'s process) and its
weights are handed to every group like group 0's random initialization is otherwise: the path
need exist only there, never on the worker nodes, and nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch

from streamloco.config import Config
from streamloco.hf.export import read_export
from streamloco.hf.layout import LayoutError
from streamloco.tokenizer.model import Tokenizer
from streamloco.workers.model import ModelArgs, model_args

KEY = "model.init_from"


def _shape_errors(have: ModelArgs, want: ModelArgs, size: str) -> list[str]:
    fields = [
        ("hidden_size", have.d_model, want.d_model, f"d_model of model.size={size!r}"),
        ("num_hidden_layers", have.n_layers, want.n_layers, f"n_layers of model.size={size!r}"),
        ("num_attention_heads", have.n_heads, want.n_heads, f"n_heads of model.size={size!r}"),
        ("intermediate_size", have.mlp_hidden, want.mlp_hidden, f"MLP of model.size={size!r}"),
        ("vocab_size", have.vocab_size, want.vocab_size, "model.vocab_size"),
        ("tie_word_embeddings", have.tie_embeddings, want.tie_embeddings, "model.tie_embeddings"),
        ("rope_theta", have.rope_theta, want.rope_theta, "streamloco's RoPE base"),
        ("rms_norm_eps", have.norm_eps, want.norm_eps, "streamloco's RMSNorm eps"),
    ]
    return [f"{k} = {h!r} but {w!r} ({what})" for k, h, w, what in fields if h != w]


def check_vocabulary(init_tok: Tokenizer, run_tok: Tokenizer, where: str) -> None:
    """The run's tokens must mean what the base model learned: every id the same piece."""
    if init_tok.sha256 == run_tok.sha256:
        return
    for i in range(min(init_tok.vocab_size, run_tok.vocab_size)):
        if init_tok.id_to_piece(i) != run_tok.id_to_piece(i):
            raise ValueError(
                f"{KEY}: {where} tokenizer differs from the run's {run_tok.path} at id {i} "
                f"({init_tok.id_to_piece(i)!r} vs {run_tok.id_to_piece(i)!r}); the data must "
                "be tokenized with the base model's tokenizer or an extension of it "
                "(`streamloco tokenizer extend`)"
            )
    if run_tok.vocab_size > init_tok.vocab_size:
        raise ValueError(
            f"{KEY}: the run's tokenizer {run_tok.path} has {run_tok.vocab_size} pieces, the "
            f"base model's {init_tok.vocab_size}: give init_from the model that "
            "`streamloco tokenizer extend --base-model` wrote (it has rows for the new pieces)"
        )


def load_init_state(cfg: Config) -> dict[str, torch.Tensor]:
    """Our state dict from `cfg.model.init_from`, checked against the configured model."""
    path = Path(cfg.model.init_from)
    m = cfg.model
    want = model_args(m.size, m.vocab_size, m.seq_len, m.tie_embeddings)
    try:
        have, state, tok = read_export(path)
    except LayoutError as e:
        raise ValueError(f"{KEY}: {e}") from None
    errors = _shape_errors(have, want, m.size)
    if errors:
        raise ValueError(f"{KEY}: {path} does not fit this run's model: " + "; ".join(errors))
    if cfg.data.source == "shards" and tok is not None:
        run_tok = Tokenizer.load(Path(cfg.tokenizer.path + ".model"))
        check_vocabulary(tok, run_tok, str(path))
    return state
