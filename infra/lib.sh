# shellcheck shell=bash
# Shared helpers for infra/*.sh. Sourced, not run.

INFRA_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$INFRA_DIR/.." && pwd)"
# shellcheck disable=SC2034  # used by the scripts that source this file
STATE_DIR="${VOXLINE_INFRA_DIR:-$REPO_ROOT/.infra}"

die() { echo "error: $*" >&2; exit 1; }
note() { echo "$*" >&2; }

# The Python that runs infra/ready.py: $PYTHON, else the repo's venv, else python3 on PATH.
python_bin() {
    local py="${PYTHON:-}"
    if [[ -z "$py" ]]; then
        if [[ -x "$REPO_ROOT/.venv/bin/python" ]]; then
            py="$REPO_ROOT/.venv/bin/python"
        else
            py="$(command -v python3 || true)"
        fi
    elif [[ "$py" != /* && "$py" == */* ]]; then
        py="$REPO_ROOT/$py"   # a relative path is taken from the repo root
    fi
    [[ -n "$py" ]] || die "no Python found: set PYTHON or create $REPO_ROOT/.venv"
    command -v "$py" >/dev/null 2>&1 || die "Python '$py' not found (set PYTHON or create $REPO_ROOT/.venv)"
    echo "$py"
}

# pid_alive PIDFILE PATTERN: true if the pid in PIDFILE is a live process whose
# command line contains PATTERN (so a recycled pid is not mistaken for ours).
pid_alive() {
    local pidfile="$1" pattern="$2" pid
    [[ -f "$pidfile" ]] || return 1
    pid="$(cat "$pidfile" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$pattern"
}

# port_open PORT: true if something accepts TCP connections on 127.0.0.1:PORT.
port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# stop_pid NAME PIDFILE PATTERN: SIGTERM, wait up to ${STOP_TIMEOUT:-30}s, then SIGKILL.
stop_pid() {
    local name="$1" pidfile="$2" pattern="$3" pid i timeout="${STOP_TIMEOUT:-30}"
    if ! pid_alive "$pidfile" "$pattern"; then
        rm -f "$pidfile"
        echo "$name: not running"
        return 0
    fi
    pid="$(cat "$pidfile")"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < timeout * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        note "$name: pid $pid still alive after ${timeout}s, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
    fi
    rm -f "$pidfile"
    echo "$name: stopped (pid $pid)"
}

# elapsed SECONDS_START: prints seconds since then with one decimal.
now_ms() { date +%s%3N; }
elapsed_since() {
    local ms=$(( $(now_ms) - $1 ))
    printf '%d.%ds' $((ms / 1000)) $(((ms % 1000) / 100))
}
