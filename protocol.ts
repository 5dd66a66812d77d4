// The rules every platform shares, below the platforms and above the runner: one initialization unless
// re-init is allowed, the log sentinels, bounded request bodies read as JSON without losing a digit, and
// the translation of errors into a status and a fixed text. A platform (platforms/openwhisk.ts,
// platforms/knative.ts) only maps HTTP to `init` and `run` and their outcomes back to HTTP.

import { isAscii, isUtf8 } from 'node:buffer';
import type { IncomingMessage, OutgoingHttpHeaders, ServerResponse } from 'node:http';
import { CLIENT_CLOSED, MESSAGES, ProxyError } from './errors.ts';
import { TooManyMembers, isTooDeep, membersOf, scan, type Member, type Scanned } from './json.ts';
import { Cancellation, type ActionResult, type CancelSignal } from './executors/executor.ts';
import type { ActionRunner, RunMessage } from './runner.ts';
import { CodeFinder } from './initbody.ts';
import { note, serverTiming, type Timing } from './timing.ts';

/** Ends each activation's logs on stdout and on stderr, so the invoker knows where they end. */
export const LOG_SENTINEL = 'XXX_THE_END_OF_A_WHISK_ACTIVATION_XXX\n';

export interface ProtocolSettings {
  /** Whether more than one successful init is allowed (local development). */
  allowReinit: boolean;
  /** The largest request body read; more is answered 413. */
  maxBodyBytes: number;
  /** Whether answers carry a Server-Timing header (the platform decides the default). */
  serverTiming: boolean;
}

// The one runner and settings every request shares; set by use() before the server listens.
let runner: ActionRunner;
let settings: ProtocolSettings;
// Inits run one at a time, so the re-init rule holds when two arrive together.
let initializing: Promise<unknown> = Promise.resolve();
let closing = false;

/** Sets the runner and settings every request uses. */
export function use(actionRunner: ActionRunner, protocolSettings: ProtocolSettings): void {
  runner = actionRunner;
  settings = protocolSettings;
}

/** From now on every answer closes its connection: the proxy is shutting down. */
export function closeConnections(): void {
  closing = true;
}

export interface Failure {
  ok: false;
  status: number;
  error: string;
  /** Headers the answer needs (a 503's Retry-After). */
  headers?: OutgoingHttpHeaders;
}
export type InitOutcome = { ok: true } | Failure;
export type RunOutcome = { ok: true; result: ActionResult } | Failure;

// As bytes made once: a string written to a file (stdout sent to a file or /dev/null) is copied into
// Node's Buffer pool on every write, and the pool's slabs, kept alive long enough to be promoted, then
// hold their 8 KiB each until a full collection: memory would grow with every activation (messageLine).
const SENTINEL_BYTES = Buffer.from(LOG_SENTINEL);

function writeSentinels(): void {
  process.stdout.write(SENTINEL_BYTES);
  process.stderr.write(SENTINEL_BYTES);
}

/** Turns an error into what the client sees; the cause, which the client doesn't see, goes to stderr. */
export function failure(error: unknown): Failure {
  if (error instanceof ProxyError) {
    if (error.cause instanceof Error && error.status !== CLIENT_CLOSED) process.stderr.write(`${error.cause.message}\n`);
    return { ok: false, status: error.status, error: error.message, headers: error.headers };
  }
  const message = error instanceof Error ? error.message : String(error);
  process.stderr.write(`${error instanceof Error && error.stack ? error.stack : message}\n`);
  return { ok: false, status: 500, error: `Internal error. ${message}` };
}

/**
 * Initializes the action with the init value's members that `read` produces (reading the request only
 * when the re-init rule lets it through). A rejected re-init logs its message and no sentinel; any
 * other failure logs its cause and the sentinels, unless the client went away before sending it all.
 */
export function init(read: () => Promise<Map<string, Member>>, timing?: Timing): Promise<InitOutcome> {
  const outcome = initializing.then(async (): Promise<InitOutcome> => {
    if (runner.initialized && !settings.allowReinit) {
      process.stderr.write(`${MESSAGES.reinit}\n`);
      return { ok: false, status: 403, error: MESSAGES.reinit };
    }
    try {
      await runner.init(await read(), timing?.parts);
      return { ok: true };
    } catch (error) {
      const result = failure(error);
      if (result.status !== CLIENT_CLOSED) writeSentinels();
      return result;
    }
  });
  initializing = outcome;
  return outcome;
}

/** A request's claim on an activation slot, and the signal that its client went away. */
export interface Admission {
  /** Aborts when the client closes the connection before its answer was sent. */
  signal: CancelSignal;
  /** Gives the slot back; later calls do nothing. */
  release(): void;
  /** It waited in line, its body unread (so a client that left then could not be noticed). */
  waited: boolean;
  /** Whether the client has gone: closed, or ended its side of the connection (Node then aborts the request). */
  gone(): boolean;
}

/**
 * Admits a request that will run an activation when a slot is free, at once; undefined when there is
 * none (admit() waits). Taken in the request's own turn, the body's listeners are in place when Node's
 * parser hands it over: awaiting a free slot let the parser buffer it first, and reading it back out of
 * the stream took more turns (loop mode, Node 24: the body in hand 6-8 us sooner, the message written
 * to the action 8 us sooner, of a ~400 us activation).
 */
export function admitNow(res: ServerResponse): Admission | undefined {
  const release = runner.takeSlot();
  return release && admission(res, cancellation(res), release, false);
}

/**
 * Admits a request that will run an activation: waits for a slot (PROXY_MAX_ACTIVATIONS) before its
 * body is read, so that requests waiting in line hold no bodies. A client that closes the connection
 * leaves the line, or frees its slot at once when it was running (the runner stops the activation).
 * Throws the 503 of a full line, or CLIENT_CLOSED.
 */
export async function admit(res: ServerResponse): Promise<Admission> {
  const cancel = cancellation(res);
  const waited = !runner.hasFreeSlot();
  return admission(res, cancel, await runner.admit(cancel), waited);
}

/** Aborts when the client closes the connection before its answer was sent. */
function cancellation(res: ServerResponse): Cancellation {
  const cancel = new Cancellation();
  // `on`: a response closes once.
  res.on('close', () => {
    if (!res.writableFinished) cancel.abort();
  });
  return cancel;
}

function admission(res: ServerResponse, cancel: Cancellation, release: () => void, waited: boolean): Admission {
  cancel.addEventListener('abort', release);
  const socket = res.socket;
  const gone = (): boolean => cancel.aborted || !socket || socket.destroyed || socket.readableEnded;
  return { signal: cancel, release, waited, gone };
}

/**
 * Runs one activation of what `read` produces, in the slot `admission` holds (given back at the end),
 * and hands its outcome to `answer`, which sends it. The sentinels come after the answer, as the
 * protocol has them: the invoker reads the logs up to them once it has the answer, and writing them
 * first kept two writes to the proxy's stdout and stderr between the action's result and its client.
 * None are written when nothing ran (the request was refused, or the client went away before the
 * activation could start). `answer` may throw (a result the platform can't send): the sentinels are
 * written all the same.
 */
export async function run(read: () => Promise<RunMessage>, admission: Admission, answer: (outcome: RunOutcome) => void, timing?: Timing): Promise<void> {
  let outcome: RunOutcome;
  try {
    const message = await read();
    if (admission.gone()) throw clientLeft();
    const started = process.hrtime.bigint();
    try {
      outcome = { ok: true, result: await runner.run(message, admission.signal) };
    } finally {
      note(timing?.parts, 'action', started);
    }
  } catch (error) {
    outcome = failure(error);
  } finally {
    admission.release();
  }
  try {
    answer(outcome);
  } finally {
    if (outcome.ok || outcome.status !== CLIENT_CLOSED || outcome.error === MESSAGES.cancelled) {
      // After the action's logs, which a loop-mode answer need not wait for.
      if (outcome.ok) await outcome.result.logged;
      writeSentinels();
    }
  }
}

/** The most activation fields a /run may carry: each becomes an environment variable or a message member. */
export const MAX_ACTIVATION_FIELDS = 1000;

function tooManyFields(): ProxyError {
  return new ProxyError(413, `The activation has more than ${MAX_ACTIVATION_FIELDS} fields.`);
}

/**
 * The activation fields of a run message, name → JSON text: the members of `activation` when present
 * (the newer protocol), else every top-level member but `value`.
 */
export function activationFields(message: Map<string, Member>): Map<string, string> {
  const fields = new Map<string, string>();
  const nested = message.get('activation')?.value;
  if (nested === undefined) {
    for (const [name, member] of message) if (name !== 'value') fields.set(name, member.value);
    if (fields.size > MAX_ACTIVATION_FIELDS) throw tooManyFields();
    return fields;
  }
  if (nested === 'null') return fields;
  if (!nested.startsWith('{')) throw new ProxyError(400, 'The activation fields must be a JSON object.');
  try {
    for (const [name, member] of membersOf(nested, MAX_ACTIVATION_FIELDS)) fields.set(name, member.value);
  } catch (error) {
    throw error instanceof TooManyMembers ? tooManyFields() : error;
  }
  return fields;
}

function clientLeft(): ProxyError {
  return new ProxyError(CLIENT_CLOSED, 'The client closed the connection before its activation started.');
}

/**
 * Reads the body of an admitted request (readBody). A client that left while its unread request waited
 * is noticed only once the request has been read up to its end: the end of its connection is in the
 * kernel by then, and libuv reads it in the next poll phase, so two check phases later it has been seen.
 * It is noticed here, before the body is parsed: a line of abandoned requests costs no parsing. A request
 * that did not wait is checked by run() before its activation starts, without these turns.
 */
export function readAdmitted(req: IncomingMessage, admission: Admission): Promise<Buffer> {
  return admission.waited ? readAfterWaiting(req, admission) : readBody(req);
}

async function readAfterWaiting(req: IncomingMessage, admission: Admission): Promise<Buffer> {
  const body = await readBody(req);
  for (let turn = 0; turn < 2; turn++) await new Promise((resolve) => setImmediate(resolve));
  if (admission.gone()) throw clientLeft();
  return body;
}

/** Reads a request body, at most `maxBodyBytes` of it; more is a 413. */
export function readBody(req: IncomingMessage): Promise<Buffer> {
  // With a declared length the body is copied into place as it arrives: its chunks and a
  // concatenated copy are never alive together (Node's parser holds the body to that length).
  const declared = Number(req.headers['content-length']);
  const whole = declared > 65536 && declared <= settings.maxBodyBytes ? Buffer.allocUnsafe(declared) : undefined;
  const chunks: Buffer[] = [];
  let length = 0;
  return receive(
    req,
    (chunk) => {
      if (whole) chunk.copy(whole, length);
      else chunks.push(chunk);
      length += chunk.length;
    },
    () => (whole ? whole.subarray(0, length) : chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, length)),
  );
}

/**
 * Reads an init request body (`{"value": {...}}`) and scans it, its code kept as the chunks that
 * arrived (initbody.ts): `code` is the content of `value.code`, whose text in `json` is then `""`.
 */
export async function readInit(req: IncomingMessage): Promise<{ json: Scanned | undefined; code?: Buffer[] }> {
  const finder = new CodeFinder();
  const { rest, code } = await receive(req, (chunk) => finder.push(chunk), () => finder.finish());
  return { json: readJson(rest), code };
}

/**
 * Hands each chunk of a request body to `take`, at most `maxBodyBytes` of them (more is a 413), and
 * resolves with what `end` makes of them once the body is whole.
 */
function receive<T>(req: IncomingMessage, take: (chunk: Buffer) => void, end: () => T): Promise<T> {
  const limit = settings.maxBodyBytes;
  const tooLarge = (): ProxyError => new ProxyError(413, `The request body is larger than the limit of ${limit} bytes (PROXY_MAX_BODY_BYTES).`);
  if (Number(req.headers['content-length']) > limit) return Promise.reject(tooLarge());
  return new Promise((resolve, reject) => {
    let length = 0;
    req.on('data', (chunk: Buffer) => {
      if (length + chunk.length > limit) {
        req.removeAllListeners('data');
        req.resume();
        reject(tooLarge());
        return;
      }
      length += chunk.length;
      take(chunk);
    });
    req.on('end', () => {
      try {
        resolve(end());
      } catch (error) {
        reject(error);
      }
    });
    // A client that goes away mid-body: nothing to answer, nothing ran.
    const gone = (): void => reject(new ProxyError(CLIENT_CLOSED, 'The client closed the connection before sending the whole request.'));
    req.on('error', gone);
    req.on('close', () => {
      if (!req.complete) gone();
    });
  });
}

/**
 * The bytes of a member of a scanned body, when the body is ASCII (its text's offsets are then byte
 * offsets): large arguments are passed on as the bytes that arrived, without another copy.
 */
export function memberBytes(body: Buffer, member: Member): Buffer | undefined {
  if (member.at < 0 || body.length < 65536 || !isAscii(body)) return undefined;
  let start = 0;
  while (body[start] === 0x20 || body[start] === 0x09 || body[start] === 0x0a || body[start] === 0x0d) start++;
  return body.subarray(start + member.at, start + member.at + member.value.length);
}

/** A request body as text: it must be UTF-8 (RFC 8259 says JSON is), else a 400. */
function bodyText(body: Buffer): string {
  // An ASCII body (base64 code is) decodes faster as latin1, to the same string.
  if (isAscii(body)) return body.toString('latin1');
  if (!isUtf8(body)) throw new ProxyError(400, 'The request body is not valid UTF-8.');
  return body.toString('utf8');
}

/**
 * A JSON request body, scanned (json.ts): an empty body is `undefined`; invalid JSON, or JSON nested
 * deeper than the limit, a 400. Nothing is parsed into values: the texts are passed on as sent. A run
 * message's top-level members are activation fields, counted as they are scanned.
 */
export function readJson(body: Buffer, runMessage = false): Scanned | undefined {
  if (body.length === 0) return undefined;
  const text = bodyText(body);
  try {
    // The fields and `value`.
    return scan(text, runMessage ? MAX_ACTIVATION_FIELDS + 1 : Infinity);
  } catch (error) {
    if (error instanceof TooManyMembers) throw tooManyFields();
    const reason = (error as Error).message;
    throw new ProxyError(400, isTooDeep(error) ? `The request body is ${reason}.` : `The request body is not valid JSON: ${reason}.`, { cause: error });
  }
}

/** The Server-Timing header for a request's answer, when answers carry one. */
export function timingHeader(timing: Timing): OutgoingHttpHeaders {
  return settings.serverTiming ? { 'Server-Timing': serverTiming(timing) } : {};
}

/** Results up to this size are sent as their text (resultBody). */
const TEXT_ANSWER_MAX_BYTES = 16 * 1024;

/**
 * A result as an answer's body. A small ASCII result goes as its text, which is its bytes: Node writes
 * the headers and a text body with one write(2), but a Buffer body as a second chunk of a writev (loop
 * mode, Node 24: 38-46 us from send() to the answer written, against 55). A large or non-ASCII result
 * goes as its bytes: no further copy, and no bytes changed by a decoding.
 */
export function resultBody(result: ActionResult): string | Buffer {
  return result.ascii && result.bytes.length <= TEXT_ANSWER_MAX_BYTES ? result.json.text : result.bytes;
}

export function send(res: ServerResponse, status: number, body: string | Buffer, headers: OutgoingHttpHeaders, contentType?: string): void {
  if (closing) res.setHeader('Connection', 'close');
  // One object for writeHead: this is every answer's path.
  const head: OutgoingHttpHeaders = contentType === undefined ? { ...headers } : { 'Content-Type': contentType, ...headers };
  // 204 and 304 carry no body and so no Content-Length (RFC 9110 8.6).
  const empty = status === 204 || status === 304;
  if (!empty) head['Content-Length'] = Buffer.byteLength(body);
  res.writeHead(status, head);
  res.end(empty ? undefined : body);
}

export function sendJson(res: ServerResponse, status: number, json: string | Buffer, headers: OutgoingHttpHeaders = {}): void {
  send(res, status, json, headers, 'application/json');
}

export function sendError(res: ServerResponse, status: number, error: string, headers: OutgoingHttpHeaders = {}): void {
  if (status === CLIENT_CLOSED || res.destroyed) return; // no one to answer
  sendJson(res, status, JSON.stringify({ error }), headers);
}
