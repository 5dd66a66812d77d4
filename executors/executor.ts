// What an executor is: the way activations of the installed action are run. There are two, chosen once
// at start-up: a process per activation (executors/process.ts, the original proxy's protocol) and a pool
// of long-lived action processes that take one activation per line (executors/loop.ts, OpenWhisk's
// action-loop protocol). The runner talks to either through this interface and never asks which it has.
//
// Both read an action's output the same way, so that is here too: log lines forwarded as they arrive
// and never split below 1 MiB, the result line held up to its limit and judged by one rule; and both
// start, name and kill action processes the same way.

import { isAscii } from 'node:buffer';
import type { Readable, Writable } from 'node:stream';
import { MESSAGES, ProxyError } from '../errors.ts';
import { scan, stringValue, type Scanned } from '../json.ts';
import type { Parts } from '../timing.ts';

export interface Activation {
  /** The arguments' JSON text (an object or an array), as the client sent it. */
  args: string;
  /** The same as bytes, when the request had them (an ASCII body): written to the action without another copy. */
  argsBytes?: Buffer;
  /** The activation fields: name → JSON text as sent. */
  fields: Map<string, string>;
  /**
   * The process environment of this activation, built when asked for: only the per-activation executor
   * needs it (a loop process has its own environment, and copying it would cost every activation).
   */
  env(): Record<string, string>;
}

/** An activation's result: a JSON object or array, scanned, and the bytes it came as. */
export interface ActionResult {
  json: Scanned;
  /**
   * The result's bytes (trimmed), so that large answers are sent without another copy. When `ascii`,
   * the scanner's offsets in `json` are byte offsets here too.
   */
  bytes: Buffer;
  ascii: boolean;
  /**
   * Resolves once everything the action logged before this result is in the proxy's logs, when the
   * result came before that (loop mode answers as soon as the result line is read): the sentinels wait
   * for it. Undefined: the logs are all in.
   */
  logged?: Promise<void>;
}

/**
 * Says that an activation's client went away: the part of AbortSignal the proxy uses. An AbortSignal is
 * one; the proxy makes a Cancellation per request instead, which costs a fraction of an AbortController
 * (measured: 4-6% of a warm loop-mode activation).
 */
export interface CancelSignal {
  readonly aborted: boolean;
  addEventListener(type: 'abort', listener: () => void, options?: { once: boolean }): void;
  removeEventListener(type: 'abort', listener: () => void): void;
}

/** A CancelSignal with its abort(): each listener is called once, in the order added. */
export class Cancellation implements CancelSignal {
  aborted = false;
  private listeners: Array<() => void> = [];

  addEventListener(_type: 'abort', listener: () => void): void {
    if (!this.aborted) this.listeners.push(listener);
  }

  removeEventListener(_type: 'abort', listener: () => void): void {
    const at = this.listeners.indexOf(listener);
    if (at !== -1) this.listeners.splice(at, 1);
  }

  abort(): void {
    if (this.aborted) return;
    this.aborted = true;
    for (const listener of this.listeners.splice(0)) listener();
  }
}

export interface Executor {
  /**
   * Gets the action now in the action directory ready to run, with `env` as its base environment (the
   * loop executor starts a process and waits for its ack). Throwing fails the init (inside the install,
   * so the previous files come back). Called by every init; a /run before any init runs what the image
   * brings. What it takes is added to `parts` as `start` (Server-Timing) when there is anything to start.
   */
  start(env: Record<string, string>, parts?: Parts): Promise<void>;
  /**
   * Runs one activation; resolves with its result, an object or array, or rejects with a ProxyError.
   * When `signal` aborts (its client went away) the activation's process is killed with its group, its
   * logs are forwarded and it rejects with CLIENT_CLOSED and MESSAGES.cancelled.
   */
  run(activation: Activation, signal?: CancelSignal): Promise<ActionResult>;
  /** Kills every action process that is running an activation, each with its process group; returns a line for each. */
  kill(): string[];
  /**
   * Shutdown, once no activation runs: ends every process the executor started and anything left in
   * their process groups, giving idle ones `graceMs` to exit on their own. Resolves with whether any
   * had to be killed.
   */
  stop(graceMs: number): Promise<boolean>;
}

/** Where an action's output goes. */
export interface Logs {
  stdout: Writable;
  stderr: Writable;
}

/** What every executor is given: where the action is, where its output goes, how long a result may be. */
export interface ExecutorOptions {
  actionDir: string;
  binary: string;
  /** Where the action's output goes; looked up when needed (the proxy's own streams are created lazily). */
  logs: () => Logs;
  maxResultBytes: number;
  /**
   * While an init's new files are in place and not yet committed: settles when the init ends. No new
   * process may start before (it would run code the init may still reject).
   */
  uncommitted: () => Promise<void> | undefined;
}

/** Log lines up to this length are forwarded whole; longer ones in pieces, so memory doesn't follow them. */
export const MAX_LOG_LINE_BYTES = 1024 * 1024;

const NEWLINE = 0x0a;

export function resultTooLarge(limit: number): string {
  return `The action's result is larger than the limit of ${limit} bytes (PROXY_MAX_RESULT_BYTES).`;
}

/** Forwards an action's pipe to a log, line by line. */
export interface LineForwarder {
  /**
   * What is held back: with `holdLast`, the last line (the result candidate, only known once the pipe
   * ends), else an unfinished line; `undefined` when that was a last line longer than the limit (it is
   * in the log already, ended there, so that what follows starts a line of its own).
   */
  rest(): Buffer | undefined;
  /** Writes what is held back to the log as a line of its own, ended: nothing may glue onto it. */
  flush(): void;
  /** Forwards bytes read from the pipe other than through its stream, in order after what that gave. */
  feed(chunk: Buffer): void;
}

/**
 * Forwards complete lines from an action's pipe to a log as they arrive. A line is held up to `maxHeld`
 * bytes; a longer one is forwarded in pieces as it comes. While the log is backed up (its reader is
 * slow or stalled) the pipe is not read: the action waits, and the proxy holds no more than a chunk.
 */
export function forwardLines(from: Readable, to: Writable, holdLast: boolean, maxHeld: number): LineForwarder {
  let held: Buffer[] = [];
  let heldBytes = 0;
  let heldEndsLine = false;
  // The current line's start has been forwarded: it can't be held whole any more.
  let spilled = false;
  // Whether what was last written to the log ended a line.
  let endedLine = true;
  // Parts are written one by one, never concatenated: a long line costs no copy.
  const emit = (parts: Buffer[]): void => {
    for (const part of parts) {
      if (part.length === 0) continue;
      to.write(part);
      endedLine = part[part.length - 1] === NEWLINE;
    }
  };
  // Why the pipe is not being read: the log is backed up, or a long line waits for a place.
  const blocked = { drain: false, place: false };
  let holdsPlace = false;
  const update = (): void => {
    if (blocked.drain || blocked.place) from.pause();
    else from.resume();
  };
  const hold = (parts: Buffer[]): void => {
    held = parts;
    heldBytes = 0;
    for (const part of parts) heldBytes += part.length;
    if (holdsPlace && heldBytes <= LONG_LINE_BYTES) {
      holdsPlace = false;
      leavePlace(to);
    }
  };
  // A spilled line's pieces are in the log without their end: end it there.
  const endSpilled = (): void => {
    if (spilled && !endedLine) to.write('\n');
    spilled = false;
  };
  const feed = (chunk: Buffer): void => {
    // With holdLast, a newline that ends the chunk may end the output: it does not release the line.
    const searchEnd = holdLast ? chunk.length - 2 : chunk.length - 1;
    const cut = searchEnd < 0 ? -1 : chunk.lastIndexOf(NEWLINE, searchEnd);
    if (cut !== -1) {
      emit([...held, chunk.subarray(0, cut + 1)]);
      hold(cut + 1 < chunk.length ? [chunk.subarray(cut + 1)] : []);
      spilled = false;
    } else if (heldEndsLine) {
      emit(held);
      hold([chunk]);
      spilled = false;
    } else if (spilled) {
      emit([chunk]);
    } else {
      held.push(chunk);
      heldBytes += chunk.length;
    }
    heldEndsLine = holdLast && chunk[chunk.length - 1] === NEWLINE;
    // The newline that ends a held line is not part of it.
    if (heldBytes > maxHeld + (heldEndsLine ? 1 : 0)) {
      emit(held);
      hold([]);
      spilled = true;
    }
    // Checked whether or not this chunk was written: a held line waits for the log like any other.
    if (to.writableNeedDrain && !blocked.drain) {
      blocked.drain = true;
      afterDrain(to, () => {
        blocked.drain = false;
        update();
      });
    }
    // A long line held whole (it may be the result) is memory the log can't push back on: only a few
    // at a time per log; the others wait, unread, for a place.
    if (heldBytes > LONG_LINE_BYTES && !holdsPlace && !blocked.place) {
      blocked.place = true;
      takePlace(to, () => {
        // A pipe that closed meanwhile (its activation was stopped) passes its place on.
        if (from.destroyed) return leavePlace(to);
        holdsPlace = true;
        blocked.place = false;
        update();
      });
    }
    if (blocked.drain || blocked.place) from.pause();
  };
  from.on('data', feed);
  from.once('close', () => {
    if (!holdsPlace) return;
    holdsPlace = false;
    leavePlace(to);
  });
  return {
    feed,
    rest() {
      if (spilled && holdLast) {
        endSpilled();
        hold([]);
        return undefined;
      }
      const rest = held.length === 1 ? held[0]! : Buffer.concat(held, heldBytes);
      hold([]);
      return rest;
    },
    flush() {
      const rest = held.length === 0 ? Buffer.alloc(0) : held.length === 1 ? held[0]! : Buffer.concat(held, heldBytes);
      hold([]);
      if (rest.length > 0) writeLine(to, rest);
      else endSpilled();
    },
  };
}

/** Lines held longer than this need one of a log's few places for long lines. */
const LONG_LINE_BYTES = 64 * 1024;
const LONG_LINES_PER_LOG = 4;

/** Per log: who waits for it to drain (one 'drain' listener, however many pipes), and its long-line places. */
interface LogState {
  drainWaiters: Array<() => void> | undefined;
  places: number;
  placeWaiters: Array<() => void>;
}
const logStates = new WeakMap<Writable, LogState>();

function logState(log: Writable): LogState {
  let state = logStates.get(log);
  if (!state) logStates.set(log, (state = { drainWaiters: undefined, places: LONG_LINES_PER_LOG, placeWaiters: [] }));
  return state;
}

function afterDrain(log: Writable, then: () => void): void {
  const state = logState(log);
  if (!state.drainWaiters) {
    const waiters: Array<() => void> = [];
    state.drainWaiters = waiters;
    log.once('drain', () => {
      state.drainWaiters = undefined;
      for (const wake of waiters) wake();
    });
  }
  state.drainWaiters.push(then);
}

function takePlace(log: Writable, granted: () => void): void {
  const state = logState(log);
  if (state.places > 0) {
    state.places--;
    granted();
  } else {
    state.placeWaiters.push(granted);
  }
}

function leavePlace(log: Writable): void {
  const state = logState(log);
  const next = state.placeWaiters.shift();
  if (next) next();
  else state.places++;
}

/**
 * Judges an action's result line: a JSON object or array is the result; anything else is written to the
 * logs and answered 502. `undefined` is a line that was longer than the limit (already in the logs).
 */
export function resultOf(line: Buffer | undefined, logs: Logs, maxResultBytes: number): ActionResult {
  if (line === undefined) throw new ProxyError(502, resultTooLarge(maxResultBytes));
  const result = resultIn(line);
  if (result) return result;
  const candidate = trim(line);
  const text = candidate.toString('utf8');
  // Say why a result that looks like JSON isn't (too deep, cut off); plain text needs no explaining.
  if (/^[[{]/.test(text)) {
    try {
      scan(text);
    } catch (error) {
      logs.stderr.write(`The action's result is not valid JSON: ${(error as Error).message}\n`);
    }
  }
  writeLine(logs.stdout, candidate);
  throw new ProxyError(502, MESSAGES.badResult);
}

/** The result a result line holds, a JSON object or array; undefined for anything else (resultOf says why). */
export function resultIn(line: Buffer): ActionResult | undefined {
  const candidate = trim(line);
  const ascii = isAscii(candidate);
  try {
    const json = scan(candidate.toString(ascii ? 'latin1' : 'utf8'));
    if (json.kind === 'object' || json.kind === 'array') return { json, bytes: candidate, ascii };
  } catch {
    // not JSON: resultOf says so
  }
  return undefined;
}

/** Writes `bytes` to a log as a line of its own: ended with a newline unless it ends with one. */
export function writeLine(log: Writable, bytes: Buffer): void {
  log.write(bytes[bytes.length - 1] === NEWLINE ? bytes : Buffer.concat([bytes, Buffer.from('\n')]));
}

function isSpace(byte: number | undefined): boolean {
  return byte === 0x20 || (byte !== undefined && byte >= 0x09 && byte <= 0x0d);
}

export function trim(bytes: Buffer): Buffer {
  let start = 0;
  let end = bytes.length;
  while (start < end && isSpace(bytes[start])) start++;
  while (end > start && isSpace(bytes[end - 1])) end--;
  return bytes.subarray(start, end);
}

/** Why a process can't be started that is the proxy's or the system's shortage, not the action's fault. */
const EXHAUSTED = new Set(['EMFILE', 'ENFILE', 'EAGAIN', 'ENOMEM']);

/**
 * Why `exec` could not be started: a 503 to try again when something ran out, else the original's 502
 * with the cause in the logs (an empty file, a missing interpreter).
 */
export function startFailure(error: unknown, logs: Logs): ProxyError {
  const code = (error as NodeJS.ErrnoException).code;
  if (code === 'E2BIG') {
    return new ProxyError(413, 'The activation is too large to pass to the action in its arguments and environment (E2BIG).', { cause: error });
  }
  if (code !== undefined && EXHAUSTED.has(code)) {
    return new ProxyError(503, `The proxy could not start the action (${code}). Try again.`, { cause: error });
  }
  logs.stdout.write(`${(error as Error).message}\n`);
  return new ProxyError(502, MESSAGES.badResult);
}

/** How an action process is named in the logs: its activation's id when it has one, and its pid. */
export function describeProcess(pid: number | undefined, fields?: Map<string, string>): string {
  const id = fields?.get('activation_id');
  return id?.startsWith('"') ? `activation ${stringValue(id)} (process ${pid})` : `process ${pid}`;
}

/**
 * Signals a process group (SIGKILL unless told): an action process leads its own (it is started
 * detached), so this reaches whatever it started too. A group that is gone already is fine.
 */
export function killGroup(group: number, signal: NodeJS.Signals = 'SIGKILL'): void {
  try {
    process.kill(-group, signal);
  } catch {
    // ESRCH: nothing left in it
  }
}

/** Whether anything is still running in a process group. */
export function groupAlive(group: number): boolean {
  try {
    process.kill(-group, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}
