import type { Performance } from 'node:perf_hooks';
import { debug, debugging } from './diagnostics.ts';

// Where a request's time went, for its Server-Timing header (W3C Server Timing: `name;dur=<ms>` entries,
// comma separated), so that cold-start work can be seen without a profiler.
//
// Requests are timed with process.hrtime, which costs nothing to load. The process's start-up comes from
// Node's performance timeline (its origin is the process's start; process.uptime() starts 2-3 ms later),
// read only when the first answer is made: loading it costs about 1.2 ms.

/** Named durations in milliseconds, in the order they happened. */
export type Parts = Array<[name: string, ms: number]>;

/** A request's timing: when it started and the parts measured so far. */
export interface Timing {
  started: bigint;
  parts: Parts;
}

export function startTiming(): Timing {
  return { started: process.hrtime.bigint(), parts: [] };
}

function since(start: bigint): number {
  return Number(process.hrtime.bigint() - start) / 1e6;
}

/** Runs `step`, adding its duration to `parts` as `name` (when there are parts to add to), failed or not. */
export async function measure<T>(parts: Parts | undefined, name: string, step: () => Promise<T> | T): Promise<T> {
  const start = process.hrtime.bigint();
  try {
    return await step();
  } finally {
    const ms = since(start);
    parts?.push([name, ms]);
    if (debugging) debug(`${name}: ${ms.toFixed(1)} ms`);
  }
}

let listeningAt: bigint | undefined;
let startupReported = false;

/** Notes that the server listens: the end of start-up. */
export function listening(): void {
  listeningAt = process.hrtime.bigint();
}

/**
 * The Server-Timing value for a request: its parts, its `total`, and on the process's first answer
 * `startup` (process start to listening) and `bootstrap` (Node's own share of that, before the proxy's
 * code ran).
 */
export function serverTiming(timing: Timing): string {
  const entries: Parts = [...timing.parts, ['total', since(timing.started)]];
  if (!startupReported && listeningAt !== undefined) {
    startupReported = true;
    // The global is perf_hooks' performance (typed as the web's); importing perf_hooks would load it at start-up.
    const timeline = performance as unknown as Performance;
    entries.push(['startup', timeline.now() - since(listeningAt)], ['bootstrap', timeline.nodeTiming.bootstrapComplete]);
  }
  return entries.map(([name, ms]) => `${name};dur=${ms.toFixed(2)}`).join(', ');
}
