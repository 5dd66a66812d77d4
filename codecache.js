"use strict";
// V8's code cache of the whole proxy, taken after a cold start: the image's PROXY_CODE_CACHE.
//
// esbuild puts this file first in dist/proxy.cjs (its banner), so it runs at the top of the bundle's
// CommonJS module function, before any module of the proxy. It is plain JavaScript because it is
// spliced in as text.
//
// Node's compile cache (NODE_COMPILE_CACHE) holds only what V8 compiles when a file loads, and V8
// compiles most functions when they are first called: a cold proxy's first /init and /run compile about
// 160 of them. A cache made after they ran (vm.Script's createCachedData) holds them too. With
// PROXY_CODE_CACHE naming such a file, the bundle compiles its own text again with that cache and runs
// that copy instead of itself, with the same module, exports and require (it is still the main module).
// PROXY_CODE_CACHE_WRITE=1 makes the file instead: written at exit, after whatever the process ran.
// The cache is V8's: another Node version or other V8 flags reject it, and the proxy says so and starts
// without it. V8 checks only the length of the source it was made from, so the file's first line names
// the bundle it was made from (its size and modification time) and a cache of another build is not used.
if (process.env.PROXY_CODE_CACHE && !globalThis[Symbol.for("openwhisk-action-proxy.code-cache")]) {
  const { readFileSync, statSync, writeFileSync } = require("node:fs");
  const vm = require("node:vm");
  const file = process.env.PROXY_CODE_CACHE;
  const writing = process.env.PROXY_CODE_CACHE_WRITE === "1";
  const say = (line) => process.stderr.write(`${line}\n`);
  const bundle = statSync(__filename);
  const stamp = `openwhisk-action-proxy code cache of ${bundle.size} bytes modified at ${bundle.mtimeMs}\n`;
  let cachedData;
  try {
    if (!writing) {
      const data = readFileSync(file);
      if (data.toString("latin1", 0, stamp.length) === stamp) cachedData = data.subarray(stamp.length);
      else say(`The code cache ${file} (PROXY_CODE_CACHE) was made for another build of ${__filename}: starting without it.`);
    }
  } catch (error) {
    say(`The code cache ${file} (PROXY_CODE_CACHE) can't be read (${error.code}): starting without it.`);
  }
  // USE_MAIN_CONTEXT_DEFAULT_LOADER (Node 20.12+): the copy's import() loads modules as the bundle's would.
  const loader = vm.constants && vm.constants.USE_MAIN_CONTEXT_DEFAULT_LOADER;
  if (loader && (writing || cachedData)) {
    const wrapped = `(function (exports, require, module, __filename, __dirname) {${readFileSync(__filename, "utf8")}\n})`;
    const script = new vm.Script(wrapped, { filename: __filename, cachedData, importModuleDynamically: loader });
    if (writing) {
      process.once("exit", () => {
        try {
          writeFileSync(file, Buffer.concat([Buffer.from(stamp, "latin1"), script.createCachedData()]));
        } catch (error) {
          say(`The code cache ${file} (PROXY_CODE_CACHE) can't be written (${error.code}).`);
        }
      });
    } else if (script.cachedDataRejected) {
      say(`The code cache ${file} (PROXY_CODE_CACHE) was made by another Node version or with other V8 flags: starting without it.`);
    } else if (process.env.PROXY_DEBUG === "1") {
      say(`proxy: code cache: ${file} accepted (${cachedData.length} bytes)`);
    }
    globalThis[Symbol.for("openwhisk-action-proxy.code-cache")] = true;
    script.runInThisContext()(exports, require, module, __filename, __dirname);
    return;
  }
}
