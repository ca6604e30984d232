#!/usr/bin/env bash
# Runs MetaStore's whole test suite: unit and engine-conformance tests, integration tests against the
# real binary (etcd-client crate and etcdctl, both engines, kill -9 recovery; the differential test
# against a real etcd 3.5.1 installed by scripts/etcd-reference.sh; snapshot round trips with etcd
# 3.5.1 and Debian's 3.4.23 unpacked by scripts/etcd-3.4.sh), then the seeded
# simulation tests built with --cfg madsim, then a short run of every fuzz target (scripts/fuzz.sh).
# Ends with one "N passed, N failed" line over the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
# The reference etcd 3.5.1 that tests/differential.rs compares MetaStore against.
METASTORE_ETCD_BIN="$(./scripts/etcd-reference.sh)"
# Debian's etcd 3.4.23, whose snapshots tests/etcd_snapshot.rs round-trips.
METASTORE_ETCD34_BIN="$(./scripts/etcd-3.4.sh)"
export METASTORE_ETCD_BIN METASTORE_ETCD34_BIN
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/metastore/target}"
log=$(mktemp)
trap 'rm -f "$log"' EXIT

echo "== unit, conformance and integration tests"
cargo test --workspace --all-targets 2>&1 | tee -a "$log"

echo "== simulation tests (madsim, release; seeds: ${METASTORE_SIM_SEEDS:-chaos 1..100, cluster and single member 1..200})"
# The simulated build gets its own target dir: a RUSTFLAGS change rebuilds everything.
RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR="${CARGO_TARGET_DIR}-sim" \
  cargo test --release --manifest-path sim/Cargo.toml 2>&1 | tee -a "$log"

echo "== fuzz smoke run (every cargo-fuzz target, ${FUZZ_SECONDS:-15} s each)"
./scripts/fuzz.sh

# `set -o pipefail` already stopped us on any failure; sum what ran.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f; if (p == 0) exit 1 }' "$log"
