# shellcheck shell=bash
# Shared helpers for infra/*.sh. Sourced, not run.

INFRA_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$INFRA_DIR/.." && pwd)"
# shellcheck disable=SC2034  # used by the scripts that source this file
STATE_DIR="${VOXLINE_INFRA_DIR:-$REPO_ROOT/.infra}"

die() { echo "error: $*" >&2; exit 1; }
note() { echo "$*" >&2; }

# tool_path SETTING VENV_NAME PATH_NAME: SETTING if given (a relative path is taken from the
# repo root), else the repo's venv's VENV_NAME, else PATH_NAME on PATH; empty if none is found.
tool_path() {
    local tool="$1"
    if [[ -z "$tool" ]]; then
        if [[ -x "$REPO_ROOT/.venv/bin/$2" ]]; then
            tool="$REPO_ROOT/.venv/bin/$2"
        else
            tool="$(command -v "$3" || true)"
        fi
    elif [[ "$tool" != /* && "$tool" == */* ]]; then
        tool="$REPO_ROOT/$tool"
    fi
    echo "$tool"
}

# The Python that runs infra/ready.py: $PYTHON, else the repo's venv, else python3 on PATH.
python_bin() {
    local py
    py="$(tool_path "${PYTHON:-}" python python3)"
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

# The verbs kafka.sh and s3.sh share. The script sets SERVICE (its name in messages), PROCESS
# (what its pid is called: "pid" or "weed pid"), ADDRESS, SERVICE_DIR, PIDFILE and PATTERN, and
# defines ready_check [PID] and show_logs.

# already_running WHAT: true (and says so) if our process is alive and answers WHAT; dies if
# it is alive but does not answer; false (pid file removed) if it is not running.
already_running() {
    local pid
    if ! pid_alive "$PIDFILE" "$PATTERN"; then
        rm -f "$PIDFILE"
        return 1
    fi
    pid="$(cat "$PIDFILE")"
    ready_check "$pid" >/dev/null || { show_logs; die "$SERVICE ($PROCESS $pid) is running but not answering $1"; }
    echo "$SERVICE: already running (pid $pid, $ADDRESS)"
}

# await_ready PID EXITED: records PID and waits until it answers; on failure shows the logs and
# dies (with EXITED if the process is gone, else leaving it running for inspection).
await_ready() {
    local pid="$1"
    echo "$pid" >"$PIDFILE"
    ready_check "$pid" >&2 && return 0
    show_logs
    if kill -0 "$pid" 2>/dev/null; then
        die "$SERVICE ($PROCESS $pid) did not become ready; it is left running for inspection: infra/$SERVICE.sh stop"
    fi
    rm -f "$PIDFILE"
    die "$2"
}

cmd_wait() {
    local pid=""
    pid_alive "$PIDFILE" "$PATTERN" && pid="$(cat "$PIDFILE")"
    ready_check "$pid"
}

cmd_stop() {
    stop_pid "$SERVICE" "$PIDFILE" "$PATTERN"
}

cmd_status() {
    if pid_alive "$PIDFILE" "$PATTERN"; then
        echo "$SERVICE: running (pid $(cat "$PIDFILE"), $ADDRESS, state in $SERVICE_DIR)"
        return 0
    fi
    echo "$SERVICE: not running"
    return 1
}

# run_verb VERBS VERB: runs cmd_VERB if VERB is one of VERBS ("start|stop|..."), else prints
# the usage and exits 2.
run_verb() {
    if [[ -n "${2:-}" && "|$1|" == *"|$2|"* ]]; then
        "cmd_$2"
        return
    fi
    echo "usage: $0 {$1}" >&2
    exit 2
}
