#!/usr/bin/env bash
# Stops Kafka and the S3 store started by infra/up.sh (data is kept; use
# infra/kafka.sh reset / infra/s3.sh reset to delete it).
# Usage: infra/down.sh
set -euo pipefail

INFRA="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

rc=0
"$INFRA/kafka.sh" stop || rc=1
"$INFRA/s3.sh" stop || rc=1
exit "$rc"
