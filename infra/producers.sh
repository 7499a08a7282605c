#!/usr/bin/env bash
# Installs the dependencies of the producer examples (examples/producers/{go,typescript,java})
# and of the AsyncAPI check (docs/asyncapi) from their registries, and builds the examples:
#   Go modules (go.sum) -> examples/producers/go/bin/voxline-produce
#   npm packages (package-lock.json, `npm ci`) -> examples/producers/typescript/dist/produce.js
#   Maven Central jars (pom.xml) -> examples/producers/java/target/{classes,dependency}
#   npm packages of docs/asyncapi (the AsyncAPI parser)
# Each step runs only when its inputs changed since it last succeeded, so a second run takes
# about a second. Java 17 and Maven come from Debian when missing; Go and Node.js are the
# machine's toolchains (Go >= 1.26 for franz-go, Node.js >= 20.19).
# Usage: infra/producers.sh
set -euo pipefail

# shellcheck source=infra/lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

[[ $# -eq 0 ]] || die "usage: infra/producers.sh (takes no arguments)"

EXAMPLES="$REPO_ROOT/examples/producers"
ASYNCAPI="$REPO_ROOT/docs/asyncapi"

# version_at_least HAVE WANT: true if dotted version HAVE >= WANT.
version_at_least() {
    [[ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" == "$2" ]]
}

# fresh STAMP INPUT...: true if STAMP exists and no INPUT file is newer than it.
fresh() {
    local stamp="$1"
    shift
    [[ -f "$stamp" ]] || return 1
    [[ -z "$(find "$@" -newer "$stamp" -type f -print -quit 2>/dev/null)" ]]
}

need_debian() {
    local missing=()
    command -v javac >/dev/null 2>&1 || missing+=(openjdk-17-jdk-headless)
    command -v mvn >/dev/null 2>&1 || missing+=(maven)
    [[ ${#missing[@]} -eq 0 ]] && return
    command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]}: install them with your package manager"
    local sudo=()
    [[ "$(id -u)" -eq 0 ]] || sudo=(sudo)
    note "missing ${missing[*]}: installing the Debian package(s) ..."
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -q >&2 || die "apt-get update failed"
    "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 ||
        die "apt-get install ${missing[*]} failed"
}

check_toolchains() {
    command -v go >/dev/null 2>&1 || die "go not found: the Go example needs Go >= 1.26 on PATH"
    local go_version
    go_version="$(go env GOVERSION)"
    version_at_least "${go_version#go}" 1.26 || die "Go $go_version is too old: franz-go needs >= 1.26"
    command -v node >/dev/null 2>&1 || die "node not found: the TypeScript example needs Node.js >= 20.19"
    command -v npm >/dev/null 2>&1 || die "npm not found (it comes with Node.js)"
    version_at_least "$(node --version | tr -d v)" 20.19 || die "Node.js $(node --version) is too old: >= 20.19 needed"
}

go_example() {
    local dir="$EXAMPLES/go" stamp="$EXAMPLES/go/bin/.built"
    fresh "$stamp" "$dir/go.mod" "$dir/go.sum" "$dir"/*.go && return
    note "go example: downloading modules and building ..."
    (cd "$dir" && GOTOOLCHAIN=local GOFLAGS=-mod=readonly go build -o bin/voxline-produce .) ||
        die "go build failed in $dir"
    touch "$stamp"
}

npm_install() { # npm_install DIR: `npm ci` when package-lock.json changed
    local dir="$1" stamp="$1/node_modules/.voxline-installed"
    fresh "$stamp" "$dir/package.json" "$dir/package-lock.json" && return
    note "npm ci in ${dir#"$REPO_ROOT"/} ..."
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci failed in $dir"
    touch "$stamp"
}

typescript_example() {
    local dir="$EXAMPLES/typescript" stamp="$EXAMPLES/typescript/dist/.built"
    npm_install "$dir"
    fresh "$stamp" "$dir/src" "$dir/tsconfig.json" "$dir/package-lock.json" && return
    note "typescript example: compiling ..."
    (cd "$dir" && npm run --silent build) || die "tsc failed in $dir"
    touch "$stamp"
}

java_example() {
    local dir="$EXAMPLES/java" stamp="$EXAMPLES/java/target/.built"
    fresh "$stamp" "$dir/pom.xml" "$dir/src" && return
    note "java example: fetching jars and compiling ..."
    mvn -q -B -Dstyle.color=never -f "$dir/pom.xml" package dependency:copy-dependencies ||
        die "mvn package failed in $dir"
    touch "$stamp"
}

need_debian
check_toolchains
go_example
typescript_example
java_example
if [[ -f "$ASYNCAPI/package.json" ]]; then
    npm_install "$ASYNCAPI"
fi
echo "producers: go $(go env GOVERSION), node $(node --version), $(javac -version 2>&1), ready"
