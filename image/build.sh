#!/usr/bin/env bash
# `npm run image [-- tag...]`: builds the images with podman or docker, whichever is installed (or the one
# PROXY_IMAGE_ENGINE names): localhost/action-proxy:latest and :skeleton from the repository's Dockerfile,
# :python and :nodejs from examples/python and examples/nodejs (FROM :latest). Without tags, all four.
# The base is the Dockerfile's (node:24-alpine) unless PROXY_IMAGE_BASE names another;
# PROXY_IMAGE_BASE=stand-in assembles and uses the local stand-in (image/stand-in-base.sh) for machines
# that can't reach a registry. A CA bundle named by NODE_EXTRA_CA_CERTS is handed to the builds as the
# build secret `ca` (for TLS-inspecting proxies), never copied into an image.
set -euo pipefail
cd "$(dirname "$0")/.."
engine=${PROXY_IMAGE_ENGINE:-$(command -v podman || command -v docker || true)}
if [ -z "$engine" ]; then
  echo "npm run image needs a container engine: neither podman nor docker is installed (Debian: apt-get install podman runc)." >&2
  exit 1
fi
engine=$(basename "$engine")
common=(build)
# podman on this kind of machine: runc (crun refuses hybrid cgroups) and rlimits it may not raise.
if [ "$engine" = podman ]; then common+=(--runtime runc --ulimit nofile=1024:1024 --ulimit nproc=1024:1024); fi
if [ -n "${NODE_EXTRA_CA_CERTS:-}" ] && [ -f "$NODE_EXTRA_CA_CERTS" ]; then common+=(--secret "id=ca,src=$NODE_EXTRA_CA_CERTS"); fi
base=${PROXY_IMAGE_BASE:-}
# `npm run test:image`: the Dockerfile's own base when it can be had, else the stand-in, said out loud.
if [ "${1:-}" = --stand-in-if-needed ]; then
  shift
  if [ -z "$base" ]; then
    default=$(sed -n 's/^ARG BASE=//p' Dockerfile)
    if ! "$engine" image inspect "$default" > /dev/null 2>&1 && ! timeout 120 "$engine" pull -q "$default" > /dev/null 2>&1; then
      echo "== $default can't be pulled here: building on the local stand-in base instead (image/stand-in-base.sh)" >&2
      base=stand-in
    fi
  fi
fi
if [ "$base" = stand-in ]; then
  bash image/stand-in-base.sh "$engine"
  base=localhost/action-proxy-base:node24
fi
base_arg=()
if [ -n "$base" ]; then base_arg=(--build-arg "BASE=$base"); fi
tags=("$@")
if [ ${#tags[@]} -eq 0 ]; then tags=(latest skeleton python nodejs); fi
for tag in "${tags[@]}"; do
  case "$tag" in
    latest | skeleton) args=("${common[@]}" "${base_arg[@]}" --target "$tag" --tag "localhost/action-proxy:$tag" .) ;;
    python | nodejs) args=("${common[@]}" "${base_arg[@]}" --tag "localhost/action-proxy:$tag" "examples/$tag") ;;
    *) echo "unknown tag '$tag': latest, skeleton, python or nodejs" >&2; exit 2 ;;
  esac
  echo "== $engine ${args[*]}" >&2
  "$engine" "${args[@]}"
done
