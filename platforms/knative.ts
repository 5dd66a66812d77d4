// Knative: one HTTP endpoint that initializes and runs the action and answers like an OpenWhisk web
// action (the action's result shapes the HTTP response). Selected by __OW_RUNTIME_PLATFORM=knative.
//
// Dedicated mode (__OW_ACTION_CODE set) initializes before listening; stem-cell mode takes the action
// from the first request's `init`. Init, run, the environment rules, logs and sentinels are proxy.ts's,
// shared with the OpenWhisk platform; this file only maps HTTP to them and results back to HTTP.

import { isUtf8 } from 'node:buffer';
import type { IncomingMessage, OutgoingHttpHeaders, ServerResponse } from 'node:http';
import { activationFields, init, parseJson, readBody, run, send, sendError, type RunMessage } from '../proxy.ts';
import { ProxyError, isObject, jsonText, type InitValue } from '../runner.ts';

const METHODS = ['GET', 'POST', 'PUT', 'DELETE', 'PATCH', 'OPTIONS'] as const;
const ENVELOPE_KEYS = ['init', 'activation', 'value'];
const CORS_METHODS = 'OPTIONS, GET, DELETE, POST, PUT, HEAD, PATCH';
const CORS_HEADERS = 'Authorization, Origin, X-Requested-With, Content-Type, Accept, User-Agent';
const NOT_A_DICTIONARY = 'The action did not receive a dictionary as an argument.';

/** What this platform knows beyond the runner: the mode, the allowed methods, raw, the action's name. */
const state = {
  dedicated: false,
  allowed: new Set<string>(['POST']),
  raw: false,
  actionName: undefined as string | undefined,
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
  state.allowed = parseMethods(env.__OW_HTTP_METHODS);
  state.actionName = env.__OW_ACTION_NAME || undefined;
  if (env.__OW_ACTION_CODE === undefined) return;
  state.dedicated = true;
  state.raw = isTrue(env.__OW_ACTION_RAW);
  const value: InitValue = { code: env.__OW_ACTION_CODE, binary: isTrue(env.__OW_ACTION_BINARY), main: env.__OW_ACTION_MAIN };
  const outcome = await init(async () => value);
  // The cause is already on stderr; exiting makes Kubernetes show the failure.
  if (!outcome.ok) throw new Error(`The action in __OW_ACTION_CODE failed to initialize: ${outcome.error}`);
}

export async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
  const cors = corsHeaders(req);
  try {
    await respond(req, res, cors);
  } catch (error) {
    // What this platform answers carries the CORS headers, errors included; anything unexpected is
    // proxy.ts's 500.
    if (!(error instanceof ProxyError)) throw error;
    sendError(res, error.status, error.message, cors);
  }
}

async function respond(req: IncomingMessage, res: ServerResponse, cors: Record<string, string>): Promise<void> {
  const method = req.method ?? 'GET';
  if (!state.allowed.has(method)) {
    if (method === 'OPTIONS') return send(res, 200, '', cors);
    const allow = [...state.allowed].join(', ');
    return sendError(res, 405, `This action answers ${allow}, not ${method} (__OW_HTTP_METHODS).`, { ...cors, Allow: allow });
  }
  const body = await readBody(req);
  const url = new URL(req.url ?? '/', 'http://action');
  const web: WebFields = {
    __ow_method: method,
    __ow_headers: req.headers,
    __ow_path: url.pathname === '/' ? '' : url.pathname,
  };
  const contentType = req.headers['content-type'];
  const json = parseBody(body, contentType);
  const envelope = isEnvelope(json?.value) ? json.value : undefined;

  if (envelope && 'init' in envelope) {
    if (state.dedicated) throw new ProxyError(403, 'Cannot initialize a runtime with a dedicated function.');
    const outcome = await init(async () => initValue(envelope.init));
    if (!outcome.ok) throw new ProxyError(outcome.status, outcome.error);
    // Remembered only once the init succeeded: a failed init changes nothing.
    const { raw, name } = envelope.init as InitValue;
    state.raw = raw === true;
    if (typeof name === 'string' && name !== '') state.actionName = name;
    if (!('activation' in envelope) && !('value' in envelope)) return send(res, 200, 'OK', { ...cors, 'Content-Type': 'text/html; charset=utf-8' });
  }

  const outcome = await run(async () => (envelope ? envelopeMessage(envelope, url, web) : webMessage(body, json, contentType, url, web)));
  if (!outcome.ok) throw new ProxyError(outcome.status, outcome.error);
  const response = webResponse(outcome.result);
  send(res, response.status, response.body, withDefaults(response.headers, cors));
}

interface WebFields {
  __ow_method: string;
  __ow_headers: IncomingMessage['headers'];
  __ow_path: string;
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
function withDefaults(headers: Record<string, string>, defaults: Record<string, string>): OutgoingHttpHeaders {
  const present = new Set(Object.keys(headers).map((name) => name.toLowerCase()));
  const merged: OutgoingHttpHeaders = { ...headers };
  for (const [name, value] of Object.entries(defaults)) if (!present.has(name.toLowerCase())) merged[name] = value;
  return merged;
}

const FORM_TYPE = /^application\/x-www-form-urlencoded\b/i;

function isJsonType(contentType: string | undefined): boolean {
  return /^application\/([\w.+-]+\+)?json\b/i.test(contentType ?? '');
}

/**
 * The body as JSON, whatever its Content-Type (`curl -d` says form-urlencoded), or undefined when it is
 * empty or isn't JSON. A body sent as JSON that doesn't parse is a 400.
 */
function parseBody(body: Buffer, contentType: string | undefined): { value: unknown } | undefined {
  if (body.length === 0) return undefined;
  try {
    return { value: parseJson(body) };
  } catch (error) {
    if (isJsonType(contentType)) throw error;
    return undefined; // text, a form, bytes
  }
}

/** What platform tooling sends: a JSON object with `init`, `activation` or `value` at its top level. */
function isEnvelope(value: unknown): value is Record<string, unknown> {
  return isObject(value) && ENVELOPE_KEYS.some((key) => key in value);
}

/** An envelope's `init`, checked before the runner sees it. */
function initValue(init: unknown): InitValue {
  if (!isObject(init)) throw new ProxyError(400, 'Unable to process Initialization data: Invalid Init. data; expected an object.');
  for (const key of ['binary', 'raw']) {
    if (init[key] !== undefined && typeof init[key] !== 'boolean') {
      throw new ProxyError(400, `Unable to process Initialization data: Invalid Init. data; expected boolean for key '${key}'.`);
    }
  }
  return init;
}

function envelopeMessage(envelope: Record<string, unknown>, url: URL, web: WebFields): RunMessage {
  const fields = withActionName('activation' in envelope ? activationFields({ activation: envelope.activation }) : {});
  const value = 'value' in envelope ? envelope.value : {};
  const user = { __ow_user: owUser(fields) };
  if (state.raw) {
    const rawBody = typeof value === 'string' ? value : value === undefined || value === null ? '' : Buffer.from(jsonText(value, 400, 'The value is')).toString('base64');
    return { args: { ...web, ...user, __ow_body: rawBody, __ow_query: url.search.slice(1) }, fields };
  }
  if (!isObject(value)) throw new ProxyError(400, NOT_A_DICTIONARY);
  return { args: { ...value, ...web, ...user }, fields };
}

function webMessage(body: Buffer, json: { value: unknown } | undefined, contentType: string | undefined, url: URL, web: WebFields): RunMessage {
  const fields = withActionName({});
  const common = { ...web, __ow_user: owUser(fields) };
  if (state.raw) {
    const text = body.length > 0 && isText(body, contentType) && !isJsonType(contentType);
    return { args: { ...common, __ow_body: text ? body.toString('utf8') : body.toString('base64'), __ow_query: url.search.slice(1) }, fields };
  }
  return { args: { ...Object.fromEntries(url.searchParams), ...bodyArguments(body, json, contentType), ...common }, fields };
}

/** A web request's body as arguments: a JSON object's or a form's fields, else `__ow_body`. */
function bodyArguments(body: Buffer, json: { value: unknown } | undefined, contentType: string | undefined): Record<string, unknown> {
  if (body.length === 0) return {};
  const text = body.toString('utf8');
  const isForm = FORM_TYPE.test(contentType ?? '');
  if (isJsonType(contentType) || (isForm && /^\s*[[{]/.test(text))) {
    // Parsed already; parsing again only to throw the 400 with the parser's message.
    const parsed = json ? json.value : parseJson(body);
    if (!isObject(parsed)) throw new ProxyError(400, NOT_A_DICTIONARY);
    return parsed;
  }
  if (isForm) return Object.fromEntries(new URLSearchParams(text));
  return { __ow_body: isText(body, contentType) ? text : body.toString('base64') };
}

/** Text is what says so in its Content-Type, or, without one, what is valid UTF-8. */
function isText(body: Buffer, contentType: string | undefined): boolean {
  if (contentType === undefined) return isUtf8(body);
  return /^text\/|charset=|^application\/(([\w.+-]+\+)?(json|xml)|javascript|x-www-form-urlencoded)\b/i.test(contentType);
}

/** The activation fields, with the action's name from init or __OW_ACTION_NAME unless the request gave one. */
function withActionName(fields: Record<string, unknown>): Record<string, unknown> {
  return state.actionName !== undefined && !('action_name' in fields) ? { ...fields, action_name: state.actionName } : fields;
}

function owUser(fields: Record<string, unknown>): string {
  const namespace = fields.namespace;
  if (typeof namespace === 'string' && namespace !== '') return namespace;
  return process.env.__OW_NAMESPACE ?? '';
}

interface WebResponse {
  status: number;
  headers: Record<string, string>;
  body: string | Buffer;
}

const BINARY_TYPE = /^(image\/|audio\/|video\/|application\/(octet-stream|pdf|zip)\b)/i;
const STRICT_BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** The action's result as an HTTP response, by the web action rules; a result that can't be one is a 502. */
function webResponse(result: object): WebResponse {
  let status = 200;
  const headers: Record<string, string> = {};
  let body: unknown = result;
  if (isObject(result)) {
    const { statusCode, headers: given, body: explicit, ...rest } = result;
    if (statusCode !== undefined) status = statusCodeOf(statusCode);
    if (given !== undefined) Object.assign(headers, headersOf(given));
    body = 'body' in result ? explicit : Object.keys(rest).length > 0 ? rest : undefined;
  }
  if (body === undefined || body === null || body === '') {
    if (status === 200) status = 204;
    return { status, headers, body: '' };
  }
  const typeName = Object.keys(headers).find((name) => name.toLowerCase() === 'content-type');
  const contentType = typeName === undefined ? undefined : headers[typeName];
  if (typeof body === 'string') {
    if (contentType === undefined) headers['Content-Type'] = 'text/html; charset=utf-8';
    else if (BINARY_TYPE.test(contentType)) {
      const compact = body.replace(/\s+/g, '');
      if (!STRICT_BASE64.test(compact)) throw new ProxyError(502, `The action's ${contentType} body is not valid base64.`);
      return { status, headers, body: Buffer.from(compact, 'base64') };
    }
    return { status, headers, body };
  }
  if (contentType === undefined) headers['Content-Type'] = 'application/json';
  return { status, headers, body: jsonText(body, 502, "The action's result is") };
}

function statusCodeOf(value: unknown): number {
  const code = typeof value === 'string' && /^\d+$/.test(value.trim()) ? Number(value) : value;
  if (typeof code !== 'number' || !Number.isInteger(code) || code < 100 || code > 599) {
    throw new ProxyError(502, `The action returned an invalid statusCode: ${JSON.stringify(value)}.`);
  }
  return code;
}

function headersOf(value: unknown): Record<string, string> {
  if (!isObject(value)) throw new ProxyError(502, 'The action returned headers that are not an object.');
  const headers: Record<string, string> = {};
  for (const [name, item] of Object.entries(value)) {
    // A header value is text on one line: CR or LF would let the action write headers of its own.
    const valid = ['string', 'number', 'boolean'].includes(typeof item) && /^[!#$%&'*+.^_`|~\w-]+$/.test(name) && !/[\r\n\0]/.test(String(item));
    if (!valid) throw new ProxyError(502, `The action returned an invalid header: ${JSON.stringify(name)}: ${JSON.stringify(item)}.`);
    headers[name] = String(item);
  }
  return headers;
}
