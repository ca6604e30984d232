#!/usr/bin/env bash
# Compares MetaStore builds with each other (to bisect a regression): one 3-member cluster per
# binary, all running at once, and single-client puts against each cluster's leader in
# alternation, so machine noise falls on all of them alike. Build the binaries first, e.g. with
# `git worktree add /tmp/old <rev>` and `cargo build --release` there, then copy each binary.
#
#   ROUNDS=3 TOTAL=2000 scripts/bench-builds.sh /tmp/metastore-old /tmp/metastore-new
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 BINARY..." >&2; exit 2; }
ROUNDS="${ROUNDS:-3}"
TOTAL="${TOTAL:-2000}"
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

start() { # binary tag base-port -> the cluster's endpoints
  local bin=$1 tag=$2 base=$3 cluster="" eps="" i
  for i in 0 1 2; do
    cluster+="${cluster:+,}$tag$i=http://127.0.0.1:$((base + 1 + 100 * i))"
    eps+="${eps:+,}127.0.0.1:$((base + 100 * i))"
  done
  for i in 0 1 2; do
    local c=$((base + 100 * i)) p=$((base + 1 + 100 * i))
    "$bin" --name "$tag$i" --data-dir "$work/$tag$i" --engine rocksdb \
      --listen-client-urls "http://127.0.0.1:$c" --advertise-client-urls "http://127.0.0.1:$c" \
      --listen-peer-urls "http://127.0.0.1:$p" --initial-advertise-peer-urls "http://127.0.0.1:$p" \
      --initial-cluster "$cluster" >"$work/$tag$i.log" 2>&1 &
    pids+=($!)
  done
  for _ in $(seq 1 100); do
    ETCDCTL_API=3 etcdctl --endpoints="$eps" put ready 1 >/dev/null 2>&1 && break
    sleep 0.2
  done
  echo "$eps"
}

leader_of() { # endpoints -> the endpoint of the member that leads
  ETCDCTL_API=3 etcdctl --endpoints="$1" endpoint status 2>/dev/null | awk -F', ' '$5 == "true" {print $1}'
}

bins=("$@")
leaders=()
for k in "${!bins[@]}"; do
  eps=$(start "${bins[$k]}" "b$k" $((24810 + 10 * k)))
  leaders+=("$(leader_of "$eps")")
done
for r in $(seq 1 "$ROUNDS"); do
  for k in "${!bins[@]}"; do
    out=$("${bins[0]}" bench put --clients 1 --conns 1 --total "$TOTAL" --key-size 8 --val-size 256 \
      --key-space-size 100000 --endpoints "${leaders[$k]}" |
      awk '/Requests\/sec/ {r=$2} /Latency ms/ {p50=$4; p99=$8} END {print r " req/s, p50 " p50 " ms, p99 " p99 " ms"}')
    echo "round $r ${bins[$k]}: $out"
  done
done
