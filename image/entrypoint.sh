#!/bin/sh
# The image's entry point, under tini. Arguments that start with '-' are the proxy's own, as Go's
# actionloop images take them (`podman run -i IMAGE -compile main < src.zip > main.zip`, `--version`);
# anything else is a command to run (the default: the proxy as a server).
case "${1:-}" in
  -*) exec node --max-semi-space-size=2 --min-semi-space-size=2 --no-maglev /proxy/proxy.cjs "$@" ;;
esac
exec "$@"
