# The action proxy image: the proxy as one compiled JavaScript file on Node 24 (LTS) alpine, the stub
# action at /action/exec.

FROM node:24-alpine AS build
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json proxy.ts runner.ts zip.ts ./
COPY platforms platforms
# One CommonJS file: loading one module instead of five starts the proxy faster (see the README).
RUN npm run --silent bundle

FROM node:24-alpine
# bash for shell actions; npm, npx, corepack and yarn are not needed to run the proxy.
RUN apk add --no-cache bash \
 && rm -rf /usr/local/lib/node_modules /usr/local/bin/npm /usr/local/bin/npx /usr/local/bin/corepack /opt/yarn* /usr/local/bin/yarn /usr/local/bin/yarnpkg
COPY --from=build /src/dist/proxy.cjs /proxy/proxy.cjs
COPY action/exec /action/exec
ENV FLASK_PROXY_PORT=8080
EXPOSE 8080
# A 2 MiB young generation: under sustained load Node 24 otherwise grows it to 2 x 64 MiB and keeps it
# (RSS after 10,000 activations: 76-83 MiB with the flag, 158-188 MiB without; start-up within noise).
CMD ["node", "--max-semi-space-size=2", "/proxy/proxy.cjs"]
