# The action proxy image: the proxy as one compiled JavaScript file on Node 24 (LTS), the stub action at
# /action/exec, tini as PID 1.
#
# BASE is the Node 24 image to build on: the official one by default. Any image with node, npm and a
# POSIX shell works; one that has no apk must bring bash and tini itself (the test suite builds on such a
# local stand-in, see the README's "The image").
ARG BASE=node:24-alpine

FROM ${BASE} AS build
WORKDIR /src
COPY package.json package-lock.json ./
# Only for builds behind a TLS-inspecting proxy: a CA bundle handed in as the build secret `ca`
# (`--secret id=ca,src=/etc/ssl/certs/ca-certificates.crt`, docker and podman alike; image/build.sh does
# it for NODE_EXTRA_CA_CERTS). It is mounted for this step only: no layer of any image has it.
RUN --mount=type=secret,id=ca sh -c '[ -f /run/secrets/ca ] && export NODE_EXTRA_CA_CERTS=/run/secrets/ca; npm ci --no-audit --no-fund'
COPY tsconfig.json *.ts codecache.js ./
COPY platforms platforms
COPY executors executors
# One CommonJS file: loading one module instead of a dozen starts the proxy faster (see the README).
RUN npm run --silent bundle

# The slim image (tagged :latest): the proxy, node, bash and tini.
FROM ${BASE} AS slim
# bash for shell actions. tini as PID 1: Node reaps only the processes it started, so an action's orphans
# (`(sleep 1 &)`) would stay zombies and use up the container's PIDs. npm, npx, corepack and yarn are not
# needed to run the proxy.
RUN if command -v apk > /dev/null; then apk add --no-cache bash tini; fi \
 && command -v bash > /dev/null && command -v tini > /dev/null \
 && rm -rf /usr/local/lib/node_modules /usr/local/bin/npm /usr/local/bin/npx /usr/local/bin/corepack /opt/yarn* /usr/local/bin/yarn /usr/local/bin/yarnpkg
COPY --from=build /src/dist/proxy.cjs /proxy/proxy.cjs
COPY image/entrypoint.sh /proxy/entrypoint
COPY action/exec /action/exec
# V8's caches of the proxy's compiled code, made here by what a cold start runs: the proxy starts, answers
# an /init and a /run, and exits. Both are only read at run time (the root may be read-only).
# - Node's compile cache (Node 22.1+): what V8 compiles when the file loads. Node keys it by user: it is
#   root's, the image's user; a container run as another user starts without it.
# - The proxy's code cache (codecache.js): also the functions the /init and the /run compiled, for any
#   user. The first answer comes 3-6 ms sooner with the first, and 2-5 ms more with the second (of ~55).
ENV NODE_COMPILE_CACHE=/proxy/compile-cache PROXY_CODE_CACHE=/proxy/code-cache
RUN PROXY_CODE_CACHE_WRITE=1 node --max-semi-space-size=2 --min-semi-space-size=2 --no-maglev /proxy/proxy.cjs & proxy=$! \
 && node -e "const post = (path, body, then) => require('http').request({ port: 8080, method: 'POST', path }, (r) => r.resume().on('end', then)).on('error', () => setTimeout(post, 20, path, body, then)).end(body); post('/init', JSON.stringify({ value: { code: require('fs').readFileSync('/action/exec', 'utf8') } }), () => post('/run', '{}', () => process.exit()));" \
 && kill -TERM $proxy && wait $proxy \
 && ls /proxy/compile-cache/*/ > /dev/null && test -s /proxy/code-cache
ENV FLASK_PROXY_PORT=8080
EXPOSE 8080
# tini forwards SIGTERM to the proxy, which lets running activations finish, and exits with its code.
# /proxy/entrypoint hands arguments that start with '-' (-compile, --version) to the proxy.
ENTRYPOINT ["tini", "--", "/proxy/entrypoint"]
# A 2 MiB young generation: under sustained load Node 24 otherwise grows it to 2 x 64 MiB and keeps it
# (RSS after 10,000 activations: 76-83 MiB with the flag, 158-188 MiB without; start-up within noise).
# And 2 MiB from the start, the size any load grows it to: V8 would start at 1 MiB and collect it once
# during a cold start, on the main thread and its helper threads, while the first activation's process
# runs on these same cores (the cold start 4-7% nearer the spawn floor's, and less memory idle).
# No Maglev, V8's middle compiler: what it compiles and its compilations' memory stay (loop mode, 8
# clients: 18 MiB of anonymous memory without it, 28 with; the same latency and throughput). The flags
# are the build step's above too: V8 uses a code cache only under the flags it was made with.
CMD ["node", "--max-semi-space-size=2", "--min-semi-space-size=2", "--no-maglev", "/proxy/proxy.cjs"]

# :skeleton, what openwhisk/dockerskeleton gives `--native` scripts besides bash: a script written for it
# (`#!/usr/bin/env python3`, `| jq`, `curl`) runs unchanged.
FROM slim AS skeleton
RUN if command -v apk > /dev/null; then \
      apk add --no-cache python3 perl jq curl wget zip unzip git openssl ca-certificates sed openssh-client; \
    else \
      apt-get update && apt-get install -y --no-install-recommends python3 perl jq curl wget zip unzip git openssl ca-certificates sed openssh-client \
      && rm -rf /var/lib/apt/lists/*; \
    fi

# :latest, the default target: the slim image as it is.
FROM slim AS latest
