#!/usr/bin/env bash
# Brings up everything the processor needs locally: espeak-ng installed, the S3 store and
# Kafka started and answering real requests (head_bucket, Kafka metadata). Safe to run again:
# running services are left alone. Prints one line per service; details go to
# $STATE/up.<service>.log and are shown when a step fails.
# Usage: infra/up.sh
set -euo pipefail

# shellcheck source=infra/lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

mkdir -p "$STATE_DIR"

# step NAME CMD...: runs CMD with its stderr in a log file; prints its stdout; on failure
# shows the log and exits.
step() {
    local name="$1" log="$STATE_DIR/up.$1.log"
    shift
    if ! "$@" 2>"$log"; then
        cat "$log" >&2
        die "$name did not come up (details above, also in $log)"
    fi
}

had_espeak=yes
command -v espeak-ng >/dev/null 2>&1 || had_espeak=no
espeak_version="$(step espeak "$INFRA_DIR/espeak.sh")"
if [[ "$had_espeak" == yes ]]; then
    echo "espeak-ng: already installed (${espeak_version%%$'\n'*})"
else
    echo "espeak-ng: installed (${espeak_version%%$'\n'*})"
fi
# S3 first: it is up in seconds, Kafka takes longer (and may first fetch its jars).
step s3 "$INFRA_DIR/s3.sh" start
step kafka "$INFRA_DIR/kafka.sh" start
