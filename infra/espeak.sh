#!/usr/bin/env bash
# Makes sure the espeak-ng TTS engine is installed (Debian package espeak-ng), then prints
# its version. Installs with apt-get as root, or through sudo when not root.
# Usage: infra/espeak.sh
set -euo pipefail

# shellcheck source=infra/lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

if ! command -v espeak-ng >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 ||
        die "espeak-ng is not installed and apt-get is not available: install espeak-ng with your package manager"
    SUDO=()
    if [[ "$(id -u)" -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 ||
            die "espeak-ng is not installed; installing it needs root (run as root, or install sudo)"
        SUDO=(sudo)
    fi
    echo "espeak-ng: not found, installing the Debian package ..." >&2
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -q >&2 || die "apt-get update failed"
    "${SUDO[@]}" apt-get install -y -q --no-install-recommends espeak-ng >&2 ||
        die "apt-get install espeak-ng failed"
    command -v espeak-ng >/dev/null 2>&1 || die "espeak-ng still not on PATH after apt-get install"
fi
espeak-ng --version
