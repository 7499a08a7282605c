#!/usr/bin/env bash
# Single-node Apache Kafka (KRaft, broker+controller in one JVM) from Maven Central jars.
# Usage: infra/kafka.sh {fetch|start|wait|stop|reset|status}
# Env: KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (9093), VOXLINE_INFRA_DIR (<repo>/.infra),
#      KAFKA_HEAP_OPTS (-Xmx512m -Xms256m), KAFKA_WAIT_TIMEOUT (90), PYTHON, JAVA_HOME.
set -euo pipefail

# shellcheck source=infra/lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
KAFKA_WAIT_TIMEOUT="${KAFKA_WAIT_TIMEOUT:-90}"
KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xmx512m -Xms256m}"

POM="$INFRA_DIR/kafka/pom.xml"
TEMPLATE="$INFRA_DIR/kafka/server.properties.template"
LOG4J2="$INFRA_DIR/kafka/log4j2.xml"

KAFKA_DIR="$STATE_DIR/kafka"
LIBS="$KAFKA_DIR/libs"
MARKER="$LIBS/.fetched"
DATA="$KAFKA_DIR/data"
LOGS="$KAFKA_DIR/logs"
PROPS="$KAFKA_DIR/server.properties"
PIDFILE="$KAFKA_DIR/kafka.pid"
OUTFILE="$KAFKA_DIR/kafka.out"
# What identifies our JVM in /proc/PID/cmdline.
PATTERN="kafka.Kafka $PROPS"
# shellcheck disable=SC2034  # read by lib.sh's shared verbs
SERVICE=kafka PROCESS=pid ADDRESS="127.0.0.1:$KAFKA_PORT" SERVICE_DIR="$KAFKA_DIR"

kafka_version() {
    sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM" | head -n1
}

# The marker holds the pinned version and the pom's hash: any pom change re-fetches.
wanted_marker() {
    echo "$(kafka_version) $(sha256sum "$POM" | cut -d' ' -f1)"
}

fetched() {
    [[ -f "$MARKER" && "$(cat "$MARKER")" == "$(wanted_marker)" ]]
}

java_bin() {
    local java
    if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then
        java="$JAVA_HOME/bin/java"
    else
        java="$(command -v java || true)"
    fi
    [[ -n "$java" ]] || die "java not found: Kafka $(kafka_version) needs Java 17+ (set JAVA_HOME or put java on PATH)"
    local major
    major="$("$java" -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p' | head -n1)"
    major="${major#1.}"
    if [[ "$major" =~ ^[0-9]+$ ]] && ((major < 17)); then
        die "$java is Java $major; Kafka $(kafka_version) needs Java 17+"
    fi
    echo "$java"
}

cmd_fetch() {
    local version
    version="$(kafka_version)"
    [[ -n "$version" ]] || die "no <kafka.version> in $POM"
    if fetched; then
        echo "kafka: jars for $version already in $LIBS"
        return 0
    fi
    if pid_alive "$PIDFILE" "$PATTERN"; then
        die "kafka is running from $LIBS; run 'infra/kafka.sh stop' before fetching other jars"
    fi
    command -v mvn >/dev/null 2>&1 || die "mvn not found: Maven is needed to fetch the Kafka jars from Maven Central"
    echo "kafka: fetching kafka_2.13 $version and its dependencies into $LIBS ..." >&2
    local start tmp="$LIBS.tmp"
    start="$(now_ms)"
    rm -rf "$tmp"
    mkdir -p "$KAFKA_DIR"
    # Maven 3.8 prints colour resets even with -B -q: strip escape sequences.
    if ! mvn -q -B -Dstyle.color=never -f "$POM" dependency:copy-dependencies \
            -DincludeScope=runtime -DoutputDirectory="$tmp" 2>&1 |
            sed -u -e $'s/\x1b\\[[0-9;]*m//g' -e '/^$/d' >&2; then
        rm -rf "$tmp"
        die "mvn could not fetch the Kafka $version jars (see the Maven output above)"
    fi
    [[ -f "$tmp/kafka_2.13-$version.jar" ]] || die "mvn finished but $tmp/kafka_2.13-$version.jar is missing"
    rm -rf "$LIBS"
    mv "$tmp" "$LIBS"
    wanted_marker >"$MARKER"
    echo "kafka: fetched $(find "$LIBS" -name '*.jar' | wc -l) jars for $version in $(elapsed_since "$start")" >&2
}

render_config() {
    mkdir -p "$DATA" "$LOGS"
    sed -e "s|@KAFKA_PORT@|$KAFKA_PORT|g" \
        -e "s|@KAFKA_CONTROLLER_PORT@|$KAFKA_CONTROLLER_PORT|g" \
        -e "s|@KAFKA_DATA_DIR@|$DATA|g" \
        "$TEMPLATE" >"$PROPS.tmp"
    mv "$PROPS.tmp" "$PROPS"
}

# jvm_cmd: sets JVM to the java command line (heap, GC, logging, classpath) without the main class.
jvm_cmd() {
    local java heap
    java="$(java_bin)"
    read -r -a heap <<<"$KAFKA_HEAP_OPTS"
    JVM=("$java" "${heap[@]}" -XX:+UseG1GC -XX:MaxGCPauseMillis=20
        -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent
        -Djava.awt.headless=true
        -Dlog4j2.configurationFile="$LOG4J2" -Dkafka.logs.dir="$LOGS"
        -cp "$LIBS/*")
}

# run_java MAIN_CLASS ARGS...: runs a Kafka main class in the foreground.
run_java() {
    local JVM
    jvm_cmd
    "${JVM[@]}" "$@"
}

# random_cluster_id: what `kafka-storage.sh random-uuid` prints (16 random bytes, base64url
# without padding, not starting with '-'), made here to save a JVM start.
random_cluster_id() {
    local id
    while :; do
        id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
        [[ "$id" =~ ^[A-Za-z0-9_][A-Za-z0-9_-]{21}$ ]] && break
    done
    echo "$id"
}

format_storage() {
    [[ -f "$DATA/meta.properties" ]] && return 0
    local cluster_id
    cluster_id="$(random_cluster_id)"
    echo "kafka: formatting $DATA with cluster id $cluster_id (--standalone)" >&2
    if ! run_java kafka.tools.StorageTool format -t "$cluster_id" -c "$PROPS" --standalone \
            >"$KAFKA_DIR/format.out" 2>&1; then
        cat "$KAFKA_DIR/format.out" >&2
        die "formatting the Kafka log directory failed"
    fi
    echo "$cluster_id" >"$KAFKA_DIR/cluster.id"
}

show_logs() {
    note "--- last lines of $OUTFILE ---"
    tail -n 20 "$OUTFILE" 2>/dev/null | cut -c1-300 >&2 || true
    note "--- last lines of $LOGS/server.log ---"
    tail -n 15 "$LOGS/server.log" 2>/dev/null | cut -c1-300 >&2 || true
}

# ready_check [PID]: a real metadata request through aiokafka, retried until the timeout.
ready_check() {
    local py args=(kafka --bootstrap "127.0.0.1:$KAFKA_PORT" --timeout "$KAFKA_WAIT_TIMEOUT")
    py="$(python_bin)"
    [[ -n "${1:-}" ]] && args+=(--pid "$1")
    "$py" "$INFRA_DIR/ready.py" "${args[@]}"
}

cmd_start() {
    local pid start p
    already_running "metadata requests" && return 0
    for p in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"; do
        port_open "$p" && die "port 127.0.0.1:$p is already in use by another process (not this script's Kafka); stop it or set KAFKA_PORT / KAFKA_CONTROLLER_PORT"
    done
    cmd_fetch >&2
    start="$(now_ms)"
    render_config
    format_storage
    local JVM launcher=()
    jvm_cmd
    command -v setsid >/dev/null 2>&1 && launcher=(setsid)
    "${launcher[@]}" nohup "${JVM[@]}" kafka.Kafka "$PROPS" >"$OUTFILE" 2>&1 </dev/null &
    pid=$!
    await_ready "$pid" "kafka exited during start-up (logs above; full logs in $KAFKA_DIR)"
    echo "kafka: started (pid $pid, 127.0.0.1:$KAFKA_PORT) in $(elapsed_since "$start")"
}

cmd_reset() {
    cmd_stop
    rm -rf "$DATA" "$LOGS" "$PROPS" "$KAFKA_DIR/cluster.id" "$KAFKA_DIR/format.out" "$OUTFILE"
    echo "kafka: data deleted ($DATA); the jars in $LIBS are kept"
}

run_verb "fetch|start|wait|stop|reset|status" "${1:-}"
