// Version and diagnostics: what the proxy says about itself. `--version`, the `__OW_PROXY_VERSION` every
// action gets (Go's proxy exports it too), and PROXY_DEBUG=1's `proxy: ` lines on stderr, one per
// decision (init steps and their times, processes started and stopped, the pool's size, waits for a slot).

import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

// Set by the bundle (esbuild --define, from package.json); the sources read package.json itself.
declare const PROXY_VERSION: string | undefined;

function packageVersion(): string {
  // proxy.ts sits beside package.json; dist/proxy.js one folder below it.
  const here = dirname(fileURLToPath(import.meta.url));
  for (const candidate of [join(here, 'package.json'), join(here, '..', 'package.json')]) {
    try {
      return (JSON.parse(readFileSync(candidate, 'utf8')) as { version: string }).version;
    } catch {
      // not there: the next candidate
    }
  }
  return 'unknown';
}

export const VERSION: string = typeof PROXY_VERSION === 'string' ? PROXY_VERSION : packageVersion();

/** What `--version` prints. */
export function versionLine(): string {
  return `openwhisk-action-proxy ${VERSION} (node ${process.versions.node})`;
}

/** PROXY_DEBUG=1: a hot path checks this before it does any work for a line. */
export const debugging = process.env.PROXY_DEBUG === '1';

/** With PROXY_DEBUG=1, writes `proxy: <line>` to stderr (never stdout: that is the action's logs' stream). */
export function debug(line: string | (() => string)): void {
  if (debugging) process.stderr.write(`proxy: ${typeof line === 'string' ? line : line()}\n`);
}
