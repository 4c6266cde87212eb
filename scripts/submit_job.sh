#!/usr/bin/env bash
# Submit `python -m streamloco <arguments>` to a Ray cluster as a job (docs/cluster.md).
#
#   scripts/submit_job.sh [--address URL] [--no-wait] -- <streamloco arguments>
#
# The repo is uploaded as the job's working dir (data/, runs/, .venv, .git and caches left out), so
# relative paths such as configs/smoke.toml name files of the upload; the job and all its workers
# import the uploaded src/streamloco. Give --run.out_dir an ABSOLUTE path on storage every node
# shares: the working dir is a temporary copy. Address: --address, else $RAY_API_SERVER_ADDRESS,
# else $RAY_ADDRESS, else http://127.0.0.1:8265 (the head's dashboard). Token authentication:
# RAY_AUTH_MODE=token (unless set) with the cluster's token in ~/.ray/auth_token, $RAY_AUTH_TOKEN
# or $RAY_AUTH_TOKEN_PATH. Exits 0 only when the job SUCCEEDED (with --no-wait: when submitted).
set -euo pipefail

die() { echo "submit_job.sh: $*" >&2; exit 2; }
usage() { sed -n '2,12s/^# \{0,1\}//p' "$0"; }

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
address="${RAY_API_SERVER_ADDRESS:-${RAY_ADDRESS:-http://127.0.0.1:8265}}"
no_wait=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --address) [[ $# -ge 2 ]] || die "--address needs a URL"; address="$2"; shift 2 ;;
        --address=*) address="${1#*=}"; shift ;;
        --no-wait) no_wait=1; shift ;;
        -h | --help) usage; exit 0 ;;
        --) shift; break ;;
        *) die "unknown option '$1' (streamloco arguments go after --)" ;;
    esac
done
[[ $# -gt 0 ]] || { usage >&2; exit 2; }

command -v ray >/dev/null ||
    die "'ray' is not on PATH: activate the venv streamloco is installed in (. .venv/bin/activate)"
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"

# Ray reads the token from $RAY_AUTH_TOKEN, else the file $RAY_AUTH_TOKEN_PATH, else
# ~/.ray/auth_token; `ray get-auth-token --generate` writes that file with the umask's mode
# (often 644), and whoever reads the token can run code on the cluster. Warn, do not refuse.
token_file="${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}"
if [[ -z "${RAY_AUTH_TOKEN:-}" && -f "$token_file" ]]; then
    mode="$(ls -lLd -- "$token_file")"  # -rw-r--r--: group read at 4, others' at 7 (POSIX)
    if [[ "${mode:4:1}${mode:7:1}" == *r* ]]; then
        echo "submit_job.sh: warning: Ray's auth token $token_file is readable by other users" \
            "(${mode:0:10}), and with it anyone can run code on the cluster:" \
            "chmod 600 $token_file" >&2
    fi
fi

# A quick TCP check turns "head not running" into one clear line instead of a traceback.
if [[ "$address" =~ ^(https?://)?([^/:]+)(:([0-9]+))?(/|$) ]]; then  # no scheme: Ray says http
    host="${BASH_REMATCH[2]}"
    port="${BASH_REMATCH[4]:-$([[ ${BASH_REMATCH[1]} == https* ]] && echo 443 || echo 80)}"
    probe=(bash -c ": >/dev/tcp/$host/$port")
    ! command -v timeout >/dev/null || probe=(timeout 5 "${probe[@]}")
    "${probe[@]}" 2>/dev/null || {
        echo "submit_job.sh: no Ray head answers at $address (start one: docs/cluster.md)" >&2
        exit 1
    }
fi

id="streamloco-$(date +%Y%m%d-%H%M%S)-$$"
excludes='"/.git", "/.venv", "/data", "/runs", "/build", "/dist", "/.whl", "/.gl", "__pycache__",
  "*.egg-info", "/.pytest_cache", "/.ruff_cache", "/.hypothesis"'
runtime_env="{\"py_modules\": [\"$root/src/streamloco\"], \"excludes\": [$excludes]}"

rc=0
ray job submit --address "$address" --submission-id "$id" --working-dir "$root" \
    --runtime-env-json "$runtime_env" ${no_wait:+--no-wait} -- python -m streamloco "$@" || rc=$?
[[ -z "$no_wait" || $rc -ne 0 ]] || exit 0

how="RAY_AUTH_MODE=token ray job {logs|stop} --address $address $id"
status="$(ray job status --address "$address" --log-color false "$id" 2>&1 || true)"
case "$status" in
    *"Job '$id' succeeded"*) exit 0 ;;
    *"Job '$id' failed"* | *"Job '$id' was stopped"*)
        echo "submit_job.sh: job $id did not succeed; its log is above ($how)" >&2 ;;
    *"Status for job '$id'"*) echo "submit_job.sh: job $id still runs ($how)" >&2 ;;
    *) echo "submit_job.sh: submitting failed (ray job submit exit $rc), see above" >&2 ;;
esac
exit $((rc ? rc : 1))
