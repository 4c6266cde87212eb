#!/usr/bin/env bash
# Islands on one Linux machine: N network namespaces, one Ray node each, joined by rate-limited
# veth links through a hub namespace (docs/islands.md). Needs root, `ip` and `tc`.
#
#   scripts/islands.sh up N [--rate 25mbit[,R2,...]] [--qdisc tbf|htb] [--names a,b,...]
#                           [--cpus 1] [--prefix sli] [--timeout 300]
#   scripts/islands.sh exec ISLAND -- COMMAND...   run COMMAND in ISLAND's namespace, Ray env set
#   scripts/islands.sh counters                    bytes each island's link moved (kernel count)
#   scripts/islands.sh link ISLAND down|up         cut / restore ISLAND's link (partition drill)
#   scripts/islands.sh rejoin ISLAND               a new Ray node on ISLAND if its raylet has exited
#   scripts/islands.sh rate RATE[,R2,...]|none     change every link's limit (none: unlimited)
#   scripts/islands.sh status | down [--prefix sli]
#
# up: namespaces PREFIX-hub (a bridge) and PREFIX-NAME per island (10.77.0.1, .2, ... on its
# veth); each island's link is limited to its rate in both directions (egress qdisc on both ends
# of the veth: tbf or htb; no netem here, so no added delay). The first island runs the Ray head
# (port 6379), the others `ray start --address`; each node is labelled island=NAME, has its own
# --temp-dir under /tmp/PREFIX, --num-cpus CPUS, and token auth on (a fresh token, mode 600).
# Nothing outside these namespaces gets an address or a route. `up` waits (at most --timeout s)
# until all N nodes are in the cluster, and prints how to run a job. On any failure it tears
# everything down. down: kills the processes inside PREFIX-* namespaces (by pid, never by name:
# other Ray instances on the machine are left alone), deletes the namespaces (their veths and
# qdiscs go with them) and /tmp/PREFIX. Idempotent: safe to run any time, also after a crash.
set -euo pipefail

die() { echo "islands.sh: $*" >&2; exit 2; }
usage() { sed -n '2,25s/^# \{0,1\}//p' "$0"; }

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv_bin="${ISLANDS_VENV_BIN:-$root/.venv/bin}"
prefix=sli
subnet=10.77.0

cmd="${1:-}"
[[ -n "$cmd" ]] || { usage >&2; exit 2; }
shift

n=0
rates=25mbit
qdisc=tbf
names=""
cpus=1
timeout_s=300
if [[ "$cmd" == up ]]; then
    [[ $# -ge 1 && "$1" =~ ^[0-9]+$ ]] || die "up: the number of islands comes first (up 2 ...)"
    n="$1"; shift
fi
island=""
state=""
if [[ "$cmd" == exec || "$cmd" == link || "$cmd" == rejoin ]]; then
    [[ $# -ge 1 ]] || die "$cmd: name the island ($cmd a ...)"
    island="$1"; shift
fi
if [[ "$cmd" == rate ]]; then
    [[ $# -ge 1 ]] || die "rate: give RATE[,R2,...] or none"
    rates="$1"; shift
fi
if [[ "$cmd" == link ]]; then
    [[ $# -ge 1 && ( "$1" == up || "$1" == down ) ]] || die "link: say up or down (link a down)"
    state="$1"; shift
fi
while [[ $# -gt 0 ]]; do
    case "$1" in
        --rate) rates="${2:?--rate needs a value}"; shift 2 ;;
        --qdisc) qdisc="${2:?--qdisc needs tbf or htb}"; shift 2 ;;
        --names) names="${2:?--names needs a,b,...}"; shift 2 ;;
        --cpus) cpus="${2:?--cpus needs a number}"; shift 2 ;;
        --prefix) prefix="${2:?--prefix needs a name}"; shift 2 ;;
        --timeout) timeout_s="${2:?--timeout needs seconds}"; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        --) shift; break ;;
        *) die "unknown option '$1'" ;;
    esac
done
[[ "$prefix" =~ ^[a-z][a-z0-9]{0,5}$ ]] ||
    die "--prefix: 1-6 lower-case letters/digits (interface names are limited to 15 characters)"
dir="/tmp/$prefix"  # short: Ray's Unix sockets live below each node's temp dir
hub="$prefix-hub"

need_root() {
    [[ "$(id -u)" == 0 ]] || die "needs root (network namespaces, veth pairs, tc)"
    command -v ip >/dev/null || die "'ip' (iproute2) is not installed"
    command -v tc >/dev/null || die "'tc' (iproute2) is not installed"
}

our_namespaces() { ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$prefix-" || true; }

down() {
    local ns pids left t
    for ns in $(our_namespaces); do
        pids="$(ip netns pids "$ns" 2>/dev/null || true)"
        if [[ -n "$pids" ]]; then
            # shellcheck disable=SC2086
            kill -TERM $pids 2>/dev/null || true
        fi
    done
    for t in $(seq 1 20); do  # Ray's processes exit on SIGTERM within a few seconds
        left=""
        for ns in $(our_namespaces); do left+="$(ip netns pids "$ns" 2>/dev/null || true)"; done
        [[ -z "$left" ]] && break
        sleep 0.5
    done
    for ns in $(our_namespaces); do
        pids="$(ip netns pids "$ns" 2>/dev/null || true)"
        if [[ -n "$pids" ]]; then
            # shellcheck disable=SC2086
            kill -KILL $pids 2>/dev/null || true
        fi
    done
    sleep 0.2
    for ns in $(our_namespaces); do ip netns del "$ns" 2>/dev/null || true; done
    rm -rf "$dir"
    [[ -z "$(our_namespaces)" ]] || die "down: namespaces left: $(our_namespaces | tr '\n' ' ')"
}

# The hub-side veth of island i: its rx counts what the island sent, its tx what it received.
hub_if() { echo "${prefix}h$1"; }

island_names() {
    if [[ -f "$dir/islands" ]]; then cat "$dir/islands"; else die "no islands up ($dir/islands)"; fi
}

island_index() {  # island_index NAME CMD: NAME's position in the island list (0: the head)
    local i=0 nm
    for nm in $(island_names); do
        [[ "$nm" == "$1" ]] && { echo "$i"; return 0; }
        i=$((i + 1))
    done
    die "$2: no island '$1'"
}

shape() {  # shape NAMESPACE DEV RATE: limit DEV's egress to RATE
    local ns="$1" dev="$2" rate="$3" bytes burst
    bytes="$("$venv_bin/python" - "$rate" <<'EOF'
import re, sys
m = re.fullmatch(r"(\d+(?:\.\d+)?)(k|m|g)?bit", sys.argv[1].lower())
if not m:
    sys.exit(f"islands.sh: --rate: {sys.argv[1]!r} is not like 25mbit / 500kbit / 1gbit")
print(int(float(m[1]) * {"k": 1e3, "m": 1e6, "g": 1e9, None: 1}[m[2]] / 8))
EOF
)"
    # A burst of 10 ms at the rate (at least 16 KiB, more than one 64 KiB GSO segment at high
    # rates): smaller bursts cannot reach the rate with the kernel's timer granularity.
    burst=$(( bytes / 100 > 16384 ? bytes / 100 : 16384 ))
    case "$qdisc" in
        tbf) ip netns exec "$ns" tc qdisc add dev "$dev" root tbf rate "$rate" burst "$burst" \
                latency 200ms ;;
        htb) ip netns exec "$ns" tc qdisc add dev "$dev" root handle 1: htb default 10
             ip netns exec "$ns" tc class add dev "$dev" parent 1: classid 1:10 htb rate "$rate" \
                ceil "$rate" burst "$burst" ;;
        *) die "--qdisc: '$qdisc' is not tbf or htb (netem does not exist on this kernel)" ;;
    esac
}

ray_env() {  # the environment every Ray process and client of these islands gets
    echo "RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$dir/auth_token RAY_ADDRESS=$subnet.1:6379" \
        "PATH=$venv_bin:$PATH OMP_NUM_THREADS=1 RAY_USAGE_STATS_ENABLED=0"
}

start_node() {  # start_node INDEX NAME: the Ray node of island NAME (index 0: the head)
    local i="$1" nm="$2" env
    local -a role=(--head --port=6379 --include-dashboard=false)
    [[ $i == 0 ]] || role=(--address="$subnet.1:6379")
    env="$(ray_env)"
    # shellcheck disable=SC2086
    ip netns exec "$prefix-$nm" env $env "$venv_bin/ray" start "${role[@]}" \
        --node-ip-address="$subnet.$((i + 1))" --num-cpus="$(cat "$dir/cpus")" --num-gpus=0 \
        --labels="island=$nm" --temp-dir="$dir/r$i" --object-store-memory=300000000 \
        --disable-usage-stats >>"$dir/$nm.log" 2>&1 ||
        { tail -20 "$dir/$nm.log" >&2; die "ray start on island $nm failed"; }
}

kill_in() {  # kill_in NAMESPACE: SIGTERM its processes, SIGKILL what is left after 10 s
    local ns="$1" pids t
    pids="$(ip netns pids "$ns" 2>/dev/null || true)"
    # shellcheck disable=SC2086
    [[ -z "$pids" ]] || kill -TERM $pids 2>/dev/null || true
    for t in $(seq 1 20); do
        [[ -z "$(ip netns pids "$ns" 2>/dev/null || true)" ]] && return 0
        sleep 0.5
    done
    pids="$(ip netns pids "$ns" 2>/dev/null || true)"
    # shellcheck disable=SC2086
    [[ -z "$pids" ]] || kill -KILL $pids 2>/dev/null || true
}

up() {
    need_root
    [[ "$n" -ge 1 && "$n" -le 50 ]] || die "up: N must be in [1, 50], got $n"
    [[ -x "$venv_bin/ray" ]] || die "no ray in $venv_bin (make setup, or set ISLANDS_VENV_BIN)"
    [[ -z "$(our_namespaces)" ]] ||
        die "islands with prefix $prefix are up already: scripts/islands.sh down --prefix $prefix"
    local -a name rate
    if [[ -n "$names" ]]; then IFS=, read -r -a name <<<"$names"; else
        name=(); for ((i = 0; i < n; i++)); do name+=("$(printf "\\x$(printf %x $((97 + i)))")"); done
    fi
    [[ "${#name[@]}" == "$n" ]] || die "--names: ${#name[@]} names for $n islands"
    for nm in "${name[@]}"; do  # a namespace name and a Ray label value
        [[ "$nm" =~ ^[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?$ ]] ||
            die "--names: '$nm' is not 1-12 of a-z0-9- (starting and ending with a letter/digit)"
    done
    IFS=, read -r -a rate <<<"$rates"
    [[ "${#rate[@]}" == 1 || "${#rate[@]}" == "$n" ]] ||
        die "--rate: give one rate, or one per island ($n), got ${#rate[@]}"
    # Any failure from here on (a failed command, or `die`) tears down what was built.
    trap 'if [[ -z "${up_done:-}" ]]; then echo "islands.sh: up failed, tearing down" >&2; down; fi' EXIT

    mkdir -p "$dir"
    chmod 700 "$dir"
    printf '%s\n' "${name[@]}" >"$dir/islands"
    echo "$qdisc" >"$dir/qdisc"
    (umask 077; "$venv_bin/python" -c 'import secrets; print(secrets.token_hex(32))' \
        >"$dir/auth_token")

    ip netns add "$hub"
    ip -n "$hub" link set lo up
    ip -n "$hub" link add br0 type bridge
    ip -n "$hub" link set br0 up
    for ((i = 0; i < n; i++)); do
        local ns="$prefix-${name[$i]}" r="${rate[0]}"
        [[ "${#rate[@]}" == 1 ]] || r="${rate[$i]}"
        ip netns add "$ns"
        ip -n "$ns" link set lo up
        # Both ends are created inside our namespaces: nothing appears in the root namespace.
        ip link add "$(hub_if "$i")" netns "$hub" type veth peer name eth0 netns "$ns"
        ip -n "$hub" link set "$(hub_if "$i")" master br0 up
        ip -n "$ns" addr add "$subnet.$((i + 1))/24" dev eth0
        ip -n "$ns" link set eth0 up
        shape "$ns" eth0 "$r"            # uplink: island -> hub
        shape "$hub" "$(hub_if "$i")" "$r"  # downlink: hub -> island
        echo "${name[$i]} $subnet.$((i + 1)) $r" >>"$dir/links"
    done

    local env t0
    env="$(ray_env)"
    echo "$cpus" >"$dir/cpus"
    t0=$(date +%s)
    for ((i = 0; i < n; i++)); do start_node "$i" "${name[$i]}"; done
    # Wait until the head sees all N nodes alive (bounded; under load this takes a while).
    # shellcheck disable=SC2086
    ip netns exec "$prefix-${name[0]}" env $env "$venv_bin/python" - "$n" "$timeout_s" <<'EOF' ||
import sys, time
from ray._raylet import GcsClient  # reads the GCS's node table without starting a driver
n, limit = int(sys.argv[1]), float(sys.argv[2])
import os
client = GcsClient(address=os.environ["RAY_ADDRESS"])
deadline = time.monotonic() + limit
while True:
    alive = [v for v in client.get_all_node_info(timeout=10).values() if v.state == 0]
    if len(alive) >= n:
        break
    if time.monotonic() > deadline:
        sys.exit(f"islands.sh: only {len(alive)} of {n} Ray nodes joined within {limit:.0f}s")
    time.sleep(1)
EOF
        { echo "islands.sh: see $dir/*.log" >&2; false; }
    up_done=1
    echo "islands.sh: $n islands up in $(( $(date +%s) - t0 ))s (Ray nodes joined):"
    cat "$dir/links" | while read -r nm ip r; do echo "  island $nm: $ip, link $r ($qdisc)"; done
    cat <<EOF
Run a job from the head's island (the driver then sits on island ${name[0]}):
  scripts/islands.sh exec ${name[0]} -- $venv_bin/streamloco train --config configs/smoke.toml \\
      --run.out_dir=/tmp/islands-runs --train.groups=$n --cluster.islands='["auto"]'
Kernel byte counts per island link: scripts/islands.sh counters
Tear down (also after a failure): scripts/islands.sh down${prefix:+ --prefix $prefix}
EOF
}

case "$cmd" in
    up) up ;;
    down) need_root; down; echo "islands.sh: down (no $prefix-* namespace, no $dir)" ;;
    exec)
        need_root
        grep -qx "$island" <(island_names) || die "exec: no island '$island' (up: $(island_names | tr '\n' ' '))"
        [[ $# -gt 0 ]] || die "exec: give a command after --"
        # shellcheck disable=SC2046
        exec ip netns exec "$prefix-$island" env $(ray_env) "$@"
        ;;
    link)
        need_root
        i="$(island_index "$island" link)" || exit 2
        ip -n "$hub" link set "$(hub_if "$i")" "$state"
        echo "islands.sh: island $island's link is $state"
        ;;
    rejoin)
        need_root
        i="$(island_index "$island" rejoin)" || exit 2
        [[ $i != 0 ]] || die "rejoin: $island holds the head; its cluster is gone (down, then up)"
        # A node that rode out a partition is still in the cluster: leave it be.
        for pid in $(ip netns pids "$prefix-$island"); do
            if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q '/raylet '; then
                echo "islands.sh: island $island's Ray node is still running (pid $pid): nothing to do"
                exit 0
            fi
        done
        # Ray never takes back a node it declared dead: stop what is left, start a new node.
        kill_in "$prefix-$island"
        start_node "$i" "$island"
        echo "islands.sh: island $island has a new Ray node"
        ;;
    rate)
        need_root
        qdisc="$(cat "$dir/qdisc")"
        IFS=, read -r -a rate <<<"$rates"
        i=0
        for nm in $(island_names); do
            r="${rate[0]}"
            [[ "${#rate[@]}" == 1 ]] || r="${rate[$i]:?rate: one rate per island, or one for all}"
            ip netns exec "$prefix-$nm" tc qdisc del dev eth0 root 2>/dev/null || true
            ip netns exec "$hub" tc qdisc del dev "$(hub_if "$i")" root 2>/dev/null || true
            if [[ "$r" != none ]]; then
                shape "$prefix-$nm" eth0 "$r"
                shape "$hub" "$(hub_if "$i")" "$r"
            fi
            echo "islands.sh: island $nm's link: ${r/none/unlimited}"
            i=$((i + 1))
        done
        ;;
    counters)
        need_root
        i=0
        for nm in $(island_names); do
            dev="$(hub_if "$i")"
            rx="$(ip netns exec "$hub" cat "/sys/class/net/$dev/statistics/rx_bytes")"
            tx="$(ip netns exec "$hub" cat "/sys/class/net/$dev/statistics/tx_bytes")"
            echo "$nm sent=$rx received=$tx"
            i=$((i + 1))
        done
        ;;
    status)
        need_root
        echo "namespaces: $(our_namespaces | tr '\n' ' ')"
        [[ -f "$dir/links" ]] && cat "$dir/links"
        for ns in $(our_namespaces); do echo "$ns: $(ip netns pids "$ns" | wc -l) processes"; done
        ;;
    *) usage >&2; exit 2 ;;
esac
