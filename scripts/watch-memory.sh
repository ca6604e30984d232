#!/usr/bin/env bash
# Server-side memory per idle watcher, MetaStore vs etcd 3.5.1 (scripts/etcd-reference.sh) on this machine: each server's
# RSS (from /proc, the server process only) before and while `metastore bench watch` holds
# STREAMS × PER_STREAM watchers that see one event per second. Prints KiB per watcher.
#
#   STREAMS=10000 PER_STREAM=1 scripts/watch-memory.sh
#   STREAMS=100 PER_STREAM=100 scripts/watch-memory.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/metastore/target}"
BIN="${BIN:-$CARGO_TARGET_DIR/release/metastore}"
[ -x "$BIN" ] || cargo build --release --bin metastore >&2
ETCD="${ETCD:-$(./scripts/etcd-reference.sh)}"
STREAMS="${STREAMS:-10000}"; PER_STREAM="${PER_STREAM:-1}"; SETTLE="${SETTLE:-25}"
ETCD_PORT=23793; ETCD_PEER=23803; MS_PORT=23794; MS_PEER=23804

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

"$ETCD" --name m --data-dir "$work/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER" \
  --initial-cluster "m=http://127.0.0.1:$ETCD_PEER" >"$work/etcd.log" 2>&1 &
etcd_pid=$!; pids+=($etcd_pid)
peer_flags=()
if grep -q -- --listen-peer-urls <<<"$("$BIN" --help)"; then
  peer_flags=(--listen-peer-urls "http://127.0.0.1:$MS_PEER" --initial-advertise-peer-urls "http://127.0.0.1:$MS_PEER")
fi
"$BIN" --name m --data-dir "$work/metastore" \
  --listen-client-urls "http://127.0.0.1:$MS_PORT" --advertise-client-urls "http://127.0.0.1:$MS_PORT" \
  "${peer_flags[@]}" >"$work/metastore.log" 2>&1 &
ms_pid=$!; pids+=($ms_pid)
for port in $ETCD_PORT $MS_PORT; do
  for _ in $(seq 1 100); do
    ETCDCTL_API=3 etcdctl --endpoints="127.0.0.1:$port" put ready 1 >/dev/null 2>&1 && break
    sleep 0.2
  done
done

rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

measure() { # name pid port
  local before during watchers=$((STREAMS * PER_STREAM))
  before=$(rss_kib "$2")
  "$BIN" bench watch --endpoints "127.0.0.1:$3" --conns 10 --streams "$STREAMS" \
    --watchers-per-stream "$PER_STREAM" --total $((SETTLE + 10)) --put-rate 1 >"$work/$1.bench" 2>&1 &
  local bench=$!
  sleep "$SETTLE"
  during=$(rss_kib "$2")
  wait "$bench" || { echo "bench against $1 failed:"; cat "$work/$1.bench"; }
  awk -v n="$1" -v b="$before" -v d="$during" -v w="$watchers" \
    'BEGIN {printf "%-9s RSS before %7.1f MiB, with %d idle watchers %7.1f MiB: %.2f KiB per watcher\n", n, b/1024, w, d/1024, (d-b)/w}'
}
echo "$STREAMS streams x $PER_STREAM watchers per stream (10 connections)"
measure etcd "$etcd_pid" "$ETCD_PORT"
measure metastore "$ms_pid" "$MS_PORT"
