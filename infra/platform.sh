#!/usr/bin/env bash
# Makes sure the platform tools the deploy/ checks use are installed:
#   prometheus, promtool  Debian's `prometheus` package (apt-get; its service is not started)
#   helm                  built once from the Go module proxy (`go install`, about 4 minutes on
#                         2 cores; no registry we reach ships the binary) into a cache outside
#                         the checkout, then linked into .venv/bin; instant once built.
# Idempotent: installs only what is missing. Prints the versions.
# Env: VOXLINE_TOOLS_DIR (~/.cache/voxline) where helm is built and kept.
# Usage: infra/platform.sh
set -euo pipefail

# shellcheck source=infra/lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

[[ $# -eq 0 ]] || die "usage: infra/platform.sh (takes no arguments)"

HELM_VERSION=v3.22.0
TOOLS_DIR="${VOXLINE_TOOLS_DIR:-${HOME:-/root}/.cache/voxline}"
HELM="$TOOLS_DIR/helm-$HELM_VERSION/helm"

install_prometheus() {
    command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1 && return 0
    command -v apt-get >/dev/null 2>&1 ||
        die "prometheus is missing and apt-get is not available: install Prometheus 2.x yourself"
    local sudo=() policy=/usr/sbin/policy-rc.d made_policy=0
    if [[ "$(id -u)" -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 || die "installing prometheus needs root (or sudo)"
        sudo=(sudo)
    fi
    # The package would start a Prometheus listening on every interface; the tests start
    # their own on 127.0.0.1. Deny service starts during the install unless a policy exists.
    if [[ ! -e "$policy" ]]; then
        printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee "$policy" >/dev/null
        "${sudo[@]}" chmod 755 "$policy"
        made_policy=1
    fi
    note "prometheus missing: installing Debian's package ..."
    export DEBIAN_FRONTEND=noninteractive
    local ok=1
    "${sudo[@]}" apt-get update -q >&2 &&
        "${sudo[@]}" apt-get install -y -q --no-install-recommends prometheus >&2 || ok=0
    [[ $made_policy -eq 0 ]] || "${sudo[@]}" rm -f "$policy"
    [[ $ok -eq 1 ]] || die "apt-get install prometheus failed"
}

install_helm() {
    if [[ ! -x "$HELM" ]]; then
        command -v go >/dev/null 2>&1 || [[ -x /usr/local/go/bin/go ]] ||
            die "helm $HELM_VERSION is built with Go (>= 1.26), which is not installed"
        local go_bin started
        go_bin="$(command -v go || echo /usr/local/go/bin/go)"
        started=$(date +%s)
        note "helm $HELM_VERSION missing: building it from the Go module proxy (a few minutes) ..."
        mkdir -p "$(dirname "$HELM")"
        GOBIN="$(dirname "$HELM")" GOFLAGS=-buildvcs=false "$go_bin" install -trimpath \
            -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
            "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >&2 || die "go install helm failed"
        note "helm built in $(($(date +%s) - started)) s"
    fi
    if [[ -d "$REPO_ROOT/.venv/bin" ]]; then
        ln -sfn "$HELM" "$REPO_ROOT/.venv/bin/helm"
    fi
}

install_prometheus
install_helm
prometheus --version 2>&1 | head -n 1 || true
"$HELM" version --short
