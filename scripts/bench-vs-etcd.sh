#!/usr/bin/env bash
# Benchmarks MetaStore against Debian's real etcd (package etcd-server) on this machine, both
# single-member and durable (fsync on commit), with fresh data dirs, using the same load generator
# (`metastore bench`) for both. Workloads run alternately (etcd, metastore, etcd, metastore, ...) and the
# table shows per-server medians of requests/sec, the ratio metastore/etcd, and p99 latency (for the
# watch workload: from a put's send to each of 10,000 watchers' delivery of its event).
#
#   ROUNDS=3 PUT1_TOTAL=2000 PUT64_TOTAL=40000 RANGE_TOTAL=100000 scripts/bench-vs-etcd.sh
set -euo pipefail
cd "$(dirname "$0")/.."
WITH_ETCD_SERVER=1 ./scripts/deps.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/metastore/target}"
cargo build --release --bin metastore >&2
BIN="$CARGO_TARGET_DIR/release/metastore"
ETCD="${ETCD:-$(command -v etcd || echo /usr/bin/etcd)}"

ROUNDS="${ROUNDS:-3}"
PUT1_TOTAL="${PUT1_TOTAL:-2000}"
PUT64_TOTAL="${PUT64_TOTAL:-40000}"
RANGE_TOTAL="${RANGE_TOTAL:-100000}"
WATCH_PUTS="${WATCH_PUTS:-200}"
KEEPALIVE_TOTAL="${KEEPALIVE_TOTAL:-50000}"
ETCD_PORT=23791; ETCD_PEER=23801; MS_PORT=23792

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

"$ETCD" --name bench --data-dir "$work/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER" \
  --initial-cluster "bench=http://127.0.0.1:$ETCD_PEER" --quota-backend-bytes 8589934592 \
  >"$work/etcd.log" 2>&1 &
pids+=($!)
"$BIN" --name bench --data-dir "$work/metastore" --engine rocksdb \
  --listen-client-urls "http://127.0.0.1:$MS_PORT" --advertise-client-urls "http://127.0.0.1:$MS_PORT" \
  --quota-backend-bytes 8589934592 >"$work/metastore.log" 2>&1 &
pids+=($!)

for port in $ETCD_PORT $MS_PORT; do
  for _ in $(seq 1 100); do
    ETCDCTL_API=3 etcdctl --endpoints="127.0.0.1:$port" put bench-ready 1 >/dev/null 2>&1 && break
    sleep 0.2
  done
done

bench() { # server-port workload args... -> prints "requests/sec p99-ms"
  local port=$1; shift
  "$BIN" bench "$@" --endpoints "127.0.0.1:$port" | awk '/Requests\/sec/ {r=$2} /Latency ms/ {p=$8} END {print r, p}'
}

median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else printf "%.1f\n", (a[NR/2]+a[NR/2+1])/2}'; }

declare -A results
workloads=(
  "put-1c|put --clients 1 --conns 1 --total $PUT1_TOTAL --key-size 8 --val-size 256 --key-space-size 100000"
  "put-64c8n|put --clients 64 --conns 8 --total $PUT64_TOTAL --key-size 8 --val-size 256 --key-space-size 100000"
  "range-s|range --clients 64 --conns 8 --total $RANGE_TOTAL --consistency s"
  "range-l|range --clients 64 --conns 8 --total $RANGE_TOTAL --consistency l"
  "watch-10k|watch --streams 100 --watchers-per-stream 100 --conns 8 --total $WATCH_PUTS --put-rate 100"
  "lease-keepalive|lease-keepalive --clients 64 --conns 8 --total $KEEPALIVE_TOTAL"
)
for round in $(seq 1 "$ROUNDS"); do
  for w in "${workloads[@]}"; do
    name=${w%%|*}; args=${w#*|}
    # shellcheck disable=SC2086
    read -r e ep99 < <(bench $ETCD_PORT $args); read -r m mp99 < <(bench $MS_PORT $args)
    results["$name/etcd"]+="$e "; results["$name/metastore"]+="$m "
    results["$name/etcd-p99"]+="$ep99 "; results["$name/metastore-p99"]+="$mp99 "
    echo "round $round $name: etcd $e req/s (p99 $ep99 ms), metastore $m req/s (p99 $mp99 ms)" >&2
  done
done

printf '\n| workload | etcd req/s | metastore req/s | ratio | etcd p99 ms | metastore p99 ms |\n|---|---:|---:|---:|---:|---:|\n'
for w in "${workloads[@]}"; do
  name=${w%%|*}
  e=$(echo "${results[$name/etcd]}" | tr ' ' '\n' | grep . | median)
  m=$(echo "${results[$name/metastore]}" | tr ' ' '\n' | grep . | median)
  ep=$(echo "${results[$name/etcd-p99]}" | tr ' ' '\n' | grep . | median)
  mp=$(echo "${results[$name/metastore-p99]}" | tr ' ' '\n' | grep . | median)
  printf '| %s | %s | %s | %.2fx | %s | %s |\n' "$name" "$e" "$m" "$(awk -v m="$m" -v e="$e" 'BEGIN {print (e > 0 ? m / e : 0)}')" "$ep" "$mp"
done
echo "($ROUNDS rounds, etcd $("$ETCD" --version | head -1 | awk '{print $3}'), $(nproc) cores)"
