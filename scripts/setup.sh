#!/usr/bin/env bash
# One set-up command for a fresh machine: a virtualenv with every pinned dependency, plus podman
# (for the container test) and haproxy (two-replica test) when we are root on Debian. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

python3.11 -m venv .venv 2>/dev/null || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip setuptools wheel
# `.[gpu,train,dev]` instead of `.[cpu,train,dev]` on a machine with an NVIDIA GPU.
.venv/bin/python -m pip install --quiet -e ".[cpu,train,dev]"

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  if ! command -v podman >/dev/null || ! command -v debootstrap >/dev/null || ! command -v runc >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap >/dev/null \
      || echo "setup: could not install podman/runc/debootstrap; the container test will skip" >&2
  fi
  if ! command -v haproxy >/dev/null; then  # the two-replica test behind a load balancer (tests/test_replicas.py)
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >/dev/null \
      || echo "setup: could not install haproxy; the two-replica test will skip" >&2
  fi
fi
echo "setup: done (.venv ready)"
