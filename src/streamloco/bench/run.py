"""Run the bench on Ray and gather `results.json` (the thin shell around spec/utilization/report).

Each training run goes through `launcher.driver.train`, the same path as `streamloco train`, and
leaves its TensorBoard files under <out>/runs/<id>. A finished run also leaves `record.json`
there: rerunning the bench into the same directory reuses every run whose config is unchanged,
so an interrupted hour-long bench continues instead of starting over.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import shutil
import statistics
import time
from dataclasses import replace
from pathlib import Path

from streamloco.atomic import atomic_write_bytes
from streamloco.bench.spec import (
    BenchConfig,
    RunSpec,
    plan_runs,
    plan_sweep,
    run_config,
    streaming_fragments,
)
from streamloco.config import Config
from streamloco.results import RunResult, ddp_bytes_per_group

RESULTS_VERSION = 1
BITS = (("bf16", 16), ("fp32", 32))  # the DDP baselines' gradient formats


def _write_json(path: Path, data: dict) -> None:
    atomic_write_bytes(path, (json.dumps(data, indent=1) + "\n").encode())


def _say(text: str) -> None:
    print(f"streamloco bench: {text}", flush=True)


def _train(cfg: Config, run_dir: Path, progress: bool) -> RunResult:
    from streamloco.launcher.driver import train

    if run_dir.exists():  # a run that did not finish: its record is missing, start it over
        shutil.rmtree(run_dir)
    return train(cfg, run_dir, progress=progress)


# ---- the equal-token training runs -------------------------------------------------------------


def _record(spec: RunSpec, cfg: Config, res: RunResult) -> dict:
    """One table row (two for a zstd run: with and without the zstd stage) from a run."""
    m, steps = cfg.train.groups, cfg.train.steps
    step_tokens = cfg.train.groups * cfg.train.batch_size * cfg.model.seq_len

    def row(before_zstd: bool) -> dict:
        groups = res.groups
        history = [
            [
                step,
                step * step_tokens,
                None
                if spec.method == "ddp"
                else statistics.fmean(g.bytes_by(step, before_zstd) for g in groups),
                loss,
            ]
            for step, loss in res.eval_history
        ]
        out = {
            "id": spec.id,
            "label": spec.label,
            "method": spec.method,
            "groups": m,
            "ranks_per_group": cfg.cluster.ranks_per_group,
            "baseline_for": [],
            "H": None,
            "F": None,
            "tau": None,
            "codec": None,
            "zstd": False,
            "derived_from": None,
            "final_eval_loss": res.final_eval_loss,
            "eval_by_lang": dict(res.eval_by_lang),
            "eval_bpb_by_lang": dict(res.eval_bpb_by_lang),
            "eval_history": history,
            "bytes_per_group": None,
            "peak_sync_bytes": None,
            "ddp_bytes_per_group": None,
            "ratio_vs_ddp_bf16": None,
            "ratio_vs_ddp_fp32": None,
            "loss_gap_vs_ddp": None,
            "wall_s": res.wall_s,
            "tokens": res.tokens,
            "tokens_per_s": res.tokens / res.wall_s if res.wall_s else None,
            "globals_identical": res.globals_identical(),
        }
        if spec.method == "ddp":
            return out
        o = cfg.outer
        peak = max(
            (
                r.bytes_before_zstd if before_zstd else r.bytes_moved
                for g in groups
                for r in g.rounds
            ),
            default=0,
        )
        moved = statistics.fmean(
            g.bytes_by(steps, before_zstd=True) if before_zstd else g.bytes_sent + g.bytes_received
            for g in groups
        )
        ddp = {name: ddp_bytes_per_group(res.params, m, steps, bits) for name, bits in BITS}
        out |= {
            "H": o.sync_every,
            "F": o.fragments,
            "tau": o.overlap,
            "codec": o.codec,
            "zstd": bool(o.zstd_level) and not before_zstd,
            "bytes_per_group": moved,
            "peak_sync_bytes": peak,
            "ddp_bytes_per_group": ddp,
            "ratio_vs_ddp_bf16": ddp["bf16"] / moved if moved else None,
            "ratio_vs_ddp_fp32": ddp["fp32"] / moved if moved else None,
        }
        return out

    rows = [row(False)]
    if spec.without_zstd:
        rid, label = spec.without_zstd
        rows.insert(0, row(True) | {"id": rid, "label": label, "derived_from": spec.id})
    return {"config_toml": cfg.to_toml(), "params": res.params, "rows": rows}


def quality_runs(
    bench: BenchConfig, cfg: Config, base: dict, out_dir: Path, progress: bool
) -> tuple[list[dict], int]:
    """Every equal-token run (reusing finished ones); returns (table rows, parameter count)."""
    specs = plan_runs(bench, cfg)
    rows: list[dict] = []
    params = 0
    for i, spec in enumerate(specs, 1):
        record = _run_or_reuse(spec, f"{i}/{len(specs)}", bench, base, out_dir, progress)
        run_dir = out_dir / "runs" / spec.id
        _wallclock_inputs(
            record["rows"], run_config(base, bench, spec.id, spec.changes, out_dir), run_dir
        )
        rows += record["rows"]
        params = record["params"]
    _compare_with_ddp(rows, params)
    return rows, params


def _run_or_reuse(
    spec: RunSpec, counter: str, bench: BenchConfig, base: dict, out_dir: Path, progress: bool
) -> dict:
    """The record of one run: trained now, or read back when a finished run with the same
    config is already in out_dir (an interrupted bench continues)."""
    run_cfg = run_config(base, bench, spec.id, spec.changes, out_dir)
    run_dir = out_dir / "runs" / spec.id
    saved = run_dir / "record.json"
    record = json.loads(saved.read_text()) if saved.is_file() else None
    if record is not None and record.get("config_toml") == run_cfg.to_toml():
        _say(f"[{counter}] {spec.id}: reusing {saved}")
        return record
    _say(
        f"[{counter}] {spec.id}: {spec.label}, {run_cfg.model.size}, M={run_cfg.train.groups} x "
        f"{run_cfg.cluster.ranks_per_group} ranks, batch {run_cfg.train.batch_size} per "
        f"group, {run_cfg.train.steps} steps"
    )
    res = _train(run_cfg, run_dir, progress)
    record = _record(spec, run_cfg, res)
    _write_json(saved, record)
    last = record["rows"][-1]
    _say(
        f"  {spec.id}: eval loss {last['final_eval_loss']:.4f}, "
        f"{last['tokens_per_s']:,.0f} tokens/s, {last['wall_s']:.0f}s"
    )
    return record


def sweep_runs(
    bench: BenchConfig, cfg: Config, base: dict, out_dir: Path, rows: list[dict], progress: bool
) -> dict:
    """The size sweep (issue 16): DDP against Streaming 4-bit at M=2 and H = diloco_sync_every,
    same tokens, per model size; the base size's pair comes from the main table's `rows`."""
    from streamloco.workers.model import model_args, param_count

    h = bench.diloco_sync_every
    tokens = cfg.train.steps * bench.global_batch * cfg.model.seq_len
    plan = plan_sweep(bench, cfg)
    points = []
    for size in bench.sweep_sizes:
        if size in plan:
            pair = [
                _run_or_reuse(s, f"sweep {size}", bench, base, out_dir, progress)["rows"][-1]
                for s in plan[size]
            ]
        else:
            pair = [
                next(r for r in rows if r["method"] == "ddp"),
                next(
                    r
                    for r in rows
                    if r["method"] == "streaming" and r["groups"] == 2 and r["H"] == h
                ),
            ]
        ddp, streaming = pair
        params = param_count(model_args(size, cfg.model.vocab_size, cfg.model.seq_len))
        points.append(
            {
                "size": size,
                "params": params,
                "tokens_per_param": tokens / params,
                "ddp_loss": ddp["final_eval_loss"],
                "streaming_loss": streaming["final_eval_loss"],
                "gap": streaming["final_eval_loss"] / ddp["final_eval_loss"] - 1,
                "ddp_bpb_by_lang": ddp.get("eval_bpb_by_lang", {}),
                "streaming_bpb_by_lang": streaming.get("eval_bpb_by_lang", {}),
                "streaming_label": streaming["label"],
            }
        )
    points.sort(key=lambda p: p["params"])
    return {"groups": 2, "H": h, "tokens": tokens, "points": points}


STEP_S_SOURCE = "measured: median chunk of group 0 without evaluation"


def _wallclock_inputs(rows: list[dict], cfg: Config, run_dir: Path) -> None:
    """What the equal-wall-clock view (`bench.wallclock`) needs from a run and results.json
    does not otherwise hold: the compute time per inner step, from the run's TensorBoard chunk
    throughputs (wall_s includes evaluation and start-up), and one group's exact payload bytes
    per fragment. Added to new and reused runs alike (a record may predate the view)."""
    if all("step_s" in r and "payload_bytes" in r for r in rows):
        return
    from streamloco.bench.wallclock import median_step_s
    from streamloco.records import tag

    chunks = _tb_scalars(run_dir / "tb", tag("tokens_per_s", g=0))
    step_s = median_step_s(
        chunks,
        cfg.train.batch_size * cfg.model.seq_len,
        [p[0] for p in rows[-1]["eval_history"]],
        cfg.train.steps,
    )
    payload = _payload_bytes(cfg)
    for r in rows:
        r["step_s"] = step_s
        r["step_s_source"] = STEP_S_SOURCE if step_s is not None else None
        r["payload_bytes"] = payload


def _tb_scalars(tb_dir: Path, name: str) -> list[tuple[int, float]]:
    """(step, value) of one TensorBoard scalar; empty if the run wrote none."""
    if not tb_dir.is_dir():
        return []
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    acc.Reload()
    if name not in acc.Tags().get("scalars", []):
        return []
    return [(e.step, e.value) for e in acc.Scalars(name)]


def _payload_bytes(cfg: Config) -> list[int]:
    """One group's payload per fragment, before zstd, from the codec's exact size formula on the
    real model's fragments (the utilization ladder's way); DDP: its bf16 gradient, one piece."""
    from streamloco.outer_optim.codecs import make_codec
    from streamloco.outer_optim.fragments import partition
    from streamloco.workers.trainer import build_model

    named = [(n, p.numel()) for n, p in build_model(cfg, "cpu").named_parameters()]
    o = cfg.outer
    if not o.enabled:
        return [make_codec("bf16", o.block_size).payload_size((sum(n for _, n in named),))]
    codec = make_codec(o.codec, o.block_size, 0, o.topk)
    return [codec.payload_size((n,)) for n in partition(named, o.fragments, o.pattern).numels]


def _compare_with_ddp(rows: list[dict], params: int) -> None:
    ddp = next(r for r in rows if r["method"] == "ddp")
    ddp["baseline_for"] = sorted({r["groups"] for r in rows if r["method"] != "ddp"})
    ddp["ddp_bytes_per_step"] = {
        str(m): {name: ddp_bytes_per_group(params, m, 1, bits) for name, bits in BITS}
        for m in ddp["baseline_for"]
    }
    for r in rows:
        if r["method"] != "ddp":
            r["loss_gap_vs_ddp"] = r["final_eval_loss"] / ddp["final_eval_loss"] - 1
        if r["groups"] == 1 and r["method"] != "ddp":
            # one group: DDP across one island moves nothing, so "x fewer" has no meaning
            r["ratio_vs_ddp_bf16"] = r["ratio_vs_ddp_fp32"] = None


def targets(rows: list[dict], bench: BenchConfig) -> list[dict]:
    """The issue's targets, each with the measured value and whether it was met: the loss of
    every streaming run against DDP, and the bytes of the largest H (with and without zstd)."""
    out = []
    h_max = max(bench.streaming_sync_every)
    for r in rows:
        if r["method"] != "streaming":
            continue
        if not r["zstd"]:  # a zstd row repeats the loss of its plain twin: one target per run
            limit = bench.max_gap[str(r["groups"])]
            out.append(
                {
                    "what": f"{r['label']} at M={r['groups']}: eval loss within {limit:.0%} of DDP",
                    "value": r["loss_gap_vs_ddp"],
                    "target": limit,
                    "met": r["loss_gap_vs_ddp"] <= limit,
                }
            )
        if r["H"] == h_max:
            out.append(
                {
                    "what": f"{r['label']} at M={r['groups']}: at least "
                    f"{bench.min_ratio_vs_bf16:.0f}x fewer bytes than bf16 DDP",
                    "value": r["ratio_vs_ddp_bf16"],
                    "target": bench.min_ratio_vs_bf16,
                    "met": r["ratio_vs_ddp_bf16"] >= bench.min_ratio_vs_bf16,
                }
            )
    return out + _fp32_targets(rows, bench) + _sparse_targets(rows, bench)


def _fp32_targets(rows: list[dict], bench: BenchConfig) -> list[dict]:
    """Issue 16: one-group DiLoCo no worse than DDP (bench.single_group), and each Streaming
    4-bit run within bench.max_gap_vs_fp32 of fp32 DiLoCo at the same M."""
    out = []
    ddp = next(r for r in rows if r["method"] == "ddp")
    diloco = {r["groups"]: r for r in rows if r["method"] == "diloco"}
    if bench.single_group and 1 in diloco:
        r = diloco[1]
        out.append(
            {
                "what": f"{r['label']} at M=1: eval loss no worse than DDP "
                f"({ddp['final_eval_loss']:.4f})",
                "value": r["loss_gap_vs_ddp"],
                "target": 0.0,
                "met": r["final_eval_loss"] <= ddp["final_eval_loss"],
            }
        )
    if not bench.max_gap_vs_fp32:
        return out
    for r in rows:
        twin = diloco.get(r["groups"])
        if r["method"] != "streaming" or r["zstd"] or twin is None:
            continue
        gap = r["final_eval_loss"] / twin["final_eval_loss"] - 1
        out.append(
            {
                "what": f"{r['label']} at M={r['groups']}: eval loss within "
                f"{bench.max_gap_vs_fp32:.1%} of {twin['label']} ({twin['final_eval_loss']:.4f})",
                "value": gap,
                "target": bench.max_gap_vs_fp32,
                "met": gap <= bench.max_gap_vs_fp32,
            }
        )
    return out


def _sparse_targets(rows: list[dict], bench: BenchConfig) -> list[dict]:
    """Issue 14: at its largest H, Sparse sends >= min_ratio_sparse_vs_bf16 x fewer bytes than
    bf16 DDP, and every Sparse run's eval loss is no worse than Streaming 4-bit at the same M
    and H (same tokens) where the bench has that run."""
    out = []
    streaming = {
        (r["groups"], r["H"]): r for r in rows if r["method"] == "streaming" and not r["zstd"]
    }
    h_max = max(bench.sparse_sync_every)
    for r in rows:
        if r["method"] != "sparse":
            continue
        twin = streaming.get((r["groups"], r["H"]))
        if not r["zstd"] and twin is not None:
            out.append(
                {
                    "what": f"{r['label']} at M={r['groups']}: eval loss no worse than "
                    f"{twin['label']} ({twin['final_eval_loss']:.4f})",
                    "value": r["final_eval_loss"] - twin["final_eval_loss"],
                    "target": 0.0,
                    "met": r["final_eval_loss"] <= twin["final_eval_loss"],
                }
            )
        if r["H"] == h_max:
            out.append(
                {
                    "what": f"{r['label']} at M={r['groups']}: at least "
                    f"{bench.min_ratio_sparse_vs_bf16:.0f}x fewer bytes than bf16 DDP",
                    "value": r["ratio_vs_ddp_bf16"],
                    "target": bench.min_ratio_sparse_vs_bf16,
                    "met": r["ratio_vs_ddp_bf16"] >= bench.min_ratio_sparse_vs_bf16,
                }
            )
    return out


# ---- compute utilization against link bandwidth ------------------------------------------------


def utilization_runs(
    bench: BenchConfig, cfg: Config, base: dict, out_dir: Path, progress: bool
) -> dict:
    """(a) measured: short 2-group runs through the Ray transport's simulated link, per variant
    and bandwidth, plus one on an unlimited link that gives the compute time per step; (b) the
    analytic model of the same runs from that step time, the payload sizes and the link."""
    from streamloco.bench import utilization as U
    from streamloco.outer_optim.fragments import partition
    from streamloco.outer_optim.transport import LinkModel
    from streamloco.workers.trainer import build_model

    m = 2
    f = streaming_fragments(bench, cfg)
    h = bench.diloco_sync_every
    ladder = {  # the paper's ladder; 16-bit payloads until the last rung, as in its table
        "DP": dict(sync_every=1, fragments=1, overlap=0, codec="bf16"),
        "DiLoCo": dict(sync_every=h, fragments=1, overlap=0, codec="bf16"),
        "Streaming": dict(sync_every=h, fragments=f, overlap=0, codec="bf16"),
        "+ overlap": dict(sync_every=h, fragments=f, overlap=bench.overlap, codec="bf16"),
        "+ 4-bit": dict(sync_every=h, fragments=f, overlap=bench.overlap, codec=bench.codec),
    }
    named = [(n, p.numel()) for n, p in build_model(cfg, "cpu").named_parameters()]
    rows, steps_by = [], {}
    for name, outer in ladder.items():
        steps = bench.dp_steps if name == "DP" else bench.utilization_steps
        steps_by[name] = steps
        numels = partition(named, outer["fragments"], cfg.outer.pattern).numels
        h_, tau, codec = outer["sync_every"], outer["overlap"], outer["codec"]
        pattern = U.CommPattern.from_numels(name, numels, h_, tau, codec, cfg.outer.block_size)
        step_s = None
        for mbps in [0.0, *bench.bandwidths_mbps]:
            changes = {f"outer.{k}": v for k, v in outer.items()} | {
                "outer.zstd_level": 0,
                "outer.alpha": 0.0 if outer["fragments"] == 1 else cfg.outer.alpha,
                "train.groups": m,
                "train.batch_size": bench.global_batch // m,
                "train.steps": steps,
                "train.eval_every": 0,  # only the final evaluation, as small as it gets
                "train.eval_batches": 1,
                "inner.warmup_steps": min(cfg.inner.warmup_steps, steps),
            }
            tag = "unlimited" if not mbps else f"{mbps:g}mbps"
            if mbps:
                changes |= {
                    "transport.bandwidth_mbps": mbps,
                    "transport.latency_ms": bench.latency_ms,
                }
            run_id = f"util-{name.strip('+ ').replace(' ', '-')}-{tag}"
            run_cfg = run_config(base, bench, run_id, changes, out_dir)
            _say(f"utilization: {name} on a {tag} link, {steps} steps")
            res = _train(run_cfg, out_dir / "runs" / run_id, progress)
            blocked = statistics.fmean(g.blocked_s for g in res.groups)
            if not mbps:  # the compute time per step, for the model
                step_s = (res.wall_s - blocked) / steps
                continue
            model = U.simulate(
                pattern,
                groups=m,
                steps=steps,
                step_s=step_s,
                link=LinkModel.from_mbps(mbps, bench.latency_ms),
            )
            rows.append(
                {
                    "variant": name,
                    "mbps": mbps,
                    "measured": 1 - blocked / res.wall_s,
                    "model": model.utilization,
                    "bytes_per_group": statistics.fmean(
                        g.bytes_sent + g.bytes_received for g in res.groups
                    ),
                    "model_bytes_per_group": model.bytes_per_group,
                    "wall_s": res.wall_s,
                    "blocked_s": blocked,
                    "model_blocked_s": model.blocked_s,
                    "step_s": step_s,
                }
            )
    return {
        "groups": m,
        "latency_ms": bench.latency_ms,
        "steps": steps_by,
        "rows": rows,
    }


def extrapolation() -> dict:
    """The analytic model at the paper's 1B scale, calibrated on its DP number; also with the
    backward-pass overlap granted to DP alone, to show how much of the paper's Streaming gain
    that assumption carries."""
    from streamloco.bench import utilization as U

    rows, assumptions = U.extrapolate()
    alt, _ = U.extrapolate(hide_dp_only=True)
    size = {"size": "1B", "params": 1e9}
    return {
        "assumptions": assumptions,
        "rows": [size | r for r in rows]
        + [size | r | {"size": "1B, only DP overlaps its backward pass"} for r in alt],
    }


# ---- the whole bench -----------------------------------------------------------------------------


def machine() -> dict:
    import os
    from importlib.metadata import version

    import torch

    device = "cpu"
    if torch.cuda.is_available():
        device = f"cuda: {torch.cuda.get_device_name(0)}"
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "ray": version("ray"),
        "device": device,
    }


def run_bench(
    bench: BenchConfig,
    cfg: Config,
    base: dict,
    out_dir: Path,
    *,
    preset: str,
    command: str,
    progress: bool = True,
) -> dict:
    """Everything the bench config asks for; writes results.json and the report into out_dir."""
    from streamloco.bench import report
    from streamloco.launcher.cluster import connect, total_cpus
    from streamloco.launcher.preflight import preflight

    out_dir.mkdir(parents=True, exist_ok=True)
    preflight(cfg, out_dir / "runs", resume=False)  # data and tokenizer: fail before any run
    started = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()
    connect()  # the same Ray the driver uses: RAY_ADDRESS, a local head, or a new one
    if not bench.cpus and not bench.gpus:
        bench = replace(bench, cpus=total_cpus())
    langs: list[str] = []
    results: dict = {"version": RESULTS_VERSION, "runs": [], "targets": []}
    if bench.quality:
        rows, params = quality_runs(bench, cfg, base, out_dir, progress)
        results["runs"] = rows
        results["targets"] = targets(rows, bench)
        langs = sorted(rows[0]["eval_by_lang"])
        if bench.sweep_sizes:
            results["sweep"] = sweep_runs(bench, cfg, base, out_dir, rows, progress)
    else:
        from streamloco.workers.model import model_args, param_count

        params = param_count(model_args(cfg.model.size, cfg.model.vocab_size, cfg.model.seq_len))
    if bench.utilization:
        results["utilization"] = utilization_runs(bench, cfg, base, out_dir, progress)
    if bench.extrapolate:
        results["extrapolation"] = extrapolation()
    results["meta"] = {
        "preset": preset,
        "command": command,
        "started_at": started.isoformat(timespec="seconds"),
        "wall_s": time.perf_counter() - t0,
        "machine": machine(),
        "model": {
            "size": cfg.model.size,
            "params": params,
            "vocab_size": cfg.model.vocab_size,
            "seq_len": cfg.model.seq_len,
        },
        "steps": cfg.train.steps,
        "global_batch": bench.global_batch,
        "tokens_per_run": cfg.train.steps * bench.global_batch * cfg.model.seq_len,
        "languages": langs,
        "inner": {"lr": cfg.inner.lr, "warmup_steps": cfg.inner.warmup_steps},
        "outer": {"lr": cfg.outer.lr, "momentum": cfg.outer.momentum, "alpha": cfg.outer.alpha},
        "bench": {k: v for k, v in vars(bench).items()},
    }
    if bench.quality:  # equal wall-clock on a slow link (issue 16): derived from the runs above
        from streamloco.bench import wallclock

        results = wallclock.augment(results)
    _write_json(out_dir / "results.json", results)
    report.write_report(results, out_dir)
    return results
