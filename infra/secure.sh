#!/usr/bin/env bash
# The secured services for the security tests, beside the plaintext ones (which stay up):
#  - a single-node KRaft broker from the same Kafka jars as infra/kafka.sh, SASL_SSL only
#    (SCRAM-SHA-512 over TLS), the StandardAuthorizer and the ACLs of infra/secure/acls.spec;
#  - a second SeaweedFS `weed mini` whose S3 endpoint speaks HTTPS only;
#  - a test CA (openssl) that signs both servers' certificate, plus an unrelated CA for the
#    "unknown CA" cases; random passwords for the SCRAM users, in secrets.env (mode 600).
# Usage: infra/secure.sh {start|stop|reset|status|env}
#   start: certificates and passwords (once), format (once), start both, wait until each answers
#          a real request (SASL_SSL metadata as admin; HTTPS head_bucket), provision topics/ACLs.
#   env:   prints the variables a client needs (sourceable; passwords included).
# Env: SECURE_KAFKA_PORT (9192), SECURE_KAFKA_CONTROLLER_PORT (9193), SECURE_S3_PORT (7333;
#      weed's other ports are 7334-7337, gRPC +10000), SECURE_WAIT_TIMEOUT (90),
#      VOXLINE_INFRA_DIR (<repo>/.infra), KAFKA_HEAP_OPTS, PYTHON, JAVA_HOME, WEED.
set -euo pipefail

# shellcheck source=infra/lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

PORT="${SECURE_KAFKA_PORT:-9192}"
CONTROLLER_PORT="${SECURE_KAFKA_CONTROLLER_PORT:-9193}"
S3_TLS_PORT="${SECURE_S3_PORT:-7333}"
WAIT_TIMEOUT="${SECURE_WAIT_TIMEOUT:-90}"
HEAP="${KAFKA_HEAP_OPTS:--Xmx384m -Xms128m}"

DIR="$STATE_DIR/secure"
TLS="$DIR/tls"
SECRETS="$DIR/secrets.env"
KDIR="$DIR/kafka"
KDATA="$KDIR/data"
PROPS="$KDIR/server.properties"
ADMIN_PROPS="$KDIR/admin.properties"
KPID="$KDIR/kafka.pid"
KOUT="$KDIR/kafka.out"
KPATTERN="kafka.Kafka $PROPS"
SDIR="$DIR/s3"
SDATA="$SDIR/data"
SPID="$SDIR/weed.pid"
SLOG="$SDIR/weed.log"
SPATTERN="mini -dir=$SDATA "
LIBS="$STATE_DIR/kafka/libs"
USERS=(admin voxline producer operator)

java_bin() {
    if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then
        echo "$JAVA_HOME/bin/java"
    else
        command -v java || die "java not found (Java 17+ is needed, as for infra/kafka.sh)"
    fi
}

# make_certs: the test CA, the servers' certificate (127.0.0.1 and localhost), another CA.
make_certs() {
    [[ -f "$TLS/broker.keystore.pem" && -f "$TLS/other-ca.pem" ]] && return 0
    command -v openssl >/dev/null 2>&1 || die "openssl not found: it makes the test certificates"
    rm -rf "$TLS.tmp"
    mkdir -p "$TLS.tmp"
    (
        cd "$TLS.tmp"
        local ca
        for ca in ca other-ca; do
            openssl req -x509 -newkey rsa:2048 -nodes -days 30 -keyout "$ca.key" -out "$ca.pem" \
                -subj "/CN=Voxline test $ca" -addext "basicConstraints=critical,CA:TRUE" \
                -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
        done
        openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr \
            -subj "/CN=127.0.0.1" 2>/dev/null
        printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" \
            "extendedKeyUsage=serverAuth" "basicConstraints=CA:FALSE" >server.ext
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 \
            -extfile server.ext -out server.pem 2>/dev/null
        # Kafka's PEM key store: the PKCS#8 key, then the chain.
        cat server.key server.pem ca.pem >broker.keystore.pem
        chmod 600 ./*.key broker.keystore.pem
    )
    rm -rf "$TLS"
    mv "$TLS.tmp" "$TLS"
    note "secure: made the test CA and the servers' certificate in $TLS"
}

make_secrets() {
    [[ -f "$SECRETS" ]] && return 0
    mkdir -p "$DIR"
    local u tmp="$SECRETS.tmp"
    (
        umask 077
        for u in "${USERS[@]}"; do
            echo "SECURE_${u^^}_PASSWORD=$(head -c 18 /dev/urandom | base64 | tr '+/' 'xy')"
        done >"$tmp"
        echo "SECURE_S3_ACCESS_KEY=voxline-tls" >>"$tmp"
        echo "SECURE_S3_SECRET_KEY=$(head -c 18 /dev/urandom | base64 | tr '+/' 'xy')" >>"$tmp"
    )
    mv "$tmp" "$SECRETS"
}

load_secrets() {
    # shellcheck disable=SC1090
    source "$SECRETS"
}

render_config() {
    mkdir -p "$KDATA"
    (
        umask 077
        sed -e "s|@PORT@|$PORT|g" -e "s|@CONTROLLER_PORT@|$CONTROLLER_PORT|g" \
            -e "s|@DATA_DIR@|$KDATA|g" -e "s|@TLS_DIR@|$TLS|g" \
            -e "s|@ADMIN_PASSWORD@|$SECURE_ADMIN_PASSWORD|g" \
            "$INFRA_DIR/secure/server.properties.template" >"$PROPS"
        cat >"$ADMIN_PROPS" <<PROPS
bootstrap.servers=127.0.0.1:$PORT
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$SECURE_ADMIN_PASSWORD";
ssl.truststore.type=PEM
ssl.truststore.location=$TLS/ca.pem
PROPS
    )
}

# jvm ARGS...: the broker's JVM command line (small heap) with the fetched Kafka jars.
jvm() {
    local heap
    read -r -a heap <<<"$HEAP"
    JVM=("$(java_bin)" "${heap[@]}" -XX:+UseSerialGC -Djava.awt.headless=true
        -Dlog4j2.configurationFile="$INFRA_DIR/kafka/log4j2.xml" -Dkafka.logs.dir="$KDIR/logs"
        -cp "$LIBS/*")
}

# provisioner: the directory of Provision.class, compiled once per version of its source
# (kept across resets; a single-file launch would compile it on every start).
provisioner() {
    local src="$INFRA_DIR/secure/Provision.java" out="$STATE_DIR/secure-provision" hash javac
    hash="$(sha256sum "$src" | cut -c1-16)"
    if [[ ! -f "$out/$hash/Provision.class" ]]; then
        javac="$(dirname "$(readlink -f "$(java_bin)")")/javac"
        [[ -x "$javac" ]] || javac="$(command -v javac || true)"
        [[ -n "$javac" ]] || die "javac not found: a JDK 17+ is needed (as for the Kafka broker)"
        rm -rf "$out"
        mkdir -p "$out/$hash"
        "$javac" -cp "$LIBS/*" -d "$out/$hash" "$src" >&2 || die "compiling $src failed"
    fi
    echo "$out/$hash"
}

# format: the log directory, with every SCRAM user created by Kafka's own storage tool.
format() {
    [[ -f "$KDATA/meta.properties" ]] && return 0
    local JVM u var scram=() id
    jvm
    for u in "${USERS[@]}"; do
        var="SECURE_${u^^}_PASSWORD"
        scram+=(--add-scram "SCRAM-SHA-512=[name=$u,password=${!var}]")
    done
    id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n' | sed 's/^-/A/')"
    "${JVM[@]}" kafka.tools.StorageTool format -t "$id" -c "$PROPS" --standalone "${scram[@]}" \
        >"$KDIR/format.out" 2>&1 || { cat "$KDIR/format.out" >&2; die "formatting $KDATA failed"; }
}

start_kafka() {
    if pid_alive "$KPID" "$KPATTERN"; then
        echo "secure kafka: already running (pid $(cat "$KPID"), 127.0.0.1:$PORT)"
        return 0
    fi
    [[ -d "$LIBS" ]] || "$INFRA_DIR/kafka.sh" fetch >&2
    local p
    for p in "$PORT" "$CONTROLLER_PORT"; do
        port_open "$p" && die "port 127.0.0.1:$p is in use by another process; set SECURE_KAFKA_PORT / SECURE_KAFKA_CONTROLLER_PORT"
    done
    render_config
    format
    local JVM launcher=() pid
    jvm
    command -v setsid >/dev/null 2>&1 && launcher=(setsid)
    "${launcher[@]}" nohup "${JVM[@]}" kafka.Kafka "$PROPS" >"$KOUT" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$KPID"
    if ! SECURE_KAFKA_PASSWORD="$SECURE_ADMIN_PASSWORD" "$(python_bin)" "$INFRA_DIR/secure_ready.py" \
            --bootstrap "127.0.0.1:$PORT" --cafile "$TLS/ca.pem" --user admin \
            --timeout "$WAIT_TIMEOUT" --pid "$pid" >&2; then
        tail -n 20 "$KOUT" "$KDIR/logs/server.log" 2>/dev/null | cut -c1-300 >&2 || true
        die "the secured broker did not become ready (logs in $KDIR)"
    fi
    # Topics and ACLs, by Kafka's own Admin client.
    local classes
    classes="$(provisioner)"
    "$(java_bin)" -Xmx128m -XX:+UseSerialGC -cp "$LIBS/*:$classes" Provision "$ADMIN_PROPS" \
        "$INFRA_DIR/secure/acls.spec" >"$KDIR/provision.out" 2>&1 ||
        { cat "$KDIR/provision.out" >&2; die "provisioning topics and ACLs failed"; }
    echo "secure kafka: started (pid $pid, SASL_SSL 127.0.0.1:$PORT): $(tail -n1 "$KDIR/provision.out")"
}

start_s3() {
    local weed pid p launcher=()
    if pid_alive "$SPID" "$SPATTERN"; then
        echo "secure s3: already running (pid $(cat "$SPID"), https://127.0.0.1:$S3_TLS_PORT)"
        return 0
    fi
    weed="$(tool_path "${WEED:-}" weed weed)"
    [[ -n "$weed" ]] || die "SeaweedFS 'weed' not found (see infra/s3.sh)"
    for p in "$S3_TLS_PORT" $((S3_TLS_PORT + 1)) $((S3_TLS_PORT + 2)) $((S3_TLS_PORT + 3)) $((S3_TLS_PORT + 4)); do
        port_open "$p" && die "port 127.0.0.1:$p is in use; set SECURE_S3_PORT"
        port_open $((p + 10000)) && die "port 127.0.0.1:$((p + 10000)) is in use; set SECURE_S3_PORT"
    done
    mkdir -p "$SDATA"
    command -v setsid >/dev/null 2>&1 && launcher=(setsid)
    (
        cd "$SDIR"
        # weed mini makes its one S3 identity from these two variables.
        export AWS_ACCESS_KEY_ID="$SECURE_S3_ACCESS_KEY" AWS_SECRET_ACCESS_KEY="$SECURE_S3_SECRET_KEY"
        exec "${launcher[@]}" nohup "$weed" mini -dir="$SDATA" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
            -s3.port="$S3_TLS_PORT" -s3.cert.file="$TLS/server.pem" -s3.key.file="$TLS/server.key" \
            -master.port=$((S3_TLS_PORT + 1)) -volume.port=$((S3_TLS_PORT + 2)) \
            -filer.port=$((S3_TLS_PORT + 3)) -admin.port=$((S3_TLS_PORT + 4)) -admin.ui=false \
            -webdav=false -s3.port.iceberg=0 -s3.port.lance=0 -master.telemetry=false \
            -bucket=voxline-audio,voxline-refs >"$SLOG" 2>&1 </dev/null
    ) &
    pid=$!
    echo "$pid" >"$SPID"
    if ! AWS_CA_BUNDLE="$TLS/ca.pem" AWS_ACCESS_KEY_ID="$SECURE_S3_ACCESS_KEY" \
            AWS_SECRET_ACCESS_KEY="$SECURE_S3_SECRET_KEY" "$(python_bin)" "$INFRA_DIR/ready.py" s3 \
            --endpoint "https://127.0.0.1:$S3_TLS_PORT" --bucket voxline-audio --bucket voxline-refs \
            --create --timeout "$WAIT_TIMEOUT" --pid "$pid" >&2; then
        tail -n 20 "$SLOG" | cut -c1-300 >&2 || true
        die "the HTTPS S3 store did not become ready (log in $SLOG)"
    fi
    echo "secure s3: started (pid $pid, https://127.0.0.1:$S3_TLS_PORT)"
}

cmd_start() {
    local start
    start="$(now_ms)"
    make_certs
    make_secrets
    load_secrets
    start_s3
    start_kafka
    echo "secure: ready in $(elapsed_since "$start")"
}

cmd_stop() {
    stop_pid "secure kafka" "$KPID" "$KPATTERN"
    stop_pid "secure s3" "$SPID" "$SPATTERN"
}

cmd_reset() {
    cmd_stop
    rm -rf "$DIR"
    echo "secure: state, certificates and passwords deleted ($DIR)"
}

cmd_status() {
    local rc=0
    if pid_alive "$KPID" "$KPATTERN"; then
        echo "secure kafka: running (pid $(cat "$KPID"), 127.0.0.1:$PORT)"
    else
        echo "secure kafka: not running"
        rc=1
    fi
    if pid_alive "$SPID" "$SPATTERN"; then
        echo "secure s3: running (pid $(cat "$SPID"), https://127.0.0.1:$S3_TLS_PORT)"
    else
        echo "secure s3: not running"
        rc=1
    fi
    return "$rc"
}

cmd_env() {
    [[ -f "$SECRETS" ]] || die "no $SECRETS yet: run infra/secure.sh start"
    cat "$SECRETS"
    echo "SECURE_KAFKA_BOOTSTRAP=127.0.0.1:$PORT"
    echo "SECURE_S3_ENDPOINT=https://127.0.0.1:$S3_TLS_PORT"
    echo "SECURE_CA=$TLS/ca.pem"
    echo "SECURE_OTHER_CA=$TLS/other-ca.pem"
}

run_verb "start|stop|reset|status|env" "${1:-}"
