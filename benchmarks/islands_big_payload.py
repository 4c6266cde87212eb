"""A payload that takes minutes on a slow link: does Ray move it once, or retry it from scratch?

Brings up 2 islands (scripts/islands.sh, island b at --rate), puts an object of --mb MB in an actor
on island b, fetches it from a driver on island a, and prints the transfer time, the kernel's
bytes on b's link during the fetch against the object's size (a retried transfer would show as
a ratio well above 1), and what Ray logged about pulls. Always tears the islands down.

    .venv/bin/python benchmarks/islands_big_payload.py --rate 2500kbit --mb 40
    RAY_object_manager_pull_timeout_ms=60000 .venv/bin/python benchmarks/islands_big_payload.py
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ISL = ROOT / "scripts" / "islands.sh"
PREFIX = "sbp"

# Runs on island a (the head's): an actor pinned to island b makes the payload, this driver pulls.
FETCH = textwrap.dedent(
    """
    import subprocess, sys, time
    import ray
    mb = int(sys.argv[1])
    ray.init(log_to_driver=False)

    @ray.remote(num_cpus=0.1, label_selector={"island": "b"})
    class Maker:
        def make(self, mb):
            return ray.put(b"x" * (mb * 1_000_000))  # owned by this actor, stored on island b

    maker = Maker.remote()
    ref = ray.get(maker.make.remote(mb))
    def count():
        out = subprocess.run(["cat", "/sys/class/net/eth0/statistics/rx_bytes"],
                             capture_output=True, text=True).stdout
        return int(out)
    before, t0 = count(), time.monotonic()
    data = ray.get(ref, timeout=3600)
    took, got = time.monotonic() - t0, count() - before
    assert len(data) == mb * 1_000_000
    print(f"RESULT mb={mb} seconds={took:.1f} kernel_rx={got} ratio={got / len(data):.3f}")
    """
)


def sh(*args: str, timeout: float = 3600) -> str:
    # RAY_ADDRESS, RAY_AUTH_* of this shell stay out; Ray's system settings (RAY_ and a lower-case
    # name, e.g. RAY_object_manager_pull_timeout_ms=60000) go to every node `up` starts.
    env = {k: v for k, v in os.environ.items() if not (k.startswith("RAY_") and k[4:5].isupper())}
    r = subprocess.run([str(ISL), *args], capture_output=True, text=True, timeout=timeout, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"islands.sh {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}")
    return r.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", default="2500kbit", help="island b's link")
    ap.add_argument("--mb", type=int, default=40, help="payload size, MB")
    args = ap.parse_args()
    sh("up", "2", "--rate", f"1000mbit,{args.rate}", "--prefix", PREFIX, timeout=400)
    try:
        out = sh("exec", "a", "--prefix", PREFIX, "--", sys.executable, "-c", FETCH, str(args.mb))
        print(next(ln for ln in out.splitlines() if ln.startswith("RESULT")))
        logs = subprocess.run(
            [
                "grep",
                "-rhoE",
                "[Pp]ull[^\n]{0,80}(retr|timeout|Timeout)[^\n]{0,60}",
                f"/tmp/{PREFIX}",
            ],
            capture_output=True,
            text=True,
        ).stdout.splitlines()
        print(f"Ray log lines about pull retries/timeouts: {len(logs)}")
        for line in logs[:5]:
            print("  " + line)
    finally:
        sh("down", "--prefix", PREFIX)


if __name__ == "__main__":
    main()
