#!/usr/bin/env bash
# Builds every cargo-fuzz target and runs each for FUZZ_SECONDS (default 15) from the checked-in
# seed corpus, failing on the first crash, hang, leak or broken property. New inputs go to a
# scratch corpus, never into fuzz/corpus. Prints one "fuzz: TARGET N execs in S s" line per target.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
seconds="${FUZZ_SECONDS:-15}"
target_dir="${CARGO_TARGET_DIR:-$HOME/.cache/metastore/target}-fuzz"
export RUSTC_BOOTSTRAP=1
targets=$(cargo fuzz list --fuzz-dir fuzz)
cargo fuzz build --fuzz-dir fuzz --target-dir "$target_dir"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for t in $targets; do
  mkdir -p "$scratch/$t" "fuzz/artifacts/$t"
  out="$scratch/$t.log"
  if ! cargo fuzz run --fuzz-dir fuzz --target-dir "$target_dir" "$t" "$scratch/$t" "fuzz/corpus/$t" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      -artifact_prefix="fuzz/artifacts/$t/" >"$out" 2>&1; then
    tail -40 "$out"
    echo "fuzz: $t FAILED (input in fuzz/artifacts/$t/)"
    exit 1
  fi
  execs=$(awk '/stat::number_of_executed_units/ { print $2 }' "$out")
  echo "fuzz: $t $execs execs in ${seconds} s"
done
