#!/usr/bin/env bash
# Benchmarks MetaStore against Debian's real etcd (package etcd-server) on this machine, both
# single-member (or MEMBERS=3: 3-member clusters) and durable (fsync on commit), with fresh data dirs, using the same load generator
# (`metastore bench`) for both. Workloads run alternately (etcd, metastore, etcd, metastore, ...) and the
# table shows per-server medians of requests/sec, the ratio metastore/etcd, and p99 latency (for the
# watch workload: from a put's send to each of 10,000 watchers' delivery of its event).
#
#   ROUNDS=3 PUT1_TOTAL=2000 PUT64_TOTAL=40000 RANGE_TOTAL=100000 scripts/bench-vs-etcd.sh
#   MEMBERS=3 WORKLOADS="put-1c put-64c8n range-l" scripts/bench-vs-etcd.sh
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
ETCD_PORT=23791; ETCD_PEER=23801; MS_PORT=23792; MS_PEER=23802

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

# MEMBERS=3 runs both as 3-member clusters on loopback; the load generator spreads its
# connections over every member (followers forward to the leader), as etcd's benchmark does.
MEMBERS="${MEMBERS:-1}"
etcd_cluster=""; ms_cluster=""; etcd_eps=""; ms_eps=""
for i in $(seq 0 $((MEMBERS - 1))); do
  etcd_cluster+="${etcd_cluster:+,}e$i=http://127.0.0.1:$((ETCD_PEER + 100 * i))"
  ms_cluster+="${ms_cluster:+,}m$i=http://127.0.0.1:$((MS_PEER + 100 * i))"
  etcd_eps+="${etcd_eps:+,}127.0.0.1:$((ETCD_PORT + 100 * i))"
  ms_eps+="${ms_eps:+,}127.0.0.1:$((MS_PORT + 100 * i))"
done
for i in $(seq 0 $((MEMBERS - 1))); do
  ec=$((ETCD_PORT + 100 * i)); ep=$((ETCD_PEER + 100 * i)); mc=$((MS_PORT + 100 * i)); mp=$((MS_PEER + 100 * i))
  "$ETCD" --name "e$i" --data-dir "$work/etcd$i" \
    --listen-client-urls "http://127.0.0.1:$ec" --advertise-client-urls "http://127.0.0.1:$ec" \
    --listen-peer-urls "http://127.0.0.1:$ep" --initial-advertise-peer-urls "http://127.0.0.1:$ep" \
    --initial-cluster "$etcd_cluster" --quota-backend-bytes 8589934592 \
    >"$work/etcd$i.log" 2>&1 &
  pids+=($!)
  "$BIN" --name "m$i" --data-dir "$work/metastore$i" --engine rocksdb \
    --listen-client-urls "http://127.0.0.1:$mc" --advertise-client-urls "http://127.0.0.1:$mc" \
    --listen-peer-urls "http://127.0.0.1:$mp" --initial-advertise-peer-urls "http://127.0.0.1:$mp" \
    --initial-cluster "$ms_cluster" --quota-backend-bytes 8589934592 >"$work/metastore$i.log" 2>&1 &
  pids+=($!)
done

for eps in $etcd_eps $ms_eps; do
  for _ in $(seq 1 100); do
    ETCDCTL_API=3 etcdctl --endpoints="$eps" put bench-ready 1 >/dev/null 2>&1 && break
    sleep 0.2
  done
done

# A single-connection client talks to the first endpoint only, and which member leads differs
# between the two clusters (and between runs): a put through a follower is forwarded to the
# leader, one more hop. So with MEMBERS > 1 the single-client workloads are run twice on each
# cluster, once with the leader first (put-1c) and once with a follower first (put-1c-follower),
# and each compares like with like.
leader_of() { # endpoints -> the endpoint of the member that leads
  ETCDCTL_API=3 etcdctl --endpoints="$1" endpoint status -w fields 2>/dev/null |
    awk -F' : ' '$1 == "\"MemberID\"" {m=$2} $1 == "\"Leader\"" {l=$2} $1 == "\"Endpoint\"" {if (l == m) {gsub(/"/, "", $2); print $2; exit}}'
}
first() { # endpoints role(leader|follower) -> the endpoints, one of that role first
  local eps=$1 leader
  leader=$(leader_of "$eps")
  if [ -z "$leader" ]; then echo "$eps"; return; fi
  if [ "$2" = leader ]; then
    echo "$leader,$(echo "$eps" | tr ',' '\n' | grep -vx "$leader" | paste -sd,)"
  else
    echo "$(echo "$eps" | tr ',' '\n' | grep -vx "$leader" | paste -sd,),$leader"
  fi
}

bench() { # endpoints workload args... -> prints "requests/sec p99-ms"
  local eps=$1; shift
  "$BIN" bench "$@" --endpoints "$eps" | awk '/Requests\/sec/ {r=$2} /Latency ms/ {p=$8} END {print r, p}'
}

median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else printf "%.1f\n", (a[NR/2]+a[NR/2+1])/2}'; }

declare -A results
workloads=(
  "put-1c|put --clients 1 --conns 1 --total $PUT1_TOTAL --key-size 8 --val-size 256 --key-space-size 100000"
  "put-1c-follower|put --clients 1 --conns 1 --total $PUT1_TOTAL --key-size 8 --val-size 256 --key-space-size 100000"
  "put-64c8n|put --clients 64 --conns 8 --total $PUT64_TOTAL --key-size 8 --val-size 256 --key-space-size 100000"
  "range-s|range --clients 64 --conns 8 --total $RANGE_TOTAL --consistency s"
  "range-l|range --clients 64 --conns 8 --total $RANGE_TOTAL --consistency l"
  "watch-10k|watch --streams 100 --watchers-per-stream 100 --conns 8 --total $WATCH_PUTS --put-rate 100"
  "lease-keepalive|lease-keepalive --clients 64 --conns 8 --total $KEEPALIVE_TOTAL"
)
# WORKLOADS="put-1c range-l" keeps only the named workloads.
if [ -n "${WORKLOADS:-}" ]; then
  kept=()
  for w in "${workloads[@]}"; do
    for want in $WORKLOADS; do [ "${w%%|*}" = "$want" ] && kept+=("$w"); done
  done
  workloads=("${kept[@]}")
fi
for round in $(seq 1 "$ROUNDS"); do
  for w in "${workloads[@]}"; do
    name=${w%%|*}; args=${w#*|}
    e_eps=$etcd_eps; m_eps=$ms_eps
    if [ "$MEMBERS" -gt 1 ]; then
      case $name in
        put-1c) e_eps=$(first "$etcd_eps" leader); m_eps=$(first "$ms_eps" leader) ;;
        put-1c-follower) e_eps=$(first "$etcd_eps" follower); m_eps=$(first "$ms_eps" follower) ;;
      esac
    elif [ "$name" = put-1c-follower ]; then
      continue
    fi
    # shellcheck disable=SC2086
    read -r e ep99 < <(bench "$e_eps" $args); read -r m mp99 < <(bench "$m_eps" $args)
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
echo "($MEMBERS member(s) each, $ROUNDS rounds, etcd $("$ETCD" --version | head -1 | awk '{print $3}'), $(nproc) cores)"
