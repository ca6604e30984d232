#!/usr/bin/env bash
# Scale benchmark: N keys (default 1,000,000) × 256-byte values loaded into etcd 3.5.1 and into
# MetaStore, one server at a time (single member, durable, fresh data dir), and the same
# measurements taken on each, side by side:
#
#   load puts/s          `metastore bench put`, 64 clients on 8 connections, key n = the n-th put
#   RSS after load       VmRSS of the server process
#   data dir             du of the data dir after the load
#   keys-only range      `etcdctl get "" --prefix --keys-only` (output discarded): seconds, and the
#                        server's peak RSS while serving it (VmHWM, reset just before the request
#                        through /proc/PID/clear_refs); meanwhile one client puts, one put at a
#                        time (`bench put --clients 1`, 1000 puts): its longest put shows whether
#                        writes wait for the range
#   range stream         MetaStore only (etcd 3.7's `KV.RangeStream`, which 3.5 lacks): the whole
#                        prefix with values through `metastore bench list --stream`, which checks
#                        that the chunks add up to the count; seconds and peak RSS as above. Run
#                        first, before a whole range's answer has grown the server's heap
#   full range           the same with values (FULL_RANGE=0 skips it: at N=1M the answer is 280 MB)
#   count-only range     `etcdctl get "" --prefix --count-only`: seconds
#   kill -9 → healthy    from SIGKILL to the first successful linearizable read of the restarted
#                        server (restarted at once, same flags and data dir)
#   RSS after restart    VmRSS once healthy again
#   compact everything   `etcdctl compact <head> --physical`: seconds until the physical half is done
#   new member catch-up  then `etcdctl member add` a second member and start it on an empty data
#                        dir, then a third the same way: seconds from its start until it serves
#                        all N keys (serializable count-only reads of its own), the peak RSS of the
#                        loaded member and of the new one meanwhile. Both servers send the new
#                        member a snapshot (the log before it was compacted away long ago).
#                        CATCH_UP=0 skips it.
#
#   scripts/scale-vs-etcd.sh                        # N=1000000, builds the release binary
#   N=200000 BIN=path/to/metastore scripts/scale-vs-etcd.sh
#   SERVERS=metastore N=200000 BIN=... scripts/scale-vs-etcd.sh   # only one of the two
#   N=10000000 QUOTA=17179869184 FULL_RANGE=0 scripts/scale-vs-etcd.sh   # 10M keys (~10 GiB)
#
# QUOTA is both servers' --quota-backend-bytes (default 8 GiB; etcd's bbolt file passes it near
# 10M keys). WORK is the parent of the data dirs (default: mktemp's).
#
# Timings include etcdctl's own work (decoding the answer, printing keys to /dev/null), the same
# for both servers. The machine is shared by server, client and loader: compare the columns of one
# run, not figures of different runs.
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
N="${N:-1000000}"
KEY_SIZE="${KEY_SIZE:-16}"
VAL_SIZE="${VAL_SIZE:-256}"
FULL_RANGE="${FULL_RANGE:-1}"
CATCH_UP="${CATCH_UP:-1}"
QUOTA="${QUOTA:-8589934592}"
SERVERS="${SERVERS:-etcd-3.5.1 metastore}"
CLIENT=127.0.0.1:24900
PEER=127.0.0.1:24901

work=$(mktemp -d ${WORK:+-p "$WORK"})
pid=""
joined=()
cleanup() {
  for p in "$pid" "${joined[@]}"; do [ -n "$p" ] && kill -9 "$p" 2>/dev/null; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.2f", b - a}'; }
mb() { awk -v k="$1" 'BEGIN {printf "%.0f", k / 1024}'; }
status_kb() { awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/status"; }
ctl() { "$ETCDCTL" --endpoints="http://$CLIENT" --command-timeout=600s "$@"; }

exe_of() { # server name -> its binary and engine flags
  if [ "$1" = metastore ]; then echo "$BIN --engine rocksdb"; else echo "$ETCD35"; fi
}

start() { # server name -> starts it on the fixed ports with data dir $work/$name; sets $pid
  local name=$1
  # shellcheck disable=SC2046
  $(exe_of "$name") --name "$name" --data-dir "$work/$name" \
    --listen-client-urls "http://$CLIENT" --advertise-client-urls "http://$CLIENT" \
    --listen-peer-urls "http://$PEER" --initial-advertise-peer-urls "http://$PEER" \
    --initial-cluster "$name=http://$PEER" --quota-backend-bytes "$QUOTA" \
    >>"$work/$name.log" 2>&1 &
  pid=$!
}

catch_up() { # server name, new member number (2, 3) -> sets $caught "seconds leader-MB new-MB"
  # (not run in a subshell: the new member must stay this shell's child, in $joined)
  local name=$1 n=$2 client="127.0.0.1:$((24900 + 10 * $2))" peer="127.0.0.1:$((24901 + 10 * $2))"
  local cluster="" t0 newpid secs deadline count
  # etcd adds a voter only once every voter has been connected for 5 s (else "unhealthy cluster").
  deadline=$(($(date +%s) + 60))
  until cluster=$(ctl member add "$name-$n" --peer-urls="http://$peer" 2>>"$work/member-add.err" |
    awk -F'"' '/ETCD_INITIAL_CLUSTER=/ {print $2}') && [ -n "$cluster" ]; do
    if [ "$(date +%s)" -gt "$deadline" ]; then
      echo "$name: member add refused:" >&2; tail -3 "$work/member-add.err" >&2; exit 1
    fi
    sleep 1
  done
  echo 5 >"/proc/$pid/clear_refs"
  t0=$(now)
  # shellcheck disable=SC2046
  $(exe_of "$name") --name "$name-$n" --data-dir "$work/$name-$n" \
    --listen-client-urls "http://$client" --advertise-client-urls "http://$client" \
    --listen-peer-urls "http://$peer" --initial-advertise-peer-urls "http://$peer" \
    --initial-cluster "$cluster" --initial-cluster-state existing \
    --quota-backend-bytes "$QUOTA" >>"$work/$name-$n.log" 2>&1 &
  newpid=$!
  joined+=("$newpid")
  deadline=$(($(date +%s) + 600))
  until count=$("$ETCDCTL" --endpoints="http://$client" --command-timeout=5s get "" --prefix \
    --count-only --consistency=s -w fields 2>/dev/null |
    awk -F' : ' '$1 == "\"Count\"" {print $2}') && [ -n "$count" ] && [ "$count" -ge "$N" ]; do
    if [ "$(date +%s)" -gt "$deadline" ] || ! kill -0 "$newpid" 2>/dev/null; then
      echo "$name-$n did not catch up; its log:" >&2; tail -30 "$work/$name-$n.log" >&2; exit 1
    fi
    sleep 0.1
  done
  secs=$(since "$t0")
  caught="$secs $(mb "$(status_kb "$pid" VmHWM)") $(mb "$(status_kb "$newpid" VmHWM)")"
}

wait_healthy() { # -> returns once a linearizable read succeeds (10 minutes at most)
  local deadline=$(($(date +%s) + 600))
  until ctl --command-timeout=2s get scale-ready >/dev/null 2>&1; do
    if [ "$(date +%s)" -gt "$deadline" ] || ! kill -0 "$pid" 2>/dev/null; then
      echo "server did not become healthy; its log:" >&2; tail -30 "$work"/*.log >&2; exit 1
    fi
    sleep 0.05
  done
}

peak_during() { # command... -> runs it, prints "seconds peak-RSS-MB longest-put-ms" of the
  # server meanwhile, while a single client puts (its longest put, until the range is answered)
  local t0 secs peak writer
  "$BIN" bench put --endpoints "$CLIENT" --clients 1 --total 1000 --key-size "$KEY_SIZE" \
    --val-size "$VAL_SIZE" --key-space-size 100 >"$work/writer.out" &
  writer=$!
  sleep 0.3
  echo 5 >"/proc/$pid/clear_refs"
  t0=$(now)
  "$@" >/dev/null
  secs=$(since "$t0")
  peak=$(mb "$(status_kb "$pid" VmHWM)")
  wait "$writer"
  echo "$secs $peak $(awk '/Latency ms/ {print $10}' "$work/writer.out")"
}

declare -A row
for name in $SERVERS; do
  echo "== $name: loading $N keys" >&2
  start "$name"
  wait_healthy
  out=$("$BIN" bench put --endpoints "$CLIENT" --clients 64 --conns 8 --total "$N" \
    --key-size "$KEY_SIZE" --val-size "$VAL_SIZE" --key-space-size "$N" --sequential-keys \
    --timeout-ms 60000)
  row[$name/load]=$(echo "$out" | awk '/Requests\/sec/ {printf "%.0f", $2}')
  sleep 2
  row[$name/rss]=$(mb "$(status_kb "$pid" VmRSS)")
  row[$name/du]=$(du -sm "$work/$name" | cut -f1)
  count=$(ctl get "" --prefix --count-only -w fields | awk -F' : ' '$1 == "\"Count\"" {print $2}')
  if [ "$count" -lt "$N" ]; then echo "$name holds $count keys, not $N" >&2; exit 1; fi

  echo "== $name: ranges" >&2
  if [ "$name" = metastore ]; then
    row[$name/stream]=$(peak_during "$BIN" bench list --endpoints "$CLIENT" --stream --total 1 \
      --timeout-ms 600000)
  fi
  row[$name/keys]=$(peak_during ctl get "" --prefix --keys-only)
  if [ "$FULL_RANGE" = 1 ]; then row[$name/full]=$(peak_during ctl get "" --prefix); fi
  t0=$(now); ctl get "" --prefix --count-only -w fields >/dev/null; row[$name/count]=$(since "$t0")

  echo "== $name: kill -9 and restart" >&2
  t0=$(now)
  kill -9 "$pid"; wait "$pid" 2>/dev/null || true
  start "$name"
  wait_healthy
  row[$name/restart]=$(since "$t0")
  sleep 2
  row[$name/rss2]=$(mb "$(status_kb "$pid" VmRSS)")

  echo "== $name: compact everything" >&2
  head=$(ctl get scale-ready -w fields | awk -F' : ' '$1 == "\"Revision\"" {print $2}')
  t0=$(now); ctl compact "$head" --physical >/dev/null; row[$name/compact]=$(since "$t0")

  if [ "$CATCH_UP" = 1 ]; then
    echo "== $name: a second and a third member catch up" >&2
    catch_up "$name" 2
    row[$name/join2]=$caught
    catch_up "$name" 3
    row[$name/join3]=$caught
  fi
  for p in "${joined[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  joined=()
  kill "$pid"; wait 2>/dev/null || true; pid=""
done

get() { echo "${row[$1]:--}"; }
pair() { local v; v=$(get "$1"); [ "$v" = - ] && echo - || echo "$v" | awk '{print $1 " / " $2}'; }
third() { local v; v=$(get "$1"); [ "$v" = - ] && echo - || echo "$v" | awk '{print $3}'; }
names=($SERVERS)
header="| N = $N keys × $VAL_SIZE B |"; rule="|---|"
for name in "${names[@]}"; do header+=" $name |"; rule+="---:|"; done
printf '\n%s\n%s\n' "$header" "$rule"
line() { # label key [pair]
  local r="| $1 |" name
  for name in "${names[@]}"; do
    case ${3:-} in
      pair) r+=" $(pair "$name/$2") |" ;;
      third) r+=" $(third "$name/$2") |" ;;
      new) r+=" $(get "$name/$2" | awk '{print $1 " / " $3}') |" ;;
      leader) r+=" $(get "$name/join2" | awk '{print $2}') / $(get "$name/join3" | awk '{print $2}') |" ;;
      *) r+=" $(get "$name/$2") |" ;;
    esac
  done
  echo "$r"
}
line "load, 64 clients (puts/s)" load
line "RSS after load (MB)" rss
line "data dir (MB)" du
line "whole-prefix RangeStream with values (s) / peak RSS (MB)" stream pair
line "longest put meanwhile (ms)" stream third
line "whole-prefix keys-only range (s) / peak RSS (MB)" keys pair
line "longest put meanwhile (ms)" keys third
if [ "$FULL_RANGE" = 1 ]; then
  line "whole-prefix range with values (s) / peak RSS (MB)" full pair
  line "longest put meanwhile (ms)" full third
fi
line "count-only range (s)" count
line "kill -9 → healthy again (s)" restart
line "RSS after restart (MB)" rss2
line "compact everything (s)" compact
if [ "$CATCH_UP" = 1 ]; then
  line "2nd member catches up (s) / its peak RSS (MB)" join2 new
  line "3rd member catches up (s) / its peak RSS (MB)" join3 new
  line "loaded member's peak RSS meanwhile (MB): 2nd / 3rd" join leader
fi
echo "(single member each, one after the other, $(nproc) cores; metastore $BIN)"
