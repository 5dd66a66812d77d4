// `npm run bench:image`: the image's size and its containers' start-to-ready time, beside the proxy's own
// start-to-ready inside them (the `startup` entry of its first answer's Server-Timing). Medians.
// Needs the image (`npm run image`) and podman or docker.

import { execFileSync } from 'node:child_process';
import { request } from 'node:http';

const ENGINE = process.env.PROXY_IMAGE_ENGINE ?? 'podman';
const IMAGE = process.env.PROXY_IMAGE ?? 'localhost/action-proxy:latest';
const RUNS = Number(process.env.BENCH_RUNS ?? 11);
const RUNTIME = ENGINE === 'podman' ? ['--runtime', 'runc'] : [];

const engine = (...args: string[]): string => execFileSync(ENGINE, args, { encoding: 'utf8' }).trim();
const median = (values: number[]): number => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!;

/** The first answer's Server-Timing header, or undefined while nothing listens yet. */
function firstAnswer(port: number): Promise<string | undefined> {
  return new Promise((resolve) => {
    const req = request({ host: '127.0.0.1', port, method: 'POST', path: '/run', agent: false, headers: { 'Content-Length': 2 } }, (res) => {
      res.resume();
      res.on('end', () => resolve(String(res.headers['server-timing'] ?? '')));
    });
    // Until the proxy listens, podman's port forwarder accepts and closes, or the port refuses.
    req.on('error', () => resolve(undefined));
    req.end('{}');
  });
}

async function startToReady(port: number): Promise<{ container: number; proxy: number }> {
  const name = `proxy-image-bench-${process.pid}`;
  const started = performance.now();
  engine('run', '-d', '--name', name, ...RUNTIME, '--ulimit', 'nofile=1024:1024', '--ulimit', 'nproc=1024:1024', '-p', `127.0.0.1:${port}:8080`, IMAGE);
  try {
    for (;;) {
      const timing = await firstAnswer(port);
      if (timing) {
        const container = performance.now() - started;
        const proxy = Number(/startup;dur=([\d.]+)/.exec(timing)?.[1]);
        return { container, proxy };
      }
      await new Promise((resolve) => setTimeout(resolve, 2));
    }
  } finally {
    engine('rm', '-f', '-t', '0', name);
  }
}

const sizes = engine('image', 'inspect', '--format', '{{.Size}}', IMAGE);
const history = engine('history', '--format', '{{.Size}}\t{{.CreatedBy}}', IMAGE);
const container: number[] = [];
const proxy: number[] = [];
for (let i = 0; i < RUNS; i++) {
  const sample = await startToReady(18500 + (i % 50));
  container.push(sample.container);
  proxy.push(sample.proxy);
}
console.log(`image ${IMAGE}: ${(Number(sizes) / 1e6).toFixed(1)} MB (${ENGINE} image inspect)`);
console.log('layers, newest first:');
for (const line of history.split('\n')) console.log(`  ${line.slice(0, 140)}`);
console.log(`start-to-ready, median of ${RUNS}: container ${median(container).toFixed(1)} ms (${ENGINE} run → first HTTP answer), proxy ${median(proxy).toFixed(1)} ms of it (process start → listening, Server-Timing startup)`);
