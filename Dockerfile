# The action proxy image: compiled JavaScript on Node 24 (LTS) alpine, the stub at /action/exec.

FROM node:24-alpine AS build
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json proxy.ts runner.ts zip.ts ./
COPY platforms platforms
# Only the proxy's own sources: the tests are not part of the image.
RUN npx tsc -p . \
 && mkdir -p /out/platforms \
 && cp dist/proxy.js dist/runner.js dist/zip.js /out/ \
 && cp dist/platforms/*.js /out/platforms/ \
 && echo '{"type":"module"}' > /out/package.json

FROM node:24-alpine
# bash for shell actions; npm and yarn are not needed to run the proxy.
RUN apk add --no-cache bash \
 && rm -rf /usr/local/lib/node_modules /usr/local/bin/npm /usr/local/bin/npx /usr/local/bin/corepack /opt/yarn* /usr/local/bin/yarn /usr/local/bin/yarnpkg
COPY --from=build /out /proxy
COPY action/exec /action/exec
ENV FLASK_PROXY_PORT 8080
EXPOSE 8080
CMD ["node", "/proxy/proxy.js"]
