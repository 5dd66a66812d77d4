#!/usr/bin/env bash
# `npm run image`: builds the repository's Dockerfile into localhost/action-proxy, with podman or docker,
# whichever is installed. The base is the Dockerfile's (node:24-alpine) unless PROXY_IMAGE_BASE names
# another; PROXY_IMAGE_BASE=stand-in assembles and uses the local stand-in (image/stand-in-base.sh) for
# machines that can't reach a registry. A CA bundle named by NODE_EXTRA_CA_CERTS is handed to the build
# (for TLS-inspecting proxies), never copied into the image.
set -euo pipefail
cd "$(dirname "$0")/.."
engine=$(command -v podman || command -v docker || true)
if [ -z "$engine" ]; then
  echo "npm run image needs a container engine: neither podman nor docker is installed (Debian: apt-get install podman runc)." >&2
  exit 1
fi
engine=$(basename "$engine")
args=(build --tag localhost/action-proxy:latest)
# podman on this kind of machine: runc (crun refuses hybrid cgroups) and rlimits it may not raise.
if [ "$engine" = podman ]; then args+=(--runtime runc --ulimit nofile=1024:1024 --ulimit nproc=1024:1024); fi
base=${PROXY_IMAGE_BASE:-}
# `npm run test:image`: the Dockerfile's own base when it can be had, else the stand-in, said out loud.
if [ "${1:-}" = --stand-in-if-needed ] && [ -z "$base" ]; then
  default=$(sed -n 's/^ARG BASE=//p' Dockerfile)
  if ! "$engine" image exists "$default" 2> /dev/null && ! timeout 120 "$engine" pull -q "$default" > /dev/null 2>&1; then
    echo "== $default can't be pulled here: building on the local stand-in base instead (image/stand-in-base.sh)" >&2
    base=stand-in
  fi
fi
if [ "$base" = stand-in ]; then
  bash image/stand-in-base.sh "$engine"
  base=localhost/action-proxy-base:node24
fi
if [ -n "$base" ]; then args+=(--build-arg "BASE=$base"); fi
if [ -n "${NODE_EXTRA_CA_CERTS:-}" ] && [ -f "$NODE_EXTRA_CA_CERTS" ]; then
  args+=(--volume "$NODE_EXTRA_CA_CERTS:/run/extra-ca.crt:ro" --build-arg NODE_EXTRA_CA_CERTS=/run/extra-ca.crt)
fi
echo "== $engine ${args[*]} ." >&2
"$engine" "${args[@]}" .
