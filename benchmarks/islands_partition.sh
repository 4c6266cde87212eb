#!/usr/bin/env bash
# The partition drill (docs/islands.md): 2 islands at 25 Mbit/s, a `streamloco train` with group 0
# on island a and group 1 on b; once the run has trained AFTER_S seconds, island b's link goes down
# for DOWN_S seconds, then comes back. Prints the run's console, what the cluster saw, and the
# kernel byte counts; always tears the islands down. --rejoin: once the link is back, start a new
# Ray node on island b (Ray never takes back a node it declared dead), as an operator would.
#
#   benchmarks/islands_partition.sh [--deadline S] [--down S] [--after S] [--steps N] [--rejoin]
#                                   [-- train args]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
isl="$root/scripts/islands.sh"
deadline=0 down_s=60 after_s=25 steps=900 prefix=spd rejoin=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --deadline) deadline="$2"; shift 2 ;;
        --down) down_s="$2"; shift 2 ;;
        --after) after_s="$2"; shift 2 ;;
        --steps) steps="$2"; shift 2 ;;
        --rejoin) rejoin=1; shift ;;
        --) shift; break ;;
        *) echo "islands_partition.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
run="/tmp/$prefix-run"
trap '"$isl" down --prefix "$prefix" >/dev/null; rm -rf "$run"' EXIT
"$isl" up 2 --rate 25mbit --prefix "$prefix" >/dev/null
t0=$(date +%s)
"$isl" exec a --prefix "$prefix" -- "$root/.venv/bin/streamloco" train \
    --config "$root/configs/synthetic.toml" --run.out_dir=/tmp --run.name="$prefix-run" \
    --train.steps="$steps" --outer.sync_every=30 --train.eval_every=0 --train.log_every=10 \
    --run.tensorboard=false --cluster.islands="['a','b']" --transport.timeout_s=120 \
    --transport.round_deadline_s="$deadline" "$@" >"/tmp/$prefix.log" 2>&1 &
train_pid=$!
# Cut the link once training runs (the first step record is in records.jsonl) plus AFTER_S.
for _ in $(seq 1 300); do
    grep -q '"record": "step"' "$run/records.jsonl" 2>/dev/null && break
    sleep 1
done
sleep "$after_s"
echo "t=$(( $(date +%s) - t0 ))s: island b's link down for ${down_s}s"
"$isl" link b down --prefix "$prefix"
sleep "$down_s"
"$isl" link b up --prefix "$prefix"
echo "t=$(( $(date +%s) - t0 ))s: island b's link up again"
if [[ -n "$rejoin" ]]; then
    "$isl" rejoin b --prefix "$prefix"
    echo "t=$(( $(date +%s) - t0 ))s: island b rejoined with a new Ray node"
fi
rc=0
wait "$train_pid" || rc=$?
echo "t=$(( $(date +%s) - t0 ))s: streamloco train exited $rc"
tr '\r' '\n' <"/tmp/$prefix.log" | grep -v '^train: ' | grep -v '^\s*$' | tail -40
"$isl" counters --prefix "$prefix"
rm -f "/tmp/$prefix.log"
