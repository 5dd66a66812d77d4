// Knative as a public endpoint (spec/knative.md, "A public endpoint"), black-box against the real proxy:
// one request must not stall it, impersonate the platform, or break the HTTP framing.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, test } from 'node:test';
import { MiB, exchange, peakRss, withProxy, type RunningProxy } from './helpers.ts';

// Answers `respond` from its arguments when there is one, else {"args": <its arguments as sent>, "env": …}.
const RESPONDER = `#!/usr/bin/env node
const input = require('fs').readFileSync(0, 'utf8');
const args = JSON.parse(input);
const env = { key: process.env.__OW_API_KEY, namespace: process.env.__OW_NAMESPACE, name: process.env.__OW_ACTION_NAME };
console.log('respond' in args ? JSON.stringify(args.respond) : '{"args":' + input + ',"env":' + JSON.stringify(env) + '}');
`;

function dedicated<T>(env: Record<string, string>, fn: (proxy: RunningProxy) => Promise<T>): Promise<T> {
  return withProxy({ env: { __OW_RUNTIME_PLATFORM: 'knative', __OW_ACTION_CODE: RESPONDER, __OW_HTTP_METHODS: 'GET,POST', ...env } }, fn);
}

/** What the action answers for `result`, through a dedicated proxy. */
function respond(result: unknown): Promise<string> {
  return dedicated({}, async (proxy) => {
    const body = JSON.stringify({ respond: result });
    // Not half-closed: a client that ends its side before the answer has gone away (Node aborts the request).
    const request = `POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`;
    return exchange(proxy.port, request, false);
  });
}

/** The raw answer's status, header lines (lower-case names) and body. */
function parse(answer: string): { status: number; headers: Array<[string, string]>; body: string } {
  const split = answer.indexOf('\r\n\r\n');
  const [statusLine, ...lines] = answer.slice(0, split).split('\r\n');
  const headers = lines.map((line): [string, string] => [line.slice(0, line.indexOf(':')).toLowerCase(), line.slice(line.indexOf(':') + 1).trim()]);
  return { status: Number(statusLine!.split(' ')[1]), headers, body: answer.slice(split + 4) };
}

describe('bodies are read within bounds', { concurrency: true }, () => {
  test('47 MB of nested [ as text/plain is never parsed; 10 million levels after a { are a 400; another request is answered meanwhile', () =>
    dedicated({ PROXY_MAX_BODY_BYTES: String(64 * MiB) }, async (proxy) => {
      const before = peakRss(proxy.child.pid!);
      const brackets = '['.repeat(47_000_000);
      const [text, braced, other] = await Promise.all([
        proxy.request('POST', '/', brackets, { 'Content-Type': 'text/plain' }),
        proxy.request('POST', '/', `{"a":${'['.repeat(10_000_000)}`, { 'Content-Type': 'text/plain' }),
        proxy.request('GET', '/?q=1'),
      ]);
      assert.equal(text.status, 200, 'a text body is the action\'s, as __ow_body');
      assert.equal(((text.json() as { args: { __ow_body: string } }).args.__ow_body).length, 47_000_000);
      assert.equal(braced.status, 400);
      assert.match(braced.text, /nested deeper than 1000 levels/);
      assert.equal((other.json() as { args: { q: string } }).args.q, '1');
      // The body as bytes, as text, in the arguments and in the action's echo: each 47 MB once or twice.
      const growth = peakRss(proxy.child.pid!) - before;
      assert.ok(growth < 600 * MiB, `peak RSS grew by ${(growth / MiB).toFixed(0)} MiB (JSON.parse took 2.67 GB)`);
    }));

  test('a form with more than 1,000 fields → 413 before it is parsed; 1,000 fields are fine', () =>
    dedicated({}, async (proxy) => {
      const form = (n: number): string => Array.from({ length: n }, (_, i) => `f${i}=${i}`).join('&');
      const type = { 'Content-Type': 'application/x-www-form-urlencoded' };
      const fine = await proxy.request('POST', '/', form(1000), type);
      assert.equal((fine.json() as { args: Record<string, string> }).args.f999, '999');
      // Built with repeat(): generating it field by field would block this test process for seconds.
      const refused = await proxy.request('POST', '/', `${'a=1&'.repeat(5_000_000)}b=2`, type);
      assert.equal(refused.status, 413);
      assert.deepEqual(refused.json(), { error: 'The form has more than 1000 fields.' });
      assert.equal(refused.headers['access-control-allow-origin'], '*');
    }));

  test('web request arguments keep big integers; the result body keeps them too', () =>
    dedicated({}, async (proxy) => {
      const res = await proxy.request('POST', '/?n=1', '{"id":12345678901234567890,"f":1.10}', { 'Content-Type': 'application/json' });
      assert.match(res.text, /^\{"args":\{"n":"1","id":12345678901234567890,"f":1\.10,"__ow_method":"POST",/);
    }));

  test('the result body keeps big integers, as the action wrote them', () =>
    withProxy({ env: { __OW_RUNTIME_PLATFORM: 'knative', __OW_ACTION_CODE: '#!/bin/sh\necho \'{"body":{"id":12345678901234567890, "f":1.10},"statusCode":200}\'\n' } }, async (proxy) => {
      const res = await proxy.request('POST', '/', {});
      assert.equal(res.text, '{"id":12345678901234567890, "f":1.10}');
      const rest = await withProxy({ env: { __OW_RUNTIME_PLATFORM: 'knative', __OW_ACTION_CODE: '#!/bin/sh\necho \'{"statusCode":201,"id":12345678901234567890}\'\n' } }, (other) => other.request('POST', '/', {}));
      assert.equal(rest.status, 201);
      assert.equal(rest.text, '{"id":12345678901234567890}');
    }));
});

describe('the platform can not be impersonated', { concurrency: true }, () => {
  const impersonation = '{"activation":{"namespace":"whisk.system","api_key":"x","action_name":"evil"},"value":{"a":1},"other":2}';

  test('PROXY_KNATIVE_ENVELOPES=0: activation, value and init are the client\'s JSON, nothing more', () =>
    dedicated({ PROXY_KNATIVE_ENVELOPES: '0', __OW_NAMESPACE: 'mine', __OW_ACTION_NAME: 'hello' }, async (proxy) => {
      const res = await proxy.request('POST', '/', impersonation, { 'Content-Type': 'application/json' });
      const { args, env } = res.json() as { args: Record<string, unknown>; env: Record<string, unknown> };
      assert.deepEqual(args.activation, { namespace: 'whisk.system', api_key: 'x', action_name: 'evil' });
      assert.deepEqual(args.value, { a: 1 });
      assert.equal(args.other, 2, 'nothing dropped');
      assert.equal(args.__ow_user, 'mine');
      assert.deepEqual(env, { namespace: 'mine', name: 'hello' }, 'no __OW_API_KEY');
      const init = await proxy.request('POST', '/', '{"init":{"code":"#!/bin/sh\\necho {}"}}', { 'Content-Type': 'application/json' });
      assert.equal(init.status, 200, 'no 403: it is just JSON');
      assert.deepEqual((init.json() as { args: Record<string, unknown> }).args.init, { code: '#!/bin/sh\necho {}' });
    }));

  test('by default (envelopes on, as platform tooling needs) the same body is an envelope', () =>
    dedicated({}, async (proxy) => {
      const res = await proxy.request('POST', '/', impersonation, { 'Content-Type': 'application/json' });
      const { args, env } = res.json() as { args: Record<string, unknown>; env: Record<string, unknown> };
      assert.equal(args.a, 1);
      assert.equal(env.key, 'x');
      assert.equal(args.__ow_user, 'whisk.system');
    }));

  test('PROXY_KNATIVE_ENVELOPES must be 0 or 1', async () => {
    await assert.rejects(
      dedicated({ PROXY_KNATIVE_ENVELOPES: 'no' }, async () => undefined),
      /PROXY_KNATIVE_ENVELOPES=no is not 0 or 1/,
    );
  });
});

describe('concurrency is capped', () => {
  test('200 concurrent requests: at most 64 action processes at once by default, every request answered', () =>
    withProxy({ env: { __OW_RUNTIME_PLATFORM: 'knative', __OW_ACTION_CODE: '#!/bin/sh\nsleep 0.3\necho \'{"ok":true}\'\n' } }, async (proxy) => {
      const children = (): number => {
        try {
          return readFileSync(`/proc/${proxy.child.pid}/task/${proxy.child.pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).length;
        } catch {
          return 0;
        }
      };
      let most = 0;
      let sampling = true;
      const sampler = (async () => {
        while (sampling) {
          most = Math.max(most, children());
          await new Promise((resolve) => setTimeout(resolve, 5));
        }
      })();
      const answers = await Promise.all(Array.from({ length: 200 }, () => proxy.request('POST', '/', {})));
      sampling = false;
      await sampler;
      assert.deepEqual(new Set(answers.map((res) => res.status)), new Set([200]));
      assert.ok(most <= 64 && most >= 32, `at most ${most} action processes at once`);
    }));
});

describe('only the proxy frames the response', { concurrency: true }, () => {
  test('framing and hop-by-hop headers from the action are dropped in any case; the length is the proxy\'s', async () => {
    const headers = {
      'content-length': '0',
      'Transfer-Encoding': 'chunked',
      CONNECTION: 'close',
      'Keep-Alive': 'timeout=1',
      Upgrade: 'websocket',
      Trailer: 'X',
      TE: 'trailers',
      'Proxy-Connection': 'close',
      'X-Kept': 'yes',
    };
    const answer = parse(await respond({ headers: { ...headers, 'content-type': 'text/plain' }, body: 'hello' }));
    assert.equal(answer.status, 200);
    assert.equal(answer.body, 'hello');
    const names = answer.headers.map(([name]) => name);
    for (const name of ['transfer-encoding', 'keep-alive', 'upgrade', 'trailer', 'te', 'proxy-connection']) assert.ok(!names.includes(name), name);
    assert.deepEqual(answer.headers.filter(([name]) => name === 'content-length'), [['content-length', '5']]);
    assert.deepEqual(answer.headers.filter(([name]) => name === 'connection'), [['connection', 'close']], 'the client asked to close');
    assert.ok(answer.headers.some(([name, value]) => name === 'x-kept' && value === 'yes'));
  });

  test('1xx status codes → 502; 204 and 304 carry no body and no Content-Length', async () => {
    for (const statusCode of [103, 100, '101', 600, 199]) {
      const answer = parse(await respond({ statusCode, body: 'x' }));
      assert.equal(answer.status, 502, String(statusCode));
      assert.match(answer.body, /invalid statusCode/);
    }
    for (const statusCode of [204, 304]) {
      const answer = parse(await respond({ statusCode, body: 'ignored', headers: { 'X-A': 'b' } }));
      assert.equal(answer.status, statusCode);
      assert.equal(answer.body, '');
      assert.ok(!answer.headers.some(([name]) => name === 'content-length' || name === 'transfer-encoding'), JSON.stringify(answer.headers));
    }
  });

  test('a header value Node refuses (above U+00FF, control characters) → 502 with CORS, never a 500', async () => {
    for (const value of ['€', 'a\u0001b', 'a\u007fb', ['ok', 'x\u0000']]) {
      const answer = parse(await respond({ headers: { 'X-A': value }, body: 'x' }));
      assert.equal(answer.status, 502, JSON.stringify(value));
      assert.match(answer.body, /invalid header/);
      assert.ok(answer.headers.some(([name, text]) => name === 'access-control-allow-origin' && text === '*'));
    }
    const latin1 = parse(await respond({ headers: { 'X-A': 'caf\u00e9\tok' }, body: 'x' }));
    assert.equal(latin1.status, 200, 'latin-1 and tab are fine');
  });

  test('header arrays (Set-Cookie) are sent as several headers', async () => {
    const answer = parse(await respond({ headers: { 'Set-Cookie': ['a=1; Path=/', 'b=2'], 'X-N': [1, true] }, body: 'x' }));
    assert.equal(answer.status, 200);
    assert.deepEqual(answer.headers.filter(([name]) => name === 'set-cookie').map(([, value]) => value), ['a=1; Path=/', 'b=2']);
    assert.deepEqual(answer.headers.filter(([name]) => name === 'x-n').map(([, value]) => value), ['1', 'true']);
  });
});

describe('the request as sent', { concurrency: true }, () => {
  test('__ow_path is the path as sent, not normalised', () =>
    dedicated({}, async (proxy) => {
      for (const path of ['//evil.com/x/y', '/a/../b', '/%2e%2e/c', '/']) {
        const res = await proxy.request('GET', `${path}?q=1`);
        const { args } = res.json() as { args: { __ow_path: string } };
        assert.equal(args.__ow_path, path === '/' ? '' : path);
      }
    }));

  test('a 60 MB body is sent with bounded memory, given back afterwards', () =>
    dedicated({}, async (proxy) => {
      const size = 60 * 1000 * 1000;
      const code = `#!/bin/sh\nprintf '{"headers":{"Content-Type":"text/plain"},"body":"'\nhead -c ${size} /dev/zero | tr "\\\\0" a\necho '"}'\n`;
      // Stem-cell style would need envelopes; a second dedicated proxy runs this action instead.
      await withProxy({ env: { __OW_RUNTIME_PLATFORM: 'knative', __OW_ACTION_CODE: code } }, async (big) => {
        const before = peakRss(big.child.pid!);
        const res = await big.request('POST', '/', {});
        assert.equal(res.status, 200);
        assert.equal(res.body.length, size);
        const growth = peakRss(big.child.pid!) - before;
        assert.ok(growth < 4 * size, `peak RSS grew by ${(growth / MiB).toFixed(0)} MiB for a ${size / MiB | 0} MiB body (was 6.6x)`);
      });
      void proxy;
    }));
});
