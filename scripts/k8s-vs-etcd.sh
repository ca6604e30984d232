#!/usr/bin/env bash
# The Kubernetes-shaped workload (`metastore bench k8s`: optimistic creates/updates/deletes as
# Txns on mod_revision, paginated lists, count-only ranges, one watch per resource with progress
# requests, events on leases of TTL 3660 s, the apiserver's compactor) against etcd 3.5.1 and
# MetaStore, one server at a time, single member, durable, on a fresh data dir for each object
# count. For each of OBJECTS (default "10000 100000") it prints per operation the throughput and
# p99 latency of both servers side by side with the ratio MetaStore / etcd, the watch delivery
# (from a write's send to its event's arrival), the operations per second in all, and the server
# CPU time per operation: user + system time of the server process (from /proc/PID/stat) over the
# timed phase only (the bench prints a line when it starts and one when it ends; the preload and
# the initial lists are left out), divided by the operations answered. The workload's own
# consistency verdict (list pages, watch order, no acknowledged write missing from its watch) is
# printed for each server; a failed verdict is reported, not fatal.
#
#   scripts/k8s-vs-etcd.sh                                # builds the release binary
#   OBJECTS=10000 DURATION=20 BIN=path/to/metastore scripts/k8s-vs-etcd.sh
#   SERVERS=metastore OBJECTS=100000 BIN=... scripts/k8s-vs-etcd.sh   # only one of the two
#   BENCH_ARGS="--compact-interval-secs 5 --mix create=1,update=9" scripts/k8s-vs-etcd.sh
#
# The machine is shared by server and load generator: compare the columns of one run.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
ETCD35="$(./scripts/etcd-reference.sh)"
ETCDCTL="$(dirname "$ETCD35")/etcdctl"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/metastore/target}"
if [ -z "${BIN:-}" ]; then
  cargo build --release --bin metastore >&2
  BIN="$CARGO_TARGET_DIR/release/metastore"
fi
OBJECTS="${OBJECTS:-10000 100000}"
DURATION="${DURATION:-30}"
CLIENTS="${CLIENTS:-64}"
CONNS="${CONNS:-8}"
SERVERS="${SERVERS:-etcd-3.5.1 metastore}"
BENCH_ARGS="${BENCH_ARGS:-}"
CLIENT=127.0.0.1:24950
PEER=127.0.0.1:24951
TICKS_PER_SEC=$(getconf CLK_TCK)

work=$(mktemp -d)
pid=""
bench_pid=""
cleanup() {
  [ -n "$bench_pid" ] && kill "$bench_pid" 2>/dev/null
  [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

start() { # server name, data dir -> starts it on the fixed ports; sets $pid
  local name=$1 dir=$2 exe extra=()
  if [ "$name" = metastore ]; then exe=$BIN; extra=(--engine rocksdb); else exe=$ETCD35; fi
  "$exe" --name "$name" --data-dir "$dir" "${extra[@]}" \
    --listen-client-urls "http://$CLIENT" --advertise-client-urls "http://$CLIENT" \
    --listen-peer-urls "http://$PEER" --initial-advertise-peer-urls "http://$PEER" \
    --initial-cluster "$name=http://$PEER" --quota-backend-bytes 8589934592 \
    >>"$dir.log" 2>&1 &
  pid=$!
  local deadline=$(($(date +%s) + 120))
  until "$ETCDCTL" --endpoints="http://$CLIENT" --command-timeout=2s get k8s-ready >/dev/null 2>&1; do
    if [ "$(date +%s)" -gt "$deadline" ] || ! kill -0 "$pid" 2>/dev/null; then
      echo "$name did not become healthy; its log:" >&2; tail -30 "$dir.log" >&2; exit 1
    fi
    sleep 0.1
  done
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }

wait_for_line() { # file, text -> returns once the file has the line (or the bench has exited)
  until grep -q "$2" "$1"; do
    kill -0 "$bench_pid" 2>/dev/null || return 1
    sleep 0.02
  done
}

declare -A res
for n in $OBJECTS; do
  for name in $SERVERS; do
    echo "== $name, $n objects" >&2
    dir="$work/$name-$n"
    start "$name" "$dir"
    out="$dir.bench"
    # shellcheck disable=SC2086
    "$BIN" bench k8s --endpoints "$CLIENT" --clients "$CLIENTS" --conns "$CONNS" \
      --objects "$n" --duration-secs "$DURATION" --timeout-ms 60000 $BENCH_ARGS >"$out" 2>&1 &
    bench_pid=$!
    before=0; after=0
    if wait_for_line "$out" "Timed phase: started"; then before=$(cpu_ticks); fi
    if wait_for_line "$out" "Timed phase: done"; then after=$(cpu_ticks); fi
    status=0; wait "$bench_pid" || status=$?; bench_pid=""
    sed 's/^/    /' "$out" >&2
    if [ "$status" -ne 0 ] && ! grep -q "Summary (K8s" "$out"; then
      echo "the bench against $name failed" >&2; exit 1
    fi
    key="$n/$name"
    while read -r op ops p99; do
      res[$key/$op/ops]=$ops; res[$key/$op/p99]=$p99
    done < <(awk '(NF == 8 && $1 != "op") || $1 == "watch-event" {print $1, $3, $5}' "$out")
    res[$key/total]=$(awk '/Requests\/sec/ {print $2}' "$out")
    res[$key/cpu]=$(awk -v t=$((after - before)) -v hz="$TICKS_PER_SEC" '
      /Operations:/ {n = $2} END {printf "%.1f", (n > 0 ? t / hz * 1e6 / n : 0)}' "$out")
    res[$key/check]=$(awk '/Consistency:/ {$1 = ""; sub(/^ +/, ""); print}' "$out")
    res[$key/errors]=$(awk '/Errors:/ {print $2}' "$out")
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
  done
done

get() { echo "${res[$1]:--}"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (a == "-" || b == "-" || b + 0 == 0) print "-"; else printf "%.2fx", a / b}'; }
names=($SERVERS)
for n in $OBJECTS; do
  header="| $n objects |"; rule="|---|"
  for name in "${names[@]}"; do header+=" $name ops/s | p99 ms |"; rule+="---:|---:|"; done
  if [ ${#names[@]} -eq 2 ]; then header+=" ops/s ${names[1]} / ${names[0]} | p99 |"; rule+="---:|---:|"; fi
  printf '\n%s\n%s\n' "$header" "$rule"
  for op in create update delete get list list-all count event lease-grant compact watch-event; do
    row="| $op |"
    for name in "${names[@]}"; do
      row+=" $(get "$n/$name/$op/ops") | $(get "$n/$name/$op/p99") |"
    done
    if [ ${#names[@]} -eq 2 ]; then
      # Lease grants and compactions follow a schedule, not the load: no throughput ratio.
      case $op in
        lease-grant | compact) row+=" - |" ;;
        *) row+=" $(ratio "$(get "$n/${names[1]}/$op/ops")" "$(get "$n/${names[0]}/$op/ops")") |" ;;
      esac
      row+=" $(ratio "$(get "$n/${names[1]}/$op/p99")" "$(get "$n/${names[0]}/$op/p99")") |"
    fi
    echo "$row"
  done
  for what in "all operations (ops/s)|total" "server CPU per operation (µs)|cpu"; do
    label=${what%%|*}; k=${what#*|}
    row="| $label |"
    for name in "${names[@]}"; do row+=" $(get "$n/$name/$k") | |"; done
    if [ ${#names[@]} -eq 2 ]; then
      row+=" $(ratio "$(get "$n/${names[1]}/$k")" "$(get "$n/${names[0]}/$k")") | |"
    fi
    echo "$row"
  done
  for name in "${names[@]}"; do
    echo "$name, $n objects: consistency $(get "$n/$name/check"), errors $(get "$n/$name/errors")"
  done
done
echo "(single member each, $CLIENTS clients on $CONNS connections, ${DURATION} s per run, $(nproc) cores; metastore $BIN)"
