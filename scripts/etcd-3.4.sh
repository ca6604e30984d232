#!/usr/bin/env bash
# Installs Debian's etcd 3.4.23 (packages etcd-server and etcd-client: `etcd` and `etcdctl`) into
# $HOME/.cache/metastore/etcd-3.4/ if it is not there yet, and prints the path of its `etcd`.
# The packages are unpacked, not installed: installing etcd-server would start a system etcd
# service on port 2379, the port MetaStore's own server uses. Idempotent.
set -euo pipefail
dest="$HOME/.cache/metastore/etcd-3.4"
bin="$dest/usr/bin/etcd"
if [ ! -x "$bin" ] || [ ! -x "$dest/usr/bin/etcdctl" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  echo "unpacking Debian's etcd-server and etcd-client into $dest" >&2
  if ! (cd "$tmp" && apt-get download etcd-server etcd-client >/dev/null 2>&1); then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo=sudo
    $sudo apt-get update -qq
    (cd "$tmp" && apt-get download etcd-server etcd-client >/dev/null)
  fi
  rm -rf "$dest.partial"
  mkdir -p "$dest.partial"
  for deb in "$tmp"/*.deb; do dpkg-deb -x "$deb" "$dest.partial"; done
  rm -rf "$dest"
  mv "$dest.partial" "$dest"
fi
# Read the whole answer before matching: `grep -q` stops at the first line, and under pipefail the
# SIGPIPE etcd then gets writing the rest failed this check now and then (a CI run of a325011).
version="$("$bin" --version)"
grep -q 'etcd Version: 3.4' <<<"$version" || { echo "$bin is not etcd 3.4" >&2; exit 1; }
echo "$bin"
