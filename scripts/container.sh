#!/usr/bin/env bash
# Build and run the service container with podman on a machine without a Docker engine or registry.
#
#   scripts/container.sh conf             write the project's containers.conf; print its path
#   scripts/container.sh base [--rebuild] build the local base image (debootstrap bookworm + python3)
#   scripts/container.sh build [ARGS...]  conf + base + `podman build` of ./Dockerfile (ARGS go to podman)
#                                         as $GLASSES_IMAGE (default localhost/glasses-verdict:latest)
#   scripts/container.sh bento [ARGS...]  `bentoml build` + `bentoml containerize --backend podman`
#                                         (the Bento's own image; the model the registry resolves)
#   scripts/container.sh podman ARGS...   run podman with the project's containers.conf
#
# Nothing in /etc is changed: podman reads our settings through CONTAINERS_CONF. To use podman
# directly afterwards:  export CONTAINERS_CONF=$PWD/artifacts/container/containers.conf
set -euo pipefail
cd "$(dirname "$0")/.."

STATE_DIR=$PWD/artifacts/container                              # git- and docker-ignored
CONF="$STATE_DIR/containers.conf"
BASE_IMAGE=localhost/glasses-base:bookworm                        # the Dockerfile's default FROM
IMAGE=${GLASSES_IMAGE:-localhost/glasses-verdict:latest}
BENTO_IMAGE=localhost/glasses-verdict-bento:latest
LABEL=org.opencontainers.image.title=glasses-verdict                  # set in the Dockerfile
SUITE=bookworm
BASE_PACKAGES=python3,python3-venv,python3-pip,ca-certificates

die() { echo "container.sh: $*" >&2; exit 2; }

write_conf() {
  # runc: crun refuses a hybrid cgroup v1/v2 layout. Explicit ulimits: podman's defaults need
  # CAP_SYS_RESOURCE to raise, which a nested/sandboxed root may not have.
  mkdir -p "$STATE_DIR"
  cat >"$CONF" <<'EOF'
# Written by scripts/container.sh; used through CONTAINERS_CONF (nothing in /etc is changed).
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
EOF
  export CONTAINERS_CONF="$CONF"
}

apt_mirror() {
  # The Debian mirror this machine's apt uses for $SUITE (deb822 *.sources or one-line *.list).
  local f
  for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list /etc/apt/sources.list; do
    [ -f "$f" ] || continue
    case "$f" in
      *.sources)
        awk -v suite="$SUITE" '
          BEGIN { RS = ""; FS = "\n" }                          # one stanza per record
          {
            uri = ""; ok = 0
            for (i = 1; i <= NF; i++) {
              if ($i ~ /^URIs:/)   { split(substr($i, 6), u, " "); uri = u[1] }
              if ($i ~ /^Suites:/) { n = split(substr($i, 8), s, " "); for (j = 1; j <= n; j++) if (s[j] == suite) ok = 1 }
            }
            if (ok && uri != "") { print uri; exit }
          }' "$f" ;;
      *)
        awk -v suite="$SUITE" '
          $1 == "deb" { sub(/\[[^]]*\] */, ""); if ($3 == suite) { print $2; exit } }' "$f" ;;
    esac
  done | head -n1
}

build_base() {
  if [ "${1:-}" != "--rebuild" ] && podman image exists "$BASE_IMAGE"; then
    echo "container.sh: base image $BASE_IMAGE already exists (cached)"
    return
  fi
  command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"
  [ "$(id -u)" = 0 ] || die "building the base image needs root (debootstrap)"
  local mirror rootfs
  mirror=$(apt_mirror)
  [ -n "$mirror" ] || die "no apt source for '$SUITE' found in /etc/apt/sources.list.d/"
  rootfs=$(mktemp -d "$STATE_DIR/rootfs.XXXXXX")
  ROOTFS=$rootfs; trap 'rm -rf --one-file-system "$ROOTFS"' EXIT
  echo "container.sh: debootstrap --variant=minbase $SUITE from $mirror"
  # minbase is how debian:bookworm-slim is made; python3 & co. are resolved and installed inside.
  debootstrap --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$rootfs" "$mirror" >"$STATE_DIR/debootstrap.log" 2>&1 \
    || { tail -n 20 "$STATE_DIR/debootstrap.log" >&2; die "debootstrap failed (log: $STATE_DIR/debootstrap.log)"; }
  # This machine reaches PyPI through a TLS-inspecting proxy: trust its CA inside the image too.
  if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
  fi
  chroot "$rootfs" update-ca-certificates >>"$STATE_DIR/debootstrap.log" 2>&1
  # Slim like debian:bookworm-slim (debuerreotype's slimify): no package lists, caches, man pages,
  # translations or docs except the copyright files.
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
         "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/groff/* \
         "$rootfs"/usr/share/lintian/* "$rootfs"/var/log/*.log
  find "$rootfs"/usr/share/locale -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
  find "$rootfs"/usr/share/doc -mindepth 1 ! -type d ! -name copyright -delete
  find "$rootfs"/usr/share/doc -mindepth 1 -type d -empty -delete
  tar -C "$rootfs" -c . | podman import --quiet - "$BASE_IMAGE" >/dev/null
  echo "container.sh: imported $BASE_IMAGE"
}

build_image() {
  # --pull=never: the base is local. --network host: the build reaches PyPI and the apt mirror.
  # --format docker: the OCI image format has no HEALTHCHECK.
  podman build --pull=never --network host --format docker -t "$IMAGE" "$@" .
  podman image prune -f --filter "label=$LABEL" >/dev/null   # our superseded, untagged builds only
  podman image ls "$IMAGE"
}

containerize_bento() {
  # `bentoml build` + `bentoml containerize --backend podman`. BentoML's generated Dockerfile starts
  # FROM python:3.11-slim, which cannot be pulled here, so build from a copy of bentofile.yaml whose
  # docker.base_image is the local base; Debian's pip needs PIP_BREAK_SYSTEM_PACKAGES to install uv,
  # and uv needs SSL_CERT_FILE to trust this machine's proxy CA.
  local bentofile="$STATE_DIR/bentofile.podman.yaml"
  .venv/bin/python - "$bentofile" "$BASE_IMAGE" <<'PY'
import sys, yaml
out, base = sys.argv[1:]
cfg = yaml.safe_load(open("bentofile.yaml"))
cfg["docker"] = {"base_image": base}
cfg["envs"] = cfg.get("envs", []) + [{"name": "SSL_CERT_FILE", "value": "/etc/ssl/certs/ca-certificates.crt"},
                                     {"name": "PIP_BREAK_SYSTEM_PACKAGES", "value": "1"}]
yaml.safe_dump(cfg, open(out, "w"), sort_keys=False)
PY
  # An empty store gets the bundled default first, so the bento records a model (importing the
  # service never writes the store).
  .venv/bin/python -c "from glasses.registry import resolve; print('bento model:', *resolve())"
  .venv/bin/bentoml build -f "$bentofile" .
  .venv/bin/bentoml containerize --backend podman --opt network=host -t "$BENTO_IMAGE" glasses_verdict:latest "$@"
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  conf)   write_conf; echo "$CONF" ;;
  base)   command -v podman >/dev/null || die "podman is not installed"; write_conf; build_base "$@" ;;
  build)  command -v podman >/dev/null || die "podman is not installed"; write_conf; build_base
          build_image "$@" ;;
  bento)  command -v podman >/dev/null || die "podman is not installed"; write_conf; build_base
          containerize_bento "$@" ;;
  podman) write_conf; exec podman "$@" ;;
  *)      sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
