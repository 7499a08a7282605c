#!/usr/bin/env bash
# Kept for existing callers: installs espeak-ng and ffmpeg through infra/packages.sh.
exec "$(dirname "$0")/packages.sh" "$@"
