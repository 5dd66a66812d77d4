// Knative: one HTTP endpoint that initializes and runs the action and answers like an OpenWhisk web
// action (the action's result shapes the HTTP response). Selected by __OW_RUNTIME_PLATFORM=knative.
//
// Dedicated mode (__OW_ACTION_CODE set) initializes before listening; stem-cell mode takes the action
// from the first request's `init`. Init, run, the environment rules, logs and sentinels are
// protocol.ts's, shared with the OpenWhisk platform; this file only maps HTTP to them and results back.
//
// A Knative Service is usually public: every body is hostile until read within bounds, and the action's
// answer must not be able to break the HTTP framing (knative.md, "A public endpoint").

import { isUtf8 } from 'node:buffer';
import type { IncomingMessage, OutgoingHttpHeaders, ServerResponse } from 'node:http';
import { ProxyError } from '../errors.ts';
import { compact, isTooDeep, kindOf, member, membersOf, objectText, stringValue, type Member, type Scanned } from '../json.ts';
import { activationFields, admit, admitNow, init, readAdmitted, readJson, run, send, sendError, timingHeader, type Admission } from '../protocol.ts';
import type { ActionResult } from '../executors/executor.ts';
import type { RunMessage } from '../runner.ts';
import { startTiming, type Timing } from '../timing.ts';

const METHODS = ['GET', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS'] as const;
const ENVELOPE_KEYS = ['init', 'activation', 'value'];
const CORS_METHODS = 'OPTIONS, GET, DELETE, POST, PUT, HEAD, PATCH';
const CORS_HEADERS = 'Authorization, Origin, X-Requested-With, Content-Type, Accept, User-Agent';
const NOT_A_DICTIONARY = 'The action did not receive a dictionary as an argument.';
/** More fields than this in a urlencoded form is a 413: parsing millions blocks the event loop. */
const MAX_FORM_FIELDS = 1000;

/** What this platform knows beyond the runner: the mode, the allowed methods, raw, the action's name. */
const state = {
  dedicated: false,
  allowed: new Set<string>(['POST']),
  raw: false,
  actionName: undefined as string | undefined,
  /** Whether requests may carry platform envelopes (init, activation fields); off for a public service. */
  envelopes: true,
};

const isTrue = (text: string | undefined): boolean => text?.toLowerCase() === 'true';

/** `[GET, POST]` or `GET,POST`, any case; unknown entries warned about and ignored; unset or empty: POST. */
function parseMethods(text: string | undefined): Set<string> {
  const allowed = new Set<string>();
  const list = (text ?? '').trim().replace(/^\[/, '').replace(/\]$/, '');
  for (const entry of list.split(',').map((item) => item.trim())) {
    if (entry === '') continue;
    const method = entry.toUpperCase();
    if ((METHODS as readonly string[]).includes(method)) allowed.add(method);
    else process.stderr.write(`Environment variable '__OW_HTTP_METHODS' has an unrecognised value (${entry}).\n`);
  }
  if (allowed.size === 0) allowed.add('POST');
  if (allowed.has('GET')) allowed.add('HEAD');
  return allowed;
}

/** Reads the platform's environment; in dedicated mode initializes the action before the proxy listens. */
export async function prepare(env: NodeJS.ProcessEnv = process.env): Promise<void> {
  const envelopes = env.PROXY_KNATIVE_ENVELOPES ?? '1';
  if (envelopes !== '0' && envelopes !== '1' && envelopes !== '') throw new Error(`PROXY_KNATIVE_ENVELOPES=${envelopes} is not 0 or 1`);
  state.envelopes = envelopes !== '0';
  state.allowed = parseMethods(env.__OW_HTTP_METHODS);
  state.actionName = env.__OW_ACTION_NAME || undefined;
  if (env.__OW_ACTION_CODE === undefined) return;
  state.dedicated = true;
  state.raw = isTrue(env.__OW_ACTION_RAW);
  const value = { code: env.__OW_ACTION_CODE, binary: isTrue(env.__OW_ACTION_BINARY), main: env.__OW_ACTION_MAIN ?? null };
  const outcome = await init(async () => new Map(Object.entries(value).map(([name, item]) => [name, field(name, item)])));
  // The cause is already on stderr; exiting makes Kubernetes show the failure.
  if (!outcome.ok) throw new Error(`The action in __OW_ACTION_CODE failed to initialize: ${outcome.error}`);
}

export async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
  const cors = corsHeaders(req);
  const timing = startTiming();
  try {
    await respond(req, res, cors, timing);
  } catch (error) {
    // What this platform answers carries the CORS headers, errors included; anything unexpected is
    // proxy.ts's 500.
    if (!(error instanceof ProxyError)) throw error;
    sendError(res, error.status, error.message, { ...error.headers, ...cors, ...timingHeader(timing) });
  }
}

async function respond(req: IncomingMessage, res: ServerResponse, cors: Record<string, string>, timing: Timing): Promise<void> {
  const method = req.method ?? 'GET';
  if (!state.allowed.has(method)) {
    if (method === 'OPTIONS') return send(res, 200, '', cors);
    const allow = [...state.allowed].join(', ');
    return sendError(res, 405, `This action answers ${allow}, not ${method} (__OW_HTTP_METHODS).`, { ...cors, Allow: allow });
  }
  // A slot first, then the body: requests waiting in line hold no bodies.
  const admission = admitNow(res) ?? (await admit(res));
  try {
    await answer(req, res, cors, timing, admission);
  } finally {
    admission.release();
  }
}

async function answer(req: IncomingMessage, res: ServerResponse, cors: Record<string, string>, timing: Timing, admission: Admission): Promise<void> {
  const method = req.method ?? 'GET';
  const body = await readAdmitted(req, admission);
  // The path as sent, not normalised by URL parsing (`//a/../b` stays): it is the action's to read.
  const target = req.url ?? '/';
  const queryAt = target.indexOf('?');
  const path = queryAt === -1 ? target : target.slice(0, queryAt);
  const request: WebRequest = {
    body,
    contentType: req.headers['content-type'],
    query: queryAt === -1 ? '' : target.slice(queryAt + 1),
    web: {
      __ow_method: method,
      __ow_headers: req.headers,
      __ow_path: path === '/' ? '' : path,
    },
  };
  const json = jsonBody(request);
  const envelope = state.envelopes && json?.members && ENVELOPE_KEYS.some((key) => json.members!.has(key)) ? json.members : undefined;

  const initMember = envelope?.get('init');
  if (initMember) {
    if (state.dedicated) throw new ProxyError(403, 'Cannot initialize a runtime with a dedicated function.');
    const initValue = initMembers(initMember.value);
    const outcome = await init(async () => initValue, timing);
    if (!outcome.ok) throw new ProxyError(outcome.status, outcome.error);
    // Remembered only once the init succeeded: a failed init changes nothing.
    state.raw = initValue.get('raw')?.value === 'true';
    const name = initValue.get('name')?.value;
    if (name !== undefined && kindOf(name) === 'string' && name !== '""') state.actionName = stringValue(name);
    if (!envelope!.has('activation') && !envelope!.has('value')) return send(res, 200, 'OK', { ...cors, ...timingHeader(timing), 'Content-Type': 'text/html; charset=utf-8' });
  }

  const read = async (): Promise<RunMessage> => (envelope ? envelopeMessage(envelope, request) : webMessage(request, json));
  await run(read, admission, (outcome) => {
    // A failure is answered by handle(), with this platform's headers.
    if (!outcome.ok) throw new ProxyError(outcome.status, outcome.error);
    const response = webResponse(outcome.result);
    // The proxy's headers are defaults: what the action set wins (a Server-Timing of its own included).
    send(res, response.status, response.body, withDefaults(response.headers, { ...cors, ...timingHeader(timing) }));
  }, timing);
}

interface WebRequest {
  body: Buffer;
  contentType: string | undefined;
  /** The query string as sent, without `?`. */
  query: string;
  web: {
    __ow_method: string;
    __ow_headers: IncomingMessage['headers'];
    __ow_path: string;
  };
}

/** The CORS headers every answer carries unless the action set its own. */
function corsHeaders(req: IncomingMessage): Record<string, string> {
  return {
    'Access-Control-Allow-Origin': '*',
    'Access-Control-Allow-Methods': CORS_METHODS,
    'Access-Control-Allow-Headers': req.headers['access-control-request-headers'] ?? CORS_HEADERS,
  };
}

/** `headers` plus each default whose name (in any case) is not there yet. */
function withDefaults(headers: OutgoingHttpHeaders, defaults: OutgoingHttpHeaders): OutgoingHttpHeaders {
  const present = new Set(Object.keys(headers).map((name) => name.toLowerCase()));
  const merged: OutgoingHttpHeaders = { ...headers };
  for (const [name, value] of Object.entries(defaults)) if (!present.has(name.toLowerCase())) merged[name] = value;
  return merged;
}

const FORM_TYPE = /^application\/x-www-form-urlencoded\b/i;

function isJsonType(contentType: string | undefined): boolean {
  return /^application\/([\w.+-]+\+)?json\b/i.test(contentType ?? '');
}

/** Whether the first byte that is not whitespace is `{`. */
function startsWithBrace(body: Buffer): boolean {
  for (const byte of body) {
    if (byte === 0x7b) return true;
    if (byte !== 0x20 && byte !== 0x09 && byte !== 0x0a && byte !== 0x0d) return false;
  }
  return false;
}

/**
 * The body as JSON (scanned within bounds, never parsed whole): a JSON-typed body must be JSON (else a
 * 400); any other body is tried only when it starts with `{` (`curl -d` says form-urlencoded), and is
 * not JSON when it doesn't scan. Other bodies never reach the JSON scanner.
 */
function jsonBody(request: WebRequest): Scanned | undefined {
  if (request.body.length === 0) return undefined;
  if (isJsonType(request.contentType)) return readJson(request.body);
  if (!startsWithBrace(request.body)) return undefined;
  try {
    return readJson(request.body);
  } catch (error) {
    // JSON nested too deep is refused whatever its type; anything else that doesn't scan is text or a form.
    if (error instanceof ProxyError && isTooDeep(error.cause)) throw error;
    return undefined;
  }
}

/** An envelope's `init`, checked before the runner sees it. */
function initMembers(text: string): Map<string, Member> {
  if (kindOf(text) !== 'object') throw new ProxyError(400, 'Unable to process Initialization data: Invalid Init. data; expected an object.');
  const members = membersOf(text);
  for (const key of ['binary', 'raw']) {
    const value = members.get(key)?.value;
    if (value !== undefined && kindOf(value) !== 'boolean') {
      throw new ProxyError(400, `Unable to process Initialization data: Invalid Init. data; expected boolean for key '${key}'.`);
    }
  }
  return members;
}

/**
 * What platform tooling sends. With `activation`, a run of a web action: the fields are this run's
 * `__OW_*` variables and the arguments get the `__ow_*` request fields. Without, a direct invocation:
 * the arguments are exactly `value`.
 */
function envelopeMessage(envelope: Map<string, Member>, request: WebRequest): RunMessage {
  const withActivation = envelope.has('activation');
  const fields = withActionName(withActivation ? activationFields(envelope) : new Map());
  const value = envelope.get('value')?.value ?? '{}';
  const requestFields = withActivation ? webFields(request, fields) : [];
  if (state.raw) {
    const kind = kindOf(value);
    const rawBody = kind === 'string' ? stringValue(value) : kind === 'null' ? '' : Buffer.from(compact(value)).toString('base64');
    return { args: rawArguments(requestFields, rawBody, request.query), fields };
  }
  if (kindOf(value) !== 'object') throw new ProxyError(400, NOT_A_DICTIONARY);
  return { args: objectText(merge(membersOf(value).values(), requestFields)), fields };
}

function webMessage(request: WebRequest, json: Scanned | undefined): RunMessage {
  const fields = withActionName(new Map());
  const requestFields = webFields(request, fields);
  const { body, contentType } = request;
  if (state.raw) {
    const text = body.length > 0 && isText(body, contentType) && !isJsonType(contentType);
    const rawBody = text ? body.toString('utf8') : body.toString('base64');
    return { args: rawArguments(requestFields, rawBody, request.query), fields };
  }
  const query = [...new URLSearchParams(request.query)].map(([name, value]) => field(name, value));
  return { args: objectText(merge(query, bodyArguments(request, json), requestFields)), fields };
}

/** A member holding `value`, a value the proxy made itself (a string, a header map), as JSON. */
function field(name: string, value: unknown): Member {
  return member(name, JSON.stringify(value));
}

/** Raw mode's arguments: the request fields there are, the body and the query string as they came. */
function rawArguments(requestFields: Member[], body: string, query: string): string {
  return objectText([...requestFields, field('__ow_body', body), field('__ow_query', query)]);
}

/** Members in order, a later one replacing an earlier one of the same name in its place (as object spread does). */
function merge(...groups: Iterable<Member>[]): Iterable<Member> {
  const merged = new Map<string, Member>();
  for (const group of groups) for (const entry of group) merged.set(entry.key, entry);
  return merged.values();
}

/** The request fields every run with a request behind it gets. */
function webFields(request: WebRequest, fields: Map<string, string>): Member[] {
  return [
    field('__ow_method', request.web.__ow_method),
    field('__ow_headers', request.web.__ow_headers),
    field('__ow_path', request.web.__ow_path),
    field('__ow_user', owUser(fields)),
  ];
}

/** A web request's body as arguments: a JSON object's or a form's fields, else `__ow_body`. */
function bodyArguments(request: WebRequest, json: Scanned | undefined): Iterable<Member> {
  const { body, contentType } = request;
  if (body.length === 0) return [];
  if (json) {
    if (!json.members) throw new ProxyError(400, NOT_A_DICTIONARY);
    return json.members.values();
  }
  if (isJsonType(contentType)) throw new ProxyError(400, NOT_A_DICTIONARY);
  if (FORM_TYPE.test(contentType ?? '')) {
    if (countOf(body, 0x26 /* & */, MAX_FORM_FIELDS) >= MAX_FORM_FIELDS) {
      throw new ProxyError(413, `The form has more than ${MAX_FORM_FIELDS} fields.`);
    }
    return [...new URLSearchParams(body.toString('utf8'))].map(([name, value]) => field(name, value));
  }
  return [field('__ow_body', isText(body, contentType) ? body.toString('utf8') : body.toString('base64'))];
}

/** How often `byte` occurs in `body`, counting no further than `limit`. */
function countOf(body: Buffer, byte: number, limit: number): number {
  let count = 0;
  for (let at = body.indexOf(byte); at !== -1 && count < limit; at = body.indexOf(byte, at + 1)) count++;
  return count;
}

/** Text is what says so in its Content-Type, or, without one, what is valid UTF-8. */
function isText(body: Buffer, contentType: string | undefined): boolean {
  if (contentType === undefined) return isUtf8(body);
  return /^text\/|charset=|^application\/(([\w.+-]+\+)?(json|xml)|javascript|x-www-form-urlencoded)\b/i.test(contentType);
}

/** The activation fields, with the action's name from init or __OW_ACTION_NAME unless the request gave one. */
function withActionName(fields: Map<string, string>): Map<string, string> {
  const given = fields.get('action_name');
  if (state.actionName !== undefined && (given === undefined || given === '""')) fields.set('action_name', JSON.stringify(state.actionName));
  return fields;
}

function owUser(fields: Map<string, string>): string {
  const namespace = fields.get('namespace');
  if (namespace !== undefined && kindOf(namespace) === 'string' && namespace !== '""') return stringValue(namespace);
  return process.env.__OW_NAMESPACE ?? '';
}

interface WebResponse {
  status: number;
  headers: OutgoingHttpHeaders;
  body: string | Buffer;
}

/** The result fields that shape the response; the rest is the body when there is no `body`. */
const RESPONSE_FIELDS = ['statusCode', 'headers', 'body'];
const BINARY_TYPE = /^(image\/|audio\/|video\/|application\/(octet-stream|pdf|zip)\b)/i;
const STRICT_BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;
/** Headers that belong to the connection or the framing: only the proxy sets those. */
const FRAMING_HEADERS = new Set(['content-length', 'transfer-encoding', 'connection', 'keep-alive', 'upgrade', 'trailer', 'te', 'proxy-connection']);
const TOKEN = /^[!#$%&'*+.^_`|~\w-]+$/;
// What Node refuses in a header value: control characters but tab, and anything above U+00FF.
const INVALID_HEADER_VALUE = /[^\t\x20-\x7e\x80-\xff]/;

/**
 * The action's result as an HTTP response, by the web action rules; a result that can't be one is a 502.
 * Bodies are the result's own texts (numbers as the action wrote them), never parsed and re-serialized,
 * and where they can be, its own bytes: a large body is sent without another copy.
 */
function webResponse(result: ActionResult): WebResponse {
  const { json } = result;
  let status = 200;
  let headers: OutgoingHttpHeaders = {};
  // The whole result is the body, unless it is an object with response fields.
  let body: Member | undefined = { key: '', value: json.text, at: 0 };
  if (json.members) {
    const statusCode = json.members.get('statusCode')?.value;
    const given = json.members.get('headers')?.value;
    if (statusCode !== undefined) status = statusCodeOf(statusCode);
    if (given !== undefined) headers = headersOf(given);
    const others = [...json.members].filter(([name]) => !RESPONSE_FIELDS.includes(name)).map(([, entry]) => entry);
    body = json.members.get('body') ?? (others.length > 0 ? member('', objectText(others)) : undefined);
  }
  if (body === undefined || body.value === 'null' || body.value === '""') {
    if (status === 200) status = 204;
    return { status, headers, body: '' };
  }
  // 204 and 304 have no body (RFC 9110); Node would drop it anyway.
  if (status === 204 || status === 304) return { status, headers, body: '' };
  // The body's bytes in the result, less `trim` at each end, when offsets are byte offsets.
  const { at, value } = body;
  const ownBytes = (trim: number): Buffer | undefined => (result.ascii && at >= 0 ? result.bytes.subarray(at + trim, at + value.length - trim) : undefined);
  const typeName = Object.keys(headers).find((name) => name.toLowerCase() === 'content-type');
  const contentType = typeName === undefined ? undefined : String(headers[typeName]);
  if (kindOf(value) !== 'string') {
    if (contentType === undefined) headers['Content-Type'] = 'application/json';
    return { status, headers, body: ownBytes(0) ?? value };
  }
  if (contentType === undefined) headers['Content-Type'] = 'text/html; charset=utf-8';
  else if (BINARY_TYPE.test(contentType)) {
    const compacted = stringValue(value).replace(/\s+/g, '');
    if (!STRICT_BASE64.test(compacted)) throw new ProxyError(502, `The action's ${contentType} body is not valid base64.`);
    return { status, headers, body: Buffer.from(compacted, 'base64') };
  }
  // A string without escapes is its own text between the quotes.
  return { status, headers, body: (!value.includes('\\') && ownBytes(1)) || stringValue(value) };
}

/** An integer 200–599, or a string of one; 1xx answers are interim, never an action's final answer. */
function statusCodeOf(text: string): number {
  const kind = kindOf(text);
  const digits = kind === 'string' ? stringValue(text).trim() : kind === 'number' ? text : '';
  const code = /^\d{3}$/.test(digits) ? Number(digits) : NaN;
  if (!(code >= 200 && code <= 599)) throw new ProxyError(502, `The action returned an invalid statusCode: ${text.length > 100 ? `${text.slice(0, 100)}…` : text}.`);
  return code;
}

/** The action's headers: names that are tokens, values Node can send (one per line, or an array of them). */
function headersOf(text: string): OutgoingHttpHeaders {
  if (kindOf(text) !== 'object') throw new ProxyError(502, 'The action returned headers that are not an object.');
  const headers: OutgoingHttpHeaders = {};
  for (const [name, entry] of membersOf(text)) {
    const kind = kindOf(entry.value);
    const items = kind === 'array' ? (JSON.parse(entry.value) as unknown[]) : [JSON.parse(entry.value) as unknown];
    const values = items.map((item) => (['string', 'number', 'boolean'].includes(typeof item) ? String(item) : undefined));
    // CR, LF or other control characters would let the action write headers of its own, or make Node throw.
    const valid = TOKEN.test(name) && values.every((value) => value !== undefined && !INVALID_HEADER_VALUE.test(value));
    if (!valid) {
      const shown = entry.value.length > 100 ? `${entry.value.slice(0, 100)}…` : entry.value;
      throw new ProxyError(502, `The action returned an invalid header: ${JSON.stringify(name)}: ${shown}.`);
    }
    if (FRAMING_HEADERS.has(name.toLowerCase())) continue;
    headers[name] = kind === 'array' ? (values as string[]) : values[0]!;
  }
  return headers;
}
