"""The bench report: results.json (version 1) -> results.md + PNG plots, validated, atomic."""

from __future__ import annotations

import copy
import json
import re
import struct

import pytest

from streamloco.bench.formatting import signed_pct
from streamloco.bench.markdown import markdown
from streamloco.bench.report import write_report
from streamloco.bench.schema import read_results, validate

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LANGS = ["mix", "nah", "nya", "oto", "spa"]
PARAMS = 1_430_000
STEPS = 600
TOKENS = 2_457_600


def ddp_step_bytes(m: int, bits: int) -> float:
    """Per-group bytes of one ring all-reduce step (what results.ddp_bytes_per_group computes)."""
    return 2 * 2 * (m - 1) / m * PARAMS * bits / 8


def history(final: float, total_bytes: float | None) -> list[list]:
    """Eval every 150 steps; the loss falls from ln(8000) towards `final`."""
    out = []
    for step in range(0, STEPS + 1, 150):
        frac = step / STEPS
        loss = 8.987 - (8.987 - final) * frac**0.5
        nbytes = None if total_bytes is None else total_bytes * frac
        out.append([step, TOKENS * step // STEPS, nbytes, round(loss, 4)])
    return out


def by_lang(final: float) -> dict[str, float]:
    offsets = [-0.6, 0.8, 0.1, -1.0, 0.7]
    return {lang: round(final + d, 4) for lang, d in zip(LANGS, offsets, strict=True)}


def run(rid, label, method, groups, final, nbytes, **kw) -> dict:
    ddp_loss = 5.0
    r = {
        "id": rid,
        "label": label,
        "method": method,
        "groups": groups,
        "ranks_per_group": 1,
        "baseline_for": [],
        "H": 30,
        "F": 2,
        "tau": 1,
        "codec": "e3m0",
        "zstd": False,
        "derived_from": None,
        "final_eval_loss": final,
        "eval_by_lang": by_lang(final),
        "eval_history": history(final, nbytes),
        "bytes_per_group": nbytes,
        "peak_sync_bytes": None if nbytes is None else nbytes / 10,
        "ddp_bytes_per_group": None,
        "ratio_vs_ddp_bf16": None,
        "ratio_vs_ddp_fp32": None,
        "loss_gap_vs_ddp": None,
        "wall_s": 330.0,
        "tokens": TOKENS,
        "tokens_per_s": TOKENS / 330.0,
        "globals_identical": None,
    }
    if method != "ddp":
        bf16, fp32 = ddp_step_bytes(groups, 16) * STEPS, ddp_step_bytes(groups, 32) * STEPS
        r |= {
            "ddp_bytes_per_group": {"bf16": bf16, "fp32": fp32},
            "ratio_vs_ddp_bf16": bf16 / nbytes,
            "ratio_vs_ddp_fp32": fp32 / nbytes,
            "loss_gap_vs_ddp": (final - ddp_loss) / ddp_loss,
            "globals_identical": True,
        }
    r |= kw
    return r


@pytest.fixture
def results() -> dict:
    ddp = run(
        "ddp",
        "DDP",
        "ddp",
        1,
        5.0,
        None,
        baseline_for=[2, 4],
        H=None,
        F=None,
        tau=None,
        codec=None,
        zstd=None,
        wall_s=300.0,
        tokens_per_s=8192.0,
        ddp_bytes_per_step={
            str(m): {"bf16": ddp_step_bytes(m, 16), "fp32": ddp_step_bytes(m, 32)} for m in (2, 4)
        },
    )
    return {
        "version": 1,
        "meta": {
            "preset": "default",
            "command": "streamloco bench --preset default",
            "started_at": "2026-11-28T14:00:00Z",
            "wall_s": 3100.0,
            "machine": {
                "cpus": 2,
                "platform": "Linux-6.8-x86_64",
                "python": "3.11.9",
                "torch": "2.13.0",
                "ray": "2.60.0",
                "device": "cpu",
            },
            "model": {"size": "tiny", "params": PARAMS, "vocab_size": 8000, "seq_len": 128},
            "steps": STEPS,
            "global_batch": 32,
            "tokens_per_run": TOKENS,
            "languages": LANGS,
            "inner": {"lr": 0.003, "warmup_steps": 30},
            "outer": {"lr": 0.7, "momentum": 0.9, "alpha": 0.5},
        },
        "runs": [
            ddp,
            # 3.432e9 / 8.58e6 = exactly 400x fewer than DDP bf16, 800x than fp32
            run("m2-diloco-h30", "DiLoCo H=30 fp32", "diloco", 2, 5.06, 8.58e6, F=1),
            run(
                "m2-streaming-h30-zstd",
                "Streaming H=30 4-bit + zstd",
                "streaming",
                2,
                5.04,
                1.3e7,
                zstd=True,
            ),
            run(
                "m2-streaming-h30",
                "Streaming H=30 4-bit",
                "streaming",
                2,
                5.04,
                2.145e7,  # 160x / 320x
                derived_from="m2-streaming-h30-zstd",
            ),
            run("m4-streaming-h100", "Streaming H=100 4-bit", "streaming", 4, 4.985, 1.0e7, H=100),
        ],
        "targets": [
            {
                "what": "Streaming 4-bit H=30 within 1% of DDP at M=2",
                "value": 0.008,
                "target": 0.01,
                "met": True,
            },
            {
                "what": "Streaming at least 300x fewer bytes",
                "value": 160.0,
                "target": 300.0,
                "met": False,
            },
        ],
        "utilization": {
            "groups": 2,
            "latency_ms": 20,
            "step_s": 0.27,
            "steps": {"DP": 20, "DiLoCo": 60},
            "rows": [
                {
                    "variant": v,
                    "mbps": b,
                    "measured": meas,
                    "model": mod,
                    "bytes_per_group": 1e6,
                    "wall_s": 10.0,
                    "blocked_s": 1.0,
                }
                for v, b, meas, mod in [
                    ("DP", 25.0, 0.041, 0.043),
                    ("DP", 250.0, 0.30, 0.31),
                    ("DP", 1000.0, None, 0.62),
                    ("DiLoCo", 25.0, 0.71, 0.70),
                    ("DiLoCo", 250.0, 0.95, 0.96),
                    ("DiLoCo", 1000.0, None, 0.99),
                    ("Streaming", 25.0, 0.88, 0.90),
                    ("Streaming", 250.0, 0.985, 0.99),
                    ("Streaming", 1000.0, None, 0.997),
                ]
            ],
        },
        "extrapolation": {
            "assumptions": {"collective": "ring", "H": 100, "target utilization": "95%"},
            "rows": [
                {
                    "size": "1B",
                    "params": 1e9,
                    "variant": "DP",
                    "gbps_model": 222.0,
                    "gbps_paper": 222.0,
                },
                {
                    "size": "1B",
                    "params": 1e9,
                    "variant": "Streaming",
                    "gbps_model": 1.1,
                    "gbps_paper": 1.0,
                },
                {
                    "size": "10B",
                    "params": 1e10,
                    "variant": "Streaming",
                    "gbps_model": 12.5,
                    "gbps_paper": None,
                },
            ],
        },
    }


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def table_row(md: str, label: str) -> list[str]:
    """The cells of the first markdown table row whose first cell is `label`."""
    for line in md.splitlines():
        if line.startswith("| "):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if cells[0] == label:
                return cells
    raise AssertionError(f"no table row {label!r}")


def test_write_report_writes_the_markdown_and_readable_plots_and_nothing_else(results, tmp_path):
    out = tmp_path / "bench"
    paths = write_report(results, out)
    names = [
        "results.md",
        "loss_vs_tokens.png",
        "loss_vs_bytes.png",
        "loss_vs_wallclock.png",
        "utilization.png",
    ]
    assert [p.name for p in paths] == names
    assert sorted(p.name for p in out.iterdir()) == sorted(names)  # no temporary files left
    for p in paths[1:]:
        w, h = png_size(p)
        assert 400 <= w <= 3000 and 300 <= h <= 1500, (p.name, w, h)
    # two Ms side by side: the loss plots are wider than tall
    w, h = png_size(out / "loss_vs_tokens.png")
    assert w > 1.5 * h
    import matplotlib.image

    img = matplotlib.image.imread(out / "loss_vs_bytes.png")
    assert img.ndim == 3 and img.std() > 0.01  # decodes, and is not a blank canvas

    md = (out / "results.md").read_text()
    for name in names[1:]:
        assert f"]({name})" in md  # embedded with relative links
    assert md == markdown(results, {n.removesuffix(".png"): n for n in names[1:]})


def test_markdown_tables_hold_labels_ratios_languages_and_signed_gaps(results):
    md = markdown(results)
    assert md.startswith("# streamloco bench: `default` preset")
    assert "`streamloco bench --preset default`" in md and "51m40s" in md
    assert "2,457,600 tokens" in md and "32 sequences" in md and "params 1,430,000" in md
    for r in results["runs"]:
        assert r["label"] in md
    assert md.index("### M = 2 worker groups") < md.index("### M = 4 worker groups")

    header = table_row(md, "run")
    assert header[1:3] == ["eval loss", "vs DDP"]
    assert header[3:8] == LANGS  # one column per language, in meta order

    diloco = table_row(md, "DiLoCo H=30 fp32")
    assert diloco[1] == "5.0600"
    assert diloco[2] == "+1.20%"
    assert diloco[3:8] == ["4.460", "5.860", "5.160", "4.060", "5.760"]
    assert diloco[8:12] == ["8.58 MB", "400x", "800x", "858 KB"]
    assert diloco[12:] == ["5m30s", "7,447"]

    m4 = table_row(md, "Streaming H=100 4-bit")
    assert m4[2] == "-0.30%"  # below DDP: a negative, signed gap
    assert m4[9:11] == ["515x", "1,030x"]  # 5.15GB (M=4 ring bf16) / 10MB

    # DDP leads both tables with its per-M all-reduce bytes: 5.72MB/step x 600 at M=2
    ddp_rows = [
        [c.strip() for c in line.strip("|").split("|")]
        for line in md.splitlines()
        if line.startswith("| **DDP**")
    ]
    assert len(ddp_rows) == 2
    assert ddp_rows[0][2] == "baseline"
    assert ddp_rows[0][8:12] == ["3.43 GB", "1x", "2x", "5.72 MB"]
    assert ddp_rows[1][8] == "5.15 GB" and ddp_rows[1][11] == "8.58 MB"

    # the derived row is marked and footnoted with the run its loss comes from
    derived = table_row(md, "Streaming H=30 4-bit†")
    assert derived[9:11] == ["160x", "320x"]
    assert re.search(r"^† Streaming H=30 4-bit: .*Streaming H=30 4-bit \+ zstd", md, re.M)


def test_targets_utilization_and_extrapolation_sections(results):
    md = markdown(results)
    assert "- ✅ met: Streaming 4-bit H=30 within 1% of DDP at M=2 (value 0.008, target 0.01)" in md
    assert "- ❌ missed: Streaming at least 300x fewer bytes (value 160, target 300)" in md

    header = table_row(md, "variant")
    assert header[1:4] == ["s/step", "25 Mbit/s measured", "25 Mbit/s model"]
    assert header[-1] == "1,000 Mbit/s model"
    assert table_row(md, "DP")[2:] == ["4.1%", "4.3%", "30.0%", "31.0%", "—", "62.0%"]
    assert table_row(md, "Streaming")[4:6] == ["98.5%", "99.0%"]
    assert "20 ms latency" in md

    assert "- collective: ring" in md and "- H: 100" in md
    assert [c for c in table_row(md, "10B")] == ["10B", "Streaming", "12.5", "—", "—"]
    assert table_row(md, "1B")[2:] == ["222", "222", "1.00"]


def test_optional_sections_are_left_out_when_absent(results, tmp_path):
    out = tmp_path / "bench"
    write_report(results, out)  # an earlier report with a utilization plot
    del results["extrapolation"], results["targets"]
    results["utilization"] = {"rows": []}
    paths = write_report(results, out)
    assert sorted(p.name for p in out.iterdir()) == [
        "loss_vs_bytes.png",
        "loss_vs_tokens.png",
        "loss_vs_wallclock.png",  # derived from the runs: always there
        "results.md",
    ]
    assert [p.name for p in paths] == [
        "results.md",
        "loss_vs_tokens.png",
        "loss_vs_bytes.png",
        "loss_vs_wallclock.png",
    ]
    md = (out / "results.md").read_text()
    for gone in ("## Compute utilization", "## Extrapolation", "utilization.png", "300x fewer"):
        assert gone not in md
    # the targets left are the equal-wall-clock ones, derived from the runs
    assert "## Targets" in md and "at equal wall-clock" in md
    del results["utilization"]
    assert "## Compute utilization" not in markdown(results)


def test_loss_plots_skip_or_draw_derived_rows(results, monkeypatch):
    """loss_vs_tokens leaves the derived row out, loss_vs_bytes draws it; DDP is per-step bf16."""
    from matplotlib.axes import Axes

    from streamloco.bench import plots

    drawn: list[tuple[str, list, list]] = []
    real_plot = Axes.plot

    def spy(self, x, y, *args, **kw):
        drawn.append((kw.get("label"), list(x), list(y)))
        return real_plot(self, x, y, *args, **kw)

    monkeypatch.setattr(Axes, "plot", spy)
    plots.plot_loss_vs_tokens(results)
    labels = [d[0] for d in drawn]
    assert "Streaming H=30 4-bit" not in labels and "Streaming H=30 4-bit + zstd" in labels
    assert labels.count("DDP") == 2  # one subplot per M

    drawn.clear()
    plots.plot_loss_vs_bytes(results)
    by_label = {d[0]: d for d in drawn}
    assert "Streaming H=30 4-bit †" in by_label
    ddp = [d for d in drawn if d[0] == "DDP (bf16 all-reduce)"]
    assert len(ddp) == 2
    # step 0 (0 bytes) cannot sit on a log axis; step 600 at M=2 is 600 x 5.72MB
    assert ddp[0][1][-1] == pytest.approx(STEPS * ddp_step_bytes(2, 16))
    assert ddp[1][1][-1] == pytest.approx(STEPS * ddp_step_bytes(4, 16))
    assert min(ddp[0][1]) > 0


def test_validate_names_the_bad_key_path(results):
    validate(results)  # the fixture is valid

    bad = copy.deepcopy(results)
    del bad["runs"][1]["final_eval_loss"]
    with pytest.raises(ValueError, match=r"runs\[1\]\.final_eval_loss: missing"):
        validate(bad)

    bad = copy.deepcopy(results)
    bad["version"] = 2
    with pytest.raises(ValueError, match=r"version: expected 1, got 2"):
        validate(bad)
    del bad["version"]
    with pytest.raises(ValueError, match=r"version: missing"):
        validate(bad)

    bad = copy.deepcopy(results)
    bad["runs"][2]["eval_history"][1] = [150, 614400, 3.25e6]  # truncated point
    bad["runs"][0]["ddp_bytes_per_step"].pop("4")
    bad["runs"][3]["derived_from"] = "nope"
    bad["utilization"]["rows"][0]["mbps"] = "fast"
    bad["meta"]["steps"] = None
    with pytest.raises(ValueError) as e:
        validate(bad)
    msg = str(e.value)
    for path in (
        r"runs[2].eval_history[1]",
        r'runs[0].ddp_bytes_per_step["4"]: missing',
        r"runs[3].derived_from: names no run",
        r"utilization.rows[0].mbps: expected a number",
        r"meta.steps: expected an integer, got null",
    ):
        assert path in msg, (path, msg)

    bad = copy.deepcopy(results)
    bad["runs"] = bad["runs"][:1]
    bad["runs"][0]["baseline_for"] = []
    with pytest.raises(ValueError, match=r"runs: nothing to compare"):
        validate(bad)

    bad = copy.deepcopy(results)
    bad["runs"][4]["final_eval_loss"] = True  # a bool is not a loss
    with pytest.raises(ValueError, match=r"runs\[4\]\.final_eval_loss: expected a number"):
        validate(bad)


def test_invalid_results_write_nothing(results, tmp_path):
    del results["runs"][1]["final_eval_loss"]
    with pytest.raises(ValueError, match=r"runs\[1\]\.final_eval_loss"):
        write_report(results, tmp_path / "bench")
    assert not (tmp_path / "bench").exists()


def test_read_results_reports_truncated_and_invalid_files(results, tmp_path):
    path = tmp_path / "results.json"
    text = json.dumps(results)
    path.write_text(text)
    assert read_results(path) == results
    path.write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match=r"results\.json: not valid JSON \(truncated"):
        read_results(path)
    del results["meta"]["languages"]
    path.write_text(json.dumps(results))
    with pytest.raises(ValueError, match=r"results\.json: .*meta\.languages: missing"):
        read_results(path)


def test_signed_pct():
    assert signed_pct(0.008) == "+0.80%"
    assert signed_pct(-0.0031) == "-0.31%"
    assert signed_pct(None) == "—"


def test_report_module_keeps_the_names_the_cli_and_the_bench_runner_call():
    from streamloco.bench import report

    assert report.markdown is markdown and report.read_results is read_results
    assert report.write_report is write_report


def test_language_cells_show_bits_per_byte_where_measured(results):
    r = next(x for x in results["runs"] if x["label"] == "DiLoCo H=30 fp32")
    r["eval_bpb_by_lang"] = {lang: 1.5 + i / 8 for i, lang in enumerate(LANGS)}
    validate(results)
    row = table_row(markdown(results), "DiLoCo H=30 fp32")
    assert row[3:8] == ["4.460 / 1.500", "5.860 / 1.625", "5.160 / 1.750", "4.060 / 1.875",
                        "5.760 / 2.000"]  # fmt: skip
    assert " / " not in table_row(markdown(results), "Streaming H=100 4-bit")[3]  # none measured
    r["eval_bpb_by_lang"] = {LANGS[0]: "x"}
    with pytest.raises(ValueError, match="eval_bpb_by_lang"):
        validate(results)


def test_size_sweep_section_and_plot(results, tmp_path):
    results["sweep"] = {
        "groups": 2,
        "H": 30,
        "tokens": 4_608_000,
        "points": [
            {
                "size": s,
                "params": p,
                "tokens_per_param": 4_608_000 / p,
                "ddp_loss": d,
                "streaming_loss": st,
                "gap": st / d - 1,
                "streaming_label": "Streaming H=30 4-bit",
            }
            for s, p, d, st in (("nano", 209_328, 4.5, 4.59), ("pico", 119_072, 4.9, 5.0))
        ],
    }
    out = tmp_path / "bench"
    names = [p.name for p in write_report(results, out)]
    assert "sweep.png" in names
    w, h = png_size(out / "sweep.png")
    assert 400 <= w <= 3000 and 300 <= h <= 1500
    md = (out / "results.md").read_text()
    assert "## The gap against model size" in md and "](sweep.png)" in md
    assert table_row(md, "nano")[1:] == ["209,328", "22.0", "4.5000", "4.5900", "+2.00%"]
    assert table_row(md, "pico")[5] == "+2.04%"
    results["sweep"]["points"][0]["params"] = -1
    with pytest.raises(ValueError, match=r"sweep\.points\[0\]\.params"):
        write_report(results, out)
    del results["sweep"]
    write_report(results, out)
    assert not (out / "sweep.png").exists()  # a stale plot goes with its section
