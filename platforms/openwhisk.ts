// OpenWhisk: the invoker's two routes, POST /init once and POST /run per activation.

import type { IncomingMessage, ServerResponse } from 'node:http';
import { activationFields, init, parseJson, readBody, run, send, sendError, sendJson, type Failure, type RunMessage } from '../proxy.ts';
import { MESSAGES, ProxyError, isObject, type InitValue } from '../runner.ts';

const ROUTES = ['/init', '/run'];

export async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
  const path = (req.url ?? '/').split('?', 1)[0]!;
  if (!ROUTES.includes(path)) return sendError(res, 404, `There is no ${path}: the proxy serves POST /init and POST /run.`);
  if (req.method !== 'POST') return sendError(res, 405, `${path} takes POST, not ${req.method}.`, { Allow: 'POST' });

  if (path === '/init') {
    const outcome = await init(async () => initValue(parseJson(await readBody(req))));
    // Text, as the original's Flask answered it.
    return outcome.ok ? send(res, 200, 'OK', { 'Content-Type': 'text/html; charset=utf-8' }) : sendFailure(res, outcome);
  }
  const outcome = await run(async () => runMessage(parseJson(await readBody(req))));
  return outcome.ok ? sendJson(res, 200, outcome.json) : sendFailure(res, outcome);
}

/** `{"value": {...}}`: an empty body or a missing value is `{}`; anything but objects (JSON `null` too) is a 404. */
function initValue(message: unknown): InitValue {
  const body = message === undefined ? {} : message;
  const value = isObject(body) ? ('value' in body ? body.value : {}) : undefined;
  if (!isObject(value)) throw new ProxyError(404, 'The init request must be a JSON object whose "value" is an object.');
  return value;
}

/** `{"value": args, ...activation fields}`: a missing body or value is `{}`; args are an object or array. */
function runMessage(message: unknown): RunMessage {
  const body = message === undefined ? {} : message;
  if (!isObject(body)) throw new ProxyError(404, MESSAGES.badArguments);
  const args = 'value' in body ? body.value : {};
  if (typeof args !== 'object' || args === null) throw new ProxyError(404, MESSAGES.badArguments);
  return { args, fields: activationFields(body) };
}

function sendFailure(res: ServerResponse, outcome: Failure): void {
  sendError(res, outcome.status, outcome.error);
}
