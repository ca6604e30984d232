#!/usr/bin/env bash
# Benchmarks MetaStore against the real etcd on this machine, in the same run: etcd 3.5.1 (the
# PyPI wheel, installed by scripts/etcd-reference.sh) and Debian's etcd 3.4.23 (unpacked by
# scripts/etcd-3.4.sh) as a second opinion. Every server runs single-member (or MEMBERS=3:
# 3-member clusters), durable (fsync on commit), on fresh data dirs, and is driven by the same load
# generator (`metastore bench`). Workloads run alternately (etcd 3.5, etcd 3.4, metastore, etcd 3.5,
# ...) ROUNDS times, and the table shows per-server medians of requests/sec, p50 and p99 latency and
# the server CPU time per request: user + system time of the server processes over the workload
# (from /proc/PID/stat), divided by the requests it served. On a shared machine the load generator
# competes with the server for the same cores, so throughput alone misleads; CPU per request does
# not. For the watch workloads (100 and 10,000 watchers; latency from a put's send to each
# watcher's delivery of its event) a request is an event delivered to one watcher.
#
# A member alone of etcd 3.5.1 answers a write before its WAL fsync has finished (it applies
# committed entries while the same entries are being saved: etcd-io/etcd#14370, fixed in 3.5.5 and
# 3.4.21); 3.4.23 and MetaStore answer after it. So in single-member runs 3.5.1's write latency
# (put-1c, and the watch workloads, whose latency starts at a put's send) is not a durable one;
# 3.4.23's is. Clusters of 3 are not affected (an entry commits only once a quorum saved it).
#
#   ROUNDS=3 PUT1_TOTAL=2000 PUT64_TOTAL=40000 RANGE_TOTAL=100000 scripts/bench-vs-etcd.sh
#   MEMBERS=3 WORKLOADS="put-1c put-64c8n range-l" scripts/bench-vs-etcd.sh
#   BIN=path/to/metastore scripts/bench-vs-etcd.sh      # no release build
#   ETCD34= scripts/bench-vs-etcd.sh                   # without etcd 3.4.23
#
# A second, independent load generator: CHECK_PERF=1 also runs etcd's own `etcdctl check perf`
# (etcdctl 3.5.1, --load s: 150 puts/s for 60 s with 50 clients) against each server once and
# prints its verdict and figures.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
ETCD35="$(./scripts/etcd-reference.sh)"
ETCDCTL="$(dirname "$ETCD35")/etcdctl"
ETCD34="${ETCD34-$(./scripts/etcd-3.4.sh)}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/metastore/target}"
if [ -z "${BIN:-}" ]; then
  cargo build --release --bin metastore >&2
  BIN="$CARGO_TARGET_DIR/release/metastore"
fi

ROUNDS="${ROUNDS:-3}"
PUT1_TOTAL="${PUT1_TOTAL:-2000}"
PUT64_TOTAL="${PUT64_TOTAL:-40000}"
RANGE_TOTAL="${RANGE_TOTAL:-100000}"
TXN_TOTAL="${TXN_TOTAL:-40000}"
WATCH_PUTS="${WATCH_PUTS:-200}"
KEEPALIVE_TOTAL="${KEEPALIVE_TOTAL:-50000}"
MEMBERS="${MEMBERS:-1}"
TICKS_PER_SEC=$(getconf CLK_TCK)

# The servers: name, binary. etcd 3.4 only when its binary is there.
names=(etcd-3.5.1); bins=("$ETCD35")
if [ -n "$ETCD34" ] && [ -x "$ETCD34" ]; then names+=(etcd-3.4); bins+=("$ETCD34"); fi
names+=(metastore); bins+=("$BIN")

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

declare -A eps server_pids
for s in "${!names[@]}"; do
  name=${names[$s]}; exe=${bins[$s]}; cluster=""; list=""
  for i in $(seq 0 $((MEMBERS - 1))); do
    peer=$((24001 + 1000 * s + 10 * i))
    cluster+="${cluster:+,}${name}-$i=http://127.0.0.1:$peer"
  done
  for i in $(seq 0 $((MEMBERS - 1))); do
    client=$((24000 + 1000 * s + 10 * i)); peer=$((client + 1))
    extra=()
    [ "$name" = metastore ] && extra=(--engine rocksdb)
    "$exe" --name "${name}-$i" --data-dir "$work/$name-$i" "${extra[@]}" \
      --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
      --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
      --initial-cluster "$cluster" --quota-backend-bytes 8589934592 >"$work/$name-$i.log" 2>&1 &
    pids+=($!); server_pids[$name]+="$! "
    list+="${list:+,}127.0.0.1:$client"
  done
  eps[$name]=$list
done

for name in "${names[@]}"; do
  for _ in $(seq 1 150); do
    "$ETCDCTL" --endpoints="${eps[$name]}" put bench-ready 1 >/dev/null 2>&1 && continue 2
    sleep 0.2
  done
  echo "$name did not come up; its log:" >&2; cat "$work/$name-0.log" >&2; exit 1
done

# A single-connection client talks to the first endpoint only, and which member leads differs
# between the clusters (and between runs): a put through a follower is forwarded to the leader,
# one more hop. So with MEMBERS > 1 the single-client workloads are run twice on each cluster, once
# with the leader first (put-1c) and once with a follower first (put-1c-follower), and each
# compares like with like.
leader_of() { # endpoints -> the endpoint of the member that leads
  "$ETCDCTL" --endpoints="$1" endpoint status -w fields 2>/dev/null |
    awk -F' : ' '$1 == "\"MemberID\"" {m=$2} $1 == "\"Leader\"" {l=$2} $1 == "\"Endpoint\"" {if (l == m) {gsub(/"/, "", $2); print $2; exit}}'
}
first() { # endpoints role(leader|follower) -> the endpoints, one of that role first
  local list=$1 leader
  leader=$(leader_of "$list")
  if [ -z "$leader" ]; then echo "$list"; return; fi
  if [ "$2" = leader ]; then
    echo "$leader,$(echo "$list" | tr ',' '\n' | grep -vx "$leader" | paste -sd,)"
  else
    echo "$(echo "$list" | tr ',' '\n' | grep -vx "$leader" | paste -sd,),$leader"
  fi
}

cpu_ticks() { # server name -> user + system clock ticks of its processes so far
  local t=0 p
  for p in ${server_pids[$1]}; do
    t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$t"
}

bench() { # server endpoints workload args... -> prints "requests/sec p50-ms p99-ms cpu-us-per-request"
  local name=$1 list=$2; shift 2
  local before after out
  before=$(cpu_ticks "$name")
  out=$("$BIN" bench "$@" --endpoints "$list")
  after=$(cpu_ticks "$name")
  echo "$out" | awk -v ticks=$((after - before)) -v hz="$TICKS_PER_SEC" '
    /Total:/ {secs=$2} /Requests\/sec/ {r=$2} /Latency ms/ {p50=$4; p99=$8}
    END {n = r * secs; printf "%s %s %s %.1f\n", r, p50, p99, (n > 0 ? ticks / hz * 1e6 / n : 0)}'
}

median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else printf "%.3f\n", (a[NR/2]+a[NR/2+1])/2}'; }

declare -A results
workloads=(
  "put-1c|put --clients 1 --conns 1 --total $PUT1_TOTAL --key-size 8 --val-size 256 --key-space-size 100000"
  "put-1c-follower|put --clients 1 --conns 1 --total $PUT1_TOTAL --key-size 8 --val-size 256 --key-space-size 100000"
  "put-64c8n|put --clients 64 --conns 8 --total $PUT64_TOTAL --key-size 8 --val-size 256 --key-space-size 100000"
  "range-s|range --clients 64 --conns 8 --total $RANGE_TOTAL --consistency s"
  "range-l|range --clients 64 --conns 8 --total $RANGE_TOTAL --consistency l"
  "txn-64c8n|txn --clients 64 --conns 8 --total $TXN_TOTAL --key-size 8 --val-size 256 --key-space-size 100000"
  "watch-100|watch --streams 10 --watchers-per-stream 10 --conns 8 --total $WATCH_PUTS --put-rate 100"
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
    wname=${w%%|*}; args=${w#*|}
    [ "$MEMBERS" -eq 1 ] && [ "$wname" = put-1c-follower ] && continue
    line="round $round $wname:"
    for name in "${names[@]}"; do
      list=${eps[$name]}
      if [ "$MEMBERS" -gt 1 ]; then
        case $wname in
          put-1c) list=$(first "$list" leader) ;;
          put-1c-follower) list=$(first "$list" follower) ;;
        esac
      fi
      # shellcheck disable=SC2086
      read -r r p50 p99 cpu < <(bench "$name" "$list" $args)
      results["$wname/$name/r"]+="$r "; results["$wname/$name/p50"]+="$p50 "
      results["$wname/$name/p99"]+="$p99 "; results["$wname/$name/cpu"]+="$cpu "
      line+=" $name $r req/s p50 $p50 p99 $p99 ms ${cpu} us CPU/req;"
    done
    echo "$line" >&2
  done
done

med() { echo "${results[$1]}" | tr ' ' '\n' | grep . | median; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2fx", (b > 0 ? a / b : 0)}'; }
header="| workload |"; rule="|---|"
for name in "${names[@]}"; do
  header+=" $name req/s | p50 ms | p99 ms | CPU µs/req |"; rule+="---:|---:|---:|---:|"
done
header+=" metastore / etcd-3.5.1 req/s | CPU/req |"; rule+="---:|---:|"
printf '\n%s\n%s\n' "$header" "$rule"
for w in "${workloads[@]}"; do
  wname=${w%%|*}
  [ "$MEMBERS" -eq 1 ] && [ "$wname" = put-1c-follower ] && continue
  row="| $wname |"
  for name in "${names[@]}"; do
    row+=" $(med "$wname/$name/r") | $(med "$wname/$name/p50") | $(med "$wname/$name/p99") | $(med "$wname/$name/cpu") |"
  done
  row+=" $(ratio "$(med "$wname/metastore/r")" "$(med "$wname/etcd-3.5.1/r")") |"
  row+=" $(ratio "$(med "$wname/metastore/cpu")" "$(med "$wname/etcd-3.5.1/cpu")") |"
  echo "$row"
done
echo "($MEMBERS member(s) each, medians of $ROUNDS rounds, $(nproc) cores; metastore $BIN)"

if [ -n "${CHECK_PERF:-}" ]; then
  for name in "${names[@]}"; do
    echo "== etcdctl check perf --load s against $name" >&2
    "$ETCDCTL" --endpoints="${eps[$name]}" check perf --load s 2>&1 | tail -6 || true
  done
fi
