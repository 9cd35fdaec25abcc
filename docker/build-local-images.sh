#!/usr/bin/env bash
# Build the images docker/compose.yml runs, without Docker Hub.
#
#   docker/build-local-images.sh            (as root or a member of the docker group)
#
# 1. fedalign-local/python:bookworm - a Debian bookworm root made with
#    debootstrap (python3, python3-venv, ca-certificates) and `docker import`ed;
#    the host's CA bundle replaces Debian's so that pip inside the builds
#    trusts what the host trusts (e.g. a proxy's CA).
# 2. flwr/superlink:1.42.0, flwr/supernode:1.42.0, flwr/superexec:1.42.0 -
#    docker/flwr-local.Dockerfile: flwr 1.42.0 from PyPI, user `app`, the
#    official entrypoints, tagged with the official names. An image of that
#    name that this script did not build (a pulled official one) is kept.
# 3. fedalign/superexec:0.1.0-flwr1.42.0 - docker/Dockerfile on top of (2).
#
# On a machine that can pull the official images, none of this is needed:
# `docker compose ... up --build` pulls (2) and builds (3).
#
# Caches, kept between runs (CI clones afresh each time):
#   FEDALIGN_IMAGE_CACHE (default /var/cache/fedalign; not FEDALIGN_CACHE, the data cache)
#     base-<suite>.tar  the debootstrapped root (debootstrap only runs once)
#     wheels/           a wheelhouse of flwr, torch and the other dependencies,
#                       filled by the host's pip (`pip download`), served to the
#                       builds over http://127.0.0.1:$WHEELHOUSE_PORT (they use
#                       --network host); PyPI stays their index for the rest.
#   Docker's own layer cache: an unchanged step is not run again.
#
# Environment: TORCH_INDEX_URL (default https://pypi.org/simple: the PyTorch
# CPU index is not reachable everywhere; PyPI's wheels are CUDA-enabled and
# bigger, but run on CPUs), FLWR_VERSION (1.42.0), SUITE (bookworm),
# DEBIAN_MIRROR, CA_BUNDLE (/etc/ssl/certs/ca-certificates.crt),
# WHEELHOUSE_PORT (8765), NO_WHEELHOUSE=1 (let pip download everything),
# HOST_PIP (python3 -m pip).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
FLWR_VERSION="${FLWR_VERSION:-1.42.0}"
SUITE="${SUITE:-bookworm}"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
CACHE="${FEDALIGN_IMAGE_CACHE:-/var/cache/fedalign}"
CA_BUNDLE="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
TORCH_INDEX_URL="${TORCH_INDEX_URL:-https://pypi.org/simple}"
WHEELHOUSE_PORT="${WHEELHOUSE_PORT:-8765}"
HOST_PIP="${HOST_PIP:-python3 -m pip}"
BASE_IMAGE="fedalign-local/python:$SUITE"
OWN_IMAGE="fedalign/superexec:0.1.0-flwr$FLWR_VERSION"
LABEL="org.fedalign.local-build"

log() { printf '[build-local-images %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
has_image() { docker image inspect "$1" >/dev/null 2>&1; }
timed() {  # timed WHAT CMD...: run CMD, log how long it took
  local what="$1" start=$SECONDS
  shift
  "$@"
  log "$what: $((SECONDS - start)) s"
}

docker info >/dev/null 2>&1 || { echo "build-local-images.sh: no Docker daemon reachable (docker info failed)" >&2; exit 1; }
mkdir -p "$CACHE"

# ---------------------------------------------------------------- 1. base image
ca_sum="$(sha256sum "$CA_BUNDLE" | cut -c1-12)"
base_tar="$CACHE/base-$SUITE-ca$ca_sum.tar"
make_base() {
  if [[ ! -s "$base_tar" ]]; then
    command -v debootstrap >/dev/null || { echo "build-local-images.sh: needs debootstrap (apt-get install debootstrap)" >&2; exit 1; }
    local root
    root="$(mktemp -d "$CACHE/rootfs.XXXXXX")"
    log "debootstrap $SUITE into $root"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
      "$SUITE" "$root" "$DEBIAN_MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
      || { tail -20 "$CACHE/debootstrap.log" >&2; exit 1; }
    cp "$CA_BUNDLE" "$root/etc/ssl/certs/ca-certificates.crt"
    # pip's own CA bundle (certifi) would not know the host's extra CAs.
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$root/etc/pip.conf"
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -cf "$base_tar.part" . && mv "$base_tar.part" "$base_tar"
    rm -rf "$root"
  fi
  docker import --change 'CMD ["/bin/bash"]' --change 'ENV LANG=C.UTF-8' \
    -m "debootstrap $SUITE minbase + python3, python3-venv (fedalign build-local-images.sh)" \
    "$base_tar" "$BASE_IMAGE" >/dev/null
  docker image tag "$BASE_IMAGE" "$BASE_IMAGE-ca$ca_sum"
}
if has_image "$BASE_IMAGE-ca$ca_sum"; then
  log "$BASE_IMAGE: present"
else
  timed "$BASE_IMAGE (base image)" make_base
fi

# ------------------------------------------------------------------- wheelhouse
find_links=""
server_pid=""
cleanup() { if [[ -n "$server_pid" ]]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi; }
trap cleanup EXIT
if [[ "${NO_WHEELHOUSE:-0}" != 1 ]]; then
  wheels="$CACHE/wheels"
  mkdir -p "$wheels"
  # The same requirements the images install; pip download skips what is already there.
  reqs="$(mktemp)"
  python3 - "$repo/pyproject.toml" "$FLWR_VERSION" >"$reqs" <<'EOF'
import sys, tomllib
deps = tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]
print(f"flwr=={sys.argv[2]}")
print("\n".join(d.replace("flwr[simulation]", "flwr") for d in deps))
EOF
  # The host's pip config applies (its CA, and local indexes where it has them).
  # A stamp per requirements list: resolving again costs minutes on a busy machine.
  stamp="$wheels/.complete-$(sha256sum "$reqs" | cut -c1-16)"
  if [[ -e "$stamp" ]] || { timed "wheelhouse $wheels" $HOST_PIP download --disable-pip-version-check \
       --dest "$wheels" -r "$reqs" >"$CACHE/pip-download.log" 2>&1 && touch "$stamp"; }; then
    python3 -m http.server "$WHEELHOUSE_PORT" --bind 127.0.0.1 --directory "$wheels" >/dev/null 2>&1 &
    server_pid=$!
    for _ in $(seq 50); do
      python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$WHEELHOUSE_PORT/')" 2>/dev/null && break
      sleep 0.1
    done
    find_links="http://127.0.0.1:$WHEELHOUSE_PORT/"
  else
    log "pip download failed (see $CACHE/pip-download.log); the builds download from the index instead"
  fi
  rm -f "$reqs"
fi
# Build contexts hold only what the Dockerfiles COPY (the legacy builder ignores
# docker/Dockerfile.dockerignore and would send a whole checkout, .venv included).
contexts="$(mktemp -d)"
trap 'cleanup; rm -rf "$contexts"' EXIT
mkdir -p "$contexts/empty" "$contexts/fedalign"
cp "$repo/pyproject.toml" "$contexts/fedalign/"
tar -C "$repo" --exclude=__pycache__ --exclude='*.pyc' -cf - fedalign | tar -C "$contexts/fedalign" -xf -
build() {  # build IMAGE DOCKER-BUILD-ARGS...: docker build with the wheelhouse, quiet unless it fails
  local image="$1" out="$contexts/build.log"
  shift
  if ! docker build --network host --build-arg PIP_FIND_LINKS="$find_links" -t "$image" "$@" >"$out" 2>&1; then
    tail -40 "$out" >&2
    echo "build-local-images.sh: building $image failed" >&2
    exit 1
  fi
}

# --------------------------------------------------------------- 2. flwr images
for component in superlink supernode superexec; do
  image="flwr/$component:$FLWR_VERSION"
  if has_image "$image" && [[ -z "$(docker image inspect -f "{{ index .Config.Labels \"$LABEL\" }}" "$image" 2>/dev/null | grep -v '^<no value>$')" ]]; then
    log "$image: present and not built here (an official image?): kept"
    continue
  fi
  timed "$image" build "$image" -f "$here/flwr-local.Dockerfile" --target "$component" \
    --build-arg BASE_IMAGE="$BASE_IMAGE-ca$ca_sum" --build-arg FLWR_VERSION="$FLWR_VERSION" \
    --label "$LABEL=$SUITE" "$contexts/empty"
done

# ------------------------------------------------------------ 3. fedalign image
timed "$OWN_IMAGE" build "$OWN_IMAGE" -f "$here/Dockerfile" \
  --build-arg TORCH_INDEX_URL="$TORCH_INDEX_URL" "$contexts/fedalign"
docker image ls --format '{{.Repository}}:{{.Tag}}\t{{.Size}}' \
  | grep -E "^(flwr/super(link|node|exec):$FLWR_VERSION|$OWN_IMAGE|$BASE_IMAGE)\b" >&2 || true
