#!/usr/bin/env bash
# Install the offline compose-file validator that tests/test_cluster.py needs in CI:
# Debian's docker-compose, whose `docker-compose config` checks docker-compose.yml against
# the compose-spec schema without a Docker engine. No-op when a validator is already there.
set -euo pipefail
if docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null 2>&1; then
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends docker-compose >/dev/null
docker-compose version
