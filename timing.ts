import { debug, debugging } from './diagnostics.ts';

// Where a request's time went, for its Server-Timing header (W3C Server Timing: `name;dur=<ms>` entries,
// comma separated), so that cold-start work can be seen without a profiler.
//
// Requests are timed with process.hrtime, the process's start-up with process.uptime(): both cost nothing
// to load. (Node's performance timeline starts 0.3-0.6 ms earlier, but reading it loads perf_hooks,
// 0.5-1.2 ms on a cold proxy's first answer.)

/** When the proxy's code began to run (this module is among the first evaluated), in ms of uptime. */
const codeStartedAt = process.uptime() * 1000;

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
    note(parts, name, start);
  }
}

/** Adds the time since `start` (process.hrtime.bigint()) to `parts` as `name`: measure() for a caller already awaiting. */
export function note(parts: Parts | undefined, name: string, start: bigint): void {
  const ms = since(start);
  parts?.push([name, ms]);
  if (debugging) debug(`${name}: ${ms.toFixed(1)} ms`);
}

let listeningAt: number | undefined;
let startupReported = false;

/** Notes that the server listens: the end of start-up. */
export function listening(): void {
  listeningAt = process.uptime() * 1000;
}

/**
 * The Server-Timing value for a request: its parts, its `total`, and on the process's first answer
 * `startup` (process start to listening) and `bootstrap` (Node's own share of that: until the proxy's code
 * began to run).
 */
export function serverTiming(timing: Timing): string {
  // Built as one string: it is on every answer's path.
  let value = '';
  for (const [name, ms] of timing.parts) value += `${name};dur=${ms.toFixed(2)}, `;
  value += `total;dur=${since(timing.started).toFixed(2)}`;
  if (!startupReported && listeningAt !== undefined) {
    startupReported = true;
    value += `, startup;dur=${listeningAt.toFixed(2)}, bootstrap;dur=${codeStartedAt.toFixed(2)}`;
  }
  return value;
}
