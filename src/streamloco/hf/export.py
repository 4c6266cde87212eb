"""A model directory in the Hugging Face layout: write one atomically, read one back checked.

Layout (what ``AutoModelForCausalLM.from_pretrained(dir)`` and ``AutoTokenizer`` read)::

    dir/
      config.json               LlamaForCausalLM (layout.hf_config)
      generation_config.json    bos/eos/pad ids and the sampling defaults of `streamloco generate`
      model.safetensors         fp32 weights, HF names (layout.to_hf)
      tokenizer.*, special_tokens_map.json, streamloco_tokenizer.json   (tokenizer_files.py)
      streamloco.json           where it came from: run, checkpoint step, tokenizer sha256

The directory is built under a temporary name next to `out_dir` and renamed into place only when
every file is written and fsynced, so a crash never leaves a directory that looks complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from streamloco.atomic import TMP_MARK, atomic_write, atomic_write_bytes
from streamloco.hf.layout import LayoutError, args_from_hf_config, from_hf, hf_config, to_hf
from streamloco.hf.tokenizer_files import load_tokenizer, tokenizer_files
from streamloco.tokenizer.model import BOS_ID, EOS_ID, PAD_ID, Tokenizer
from streamloco.workers.model import ModelArgs

WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
PROVENANCE = "streamloco.json"
GENERATION_DEFAULTS = {"temperature": 0.8, "top_p": 0.95, "max_new_tokens": 100}


def _json(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def write_export(
    out_dir: Path,
    args: ModelArgs,
    state: dict[str, torch.Tensor],
    tokenizer: Tokenizer | None,
    provenance: dict[str, Any],
    *,
    overwrite: bool = False,
) -> Path:
    """Write the model `state` (our names, fp32) and its tokenizer to `out_dir` (module doc)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise ValueError(f"{out_dir} exists; choose a new directory (or pass --overwrite)")
    if tokenizer is not None and tokenizer.vocab_size > args.vocab_size:
        raise ValueError(
            f"tokenizer {tokenizer.path} has {tokenizer.vocab_size} pieces but the model only "
            f"{args.vocab_size} embedding rows (model.vocab_size)"
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f"{out_dir.name}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")
    tmp.mkdir()
    try:
        tensors = to_hf(state, args)
        atomic_write(tmp / WEIGHTS, lambda f: f.write(_safetensors_bytes(tensors)))
        files = {
            "config.json": _json(hf_config(args)),
            "generation_config.json": _json(
                {
                    "bos_token_id": BOS_ID,
                    "eos_token_id": EOS_ID,
                    "pad_token_id": PAD_ID,
                    "do_sample": True,
                    **GENERATION_DEFAULTS,
                }
            ),
            PROVENANCE: _json({"format": "streamloco-hf-export", "version": 1, **provenance}),
        }
        if tokenizer is not None:
            files.update(tokenizer_files(tokenizer, args.max_seq_len))
        for name, data in files.items():
            atomic_write_bytes(tmp / name, data)
        if out_dir.exists():  # overwrite: the old one goes only once the new one is complete
            old = out_dir.with_name(f"{out_dir.name}{TMP_MARK}old-{secrets.token_hex(4)}")
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old)
        else:
            tmp.rename(out_dir)
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
        raise
    return out_dir


def _safetensors_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    return save(tensors, metadata={"format": "pt"})


def read_hf_config(model_dir: Path) -> ModelArgs:
    path = Path(model_dir) / "config.json"
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LayoutError(f"{path} not found (not a Hugging Face model directory?)") from None
    except (OSError, ValueError) as e:
        raise LayoutError(f"{path}: cannot read: {e}") from None
    if not isinstance(cfg, dict):
        raise LayoutError(f"{path}: not a JSON object")
    return args_from_hf_config(cfg, str(path))


def read_hf_tensors(model_dir: Path) -> tuple[dict[str, torch.Tensor], str]:
    """Every tensor of the directory (one file or an index of shards), and where they came from."""
    model_dir = Path(model_dir)
    single, index = model_dir / WEIGHTS, model_dir / WEIGHTS_INDEX
    if single.is_file():
        files = [single]
    elif index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            files = [model_dir / f for f in sorted(set(weight_map.values()))]
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise LayoutError(f"{index}: not a safetensors index ({e})") from None
    else:
        raise LayoutError(
            f"{model_dir}: no {WEIGHTS} or {WEIGHTS_INDEX} (only safetensors weights are read; "
            "pickled .bin files are refused)"
        )
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            tensors.update(load_file(f))
        except (SafetensorError, OSError) as e:
            raise LayoutError(f"{f}: cannot read safetensors: {e}") from None
    return tensors, str(files[0] if len(files) == 1 else index)


def read_export(model_dir: Path) -> tuple[ModelArgs, dict[str, torch.Tensor], Tokenizer | None]:
    """(shape, our state dict in fp32, our tokenizer or None) of an HF-layout directory."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise LayoutError(f"{model_dir}: not a directory")
    args = read_hf_config(model_dir)
    tensors, where = read_hf_tensors(model_dir)
    for name, t in tensors.items():
        if not t.is_floating_point():
            raise LayoutError(f"{where}: {name} has dtype {t.dtype}, expected floating point")
    state = {k: v.float() for k, v in from_hf(tensors, args, where).items()}
    if args.tie_embeddings:
        state["head.weight"] = state["tok_emb.weight"]
    return args, state, load_tokenizer(model_dir)
