"""One typed config tree for every streamloco run.

Sources, later ones win: the dataclass defaults below, a TOML file (``--config run.toml``), and
dotted command-line overrides (``--outer.fragments=4``). Every field carries a one-line doc
(``streamloco config --explain`` prints them). Validation happens once, at load time, and every
error is a ``ValueError`` that names the offending key and says why.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from streamloco.outer_optim.names import CODEC_NAMES
from streamloco.outer_optim.options import OptionError
from streamloco.outer_optim.schedule import Schedule


def _f(default: Any, doc: str) -> Any:
    """A dataclass field with its documentation attached (shown by `config --explain`)."""
    if isinstance(default, list):  # mutable: every Config gets its own copy
        return field(default_factory=lambda: list(default), metadata={"doc": doc})
    return field(default=default, metadata={"doc": doc})


# Named model shapes, built by workers/model.py (the MLP is SwiGLU, 8/3 * d_model rounded up to a
# multiple of mlp_multiple_of). Parameter counts with tied embeddings at the reference vocab.
MODEL_SIZES: dict[str, dict[str, int]] = {
    # 1,058,016 params at vocab 4096 (664,800 non-embedding); head dim 24.
    # The quality bench (configs/bench/quality.toml) trains nano and sweeps pico, nano, micro:
    # at 2 cores a size is affordable only if 20 tokens per parameter take minutes, not hours.
    # 119,072 params at vocab 2048 (53,536 non-embedding); head dim 16.
    "pico": dict(d_model=32, n_layers=4, n_heads=2, mlp_multiple_of=32),
    # 209,328 params at vocab 2048 (111,024 non-embedding); head dim 12.
    "nano": dict(d_model=48, n_layers=4, n_heads=4, mlp_multiple_of=32),
    # 344,640 params at vocab 2048 (213,568 non-embedding); head dim 16.
    "micro": dict(d_model=64, n_layers=4, n_heads=4, mlp_multiple_of=32),
    "tiny": dict(d_model=96, n_layers=6, n_heads=4, mlp_multiple_of=32),
    # 36,837,888 params at vocab 32000 (20,453,888 non-embedding).
    "35m": dict(d_model=512, n_layers=6, n_heads=8, mlp_multiple_of=256),
    # 123,587,328 params at vocab 50304 (84,953,856 non-embedding); untied would be 162.2M.
    "124m": dict(d_model=768, n_layers=12, n_heads=12, mlp_multiple_of=256),
    # 990,455,808 params at vocab 32000 (924,919,808 non-embedding).
    "1b": dict(d_model=2048, n_layers=18, n_heads=16, mlp_multiple_of=256),
}


@dataclass
class ModelConfig:
    size: str = _f(
        "tiny", "named model size: pico, nano, micro, tiny, 35m, 124m, 1b (see workers/model.py)"
    )
    vocab_size: int = _f(64, "vocabulary size (the tokenizer's, or the synthetic task's)")
    seq_len: int = _f(64, "training context length in tokens")
    tie_embeddings: bool = _f(True, "share the input embedding and output head weights")
    init_from: str = _f(
        "",
        "start from this model directory in the Hugging Face Llama layout on local disk "
        "(`streamloco export` writes one) instead of random weights; its shape must be "
        "model.size's, its vocabulary model.vocab_size ('' = random init)",
    )
    train_rows_from: int = _f(
        0,
        "train only the embedding (and untied output) rows from this id on, everything else "
        "frozen bit-exactly: the first id an extended tokenizer added (0 = train everything)",
    )


@dataclass
class CorpusConfig:
    inputs: list[str] = _f(  # noqa: RUF009 (_f copies list defaults via default_factory)
        [],
        "corpus files or globs: 'PATH' (JSONL with text and lang fields, .gz/.zst, Parquet) or "
        "'LANG=PATH' (plain text in one language); `streamloco data demo DIR` writes the demo one",
    )
    text_field: str = _f("text", "JSONL/Parquet field holding the document text")
    lang_field: str = _f("lang", "JSONL/Parquet field holding the language code")
    on_error: Literal["skip", "fail"] = _f(
        "skip", "bad records (invalid UTF-8, no lang, empty text): skip and count, or fail"
    )
    normalize_form: Literal["NFC", "NFKC"] = _f("NFC", "Unicode normalization form")
    apostrophes: Literal["ascii", "modifier", "keep"] = _f(
        "ascii", "apostrophe look-alikes -> ' (ascii), -> U+02BC (modifier), or keep"
    )
    pins: str = _f(
        "",
        "optional sha256sum file ('sha256sum FILES > pins'): the inputs must be exactly the "
        "files it lists, with those digests, checked before reading (catches a file cut at a "
        "zstd frame or line boundary, and files added or removed)",
    )


@dataclass
class TokenizerConfig:
    path: str = _f("data/tokenizer/spm", "tokenizer prefix: <path>.model and <path>.json")
    vocab_size: int = _f(8000, "SentencePiece vocabulary size")
    model_type: Literal["unigram", "bpe"] = _f("unigram", "SentencePiece model type")
    character_coverage: float = _f(0.9995, "share of characters covered by pieces (rest: bytes)")
    split_digits: bool = _f(True, "split numbers into single digits")
    split_by_script: bool = _f(
        False, "forbid pieces mixing Unicode scripts (True cuts words at a glottal apostrophe)"
    )
    temperature: float = _f(5.0, "language sampling for the training sample: p ~ n^(1/T)")
    max_chars: int = _f(20_000_000, "characters in the training sample (keeps training fast)")
    lang_tags: bool = _f(False, "add a <2xxx> tag token per language")


@dataclass
class DataConfig:
    source: Literal["synthetic", "shards"] = _f(
        "synthetic",
        "where training tokens come from: 'shards' (the tokenized corpus in data.dir) or "
        "'synthetic' (a seeded order-2 Markov language with a known entropy floor)",
    )
    dir: str = _f("data/shards", "token shards and manifest.json (`streamloco data tokenize`)")
    shard_tokens: int = _f(8_000_000, "target tokens per shard")
    validation_fraction: float = _f(0.02, "share of each language's documents held out")
    split_seed: int = _f(0, "seed of the per-document train/validation hash")
    workers: int = _f(0, "tokenization processes or Ray tasks in flight/2 (0 = CPU cores)")
    executor: Literal["auto", "processes", "ray"] = _f(
        "auto", "who tokenizes: local processes, or Ray tasks (auto: Ray when RAY_ADDRESS is set)"
    )
    zstd_level: int = _f(3, "zstd level of the token shards")
    temperature: float = _f(5.0, "loader language mixture: p ~ train tokens^(1/T)")
    shuffle: bool = _f(
        False,
        "read each language's windows in a shuffled order (blocks of ~1M tokens in a random "
        "order per epoch, windows shuffled within a block) instead of document order",
    )
    branching: int = _f(4, "synthetic: plausible next tokens per context (sets the entropy floor)")


@dataclass
class TrainConfig:
    steps: int = _f(200, "inner steps per group")
    batch_size: int = _f(16, "sequences per inner step per group")
    groups: int = _f(2, "M: number of worker groups (islands)")
    seed: int = _f(0, "seed for initialization and data; groups derive their own streams from it")
    eval_every: int = _f(
        50, "evaluate the global parameters every this many steps (0 = only at end)"
    )
    eval_batches: int = _f(4, "batches per evaluation")
    eval_batch_size: int = _f(
        0,
        "sequences per evaluation batch (0 = train.batch_size); set it when runs with different "
        "batch sizes must be evaluated on the same held-out text",
    )
    threads: int = _f(
        1, "torch intra-op threads for `simulate` (`train` sets them from cluster.cpus_per_rank)"
    )
    log_every: int = _f(10, "`train`: steps between metric reports from the workers")
    device: Literal["auto", "cpu", "cuda"] = _f(
        "auto", "`train`: where each rank trains (auto: cuda if the rank reserved a GPU)"
    )
    precision: Literal["auto", "fp32", "bf16"] = _f(
        "auto", "autocast dtype of the forward pass (auto: bf16 on cuda, fp32 on cpu)"
    )
    compile: bool = _f(False, "torch.compile the model (GPU runs; slow to start on CPU)")
    min_groups: int = _f(
        1, "`train`: rounds go on with at least this many groups; fewer alive stops the run"
    )
    replace_failed: bool = _f(
        True, "`train`: start a replacement for a dead group; it recovers live from a peer"
    )
    max_replacements: int = _f(8, "`train`: give up after this many group replacements")


@dataclass
class InnerConfig:
    lr: float = _f(
        4e-4, "AdamW peak learning rate (DiLoCo default 4e-4; tiny CPU models want ~3e-3)"
    )
    beta1: float = _f(0.9, "AdamW beta1")
    beta2: float = _f(0.95, "AdamW beta2")
    weight_decay: float = _f(0.1, "AdamW decoupled weight decay")
    warmup_steps: int = _f(20, "linear warmup steps before the cosine decay")
    min_lr_ratio: float = _f(0.1, "cosine decays to lr * min_lr_ratio at the last step")
    grad_clip: float = _f(1.0, "clip the gradient norm to this (0 = off)")


@dataclass
class OuterConfig:
    enabled: bool = _f(
        True,
        "false: no outer loop, plain training of one group (DDP across its ranks); the "
        "data-parallel baseline. Needs train.groups = 1",
    )
    sync_every: int = _f(30, "H: inner steps between two syncs of the same fragment")
    fragments: int = _f(1, "F: number of fragments synchronized on staggered schedules")
    overlap: int = _f(0, "tau: inner steps a fragment's exchange may stay in flight (< H/F)")
    alpha: float = _f(0.0, "merge weight of the LOCAL parameters: local = a*local + (1-a)*global")
    lr: float = _f(0.7, "outer learning rate")
    momentum: float = _f(0.9, "outer momentum")
    nesterov: bool = _f(True, "Nesterov momentum (False = heavy ball; momentum 0 = plain SGD)")
    codec: str = _f("e3m0", f"wire format of pseudo-gradients: one of {', '.join(CODEC_NAMES)}")
    block_size: int = _f(128, "elements per quantization block (one fp32 scale each)")
    zstd_level: int = _f(0, "zstd level applied on top of the codec (0 = off, 1..22)")
    rounding: Literal["nearest", "stochastic"] = _f(
        "nearest",
        "e3m0: round to the nearest level (shrinks pseudo-gradients ~3 % on average) or "
        "stochastically (unbiased; seeded by step, fragment and group, so resumes are exact)",
    )
    topk: int = _f(
        0, "sparse codec: values kept per block of outer.block_size (0 = block_size/64, >= 1)"
    )
    error_feedback: bool = _f(
        False,
        "carry what the codec did not send (accumulated delta - decoded payload) into the "
        "fragment's next send; per-group state, checkpointed (SparseLoCo, DeMo)",
    )
    error_decay: float = _f(
        1.0, "error feedback: accumulator <- error_decay * accumulator + delta before each send"
    )
    pattern: Literal["strided", "sequential"] = _f(
        "strided", "block -> fragment map: strided (i mod F, the paper's) or sequential"
    )
    schedule: Literal["streaming", "torchft"] = _f(
        "streaming",
        "streaming: fragment p sends at p*H/F + kH (paper); torchft: sync k handles fragment "
        "k mod F and applies at (k+1)*H/F (torchft's DiLoCo round robin)",
    )
    state_device: Literal["cpu", "model"] = _f(
        "cpu", "where the fp32 global copy and outer momentum live (cpu saves accelerator memory)"
    )
    final_sync: bool = _f(
        True,
        "after the last step, also sync every fragment the schedule did not just send, so the "
        "final global model holds all training (false: torchft's behaviour, step for step)",
    )
    reduce: Literal["allgather", "two_phase", "auto"] = _f(
        "allgather",
        "how groups combine pseudo-gradients: allgather (every group fetches every payload: "
        "P up, (M-1) P down per round), two_phase (each group reduces 1/M of the fragment and "
        "re-encodes it: about P up, 2(M-1)/M P down, one more hop and one more quantization), "
        "auto (two_phase from 3 groups on, where it moves fewer bytes, except with the sparse "
        "codec, whose top-k re-encode of the mean loses too much)",
    )


@dataclass
class TransportConfig:
    bandwidth_mbps: float = _f(0.0, "simulated link bandwidth per group in Mbit/s (0 = unlimited)")
    latency_ms: float = _f(0.0, "simulated one-way link latency in milliseconds")
    timeout_s: float = _f(600.0, "give up waiting for a round's payloads after this many seconds")
    round_deadline_s: float = _f(
        0.0,
        "`train`: close a round this long after its first payload if train.min_groups are in "
        "(stragglers apply it late, without their payload); 0 = wait for every live group",
    )


@dataclass
class ClusterConfig:
    ranks_per_group: int = _f(
        1, "K: Ray actors per worker group (one per accelerator), data-parallel inside the group"
    )
    cpus_per_rank: float = _f(1.0, "CPUs each rank reserves (also its torch thread count)")
    gpus_per_rank: float = _f(0.0, "GPUs each rank reserves (1 on GPU machines, 0 = CPU)")
    placement: Literal["STRICT_PACK", "PACK", "SPREAD"] = _f(
        "STRICT_PACK", "placement group strategy of a group's ranks (STRICT_PACK: one node)"
    )
    backend: Literal["auto", "gloo", "nccl"] = _f(
        "auto", "torch.distributed backend inside a group (auto: nccl with GPUs, else gloo)"
    )
    start_timeout_s: float = _f(
        300.0, "give up if the cluster cannot reserve the groups' resources within this time"
    )
    islands: list[str] = _f(  # noqa: RUF009 (_f copies list defaults via default_factory)
        [],
        "island of each group, in group order: group g runs only on Ray nodes whose label "
        '`cluster.island_label` is islands[g]; ["auto"] = one group per island found in the '
        "cluster (sorted names); [] = anywhere (docs/islands.md)",
    )
    island_label: str = _f(
        "island", "the Ray node label naming a node's island (`ray start --labels island=NAME`)"
    )
    share_islands: bool = _f(
        False,
        "allow two groups on one island (an island listed twice, or fewer islands than "
        "train.groups: group g then goes to island g mod their number)",
    )


@dataclass
class RunConfig:
    name: str = _f("run", "run name; outputs go to <out_dir>/<name>")
    out_dir: str = _f("runs", "directory that holds run directories")
    tensorboard: bool = _f(True, "write TensorBoard event files under <run_dir>/tb")
    checkpoint_every: int = _f(
        0,
        "`train`: checkpoint every this many steps, at the next step with no sync in flight "
        "(0 = only at the end)",
    )
    keep_checkpoints: int = _f(3, "keep the newest this many checkpoints")
    on_existing: Literal["fail", "resume"] = _f(
        "fail",
        "`train` into a run dir that holds checkpoints: fail, or resume from the newest valid "
        "one (for jobs that may be resubmitted after the driver died)",
    )


@dataclass
class StagesConfig:
    steps: list[int] = _f(  # noqa: RUF009 (_f copies list defaults via default_factory)
        [],
        "multistage continual pretraining (`train`): inner steps of each stage, in order; each "
        "stage starts from the previous one's global model (empty = one stage, train.steps)",
    )
    lr: list[float] = _f(  # noqa: RUF009
        [], "inner.lr of each stage (empty = inner.lr in every stage)"
    )
    warmup_steps: list[int] = _f(  # noqa: RUF009 (_f copies list defaults via default_factory)
        [], "inner.warmup_steps of each stage (empty = inner.warmup_steps, at most its steps)"
    )
    train_rows_from: list[int] = _f(  # noqa: RUF009 (_f copies list defaults via default_factory)
        [],
        "model.train_rows_from of each stage, e.g. [4000, 0]: first only the rows from id 4000 "
        "on, then everything (empty = model.train_rows_from in every stage)",
    )


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    inner: InnerConfig = field(default_factory=InnerConfig)
    outer: OuterConfig = field(default_factory=OuterConfig)
    transport: TransportConfig = field(default_factory=TransportConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    run: RunConfig = field(default_factory=RunConfig)
    stages: StagesConfig = field(default_factory=StagesConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        """Render as TOML that `load_config` reads back to an equal Config."""
        lines: list[str] = []
        for section, values in self.to_dict().items():
            lines.append(f"[{section}]")
            lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
            lines.append("")
        return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)


def _sections() -> dict[str, type]:
    hints = typing.get_type_hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config)}


def explain() -> str:
    """Every key with its type, default and documentation, for `streamloco config --explain`."""
    out = []
    for section, cls in _sections().items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tname = getattr(hints[f.name], "__name__", str(hints[f.name]))
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            out.append(f"{section}.{f.name} ({tname}, default {default!r}): {f.metadata['doc']}")
    return "\n".join(out)


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check one value against its field's type; ints widen to floats, nothing else converts."""
    if typing.get_origin(hint) is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ValueError(f"{key}: {value!r} is not one of {', '.join(map(repr, choices))}")
        return value
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ValueError(f"{key}: expected a list of {item.__name__}, got {value!r}")
        return [_coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    else:
        ok = isinstance(value, hint)
    if not ok:
        raise ValueError(f"{key}: expected {hint.__name__}, got {type(value).__name__} {value!r}")
    return value


def _unknown(kind: str, key: str, known: list[str]) -> ValueError:
    near = difflib.get_close_matches(key.split(".")[-1], known, n=1)
    hint = f" (did you mean '{near[0]}'?)" if near else ""
    return ValueError(f"unknown {kind} '{key}'{hint}; valid: {', '.join(known)}")


def _checked(section: str, key: str, value: Any) -> Any:
    """`value` for `section.key`, coerced; ValueError if the section or key is unknown or the
    value has the wrong type. Checks this one entry only (the cross-field ones are `validate`)."""
    sections = _sections()
    if section not in sections:
        raise _unknown("section", section, list(sections))
    cls = sections[section]
    hints = typing.get_type_hints(cls)
    if key not in hints:
        raise _unknown("key", f"{section}.{key}", [f.name for f in dataclasses.fields(cls)])
    return _coerce(f"{section}.{key}", value, hints[key])


def from_dict(data: dict[str, Any]) -> Config:
    """Build and validate a Config from nested dicts ({section: {key: value}})."""
    sections = _sections()
    kwargs: dict[str, Any] = {}
    for section, values in data.items():
        if section not in sections:
            raise _unknown("section", section, list(sections))
        if not isinstance(values, dict):
            raise ValueError(f"{section}: expected a table of keys, got {values!r}")
        values = {key: _checked(section, key, value) for key, value in values.items()}
        kwargs[section] = sections[section](**values)
    cfg = Config(**kwargs)
    validate(cfg)
    return cfg


def _parse_override(arg: str) -> tuple[str, Any]:
    if not arg.startswith("--") or "=" not in arg:
        raise ValueError(f"override {arg!r}: expected --section.key=value")
    key, raw = arg[2:].split("=", 1)
    if key.count(".") != 1:
        raise ValueError(f"override {arg!r}: expected --section.key=value")
    try:  # TOML value syntax (numbers, true/false, "quoted"); a bare word is a string
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """A TOML file as a dict; ValueError naming `what` and the file if missing or invalid."""
    if not path.is_file():
        raise ValueError(f"{what} {path} does not exist")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{what} {path}: invalid TOML: {e}") from None


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> Config:
    """Defaults <- TOML file <- `--section.key=value` overrides, then validate.

    A ValueError names where the bad input came from, so a typo is looked for in the right place:

    - an unknown section or key, or a value of the wrong type, in the file: ``{path}: ...``;
    - the same in an override: the override as given, ``--outer.fragmets=2: unknown key ...``;
    - a range or cross-field check (`validate`) fails on the combination, and the culprit may be
      either (e.g. the file's outer.sync_every against an --outer.overlap): ``{path} with
      --a=1 --b=2: ...``, naming the file and every override given (whichever there are).
    """
    data: dict[str, dict[str, Any]] = {}
    if path is not None:
        path = Path(path)
        data = read_toml(path, "config file")
        # Each entry is checked here on its own so that its errors name the file; what
        # from_dict does after merging can then only fail on the combination.
        try:
            for section, values in data.items():
                if not isinstance(values, dict):
                    raise ValueError(f"{section}: expected a table of keys, got {values!r}")
                for key, value in values.items():
                    _checked(section, key, value)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
    for arg in overrides:
        key, value = _parse_override(arg)  # its errors already quote the override
        section, name = key.split(".")
        try:
            _checked(section, name, value)
        except ValueError as e:
            raise ValueError(f"{arg}: {e}") from None
        data.setdefault(section, {})[name] = value  # the file's sections are tables (above)
    try:
        return from_dict(data)
    except ValueError as e:
        given = " ".join(overrides)
        where = f"{path} with {given}" if path is not None and given else str(path or given)
        raise ValueError(f"{where}: {e}" if where else str(e)) from None


def _check(cond: bool, key: str, why: str) -> None:
    if not cond:
        raise ValueError(f"{key}: {why}")


# Ray's node label syntax (ray/_private/label_utils.py, LABEL_REGEX): a label value, and a key's
# name part, are at most 63 of [A-Za-z0-9_.-], starting and ending alphanumeric; a key may carry a
# DNS-style prefix ("example.com/island"). Checked here so a typo fails at load time, not in Ray.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?"
_LABEL_KEY = rf"(?:{_LABEL}(?:\.{_LABEL})*/)?{_LABEL}"


def _check_islands(cl: ClusterConfig, groups: int) -> None:
    _check(
        re.fullmatch(_LABEL_KEY, cl.island_label) is not None,
        "cluster.island_label",
        f"{cl.island_label!r} is not a Ray label key ([prefix/]name, name: up to 63 of "
        "A-Za-z0-9_.- starting and ending alphanumeric)",
    )
    isl = cl.islands
    if isl == ["auto"] or not isl:
        return
    for i, name in enumerate(isl):
        _check(
            re.fullmatch(_LABEL, name) is not None,
            f"cluster.islands[{i}]",
            f"{name!r} is not a Ray label value (up to 63 of A-Za-z0-9_.- starting and ending "
            "alphanumeric)",
        )
        _check(name != "auto", f"cluster.islands[{i}]", '"auto" stands alone: ["auto"]')
    _check(
        len(isl) <= groups,
        "cluster.islands",
        f"lists {len(isl)} islands for train.groups={groups} groups",
    )
    shared = len(isl) < groups or len(set(isl)) < len(isl)
    _check(
        cl.share_islands or not shared,
        "cluster.islands",
        f"{isl} puts {groups} groups on {len(set(isl))} islands: list one island per group, "
        "or set cluster.share_islands=true to let groups share one",
    )


def _check_outer_options(o: OuterConfig) -> None:
    """The schedule's rules (H, F, tau) and the codec's (name, block size, zstd level) live in
    their own classes; building them here is how config checks them, naming the key."""
    from streamloco.outer_optim.codecs import make_codec  # torch: not at import (names.py)

    try:
        Schedule.of(o)
        make_codec(o.codec, o.block_size, o.zstd_level, o.topk, o.rounding)
    except OptionError as e:
        raise ValueError(f"outer.{e.option}: {e.why}") from None


def validate(cfg: Config) -> None:
    """Cross-field checks; each failure names the key and the reason."""
    m, t, i, o, tr = cfg.model, cfg.train, cfg.inner, cfg.outer, cfg.transport
    _check(m.size in MODEL_SIZES, "model.size", f"{m.size!r} is not one of {sorted(MODEL_SIZES)}")
    _check(m.vocab_size >= 2, "model.vocab_size", "must be >= 2")
    _check(m.seq_len >= 2, "model.seq_len", "must be >= 2")
    _check(
        0 <= m.train_rows_from < m.vocab_size,
        "model.train_rows_from",
        f"must be in [0, model.vocab_size={m.vocab_size}), got {m.train_rows_from}",
    )
    _check(cfg.data.branching >= 1, "data.branching", "must be >= 1")
    _check(0 < cfg.data.validation_fraction < 1, "data.validation_fraction", "must be in (0, 1)")
    _check(cfg.data.shard_tokens >= 1024, "data.shard_tokens", "must be >= 1024")
    _check(cfg.data.workers >= 0, "data.workers", "must be >= 0 (0 = one per core)")
    _check(1 <= cfg.data.zstd_level <= 22, "data.zstd_level", "must be in [1, 22]")
    for key, temp in (
        ("data.temperature", cfg.data.temperature),
        ("tokenizer.temperature", cfg.tokenizer.temperature),
    ):
        _check(temp > 0, key, f"must be > 0 (1 = proportional), got {temp}")
    tk = cfg.tokenizer
    _check(
        tk.vocab_size >= 300,
        "tokenizer.vocab_size",
        f"must be >= 300 (256 byte pieces + specials + some merges), got {tk.vocab_size}",
    )
    _check(
        0.9 <= tk.character_coverage <= 1.0, "tokenizer.character_coverage", "must be in [0.9, 1]"
    )
    _check(tk.max_chars >= 10_000, "tokenizer.max_chars", "must be >= 10000")
    _check(cfg.data.branching <= m.vocab_size, "data.branching", "must be <= model.vocab_size")
    for key, value in [
        ("train.steps", t.steps),
        ("train.batch_size", t.batch_size),
        ("train.groups", t.groups),
        ("train.threads", t.threads),
        ("train.eval_batches", t.eval_batches),
        ("train.log_every", t.log_every),
        ("cluster.ranks_per_group", cfg.cluster.ranks_per_group),
        ("run.keep_checkpoints", cfg.run.keep_checkpoints),
    ]:
        _check(value >= 1, key, f"must be >= 1, got {value}")
    _check(t.eval_every >= 0, "train.eval_every", "must be >= 0")
    _check(t.eval_batch_size >= 0, "train.eval_batch_size", "must be >= 0 (0 = train.batch_size)")
    cl = cfg.cluster
    _check(
        t.batch_size % cl.ranks_per_group == 0,
        "train.batch_size",
        f"{t.batch_size} sequences per group must split evenly over "
        f"cluster.ranks_per_group={cl.ranks_per_group} ranks",
    )
    _check(cl.cpus_per_rank > 0, "cluster.cpus_per_rank", "must be > 0")
    _check(cl.gpus_per_rank >= 0, "cluster.gpus_per_rank", "must be >= 0")
    _check(
        not (cl.backend == "nccl" and cl.gpus_per_rank == 0),
        "cluster.backend",
        "nccl needs GPUs: set cluster.gpus_per_rank=1 or use gloo",
    )
    _check(cl.start_timeout_s > 0, "cluster.start_timeout_s", "must be > 0")
    _check_islands(cl, t.groups)
    _check(cfg.run.checkpoint_every >= 0, "run.checkpoint_every", "must be >= 0")
    _check(i.lr > 0, "inner.lr", "must be > 0")
    _check(0 <= i.beta1 < 1 and 0 <= i.beta2 < 1, "inner.beta1/beta2", "must be in [0, 1)")
    _check(i.weight_decay >= 0, "inner.weight_decay", "must be >= 0")
    _check(
        0 <= i.warmup_steps <= t.steps,
        "inner.warmup_steps",
        f"must be in [0, train.steps={t.steps}], got {i.warmup_steps}",
    )
    _check(0 <= i.min_lr_ratio <= 1, "inner.min_lr_ratio", "must be in [0, 1]")
    _check(i.grad_clip >= 0, "inner.grad_clip", "must be >= 0")
    _check(
        o.enabled or t.groups == 1,
        "outer.enabled",
        f"false (no outer loop) needs train.groups = 1, got {t.groups}",
    )
    _check_outer_options(o)
    n_layers = MODEL_SIZES[m.size]["n_layers"]
    _check(
        o.fragments <= n_layers,
        "outer.fragments",
        f"F={o.fragments} exceeds the {n_layers} transformer blocks of model.size={m.size!r}",
    )
    _check(0.0 <= o.alpha <= 1.0, "outer.alpha", f"must be in [0, 1], got {o.alpha}")
    _check(o.lr > 0, "outer.lr", "must be > 0")
    _check(0.0 <= o.momentum < 1.0, "outer.momentum", f"must be in [0, 1), got {o.momentum}")
    _check(
        0.0 < o.error_decay <= 1.0, "outer.error_decay", f"must be in (0, 1], got {o.error_decay}"
    )
    _check(tr.bandwidth_mbps >= 0, "transport.bandwidth_mbps", "must be >= 0 (0 = unlimited)")
    _check(tr.latency_ms >= 0, "transport.latency_ms", "must be >= 0")
    _check(tr.timeout_s > 0, "transport.timeout_s", "must be > 0")
    _check(tr.round_deadline_s >= 0, "transport.round_deadline_s", "must be >= 0 (0 = none)")
    _check(
        1 <= t.min_groups <= t.groups,
        "train.min_groups",
        f"must be in [1, train.groups={t.groups}], got {t.min_groups}",
    )
    _check(t.max_replacements >= 0, "train.max_replacements", "must be >= 0")
    _validate_stages(cfg)
    _check(
        bool(cfg.run.name) and "/" not in cfg.run.name and cfg.run.name not in (".", ".."),
        "run.name",
        f"must be a plain directory name, got {cfg.run.name!r}",
    )


def _validate_stages(cfg: Config) -> None:
    st = cfg.stages
    n = len(st.steps)
    for key in ("lr", "warmup_steps", "train_rows_from"):
        given = len(getattr(st, key))
        _check(
            given in (0, n),
            f"stages.{key}",
            f"has {given} entries for {n} stages (stages.steps): give one per stage or none",
        )
    for i, steps in enumerate(st.steps):
        _check(steps >= 1, f"stages.steps[{i}]", f"must be >= 1, got {steps}")
        if st.lr:
            _check(st.lr[i] > 0, f"stages.lr[{i}]", f"must be > 0, got {st.lr[i]}")
        if st.warmup_steps:
            w = st.warmup_steps[i]
            _check(0 <= w <= steps, f"stages.warmup_steps[{i}]", f"must be in [0, {steps}]")
        if st.train_rows_from:
            r = st.train_rows_from[i]
            _check(
                0 <= r < cfg.model.vocab_size,
                f"stages.train_rows_from[{i}]",
                f"must be in [0, model.vocab_size={cfg.model.vocab_size}), got {r}",
            )


def stage_config(cfg: Config, i: int, init_from: str) -> Config:
    """The plain run config of stage `i` (no stages), starting from the model at `init_from`."""
    st = cfg.stages
    steps = st.steps[i]
    data = cfg.to_dict()
    data["train"]["steps"] = steps
    data["inner"]["lr"] = st.lr[i] if st.lr else cfg.inner.lr
    warmup = st.warmup_steps[i] if st.warmup_steps else min(cfg.inner.warmup_steps, steps)
    data["inner"]["warmup_steps"] = warmup
    rows = st.train_rows_from[i] if st.train_rows_from else cfg.model.train_rows_from
    data["model"]["train_rows_from"] = rows
    data["model"]["init_from"] = init_from
    data["stages"] = {}
    return from_dict(data)
