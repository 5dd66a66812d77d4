// OpenWhisk: the invoker's two routes, POST /init once and POST /run per activation.

import type { IncomingMessage, OutgoingHttpHeaders, ServerResponse } from 'node:http';
import { MESSAGES, ProxyError } from '../errors.ts';
import { membersOf, type Member, type Scanned } from '../json.ts';
import { activationFields, admit, admitNow, failure, init, memberBytes, readAdmitted, readInit, readJson, resultBody, run, send, sendError, sendJson, timingHeader, type Admission, type Failure } from '../protocol.ts';
import type { RunMessage } from '../runner.ts';
import { startTiming } from '../timing.ts';

const ROUTES = ['/init', '/run'];

export async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
  const timing = startTiming();
  const url = req.url ?? '/';
  const query = url.indexOf('?');
  const path = query === -1 ? url : url.slice(0, query);
  if (!ROUTES.includes(path)) return sendError(res, 404, `There is no ${path}: the proxy serves POST /init and POST /run.`);
  if (req.method !== 'POST') return sendError(res, 405, `${path} takes POST, not ${req.method}.`, { Allow: 'POST' });

  if (path === '/init') {
    const outcome = await init(async () => {
      const { json, code } = await readInit(req);
      const members = initValue(json);
      const member = members.get('code');
      if (code && member?.value === '""') member.source = code;
      return members;
    }, timing);
    // Text, as the original's Flask answered it.
    if (outcome.ok) return send(res, 200, 'OK', { 'Content-Type': 'text/html; charset=utf-8', ...timingHeader(timing) });
    return sendFailure(res, outcome, timingHeader(timing));
  }
  let admission: Admission;
  try {
    // A slot first, then the body: requests waiting in line hold no bodies.
    admission = admitNow(res) ?? (await admit(res));
  } catch (error) {
    return sendFailure(res, failure(error), timingHeader(timing));
  }
  await run(() => readAdmitted(req, admission).then(runMessageOf), admission, (outcome) => {
    if (outcome.ok) return sendJson(res, 200, resultBody(outcome.result), timingHeader(timing));
    sendFailure(res, outcome, timingHeader(timing));
  }, timing);
}

function sendFailure(res: ServerResponse, outcome: Failure, headers: OutgoingHttpHeaders): void {
  sendError(res, outcome.status, outcome.error, { ...outcome.headers, ...headers });
}

/** `{"value": {...}}`: an empty body or a missing value is `{}`; anything but objects (JSON `null` too) is a 404. */
function initValue(body: Scanned | undefined): Map<string, Member> {
  if (body === undefined) return new Map();
  const value = body.members?.get('value')?.value ?? '{}';
  if (!body.members || !value.startsWith('{')) throw new ProxyError(404, 'The init request must be a JSON object whose "value" is an object.');
  return membersOf(value);
}

/** `{"value": args, ...activation fields}`: a missing body or value is `{}`; args are an object or array. */
function runMessageOf(body: Buffer): RunMessage {
  const json = readJson(body, true);
  if (json === undefined) return { args: '{}', fields: new Map() };
  if (!json.members) throw new ProxyError(404, MESSAGES.badArguments);
  const value = json.members.get('value');
  const args = value?.value ?? '{}';
  if (!args.startsWith('{') && !args.startsWith('[')) throw new ProxyError(404, MESSAGES.badArguments);
  return { args, argsBytes: value && memberBytes(body, value), fields: activationFields(json.members) };
}
