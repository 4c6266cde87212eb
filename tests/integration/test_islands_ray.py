"""Groups pinned to islands on a real local Ray (one node, labelled island=local by the `local_ray`
fixture): the check before anything starts, and where the driver says each group runs.
Several nodes on rate-limited links: test_islands_netns.py."""

from __future__ import annotations

import pytest

from helpers import ROOT
from streamloco.config import load_config
from streamloco.launcher.driver import train
from streamloco.launcher.preflight import LaunchError
from streamloco.records import read_records

pytestmark = pytest.mark.ray


def _cfg(tmp_path, *overrides):
    return load_config(
        ROOT / "configs" / "smoke.toml",
        [f"--run.out_dir={tmp_path}", "--train.steps=12", "--train.eval_every=0", *overrides],
    )


def test_groups_pinned_to_a_labelled_node_report_where_they_run(local_ray, tmp_path, capsys):
    cfg = _cfg(tmp_path, "--cluster.islands=['local']", "--train.groups=1")
    result = train(cfg, tmp_path / "pinned", progress=False)
    assert result.groups[0].train_loss
    node = local_ray.get_runtime_context().get_node_id()
    out = capsys.readouterr().out
    assert f"streamloco: group 0 (1 rank): node {node[:12]} (" in out, out
    assert "), island local\n" in out, out
    (rec,) = [
        r for r in read_records(tmp_path / "pinned" / "records.jsonl") if r["record"] == "placement"
    ]
    assert (rec["group"], rec["rank"], rec["node_id"], rec["island"]) == (0, 0, node, "local")


def test_an_island_no_node_has_fails_before_any_actor_with_the_labels_listed(local_ray, tmp_path):
    cfg = _cfg(tmp_path, "--cluster.islands=['local', 'far']")
    actors_before = len(local_ray.util.list_named_actors(all_namespaces=True))
    with pytest.raises(LaunchError) as e:
        train(cfg, tmp_path / "far", progress=False)
    msg = str(e.value)
    assert "cluster.islands: no alive node has island=far" in msg, msg
    assert "islands in the cluster: ['local']" in msg and "island=local" in msg, msg
    assert len(local_ray.util.list_named_actors(all_namespaces=True)) == actors_before
    # Two groups on the one island: refused unless allowed, then both run there.
    with pytest.raises(
        LaunchError, match=r"the cluster has 1 islands \['local'\] for train.groups=2"
    ):
        train(_cfg(tmp_path, "--cluster.islands=['auto']"), tmp_path / "auto", progress=False)
