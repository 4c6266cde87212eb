#!/usr/bin/env bash
# The partition drill (docs/islands.md): 2 islands at 25 Mbit/s, a `streamloco train` with group 0
# on island a and group 1 on b; once the run has trained AFTER_S seconds, island b's link goes down
# for DOWN_S seconds, then comes back. Prints the run's console, what the cluster saw, and the
# kernel byte counts; always tears the islands down. --rejoin: once the link is back, start a new
# Ray node on island b if Ray declared the old one dead (it never takes such a node back), as an
# operator would. Ray's health check settings can be passed in the environment, e.g.
# RAY_health_check_failure_threshold=40 (the head reads them when it starts).
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
    # A raylet that Ray declared dead exits only once it hears so, after the link is back.
    for _ in $(seq 1 15); do
        sleep 3
        out="$("$isl" rejoin b --prefix "$prefix")"
        [[ "$out" == *"still running"* ]] || break
    done
    echo "t=$(( $(date +%s) - t0 ))s: $out"
fi
rc=0
wait "$train_pid" || rc=$?
echo "t=$(( $(date +%s) - t0 ))s: streamloco train exited $rc"
tr '\r' '\n' <"/tmp/$prefix.log" | grep -v '^train: ' | grep -v '^\s*$' | tail -40
"$isl" counters --prefix "$prefix"
rm -f "/tmp/$prefix.log"
