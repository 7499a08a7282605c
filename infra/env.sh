# shellcheck shell=bash
# Defaults the processor (and tests) use to reach the services that infra/up.sh starts.
# Source it: `source infra/env.sh`. A variable that is already set is left as it is.

: "${KAFKA_BOOTSTRAP_SERVERS:=127.0.0.1:${KAFKA_PORT:-9092}}"
: "${S3_ENDPOINT_URL:=http://127.0.0.1:${S3_PORT:-8333}}"
: "${S3_BUCKET:=voxline-audio}"
: "${AWS_ACCESS_KEY_ID:=voxline}"
: "${AWS_SECRET_ACCESS_KEY:=voxline-secret}"
: "${AWS_REGION:=us-east-1}"
export KAFKA_BOOTSTRAP_SERVERS S3_ENDPOINT_URL S3_BUCKET AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_REGION
