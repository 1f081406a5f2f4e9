#!/usr/bin/env bash
# One set-up command for a fresh machine: a virtualenv with every pinned dependency, plus podman
# (for the container test), chromium (browser tests) and haproxy (two-replica test) when we are root on Debian.
# Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

python3.11 -m venv .venv 2>/dev/null || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip setuptools wheel
# `.[gpu,train,dev]` instead of `.[cpu,train,dev]` on a machine with an NVIDIA GPU.
.venv/bin/python -m pip install --quiet -e ".[cpu,train,dev]"
# The face detector (framing="face" versions, glasses/faces.py): one file from the mediapipe wheel.
.venv/bin/python scripts/fetch_face_detector.py

# As root on Debian: podman/runc/debootstrap (the container test) and Debian's chromium with its
# matching chromedriver (the browser tests and scripts/screenshots.py), haproxy (tests/test_replicas.py);
# each test skips without them.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  missing=""
  for pair in podman:podman runc:runc debootstrap:debootstrap chromium:chromium chromedriver:chromium-driver \
              haproxy:haproxy; do
    command -v "${pair%%:*}" >/dev/null || missing="$missing ${pair#*:}"
  done
  if [ -n "$missing" ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null \
      || echo "setup: could not install$missing; the tests that need them will skip" >&2
  fi
fi
echo "setup: done (.venv ready)"
