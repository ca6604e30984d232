#!/usr/bin/env bash
# Runs MetaStore's whole test suite: unit and engine-conformance tests, integration tests against the
# real binary (etcd-client crate and etcdctl, both engines, kill -9 recovery), then the seeded
# simulation tests built with --cfg madsim.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/metastore/target}"

echo "== unit, conformance and integration tests"
cargo test --workspace --all-targets

echo "== simulation tests (madsim; seeds: ${METASTORE_SIM_SEEDS:-1..8})"
# The simulated build gets its own target dir: a RUSTFLAGS change rebuilds everything.
RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR="${CARGO_TARGET_DIR}-sim" cargo test -p metastore-sim
