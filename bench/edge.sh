#!/usr/bin/env bash
# bench/edge.sh — the edge benches of ../shared/bench/ (issue 11), side by side
# in one run, against this tree's build/sluice started by scripts/run.
#
# Usage: bench/edge.sh [healthz|status|upload|upload1000|all]...   (default: all)
#   healthz     healthz_vs_nginx.sh 8 50  (request log on, as shipped)
#   status      status_vs_fastapi.sh 8 50 (GET /v1/files/{id} against FastAPI)
#   upload      upload_vs_nginx.sh 50 20  (50 clients × 20 MiB, with peak RSS)
#   upload1000  upload_vs_nginx.sh 1000 1 (1,000 concurrent 1 MiB uploads)
# Prints the sluice idle RSS before each, then each script's own output.
# The rate limits are raised (not switched off) for the run: the benches send
# tens of thousands of requests a second with one key, which the shipped
# limits (reads: 1,000/s per key) answer with 429 by design; the limiter still
# runs on every request. Needs what ../shared/bench/README.md lists.
# Env: SLUICE_SHARED_BENCH (default ../shared/bench beside the repo).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
SHARED="${SLUICE_SHARED_BENCH:-$REPO/../shared/bench}"
[ -d "$SHARED" ] || { echo "edge: no $SHARED (set SLUICE_SHARED_BENCH)" >&2; exit 2; }
cd "$REPO"
[ $# -gt 0 ] || set -- healthz status upload upload1000

for t in nginx wrk bc curl; do
    command -v "$t" >/dev/null || { echo "edge: $t missing (apt-get install nginx-light wrk bc curl)" >&2; exit 2; }
done
case " $* " in *" status "*)
    /usr/bin/python3 -c "import fastapi, uvicorn, asyncpg" 2>/dev/null || {
        echo "edge: the FastAPI peer needs apt-get install python3-fastapi python3-uvicorn python3-asyncpg" >&2
        exit 2; } ;;
esac

mkdir -p var
cfg="$REPO/var/bench.yaml"
{
    sed '/^rate_limits:/,$d' config/sluice.yaml
    echo 'rate_limits: {requests_per_s: {uploads: 100000, reads: 1000000}}'
} >"$cfg"

scripts/run --stop >/dev/null 2>&1 || true
SLUICE_CONFIG="$cfg" scripts/run --no-install --no-build --detach >var/edge-run.log 2>&1 ||
    { cat var/edge-run.log >&2; exit 1; }
# On exit: the bench's dataset is deleted (its files and blobs: each upload run
# stores 1 GiB under var/blobs, and repeated runs filled this machine's disk,
# which slowed every later upload), then Sluice is stopped.
cleanup() {
    if [ -n "${SLUICE_DATASET:-}" ]; then
        curl -s -o /dev/null -X DELETE -H "Authorization: Bearer $KEY" \
            "$URL/v1/datasets/$SLUICE_DATASET" || true
        # The purge runs in the background: wait for it (up to 2 minutes), or
        # the next start would delete these blobs during its own measurement.
        for _ in $(seq 1 240); do
            left="$(psql -XAtq "$SLUICE_DSN" -c "SELECT (SELECT count(*) FROM files
                WHERE dataset_id = '$SLUICE_DATASET') + (SELECT count(*) FROM purge_blobs)" 2>/dev/null || echo 0)"
            [ "${left:-0}" = 0 ] && break
            sleep 0.5
        done
    fi
    scripts/run --stop >/dev/null 2>&1 || true
}
trap cleanup EXIT

URL="$(cat var/url)" KEY="$(cat var/demo_api_key)" PID="$(cat var/sluice.pid)"
# var/sluice.pid is the supervisor (engine: {process: separate}); the uploads
# and their memory are in its sluice-http child, whose RSS is the one to watch.
HTTP_PID="$(ps -o pid=,comm= --ppid "$PID" | awk '$2 == "sluice-http" {print $1; exit}')"
PID="${HTTP_PID:-$PID}"
export SLUICE_URL="$URL" SLUICE_KEY="$KEY" SLUICE_PID="$PID"
PGBASE="$(readlink -f var/pg)"
export SLUICE_DSN="postgresql:///sluice?host=$PGBASE/run&port=$(sed -n 4p "$PGBASE/data/postmaster.pid")"

json() { /usr/bin/python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
SLUICE_DATASET="$(curl -sf -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
    -d '{"name": "edge-bench-'"$(date +%s%N)"'"}' "$URL/v1/datasets" | json '["id"]')"
export SLUICE_DATASET
idle_rss() { awk '/VmRSS/{print $2}' "/proc/$PID/status"; }

for what in "$@"; do
    echo "== $what (sluice idle RSS $(idle_rss) KiB)"
    case "$what" in
        healthz) bash "$SHARED/healthz_vs_nginx.sh" 8 50 ;;
        status)
            SLUICE_FILE="$(printf 'edge bench\n' | curl -sf -H "Authorization: Bearer $KEY" \
                -F "file=@-;filename=edge.txt" "$URL/v1/datasets/$SLUICE_DATASET/files" |
                json '["files"][0]["id"]')"
            export SLUICE_FILE
            bash "$SHARED/status_vs_fastapi.sh" 8 50 ;;
        upload) bash "$SHARED/upload_vs_nginx.sh" 50 20 ;;
        upload1000) bash "$SHARED/upload_vs_nginx.sh" 1000 1 ;;
        *) echo "edge: unknown bench $what" >&2; exit 2 ;;
    esac
done
