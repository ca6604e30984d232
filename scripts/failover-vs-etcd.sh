#!/usr/bin/env bash
# Failover benchmark: MetaStore against the real etcd 3.5.1, same machine, same run.
#
# Each round starts a fresh 3-member cluster of each server, starts a steady writer (a put every
# PUT_INTERVAL seconds, each one its own `etcdctl put` through the two members that will survive,
# allowed COMMAND_TIMEOUT to finish, sent whether or not the previous one finished), kills the
# leader with SIGKILL, and keeps writing for AFTER seconds. It reports, per server, the median over
# ROUNDS of:
#   first ack  time from the kill to the first acknowledged put sent after it;
#   failed     puts that returned an error (all of them, before and after the kill);
#   slowest    the longest a put sent after the kill waited for its answer.
# The servers alternate (etcd round 1, MetaStore round 1, etcd round 2, ...) so that background load
# on a shared machine falls on both. The client is etcd's own etcdctl 3.5.1 for both.
#
#   ROUNDS=5 scripts/failover-vs-etcd.sh
#   BIN=$CARGO_TARGET_DIR/debug/metastore ROUNDS=3 scripts/failover-vs-etcd.sh   # no release build
set -euo pipefail
cd "$(dirname "$0")/.."
ETCD="$(./scripts/etcd-reference.sh)"
ETCDCTL="$(dirname "$ETCD")/etcdctl"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/metastore/target}"
if [ -z "${BIN:-}" ]; then
  cargo build --release --bin metastore >&2
  BIN="$CARGO_TARGET_DIR/release/metastore"
fi
ROUNDS="${ROUNDS:-5}"
PUT_INTERVAL="${PUT_INTERVAL:-0.2}"
COMMAND_TIMEOUT="${COMMAND_TIMEOUT:-10s}"
BEFORE="${BEFORE:-2}"
AFTER="${AFTER:-8}"
CLIENT_PORT=24379; PEER_PORT=24380

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

start_cluster() { # server(etcd|metastore) dir -> starts 3 members, pids in members[]
  local server=$1 dir=$2 cluster="" i
  members=()
  for i in 0 1 2; do cluster+="${cluster:+,}m$i=http://127.0.0.1:$((PEER_PORT + 10 * i))"; done
  for i in 0 1 2; do
    local c=$((CLIENT_PORT + 10 * i)) p=$((PEER_PORT + 10 * i)) exe=$ETCD
    [ "$server" = metastore ] && exe=$BIN
    "$exe" --name "m$i" --data-dir "$dir/m$i" \
      --listen-client-urls "http://127.0.0.1:$c" --advertise-client-urls "http://127.0.0.1:$c" \
      --listen-peer-urls "http://127.0.0.1:$p" --initial-advertise-peer-urls "http://127.0.0.1:$p" \
      --initial-cluster "$cluster" --initial-cluster-token "failover-$server" \
      >"$dir/m$i.log" 2>&1 &
    members+=($!); pids+=($!)
  done
  local all="127.0.0.1:$CLIENT_PORT,127.0.0.1:$((CLIENT_PORT + 10)),127.0.0.1:$((CLIENT_PORT + 20))"
  for _ in $(seq 1 150); do
    "$ETCDCTL" --endpoints="$all" put failover-ready 1 >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "$server cluster did not come up; logs in $dir" >&2
  return 1
}

leader_index() { # -> 0, 1 or 2: the member that leads
  local i
  for i in 0 1 2; do
    if "$ETCDCTL" --endpoints="127.0.0.1:$((CLIENT_PORT + 10 * i))" endpoint status -w json 2>/dev/null |
      python3 -c 'import json,sys; s=json.load(sys.stdin)[0]["Status"]; sys.exit(0 if s["leader"]==s["header"]["member_id"] else 1)'; then
      echo "$i"; return 0
    fi
  done
  return 1
}

now_ms() { echo $(( $(date +%s%N) / 1000000 )); }

one_round() { # server round -> prints "first_ack_s failed slowest_s"
  local server=$1 dir="$work/$1-$2"
  mkdir -p "$dir"
  start_cluster "$server" "$dir"
  local leader; leader=$(leader_index)
  local survivors="" i
  for i in 0 1 2; do
    [ "$i" = "$leader" ] || survivors+="${survivors:+,}127.0.0.1:$((CLIENT_PORT + 10 * i))"
  done
  local log="$dir/puts" n=0 kill_at="" start end
  : >"$log"
  start=$(now_ms); end=$((start + (BEFORE + AFTER) * 1000))
  while [ "$(now_ms)" -lt "$end" ]; do
    if [ -z "$kill_at" ] && [ "$(now_ms)" -ge $((start + BEFORE * 1000)) ]; then
      kill_at=$(now_ms)
      kill -9 "${members[$leader]}"
      wait "${members[$leader]}" 2>/dev/null || true
    fi
    n=$((n + 1))
    (
      s=$(now_ms)
      if "$ETCDCTL" --endpoints="$survivors" --command-timeout="$COMMAND_TIMEOUT" put "k$n" v >/dev/null 2>"$dir/err$n"; then r=ok; else r=fail; fi
      echo "$r $s $(now_ms)" >>"$log"
    ) &
    sleep "$PUT_INTERVAL"
  done
  wait_writers
  for p in "${members[@]}"; do kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  python3 - "$log" "$kill_at" <<'EOF'
import sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
kill = int(sys.argv[2]) / 1000
rows = [(r, int(s) / 1000, int(e) / 1000) for r, s, e in rows]
after = [(r, s, e) for r, s, e in rows if s >= kill]
acks = [e for r, s, e in after if r == "ok"]
first = min(acks) - kill if acks else float("nan")
failed = sum(1 for r, _, _ in rows if r == "fail")
slowest = max((e - s for _, s, e in after), default=float("nan"))
print(f"{first:.2f} {failed} {slowest:.2f}")
EOF
}

wait_writers() { # the puts still running (each ends within COMMAND_TIMEOUT)
  local j
  for j in $(jobs -p); do
    case " ${pids[*]} " in *" $j "*) ;; *) wait "$j" 2>/dev/null || true ;; esac
  done
}

median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else printf "%.2f\n", (a[NR/2]+a[NR/2+1])/2}'; }

declare -A first failed slowest
for round in $(seq 1 "$ROUNDS"); do
  for server in etcd metastore; do
    one_round "$server" "$round" >"$work/result"
    read -r f x s <"$work/result"
    first[$server]+="$f "; failed[$server]+="$x "; slowest[$server]+="$s "
    echo "round $round $server: first ack ${f} s after the kill, ${x} failed puts, slowest put ${s} s" >&2
  done
done

printf '\n| server | first ack after kill (s) | failed puts | slowest put sent after kill (s) |\n|---|---:|---:|---:|\n'
for server in etcd metastore; do
  printf '| %s | %s | %s | %s |\n' "$server" \
    "$(echo "${first[$server]}" | tr ' ' '\n' | grep . | median)" \
    "$(echo "${failed[$server]}" | tr ' ' '\n' | grep . | median)" \
    "$(echo "${slowest[$server]}" | tr ' ' '\n' | grep . | median)"
done
echo "(medians of $ROUNDS rounds; 3 members each; a put every ${PUT_INTERVAL} s through the 2 survivors, etcdctl 3.5.1 --command-timeout=$COMMAND_TIMEOUT; etcd $("$ETCD" --version | head -1 | awk '{print $3}'); metastore $BIN; $(nproc) cores)"
