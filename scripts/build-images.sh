#!/usr/bin/env bash
# Builds the project's images with podman/buildah (no Docker engine, no image registry needed)
# and runs the tests inside the CPU one. docker/README.md has the measured results.
#
#   scripts/build-images.sh [STEP...]       default: base cpu test
#
#   base        a Debian bookworm base image from Debian's own packages (debootstrap), unless
#               BASE is set or localhost/debian:bookworm-min exists already
#   cpu         docker/Dockerfile.cpu   -> $CPU_TAG  (default localhost/lamo-scale-cpu:local)
#   test        the fast test subset (pytest -m "not slow") inside the CPU image, as its user
#   quickstart  `lamo-scale quickstart` on tiny settings inside the CPU image
#   gpu         docker/Dockerfile on the same base -> $GPU_TAG (every step but CUDA itself)
#   all         base cpu test quickstart gpu
#
# Environment: BASE (a base image; default: the debootstrap one, built by `base`), CONTEXT (the
# build context; default: this checkout, as it is, uncommitted edits included), PYTEST_ARGS
# (default: -m "not slow" tests), TORCH_WHEELS (a folder holding the torch CPU wheel; default: this
# machine's pip find-links, when it has one, else PyTorch's CPU index is used as the Dockerfile says).
#
# podman run does not work on these machines (crun cannot set RLIMIT_NOFILE), so commands run
# in the image through `buildah run --isolation chroot`, and builds use --isolation chroot.
set -euo pipefail
cd "$(dirname "$0")/.."

LOCAL_BASE=localhost/debian:bookworm-min
BASE="${BASE:-$LOCAL_BASE}"
CPU_TAG="${CPU_TAG:-localhost/lamo-scale-cpu:local}"
GPU_TAG="${GPU_TAG:-localhost/lamo-scale-gpu:local}"
CONTEXT="${CONTEXT:-.}"
PYTEST_ARGS="${PYTEST_ARGS:--m 'not slow' tests}"
NICE=(nice -n "${NICE_LEVEL:-10}")
OFFLINE=(-e HF_HUB_OFFLINE=1 -e HF_DATASETS_OFFLINE=1 -e MLFLOW_DISABLE_TELEMETRY=true -e TOKENIZERS_PARALLELISM=false)

need() { command -v "$1" >/dev/null || { echo "$1 is missing: apt-get install -y podman buildah debootstrap" >&2; exit 2; }; }
log() { echo "== $*" >&2; }
elapsed() { echo $(( $(date +%s) - $1 ))s; }

# pip settings of this machine that the build needs: its wheel store for the torch CPU wheel (and
# the CA bundle of its TLS proxy). They are mounted for the build only, never copied into a layer.
PIP_BUILD=()
pip_build_args() {
  local py="${PYTHON:-python3}" dir cert
  dir="${TORCH_WHEELS:-$("$py" -m pip config get global.find-links 2>/dev/null || true)}"
  dir="${dir%% *}"
  if [ -n "$dir" ] && [ -d "$dir" ] && compgen -G "$dir/torch-$(grep -E '^torch==' "$CONTEXT/constraints.txt" | cut -d= -f3)*.whl" >/dev/null; then
    PIP_BUILD+=(-v "$dir:/build/wheels:ro" --build-arg PIP_FIND_LINKS=/build/wheels --build-arg PIP_EXTRA_INDEX_URL=)
  fi
  cert="${PIP_CERT:-$("$py" -m pip config get global.cert 2>/dev/null || echo "${REQUESTS_CA_BUNDLE:-}")}"
  if [ -n "$cert" ] && [ -f "$cert" ]; then
    PIP_BUILD+=(-v "$cert:/build/ca.crt:ro" --build-arg PIP_CERT=/build/ca.crt)
  fi
}

step_base() {
  if [ "$BASE" != "$LOCAL_BASE" ] || podman image exists "$LOCAL_BASE"; then
    log "base: using $BASE"; return
  fi
  need debootstrap
  local t=$(date +%s) root
  root="$(mktemp -d /tmp/bookworm-rootfs.XXXXXX)"
  log "base: debootstrap --variant=minbase bookworm -> $LOCAL_BASE"
  "${NICE[@]}" debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >/dev/null
  tar -C "$root" -c . | podman import - "$LOCAL_BASE" >/dev/null
  rm -rf "$root"
  log "base: done in $(elapsed "$t")"
}

build() {  # build DOCKERFILE TAG
  local t=$(date +%s)
  log "build $1 (BASE=$BASE, context $CONTEXT) -> $2"
  "${NICE[@]}" podman build --isolation chroot --layers --build-arg "BASE=$BASE" "${PIP_BUILD[@]}" \
    -f "$CONTEXT/$1" -t "$2" "$CONTEXT"
  log "built $2 in $(elapsed "$t"), $(podman image inspect --format '{{.Size}}' "$2" | awk '{printf "%.2f GB", $1/1e9}')"
}

in_image() {  # in_image TAG COMMAND: run COMMAND (bash) in a throwaway container of TAG as its user
  local c rc=0
  c="$(buildah from --pull=never "$1")"
  "${NICE[@]}" buildah run --isolation chroot --user 10001:10001 --workingdir /home/lamo/lamo_scale \
    "${OFFLINE[@]}" -e HOME=/home/lamo "$c" -- bash -c "$2" || rc=$?
  buildah rm "$c" >/dev/null
  return "$rc"
}

[ $# -gt 0 ] || set -- base cpu test
[ "$*" = all ] && set -- base cpu test quickstart gpu
need podman; need buildah
pip_build_args
for step in "$@"; do
  case "$step" in
    base) step_base ;;
    cpu) build docker/Dockerfile.cpu "$CPU_TAG" ;;
    gpu) build docker/Dockerfile "$GPU_TAG" ;;
    test)
      t=$(date +%s); log "test: python -m pytest -q -rs $PYTEST_ARGS (in $CPU_TAG)"
      in_image "$CPU_TAG" "python -m pytest -q -rs -p no:cacheprovider $PYTEST_ARGS"
      log "test: passed in $(elapsed "$t")" ;;
    quickstart)
      t=$(date +%s); log "quickstart on tiny settings (in $CPU_TAG)"
      in_image "$CPU_TAG" "cd /tmp && lamo-scale quickstart --collect-steps 3000 model.backbone=tiny-gpt2 \
        model.pretrained=false model.tiny_layers=2 model.tiny_width=32 model.tiny_heads=2 train.steps=20"
      log "quickstart: passed in $(elapsed "$t")" ;;
    *) echo "unknown step: $step (base cpu test quickstart gpu all)" >&2; exit 2 ;;
  esac
done
