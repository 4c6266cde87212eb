"""What `streamloco bench` runs: the bench config (`configs/bench/*.toml`) and the run plan.

A bench file has a `[bench]` table (below) and, optionally, ordinary training sections
(`[train]`, `[inner]`, `[outer]`, ...) that are laid over the base training config named by
`bench.base`. Every run of the bench starts from that merged config and changes only what its
variant is about, so the runs differ in the outer algorithm alone.

Equal tokens, as in the Streaming DiLoCo paper: every run takes `train.steps` steps of
`bench.global_batch` sequences in all. M groups split that batch (each group trains on
global_batch / M sequences per step), and the data-parallel baseline is one group that trains on
the whole batch per step, so its gradient is the mean over the same number of sequences that M
groups would all-reduce. Pure: no Ray, no torch.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamloco.config import Config, from_dict, read_toml

PRESETS_DIR = Path("configs") / "bench"


@dataclass
class BenchConfig:
    base: str = "configs/demo.toml"  # training config every run starts from (repo-relative)
    groups: list[int] = field(default_factory=lambda: [2, 4])  # M values to compare
    global_batch: int = 32  # sequences per step, all groups together (equal tokens)
    ddp_ranks: int = 1  # ranks of the data-parallel group (1 = the whole batch on one rank)
    diloco_sync_every: int = 30  # H of the DiLoCo run (F=1, tau=0, fp32)
    streaming_sync_every: list[int] = field(default_factory=lambda: [30, 100])
    fragments: int = 0  # F of the streaming runs; 0 = one fragment per ~3 blocks, at least 2
    overlap: int = 1  # tau of the streaming runs
    codec: str = "e3m0"  # 4-bit payloads of the streaming runs
    zstd_level: int = 3  # the streaming runs' zstd stage (bytes without it are reported too)
    cpus: float = 0.0  # CPUs a run may use (0 = all Ray has); split across its ranks
    # at most this many CPUs per rank (0 = no cap): a one-rank run then leaves cores idle rather
    # than run torch with more threads than the other runs' ranks (on a loaded machine, 2
    # threads ran a one-group run 4-5x slower per step than two 1-thread ranks)
    max_cpus_per_rank: float = 0.0
    gpus: float = 0.0  # GPUs a run may use; split across its ranks
    quality: bool = True  # the equal-token training runs
    utilization: bool = True  # measured + modelled compute utilization vs bandwidth
    bandwidths_mbps: list[float] = field(default_factory=lambda: [25.0, 100.0, 400.0])
    latency_ms: float = 20.0
    utilization_steps: int = 60  # steps of each measured utilization run (DP: dp_steps)
    dp_steps: int = 20  # DP exchanges every step: short, or slow links take minutes
    extrapolate: bool = True  # the analytic model at the paper's 1B scale
    max_gap: dict[str, float] = field(default_factory=lambda: {"2": 0.01, "4": 0.02})
    min_ratio_vs_bf16: float = 400.0  # bytes target for Streaming 4-bit at the largest H
    # the sparse rows: Streaming with the sparse codec and per-group error feedback (SparseLoCo)
    sparse: bool = True
    sparse_sync_every: list[int] = field(default_factory=lambda: [30, 100])
    sparse_block_size: int = 4096  # chunk C of the top-k
    sparse_topk: int = 64  # values kept per chunk (64 of 4096: 1.6 %)
    sparse_alpha: float = 0.0  # local = global after a sync: the residual rides in error feedback
    sparse_error_decay: float = 1.0
    min_ratio_sparse_vs_bf16: float = 3000.0  # bytes target for Sparse at its largest H
    # DiLoCo with ONE group (H = diloco_sync_every, the whole batch): the outer loop alone,
    # without averaging across groups; its target is DDP's loss or better (issue 16)
    single_group: bool = False
    max_gap_vs_fp32: float = 0.0  # Streaming 4-bit within this of fp32 DiLoCo, same M (0 = none)
    # the size sweep: DDP and Streaming 4-bit (M=2, H = diloco_sync_every) at each of these model
    # sizes besides the base config's, same tokens; the gap against parameters (issue 16)
    sweep_sizes: list[str] = field(default_factory=list)
    wallclock_step_s: float = 0.0  # issue 16, equal wall-clock view: island s/step, 0 = measured


@dataclass(frozen=True)
class RunSpec:
    """One training run of the bench, and the table rows it yields."""

    id: str
    label: str
    method: str  # "ddp" | "diloco" | "streaming" | "sparse"
    groups: int  # M (1 for the data-parallel run)
    changes: dict[str, Any]  # dotted config keys this run sets over the base
    # rows that reuse this run's losses (zstd is lossless): (id, label) of the row without zstd
    without_zstd: tuple[str, str] | None = None


def _coerce(key: str, value: Any, default: Any) -> Any:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"bench.{key}: expected true or false, got {value!r}")
        return value
    if isinstance(default, int) and not isinstance(default, bool):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"bench.{key}: expected an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"bench.{key}: expected a number, got {value!r}")
        return float(value)
    if isinstance(default, list):
        if not isinstance(value, list) or not value:
            raise ValueError(f"bench.{key}: expected a non-empty list, got {value!r}")
        item = default[0] if default else ""  # an empty default list holds strings
        return [_coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise ValueError(f"bench.{key}: expected a table, got {value!r}")
        return {str(k): _coerce(f"{key}.{k}", v, 0.0) for k, v in value.items()}
    if not isinstance(value, str):
        raise ValueError(f"bench.{key}: expected a string, got {value!r}")
    return value


def bench_from_dict(data: dict[str, Any]) -> BenchConfig:
    out = BenchConfig()
    known = {f.name for f in dataclasses.fields(BenchConfig)}
    for key, value in data.items():
        if key not in known:
            raise ValueError(f"bench.{key}: unknown key; valid keys: {', '.join(sorted(known))}")
        setattr(out, key, _coerce(key, value, getattr(out, key)))
    _validate(out)
    return out


def _validate(b: BenchConfig) -> None:
    def check(ok: bool, key: str, why: str) -> None:
        if not ok:
            raise ValueError(f"bench.{key}: {why}")

    check(all(m >= 2 for m in b.groups), "groups", f"every M must be >= 2, got {b.groups}")
    for m in [*b.groups, b.ddp_ranks]:
        check(
            b.global_batch % m == 0,
            "global_batch",
            f"{b.global_batch} sequences cannot be split evenly over {m} groups/ranks",
        )
    check(b.ddp_ranks >= 1, "ddp_ranks", "must be >= 1")
    check(b.diloco_sync_every >= 1, "diloco_sync_every", "must be >= 1")
    check(all(h >= 1 for h in b.streaming_sync_every), "streaming_sync_every", "must be >= 1")
    check(b.fragments >= 0, "fragments", "must be >= 0 (0 = about one per 3 blocks)")
    check(b.overlap >= 0, "overlap", "must be >= 0")
    check(b.cpus >= 0 and b.gpus >= 0, "cpus", "cpus and gpus must be >= 0")
    check(b.max_cpus_per_rank >= 0, "max_cpus_per_rank", "must be >= 0 (0 = no cap)")
    check(all(x > 0 for x in b.bandwidths_mbps), "bandwidths_mbps", "must be > 0")
    check(b.utilization_steps >= 1 and b.dp_steps >= 1, "utilization_steps", "must be >= 1")
    check(all(h >= 1 for h in b.sparse_sync_every), "sparse_sync_every", "must be >= 1")
    check(
        1 <= b.sparse_topk <= b.sparse_block_size <= 65535,
        "sparse_topk",
        f"need 1 <= sparse_topk <= sparse_block_size <= 65535, got {b.sparse_topk} and "
        f"{b.sparse_block_size}",
    )
    check(0.0 <= b.sparse_alpha <= 1.0, "sparse_alpha", "must be in [0, 1]")
    check(0.0 < b.sparse_error_decay <= 1.0, "sparse_error_decay", "must be in (0, 1]")
    check(0 <= b.wallclock_step_s < math.inf, "wallclock_step_s", "must be >= 0 (0 = measured)")
    for m in b.groups:
        check(str(m) in b.max_gap, "max_gap", f"no target for M={m} (a table like {{'2' = 0.01}})")
    check(0.0 <= b.max_gap_vs_fp32 < 1.0, "max_gap_vs_fp32", "must be in [0, 1) (0 = no target)")
    from streamloco.config import MODEL_SIZES

    for size in b.sweep_sizes:
        check(size in MODEL_SIZES, "sweep_sizes", f"{size!r} is not one of {sorted(MODEL_SIZES)}")
    check(
        not b.sweep_sizes or 2 in b.groups,
        "sweep_sizes",
        "the sweep compares at M=2: bench.groups must include 2",
    )


def load_bench(path: Path, overrides: list[str] = ()) -> tuple[BenchConfig, Config, dict]:
    """(bench settings, merged base training config, its plain dict) from a bench file.

    `overrides` are `--section.key=value` flags: `--bench.*` go to the bench, the others to the
    training config of every run.
    """
    from streamloco.config import _parse_override

    data = read_toml(path, "bench config")
    bench_data = dict(data.pop("bench", {}))
    for arg in overrides:
        key, value = _parse_override(arg)
        section, name = key.split(".")
        (bench_data if section == "bench" else data.setdefault(section, {}))[name] = value
    try:
        bench = bench_from_dict(bench_data)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    base_path = Path(bench.base)
    merged = read_toml(base_path, f"{path}: bench.base: training config")
    for section, values in data.items():
        if not isinstance(values, dict):
            raise ValueError(f"{path}: {section}: expected a table of keys")
        merged.setdefault(section, {}).update(values)
    try:
        cfg = from_dict(merged)
    except ValueError as e:
        raise ValueError(f"{path} over {base_path}: {e}") from None
    return bench, cfg, merged


def preset_path(name: str) -> Path:
    path = PRESETS_DIR / f"{name}.toml"
    if not path.is_file():
        have = sorted(p.stem for p in PRESETS_DIR.glob("*.toml")) if PRESETS_DIR.is_dir() else []
        raise ValueError(
            f"--preset {name}: no {path} (presets: {', '.join(have) or 'none'}; run from the "
            "repository root)"
        )
    return path


def streaming_fragments(bench: BenchConfig, cfg: Config) -> int:
    """F of the streaming runs: bench.fragments, or about one fragment per 3 transformer blocks
    (the paper's recommendation) and at least 2, so the schedule really streams."""
    if bench.fragments:
        return bench.fragments
    from streamloco.config import MODEL_SIZES

    return max(2, round(MODEL_SIZES[cfg.model.size]["n_layers"] / 3))


def plan_runs(bench: BenchConfig, cfg: Config) -> list[RunSpec]:
    """The data-parallel baseline, then for each M: DiLoCo, Streaming at each H, and (with
    bench.sparse) Sparse at each of bench.sparse_sync_every."""
    f = streaming_fragments(bench, cfg)
    for h in [*bench.streaming_sync_every, *(bench.sparse_sync_every if bench.sparse else [])]:
        if h % f:
            raise ValueError(f"bench.streaming_sync_every: H={h} is not a multiple of F={f}")
    runs = [_ddp_run(bench)]
    if bench.single_group:
        runs.append(_diloco_run(bench, 1))
    for m in bench.groups:
        runs.append(_diloco_run(bench, m))
        runs += [_streaming_run(bench, m, h, f) for h in bench.streaming_sync_every]
        runs += _sparse_runs(bench, _per_group(bench, m), f) if bench.sparse else []
    return runs


def plan_sweep(bench: BenchConfig, cfg: Config) -> dict[str, list[RunSpec]]:
    """The size sweep: for each of bench.sweep_sizes but the base config's own size (whose runs
    are the main table's), DDP and Streaming 4-bit at M=2 and H = diloco_sync_every."""
    h = bench.diloco_sync_every
    out = {}
    for size in bench.sweep_sizes:
        if size == cfg.model.size:
            continue
        f = streaming_fragments(bench, replace_size(cfg, size))
        if h % f:
            raise ValueError(f"bench.sweep_sizes: {size}: H={h} is not a multiple of F={f}")
        out[size] = [
            dataclasses.replace(
                s, id=f"sweep-{size}-{s.id}", changes=s.changes | {"model.size": size}
            )
            for s in (_ddp_run(bench), _streaming_run(bench, 2, h, f))
        ]
    return out


def replace_size(cfg: Config, size: str) -> Config:
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, size=size))


def _per_group(bench: BenchConfig, m: int) -> dict[str, Any]:
    return {"train.groups": m, "train.batch_size": bench.global_batch // m}


def _ddp_run(bench: BenchConfig) -> RunSpec:
    changes = {
        "outer.enabled": False,
        "train.groups": 1,
        "train.batch_size": bench.global_batch,
        "cluster.ranks_per_group": bench.ddp_ranks,
    }
    return RunSpec("ddp", "DDP", "ddp", 1, changes)


def _diloco_run(bench: BenchConfig, m: int) -> RunSpec:
    h = bench.diloco_sync_every
    changes = {
        **_per_group(bench, m),
        "outer.sync_every": h,
        "outer.fragments": 1,
        "outer.overlap": 0,
        "outer.codec": "fp32",
        "outer.zstd_level": 0,
        "outer.alpha": 0.0,
    }
    return RunSpec(f"m{m}-diloco-h{h}", f"DiLoCo H={h} fp32", "diloco", m, changes)


def _streaming_run(bench: BenchConfig, m: int, h: int, f: int) -> RunSpec:
    zstd = bench.zstd_level
    label = f"Streaming H={h} 4-bit" if bench.codec == "e3m0" else f"Streaming H={h}"
    rid = f"m{m}-streaming-h{h}"
    changes = {
        **_per_group(bench, m),
        "outer.sync_every": h,
        "outer.fragments": f,
        "outer.overlap": bench.overlap,
        "outer.codec": bench.codec,
        "outer.zstd_level": zstd,
    }
    return RunSpec(
        f"{rid}-zstd" if zstd else rid,
        f"{label} + zstd" if zstd else label,
        "streaming",
        m,
        changes,
        without_zstd=(rid, label) if zstd else None,
    )


def _sparse_runs(bench: BenchConfig, per_group: dict, f: int) -> list[RunSpec]:
    """Streaming (same F, tau) with the sparse codec, error feedback, and the bench's outer
    step (the [outer] section: lr 1.4 without momentum, i.e. SparseLoCo's plain step)."""
    c, k, zstd = bench.sparse_block_size, bench.sparse_topk, bench.zstd_level
    out = []
    for h in bench.sparse_sync_every:
        label = f"Sparse H={h} top-{k}/{c} 2-bit + EF"
        rid = f"m{per_group['train.groups']}-sparse-h{h}"
        out.append(
            RunSpec(
                f"{rid}-zstd" if zstd else rid,
                f"{label} + zstd" if zstd else label,
                "sparse",
                per_group["train.groups"],
                {
                    **per_group,
                    "outer.sync_every": h,
                    "outer.fragments": f,
                    "outer.overlap": bench.overlap,
                    "outer.codec": "sparse",
                    "outer.block_size": c,
                    "outer.topk": k,
                    "outer.error_feedback": True,
                    "outer.error_decay": bench.sparse_error_decay,
                    "outer.alpha": bench.sparse_alpha,
                    "outer.zstd_level": zstd,
                },
                without_zstd=(rid, label) if zstd else None,
            )
        )
    return out


def run_config(
    base: dict, bench: BenchConfig, run_id: str, changes: dict[str, Any], out_dir: Path
) -> Config:
    """The training config of one bench run: the merged base, the bench's placement (its
    CPUs/GPUs split over the run's ranks) and outputs, then the run's own `changes`."""
    data = {s: dict(v) for s, v in base.items() if isinstance(v, dict)}
    ranks = changes.get("train.groups", 1) * changes.get("cluster.ranks_per_group", 1)
    settings: dict[str, Any] = {
        "run.name": run_id,
        "run.out_dir": str(out_dir / "runs"),
        "run.on_existing": "fail",
        "transport.bandwidth_mbps": 0.0,  # no simulated link unless the run asks for one
        "transport.latency_ms": 0.0,
    }
    if bench.cpus:
        per_rank = bench.cpus / ranks
        settings["cluster.cpus_per_rank"] = (
            min(per_rank, bench.max_cpus_per_rank) if bench.max_cpus_per_rank else per_rank
        )
    if bench.gpus:
        settings["cluster.gpus_per_rank"] = bench.gpus / ranks
    for key, value in (settings | changes).items():
        section, name = key.split(".")
        data.setdefault(section, {})[name] = value
    return from_dict(data)
