"""Config tree: shipped configs load, overrides, and errors that name the key and the reason."""

import pytest

from helpers import ROOT
from streamloco.config import Config, explain, from_dict, load_config

# training configs (configs/bench/ holds bench files: tests/test_bench.py loads those)
CONFIGS = sorted((ROOT / "configs").glob("*.toml"))


def test_there_are_shipped_configs():
    assert {"smoke.toml", "demo.toml", "synthetic.toml", "diloco.toml"} <= {p.name for p in CONFIGS}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_round_trips(path, tmp_path):
    cfg = load_config(path)
    again = tmp_path / "again.toml"
    again.write_text(cfg.to_toml())
    assert load_config(again) == cfg


def test_overrides_are_typed_and_win_over_the_file():
    cfg = load_config(
        CONFIGS[0],
        [
            "--outer.fragments=3",
            "--outer.sync_every=30",
            "--outer.codec=int8",
            "--outer.lr=1",
            "--run.tensorboard=false",
        ],
    )
    assert cfg.outer.fragments == 3 and cfg.outer.codec == "int8"
    assert cfg.outer.lr == 1.0 and isinstance(cfg.outer.lr, float)
    assert cfg.run.tensorboard is False


def test_defaults_are_valid():
    assert load_config() == Config()
    assert "outer.overlap" in explain()


@pytest.mark.parametrize(
    "data,key,why",
    [
        ({"outer": {"fragmets": 2}}, "outer.fragmets", "did you mean 'fragments'"),
        ({"outr": {"fragments": 2}}, "outr", "did you mean 'outer'"),
        ({"outer": {"fragments": "2"}}, "outer.fragments", "expected int, got str"),
        ({"outer": {"fragments": 2.0}}, "outer.fragments", "expected int, got float"),
        ({"run": {"tensorboard": 1}}, "run.tensorboard", "expected bool"),
        ({"outer": {"sync_every": 100, "fragments": 3}}, "outer.sync_every", "multiple of"),
        ({"outer": {"sync_every": 100, "fragments": 4, "overlap": 25}}, "outer.overlap", "H/F=25"),
        ({"outer": {"alpha": 1.5}}, "outer.alpha", r"\[0, 1\]"),
        ({"outer": {"momentum": 1.0}}, "outer.momentum", r"\[0, 1\)"),
        ({"outer": {"codec": "int3"}}, "outer.codec", "not one of"),
        ({"outer": {"codec": "e3m0", "block_size": 7}}, "outer.block_size", "even"),
        ({"outer": {"zstd_level": 23}}, "outer.zstd_level", "0..22"),
        (
            {"train": {"batch_size": 9}, "cluster": {"ranks_per_group": 2}},
            "train.batch_size",
            "split",
        ),
        ({"cluster": {"backend": "nccl"}}, "cluster.backend", "nccl needs GPUs"),
        ({"outer": {"pattern": "random"}}, "outer.pattern", "not one of"),
        ({"outer": {"fragments": 7, "sync_every": 70}}, "outer.fragments", "exceeds the 6"),
        ({"model": {"size": "7b"}}, "model.size", "not one of"),
        ({"inner": {"warmup_steps": 1000}}, "inner.warmup_steps", "train.steps"),
        ({"train": {"groups": 0}}, "train.groups", ">= 1"),
        ({"run": {"name": "../x"}}, "run.name", "plain directory name"),
    ],
)
def test_bad_values_name_key_and_reason(data, key, why):
    with pytest.raises(ValueError, match=why) as err:
        from_dict(data)
    assert key in str(err.value)


def test_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[outer]\nfragments = = 2\n")
    with pytest.raises(ValueError, match=r"bad.toml: invalid TOML"):
        load_config(bad)
    with pytest.raises(ValueError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    bad.write_text("[outer]\nalpha = 2.0\n")
    with pytest.raises(ValueError, match=r"bad.toml: outer.alpha"):
        load_config(bad)


def test_override_errors_name_the_override_not_the_file(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text("[outer]\nfragments = 2\n")
    for arg, why in [
        ("--outer.fragmets=2", "unknown key 'outer.fragmets' (did you mean 'fragments'?)"),
        ("--outr.fragments=2", "unknown section 'outr' (did you mean 'outer'?)"),
        ("--outer.fragments=two", "outer.fragments: expected int, got str 'two'"),
        ("--outer.pattern=random", "outer.pattern: 'random' is not one of"),
    ]:
        with pytest.raises(ValueError) as err:
            load_config(good, [arg])
        msg = str(err.value)
        assert msg.startswith(f"{arg}: {why}"), msg
        assert "good.toml" not in msg, msg  # the file is fine: do not send the user there


def test_file_errors_keep_the_file_even_with_overrides(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[outer]\nfragmets = 2\n")
    with pytest.raises(ValueError) as err:
        load_config(bad, ["--outer.fragments=2"])  # the override is fine
    msg = str(err.value)
    assert msg.startswith(f"{bad}: unknown key 'outer.fragmets'"), msg
    assert "--outer" not in msg, msg


def test_cross_field_errors_name_the_file_and_the_overrides(tmp_path):
    # sync_every comes from the file, overlap from the command line: both are named.
    path = tmp_path / "h.toml"
    path.write_text("[outer]\nsync_every = 100\nfragments = 4\n")
    with pytest.raises(ValueError) as err:
        load_config(path, ["--outer.overlap=26", "--run.name=x"])
    assert str(err.value).startswith(
        f"{path} with --outer.overlap=26 --run.name=x: outer.overlap:"
    ), err.value
    # Without a file, the overrides alone are the source.
    with pytest.raises(ValueError) as err:
        load_config(None, ["--train.groups=0"])
    assert str(err.value).startswith("--train.groups=0: train.groups: must be >= 1"), err.value


def test_malformed_override_is_rejected():
    with pytest.raises(ValueError, match=r"--section.key=value"):
        load_config(None, ["--fragments=2"])


def test_odd_block_sizes_are_refused_only_where_the_codec_needs_even_ones():
    # the rule lives in the codec (two 4-bit codes per byte); config asks it, nothing more
    assert from_dict({"outer": {"codec": "int8", "block_size": 7}}).outer.block_size == 7
    with pytest.raises(ValueError, match=r"outer\.block_size: codec int4"):
        from_dict({"outer": {"codec": "int4", "block_size": 7}})
