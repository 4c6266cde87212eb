"""Islands for real: `scripts/islands.sh` brings up Ray nodes in network namespaces joined by
rate-limited veth links, and `streamloco train` runs with its groups pinned to them.

Checked: each group runs on its island's node (records.jsonl and the console), the groups end
with identical globals, and the bytes the kernel counted on an island's link (veth counters)
against the engine's own counts (records.jsonl). The fixed costs of a run (initial broadcast,
checkpoint parts, the final globals, Ray's start-up chatter) do not depend on the number of
rounds, so two runs of different lengths are compared: the kernel's *extra* bytes per extra engine
byte is the transport's overhead (TCP/IP headers, Ray's object transfer protocol, control traffic
during the extra time). It must be at least 1 (the kernel cannot count fewer bytes than the
payloads) and at most MAX_OVERHEAD.

Needs root, iproute2 and tc (skipped otherwise, with the reason). Every namespace, veth, qdisc,
Ray process and temp dir is removed afterwards, also when a test fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT
from streamloco.records import read_records

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(1200)]

SCRIPT = ROOT / "scripts" / "islands.sh"
VENV_BIN = Path(sys.executable).parent
UP_TIMEOUT_S = 300  # `up` waits this long for the nodes to join (measured: ~11 s idle, 2 cores)
TRAIN_TIMEOUT_S = 400
MAX_OVERHEAD = 1.5  # kernel bytes per engine byte, marginal (see the module docstring)


def _skip_reason() -> str | None:
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "network namespaces and tc need root"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"'{tool}' (iproute2) is not installed"
    probe = f"slprobe{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return f"cannot create a network namespace: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _env() -> dict[str, str]:
    # No RAY_* of this process (the local_ray fixture's ray.init may have set some): the script
    # gives every Ray process and client the islands' own address and token.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["ISLANDS_VENV_BIN"] = str(VENV_BIN)
    return env


def _script(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(SCRIPT), *args], env=_env(), capture_output=True, text=True, timeout=timeout
    )


class Islands:
    def __init__(self, n: int, rate: str, tag: str) -> None:
        self.prefix = f"{tag}{os.getpid() % 100000}"  # one per set: two may be up at once
        self.n, self.rate = n, rate

    def up(self) -> str:
        args = ["up", str(self.n), "--rate", self.rate, "--prefix", self.prefix]
        r = _script(*args, "--timeout", str(UP_TIMEOUT_S), timeout=UP_TIMEOUT_S + 120)
        if r.returncode != 0:
            pytest.fail(f"islands.sh up failed:\n{r.stdout}\n{r.stderr}")
        return r.stdout

    def down(self) -> None:
        r = _script("down", "--prefix", self.prefix, timeout=120)
        assert r.returncode == 0, r.stderr
        left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert f"{self.prefix}-" not in left, left
        assert not Path(f"/tmp/{self.prefix}").exists()

    def counters(self) -> dict[str, tuple[int, int]]:
        r = _script("counters", "--prefix", self.prefix, timeout=60)
        assert r.returncode == 0, r.stderr
        out = {}
        for line in r.stdout.split("\n"):
            if line:
                name, sent, received = line.split()
                out[name] = (int(sent.split("=")[1]), int(received.split("=")[1]))
        return out

    def train(self, run_dir: Path, *overrides: str) -> str:
        cmd = [
            "exec", "a", "--prefix", self.prefix, "--",
            str(VENV_BIN / "streamloco"), "train",
            "--config", str(ROOT / "configs" / "synthetic.toml"),
            f"--run.out_dir={run_dir.parent}", f"--run.name={run_dir.name}",
            "--train.eval_every=0", "--train.log_every=10", "--run.tensorboard=false",
            "--outer.sync_every=30", "--cluster.start_timeout_s=120", "--transport.timeout_s=120",
            *overrides,
        ]  # fmt: skip
        r = _script(*cmd, timeout=TRAIN_TIMEOUT_S)
        log = r.stdout + r.stderr
        assert r.returncode == 0, log
        return log


@pytest.fixture(scope="module")
def two_islands():
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    isl = Islands(2, "25mbit", "t")
    try:
        isl.up()
        yield isl
    finally:
        isl.down()


def _engine_bytes(run_dir: Path, group: int) -> int:
    totals = [r for r in read_records(run_dir / "records.jsonl") if r["record"] == "totals"]
    last = max((r for r in totals if r["group"] == group), key=lambda r: r["step"])
    return last["bytes_sent"] + last["bytes_received"]


def _placements(run_dir: Path) -> dict[int, dict]:
    recs = read_records(run_dir / "records.jsonl")
    return {r["group"]: r for r in recs if r["record"] == "placement"}


def test_two_islands_pinned_groups_identical_globals_and_kernel_bytes(two_islands, tmp_path):
    runs = {}
    for steps in (90, 180):
        run_dir = tmp_path / f"s{steps}"
        before = two_islands.counters()
        # Group 0 on island b, group 1 on a: the reverse of Ray's node order, so pinning shows.
        log = two_islands.train(run_dir, f"--train.steps={steps}", "--cluster.islands=['b','a']")
        after = two_islands.counters()
        kernel = {k: sum(after[k]) - sum(before[k]) for k in after}
        runs[steps] = (run_dir, kernel, log)

        assert "global parameters identical on all groups: True" in log, log
        placed = _placements(run_dir)
        assert placed[0]["island"] == "b" and placed[0]["address"] == "10.77.0.2", placed
        assert placed[1]["island"] == "a" and placed[1]["address"] == "10.77.0.1", placed
        assert placed[0]["node_id"] != placed[1]["node_id"]
        assert "streamloco: group 0 (1 rank): node " in log and "(10.77.0.2), island b" in log

    (short, k1, _), (long, k2, _) = runs[90], runs[180]
    # Both groups' payloads cross island b's link (group 0 sends from b, receives from a).
    e1, e2 = _engine_bytes(short, 0), _engine_bytes(long, 0)
    assert e2 > e1 > 0
    marginal = (k2["b"] - k1["b"]) / (e2 - e1)
    print(
        f"\nisland b link, kernel bytes: 90 steps {k1['b']}, 180 steps {k2['b']}; engine bytes "
        f"(group 0 sent + received): {e1}, {e2}; marginal kernel/engine {marginal:.3f}; fixed "
        f"bytes of a run (kernel - engine x marginal): {k1['b'] - e1 * marginal:.0f}"
    )
    assert 1.0 <= marginal <= MAX_OVERHEAD, (k1, k2, e1, e2)
    # "x fewer bytes than DDP" must hold on the kernel's count too, fixed costs included.
    ddp = next(ln for ln in runs[180][2].splitlines() if "vs DDP in fp32" in ln)
    ddp_bytes = float(ddp.split("(ring all-reduce, ")[1].split("MB")[0]) * 1e6
    assert ddp_bytes > 2 * k2["b"], (ddp, k2)


def test_three_islands_one_group_each():
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    isl = Islands(3, "25mbit,25mbit,2500kbit", "u")  # island c: a tenth of the others' bandwidth
    try:
        out = isl.up()
        assert "island c: 10.77.0.3, link 2500kbit (tbf)" in out, out
        run_dir = Path(f"/tmp/{isl.prefix}-run")
        try:
            log = isl.train(
                run_dir, "--train.steps=60", "--train.groups=3", "--cluster.islands=['auto']"
            )
            assert "global parameters identical on all groups: True" in log, log
            placed = _placements(run_dir)
            assert [placed[g]["island"] for g in range(3)] == ["a", "b", "c"], placed
            assert len({p["node_id"] for p in placed.values()}) == 3
        finally:
            shutil.rmtree(run_dir, ignore_errors=True)
    finally:
        isl.down()
