#!/usr/bin/env bash
# Builds MetaStore (release) and starts a single-member server: RocksDB under ./data, clients on
# 127.0.0.1:2379. Extra arguments are passed to `metastore` (see `metastore --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/metastore/target}"
exec cargo run --release --bin metastore -- \
  --name default --data-dir ./data \
  --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 "$@"
