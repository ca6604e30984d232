#!/usr/bin/env bash
# Peak memory (VmHWM) of a 3-member cluster's members while a learner joins and must be sent a
# snapshot of PUTS x 100 KiB values (default 3000, ~300 MB): the snapshot path must not grow with
# the data. The three are restarted after loading so their peaks count from there.
#   PUTS=6000 scripts/snapshot-memory.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/metastore/target}"
cargo build --release --bin metastore >&2
BIN="$CARGO_TARGET_DIR/release/metastore"
PUTS="${PUTS:-3000}"
D=$(mktemp -d)
trap 'pkill -f "data-dir $D" || true; sleep 3; rm -rf "$D"' EXIT
client() { echo "http://127.0.0.1:$((23790 + $1 * 100))"; }
peer() { echo "http://127.0.0.1:$((23800 + $1 * 100))"; }
IC="m0=$(peer 0),m1=$(peer 1),m2=$(peer 2)"
start() { # index, initial cluster, state
  "$BIN" --name "m$1" --data-dir "$D/m$1" --listen-client-urls "$(client "$1")" \
    --advertise-client-urls "$(client "$1")" --listen-peer-urls "$(peer "$1")" \
    --initial-advertise-peer-urls "$(peer "$1")" --initial-cluster "$2" \
    --initial-cluster-state "$3" --initial-cluster-token snapmem --snapshot-count 1000 \
    --quota-backend-bytes 8000000000 >>"$D/m$1.log" 2>&1 &
}
peak() { grep VmHWM "/proc/$(pgrep -f -- "--data-dir $D/m$1 ")/status" | awk '{printf "%.0f MiB\n", $2 / 1024}'; }
count() {
  ETCDCTL_API=3 etcdctl --endpoints="$1" get "" --prefix --keys-only --limit=1 --consistency=s -w json 2>/dev/null |
    python3 -c 'import json,sys; print(json.load(sys.stdin).get("count",0))' 2>/dev/null || echo 0
}
for i in 0 1 2; do start "$i" "$IC" new; done
sleep 3
"$BIN" bench --endpoints "$(client 0)" put --clients 8 --conns 2 --total "$PUTS" --key-size 8 \
  --val-size 102400 --key-space-size "$PUTS" | tail -1
pkill -f "data-dir $D/m"; sleep 6
for i in 0 1 2; do start "$i" "$IC" new; done
sleep 4
for i in 0 1 2; do echo "m$i after restart: $(peak "$i")"; done
ETCDCTL_API=3 etcdctl --endpoints="$(client 0)" member add m3 --learner --peer-urls="$(peer 3)" >/dev/null
start 3 "$IC,m3=$(peer 3)" existing
want=$(count "$(client 0)")
for t in $(seq 1 300); do
  [ "$(count "$(client 3)")" = "$want" ] && break
  sleep 1
done
echo "learner has all $want keys after ${t} s"
for i in 0 1 2 3; do echo "m$i after the learner caught up: $(peak "$i")"; done
grep -h "installed a snapshot" "$D/m3.log" | sed 's/.*installed/installed/' | head -1
