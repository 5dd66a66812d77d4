// Containers for the image tests: run an image with engine options, wait until it answers, remove it after.

import { execFile } from 'node:child_process';
import { chownSync, copyFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { STUB, request, type Response } from '../helpers.ts';

export const run = promisify(execFile);
export const ENGINE = process.env.PROXY_IMAGE_ENGINE ?? 'podman';
export const IMAGE = process.env.PROXY_IMAGE ?? 'localhost/action-proxy:latest';
// runc: crun refuses this machine's hybrid cgroups; rlimits: raising them is refused here.
export const RUNTIME = ENGINE === 'podman' ? ['--runtime', 'runc'] : [];
export const LIMITS = ['--ulimit', 'nofile=1024:1024', '--ulimit', 'nproc=1024:1024'];

let counter = 0;

export interface Container {
  name: string;
  port: number;
  post(path: string, body?: string | object): Promise<Response>;
  logs(): Promise<string>;
  /**
   * The logs once they match `pattern`, read again until they do or `ms` pass (then as they are): an
   * activation's sentinels, and in loop mode its logs, follow its answer, and the engine writes container
   * logs on its own time. OpenWhisk's invoker, too, reads the logs until the sentinels come.
   */
  logsMatching(pattern: RegExp, ms?: number): Promise<string>;
  exec(...command: string[]): Promise<string>;
}

export async function engine(...args: string[]): Promise<string> {
  return (await run(ENGINE, args, { maxBuffer: 64 * 1024 * 1024 })).stdout;
}

/** Runs the image with `args` (engine options before the image), waits until it answers, removes it after. */
export async function withContainer<T>(args: string[], fn: (container: Container) => Promise<T>, options: { port?: number; image?: string; command?: string[]; readyMs?: number } = {}): Promise<T> {
  const name = `proxy-image-test-${process.pid}-${++counter}`;
  const inner = options.port ?? 8080;
  try {
    await engine('run', '-d', '--name', name, ...RUNTIME, ...LIMITS, '-p', `127.0.0.1::${inner}`, ...args, options.image ?? IMAGE, ...(options.command ?? []));
    const port = Number((await engine('port', name, String(inner))).trim().split(':').pop());
    const container: Container = {
      name,
      port,
      post: (path, body) => request(port, 'POST', path, body),
      logs: async () => {
        const { stdout, stderr } = await run(ENGINE, ['logs', name], { maxBuffer: 64 * 1024 * 1024 });
        return stdout + stderr;
      },
      exec: (...command) => engine('exec', name, ...command),
      async logsMatching(pattern, ms = 10_000) {
        const deadline = Date.now() + ms;
        for (;;) {
          const logs = await container.logs();
          if (pattern.test(logs) || Date.now() > deadline) return logs;
          await new Promise((resolve) => setTimeout(resolve, 100));
        }
      },
    };
    await untilAnswering(port, options.readyMs);
    return await fn(container);
  } finally {
    await engine('rm', '-f', '-t', '0', name).catch(() => undefined);
  }
}

async function untilAnswering(port: number, ms = 30_000): Promise<void> {
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      await request(port, 'GET', '/ready');
      return;
    } catch (error) {
      if (Date.now() > deadline) throw error;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
}

/** A folder for /action, holding the stub, owned by `uid` (a volume the container's user can write). */
export function actionVolume(uid = 0): { dir: string; remove(): void } {
  const dir = mkdtempSync(join(tmpdir(), 'proxy-image-action-'));
  copyFileSync(STUB, join(dir, 'exec'));
  chownSync(dir, uid, uid);
  chownSync(join(dir, 'exec'), uid, uid);
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

