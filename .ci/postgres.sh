#!/usr/bin/env bash
# PostgreSQL server binaries for the store tests: tests/conftest.py (`postgres`) starts its own
# throwaway cluster (initdb + pg_ctl on a free localhost port) and only needs them installed.
set -euo pipefail

if compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null; then
    echo "postgres.sh: PostgreSQL server binaries already installed"
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends postgresql
echo "postgres.sh: installed $(ls -d /usr/lib/postgresql/*/bin | tail -1)"
