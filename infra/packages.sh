#!/usr/bin/env bash
# Makes sure the Debian packages the processor needs are installed: espeak-ng (the default TTS
# engine) and ffmpeg (mp3/flac/opus output and resampling); openssl makes the security tests'
# certificates (infra/secure.sh). Missing ones are installed with one
# `apt-get update` and one `apt-get install --no-install-recommends`, as root or through sudo.
# Prints the versions, espeak-ng first (infra/up.sh reads the first line).
# Usage: infra/packages.sh
set -euo pipefail

# shellcheck source=infra/lib.sh
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"

[[ $# -eq 0 ]] || die "usage: infra/packages.sh (takes no arguments)"

# command on PATH -> Debian package that provides it
COMMANDS=(espeak-ng ffmpeg ffprobe openssl)
PACKAGES=(espeak-ng ffmpeg ffmpeg openssl)

missing=()
for i in "${!COMMANDS[@]}"; do
    if ! command -v "${COMMANDS[$i]}" >/dev/null 2>&1; then
        pkg="${PACKAGES[$i]}"
        [[ " ${missing[*]} " == *" $pkg "* ]] || missing+=("$pkg")
    fi
done

if [[ ${#missing[@]} -gt 0 ]]; then
    command -v apt-get >/dev/null 2>&1 ||
        die "missing ${missing[*]} and apt-get is not available: install them with your package manager"
    SUDO=()
    if [[ "$(id -u)" -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 ||
            die "missing ${missing[*]}; installing needs root (run as root, or install sudo)"
        SUDO=(sudo)
    fi
    note "missing ${missing[*]}: installing the Debian package(s) ..."
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -q >&2 || die "apt-get update failed"
    "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 ||
        die "apt-get install ${missing[*]} failed"
    for cmd in "${COMMANDS[@]}"; do
        command -v "$cmd" >/dev/null 2>&1 || die "$cmd still not on PATH after apt-get install"
    done
fi

espeak-ng --version
# Not `| head -n 1`: under pipefail an early-closing head could fail the script with SIGPIPE.
ffmpeg_version="$(ffmpeg -hide_banner -version)"
echo "${ffmpeg_version%%$'\n'*}"
