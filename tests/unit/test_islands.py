"""Pinning groups to islands: the config keys and the checks made before anything starts (no Ray:
the cluster is a list of `NodeInfo`, as `ray.nodes()` would give it)."""

from __future__ import annotations

import re

import pytest

from streamloco.config import from_dict
from streamloco.launcher import islands
from streamloco.launcher.islands import NodeInfo, Placement
from streamloco.launcher.preflight import LaunchError


def _cfg(groups=2, ranks=1, cpus=1.0, placement="STRICT_PACK", **cluster):
    return from_dict(
        {
            "train": {"groups": groups, "batch_size": 4},
            "cluster": {
                "ranks_per_group": ranks,
                "cpus_per_rank": cpus,
                "placement": placement,
                **cluster,
            },
        }
    )


def _node(nid, island=None, cpus=1.0, gpus=0.0, key="island"):
    labels = {"ray.io/node-id": nid} | ({key: island} if island is not None else {})
    return NodeInfo(nid, f"10.77.0.{len(nid)}", labels, cpus, gpus)


NODES = [_node("aaaa", "north"), _node("bbbbb", "south"), _node("cc")]


def test_no_islands_means_no_pinning():
    cfg = _cfg()
    assert islands.assign(cfg, NODES) is None
    assert islands.selectors(cfg, None) is None


def test_each_group_gets_its_island_and_one_selector_per_rank():
    cfg = _cfg(islands=["south", "north"])
    assert islands.assign(cfg, NODES) == ["south", "north"]
    cfg = _cfg(ranks=2, cpus=0.5, islands=["south", "north"])
    assert islands.selectors(cfg, "south") == [{"island": "south"}, {"island": "south"}]


def test_unknown_island_lists_the_clusters_labels():
    cfg = _cfg(islands=["north", "west"])
    with pytest.raises(LaunchError) as e:
        islands.assign(cfg, NODES)
    msg = str(e.value)
    assert "no alive node has island=west" in msg
    assert "islands in the cluster: ['north', 'south']" in msg
    assert "node aaaa at 10.77.0.4 (1 CPU): island=north" in msg
    assert "node cc at 10.77.0.2 (1 CPU): no labels" in msg  # ray.io/* labels are not listed


def test_auto_takes_one_island_per_group_in_name_order():
    assert islands.assign(_cfg(islands=["auto"]), NODES) == ["north", "south"]


def test_fewer_islands_than_groups_is_an_error_unless_shared():
    with pytest.raises(LaunchError, match=r"has 2 islands \['north', 'south'\] for train.groups=3"):
        islands.assign(_cfg(groups=3, islands=["auto"]), NODES)
    two = [_node("aaaa", "north", cpus=2), _node("bbbbb", "south")]
    cfg = _cfg(groups=3, islands=["auto"], share_islands=True)
    assert islands.assign(cfg, two) == ["north", "south", "north"]
    # The same rule at load time for an explicit list: short, or an island named twice.
    for isl in (["north", "south"], ["north", "north", "south"]):
        with pytest.raises(ValueError, match=r"cluster.islands: .* cluster.share_islands=true"):
            _cfg(groups=3, islands=isl)
    cfg = _cfg(groups=3, islands=["north", "south"], share_islands=True)
    assert islands.assign(cfg, two) == ["north", "south", "north"]


def test_auto_without_any_labelled_node_says_how_to_label():
    with pytest.raises(LaunchError, match="ray start --labels island=NAME"):
        islands.assign(_cfg(islands=["auto"]), [_node("cc")])


def test_an_island_too_small_for_its_groups_fails_before_reserving():
    cfg = _cfg(groups=3, islands=["north", "north", "south"], share_islands=True)
    with pytest.raises(LaunchError, match=r"island north holds 2 group.* but its nodes fit 1"):
        islands.assign(cfg, NODES)
    # STRICT_PACK: two 1-CPU nodes cannot hold one 2-rank group; PACK may span them.
    split = [_node("aaaa", "north"), _node("aaab", "north"), _node("bbbbb", "south", cpus=2)]
    cfg = _cfg(ranks=2, islands=["north", "south"])
    with pytest.raises(LaunchError, match=r"island north .* fit 0"):
        islands.assign(cfg, split)
    cfg = _cfg(ranks=2, islands=["north", "south"], placement="PACK")
    assert islands.assign(cfg, split) == ["north", "south"]
    # Fractional CPUs add up; GPUs count when ranks ask for them.
    assert islands.assign(_cfg(groups=4, cpus=0.25, islands=["auto"], share_islands=True), NODES)
    gpu = _cfg(islands=["north", "south"], gpus_per_rank=1.0)
    with pytest.raises(LaunchError, match="1 CPU \\+ 1 GPU"):
        islands.assign(gpu, NODES)


def test_custom_label_key():
    nodes = [
        _node("aaaa", "x", key="example.org/site"),
        _node("bbbbb", "y", key="example.org/site"),
    ]
    cfg = _cfg(islands=["y", "x"], island_label="example.org/site")
    assert islands.assign(cfg, nodes) == ["y", "x"]
    assert islands.selectors(cfg, "x") == [{"example.org/site": "x"}]


@pytest.mark.parametrize(
    "cluster, message",
    [
        ({"islands": ["north", "bad name"]}, "cluster.islands[1]: 'bad name' is not a Ray label"),
        ({"islands": ["a", "b", "c"]}, "cluster.islands: lists 3 islands for train.groups=2"),
        ({"islands": ["b", "auto"]}, 'cluster.islands[1]: "auto" stands alone'),
        ({"island_label": "-x"}, "cluster.island_label: '-x' is not a Ray label key"),
        ({"island_label": "a/b/c"}, "cluster.island_label: 'a/b/c' is not a Ray label key"),
    ],
)
def test_bad_island_config_names_the_key(cluster, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        _cfg(**cluster)


def test_nodes_from_ray_skip_dead_ones_and_read_labels():
    raw = [
        {
            "NodeID": "ff" * 28,
            "Alive": True,
            "NodeManagerAddress": "10.77.0.2",
            "Resources": {"CPU": 1.0, "memory": 1e9},
            "Labels": {"island": "b", "ray.io/node-id": "ff" * 28},
        },
        {"NodeID": "ee" * 28, "Alive": False, "NodeManagerAddress": "10.77.0.3"},
    ]
    (node,) = islands.alive_nodes(raw)
    assert (node.address, node.labels["island"], node.cpus, node.gpus) == ("10.77.0.2", "b", 1, 0)


def test_placements_are_checked_reported_and_recorded():
    good = [
        Placement(0, 0, "a" * 56, "10.77.0.1", "north"),
        Placement(1, 0, "b" * 56, "10.77.0.2", "south"),
    ]
    islands.check_placements(good, ["north", "south"])
    islands.check_placements(good, None)
    with pytest.raises(
        LaunchError, match=r"group 1 rank 0 on node bbbbbbbbbbbb .*\(wanted north\)"
    ):
        islands.check_placements(good, ["north", "north"])
    assert islands.report(good) == [
        "group 0 (1 rank): node aaaaaaaaaaaa (10.77.0.1), island north",
        "group 1 (1 rank): node bbbbbbbbbbbb (10.77.0.2), island south",
    ]
    two = [Placement(0, r, "a" * 56, "10.77.0.1", None) for r in range(2)]
    assert islands.report(two) == [
        "group 0 (2 ranks): node aaaaaaaaaaaa (10.77.0.1), no island label"
    ]
    rec = good[1].record(step=40)
    assert rec == {
        "record": "placement",
        "step": 40,
        "group": 1,
        "rank": 0,
        "node_id": "b" * 56,
        "address": "10.77.0.2",
        "island": "south",
    }


def test_state_digest_is_equal_exactly_when_the_states_are_bit_identical():
    import torch

    g = torch.Generator().manual_seed(0)
    a = {"w": torch.randn(3, 4, generator=g), "b": torch.zeros(4), "s": torch.tensor(2.0)}
    same = {k: v.clone() for k, v in reversed(a.items())}  # order of the dict does not matter
    assert islands.state_digest(a) == islands.state_digest(same)
    for name, changed in [
        ("one bit", {**a, "w": a["w"].view(torch.int32).add(1).view(torch.float32)}),
        ("-0.0", {**a, "b": -a["b"]}),  # torch.equal would call these equal; the bits differ
        ("dtype", {**a, "b": a["b"].double()}),
        ("shape", {**a, "w": a["w"].reshape(4, 3)}),
        ("name", {"w2": a["w"], "b": a["b"], "s": a["s"]}),
    ]:
        assert islands.state_digest(changed) != islands.state_digest(a), name
