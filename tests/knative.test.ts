// The Knative platform (spec/knative.md), black-box against the real proxy process.

import assert from 'node:assert/strict';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { ROOT, startProxy, withProxy, withTempDir, zipBase64, type RunningProxy } from './helpers.ts';

const STUB_RESULT = { error: 'This is a stub action. Replace it with custom logic.' };
const CORS = {
  'access-control-allow-origin': '*',
  'access-control-allow-methods': 'OPTIONS, GET, DELETE, POST, PUT, HEAD, PATCH',
  'access-control-allow-headers': 'Authorization, Origin, X-Requested-With, Content-Type, Accept, User-Agent',
};
const HELLO = "#!/bin/sh\necho '{\"payload\":\"Hello World!\"}'";
// Answers `respond` from its arguments when there is one, else {"args": <its arguments>}.
const RESPONDER = `#!/usr/bin/env node
const args = JSON.parse(require('fs').readFileSync(0, 'utf8'));
console.log(JSON.stringify('respond' in args ? args.respond : { args }));
`;
// Shows its arguments and the activation variables it got.
const ENV_ECHO = '#!/bin/sh\necho "{\\"args\\":$1,\\"key\\":\\"$__OW_API_KEY\\",\\"name\\":\\"$__OW_ACTION_NAME\\",\\"n\\":\\"$__OW_N\\"}"\n';

function knative<T>(env: Record<string, string>, fn: (proxy: RunningProxy) => Promise<T>): Promise<T> {
  return withProxy({ env: { __OW_RUNTIME_PLATFORM: 'knative', ...env } }, fn);
}

function initOnly(proxy: RunningProxy, init: Record<string, unknown>) {
  return proxy.post('/', { init });
}

function assertCors(headers: Record<string, unknown>, allowHeaders = CORS['access-control-allow-headers']): void {
  assert.equal(headers['access-control-allow-origin'], '*');
  assert.equal(headers['access-control-allow-methods'], CORS['access-control-allow-methods']);
  assert.equal(headers['access-control-allow-headers'], allowHeaders);
}

describe('dedicated mode', { concurrency: true }, () => {
  test('__OW_ACTION_CODE is initialized before listening; its first request runs it; init is refused', () =>
    knative({ __OW_ACTION_CODE: HELLO, __OW_ACTION_NAME: 'hello' }, async (proxy) => {
      const res = await proxy.request('POST', '/', {});
      assert.equal(res.status, 200);
      assert.deepEqual(res.json(), { payload: 'Hello World!' });
      const init = await initOnly(proxy, { code: HELLO });
      assert.equal(init.status, 403);
      assert.deepEqual(init.json(), { error: 'Cannot initialize a runtime with a dedicated function.' });
      assertCors(init.headers);
    }));

  test('a base64 zip with __OW_ACTION_BINARY=TRUE, raw with __OW_ACTION_RAW=True', () =>
    withTempDir(async (folder) => {
      writeFileSync(join(folder, 'exec'), RESPONDER, { mode: 0o755 });
      await knative({ __OW_ACTION_CODE: zipBase64(folder), __OW_ACTION_BINARY: 'TRUE', __OW_ACTION_RAW: 'True' }, async (proxy) => {
        const res = await proxy.request('POST', '/p?q=1', 'plain text', { 'Content-Type': 'text/plain' });
        const { args } = res.json() as { args: Record<string, unknown> };
        assert.equal(args.__ow_body, 'plain text');
        assert.equal(args.__ow_query, 'q=1');
        assert.equal(args.__ow_path, '/p');
      });
    }));

  test('a dedicated action that fails to initialize: exit non-zero with the cause on stderr, never listening', async () => {
    const proxy = await startProxy({
      env: { __OW_RUNTIME_PLATFORM: 'knative', __OW_ACTION_CODE: 'not base64 at all!', __OW_ACTION_BINARY: 'true' },
      waitReady: false,
    });
    try {
      const { code } = await proxy.exited;
      assert.notEqual(code, 0);
      assert.match(proxy.stderr.text, /not valid base64/);
      assert.match(proxy.stderr.text, /__OW_ACTION_CODE failed to initialize/);
    } finally {
      await proxy.stop();
    }
  });
  test('deploy/knative-service.yaml (public): its environment runs as written', () => {
    const yaml = readFileSync(join(ROOT, 'deploy', 'knative-service.yaml'), 'utf8');
    const env = manifestEnv(yaml);
    assert.deepEqual(Object.keys(env), ['__OW_RUNTIME_PLATFORM', '__OW_ACTION_NAME', '__OW_HTTP_METHODS', 'PROXY_KNATIVE_ENVELOPES', '__OW_ACTION_CODE']);
    assert.match(yaml, /^ {6}containerConcurrency: \d+ /m);
    return withProxy({ env }, async (proxy) => {
      const res = await proxy.request('GET', '/any/path?name=you');
      assert.equal(res.status, 200);
      assert.equal(res.headers['content-type'], 'text/plain');
      assert.equal(res.text, 'Hello from Knative');
      // Public: an init envelope is just JSON for the action, not a 403 for a dedicated function.
      const envelope = await proxy.request('POST', '/', { init: { code: '#!/bin/sh\necho {}' } });
      assert.equal(envelope.text, 'Hello from Knative');
    });
  });
});

/** The env entries of a Knative manifest: `- name: X` then `value: ...` or `value: |` and an indented block. */
function manifestEnv(yaml: string): Record<string, string> {
  const env: Record<string, string> = {};
  for (const match of yaml.matchAll(/- name: (\S+)\n\s+value: (?:\|\n((?:\s{16}.*\n)+)|(.*)\n)/g)) {
    env[match[1]!] = match[2] !== undefined ? match[2].replace(/^ {16}/gm, '') : JSON.parse(match[3]!.startsWith('"') ? match[3]! : JSON.stringify(match[3]!));
  }
  return env;
}

describe('the deploy/ files', { concurrency: true }, () => {
  test('deploy/knative-service-platform.yaml (a cluster-local stem cell): its environment takes an init envelope and runs it', () => {
    const yaml = readFileSync(join(ROOT, 'deploy', 'knative-service-platform.yaml'), 'utf8');
    assert.match(yaml, /networking\.knative\.dev\/visibility: cluster-local/);
    const env = manifestEnv(yaml);
    assert.equal(env.__OW_ACTION_CODE, undefined, 'a stem cell');
    return withProxy({ env }, async (proxy) => {
      const res = await proxy.post('/', { init: { code: HELLO }, activation: { action_name: 'hello' }, value: {} });
      assert.equal(res.status, 200);
      assert.deepEqual(res.json(), { payload: 'Hello World!' });
    });
  });

  test('deploy/openwhisk-runtimes.json: a runtimes-manifest entry for the Node.js runtime and a blackbox for :skeleton', () => {
    const manifest = JSON.parse(readFileSync(join(ROOT, 'deploy', 'openwhisk-runtimes.json'), 'utf8')) as {
      runtimes: Record<string, Array<{ kind: string; image: { prefix: string; name: string; tag: string }; attached: { attachmentName: string; attachmentType: string } }>>;
      blackboxes: Array<{ prefix: string; name: string; tag: string }>;
    };
    const [entry] = manifest.runtimes.nodejs!;
    assert.equal(entry!.kind, 'nodejs:proxy');
    assert.deepEqual(Object.keys(entry!.image).sort(), ['name', 'prefix', 'tag']);
    assert.equal(entry!.image.tag, 'nodejs');
    assert.deepEqual(entry!.attached, { attachmentName: 'codefile', attachmentType: 'text/plain' });
    assert.deepEqual(manifest.blackboxes, [{ prefix: 'yourname', name: 'action-proxy', tag: 'skeleton' }]);
  });
});

describe('stem cell', { concurrency: true }, () => {
  test('the spec example: init and run in one request', () =>
    knative({}, async (proxy) => {
      const res = await proxy.post('/', {
        init: { name: 'hello', main: 'main', binary: false, code: HELLO },
        activation: { namespace: 'default', action_name: 'hello' },
        value: {},
      });
      assert.equal(res.status, 200);
      assert.equal(res.headers['content-type'], 'application/json');
      assertCors(res.headers);
      assert.deepEqual(res.json(), { payload: 'Hello World!' });
      await proxy.sentinels(1);
    }));

  test('init alone answers like /init and runs nothing; a later request runs the action', () =>
    withTempDir((marks) =>
      knative({}, async (proxy) => {
        const res = await initOnly(proxy, { code: `#!/bin/sh\ntouch ${marks}/ran\necho '{"ran":true}'\n` });
        assert.equal(res.status, 200);
        assert.equal(res.text, 'OK');
        assert.equal(existsSync(join(marks, 'ran')), false);
        assert.equal(proxy.stdout.sentinels + proxy.stderr.sentinels, 0);
        assert.deepEqual((await proxy.post('/', { value: {} })).json(), { ran: true });
      }),
    ));

  test('a run before init runs the stub and does not block a later init', () =>
    knative({}, async (proxy) => {
      assert.deepEqual((await proxy.request('GET', '/', undefined)).status, 405, 'GET is not allowed by default');
      assert.deepEqual((await proxy.post('/', { value: {} })).json(), STUB_RESULT);
      assert.equal((await initOnly(proxy, { code: HELLO })).status, 200);
      assert.deepEqual((await proxy.post('/', { value: {} })).json(), { payload: 'Hello World!' });
    }));

  test('a second init is refused (403), unless PROXY_ALLOW_REINIT=1', async () => {
    await knative({}, async (proxy) => {
      assert.equal((await initOnly(proxy, { code: HELLO })).status, 200);
      const again = await proxy.post('/', { init: { code: ENV_ECHO }, value: {} });
      assert.equal(again.status, 403);
      assert.deepEqual(again.json(), { error: 'Cannot initialize the action more than once.' });
      assert.deepEqual((await proxy.post('/', { value: {} })).json(), { payload: 'Hello World!' });
    });
    await knative({ PROXY_ALLOW_REINIT: '1' }, async (proxy) => {
      assert.equal((await initOnly(proxy, { code: HELLO })).status, 200);
      assert.equal((await proxy.post('/', { init: { code: RESPONDER }, value: { respond: { second: true } } })).status, 200);
    });
  });

  test('a failed init in an init+run request answers the init error and runs nothing', () =>
    withTempDir((marks) =>
      knative({}, async (proxy) => {
        const res = await proxy.post('/', { init: { code: 'not base64!', binary: true }, value: { x: 1 } });
        assert.equal(res.status, 502);
        assert.deepEqual(res.json(), { error: 'The action failed to generate or locate a binary. See logs for details.' });
        assertCors(res.headers);
        await proxy.sentinels(1);
        assert.equal(proxy.stdout.withoutSentinels, '', 'the stub did not run');
        assert.equal(existsSync(join(marks, 'x')), false);
        assert.equal((await initOnly(proxy, { code: HELLO })).status, 200, 'a later init works');
      }),
    ));

  test('binary and raw must be booleans', () =>
    knative({}, async (proxy) => {
      for (const key of ['binary', 'raw']) {
        const res = await proxy.post('/', { init: { code: HELLO, [key]: 'yes' }, value: {} });
        assert.equal(res.status, 400);
        assert.deepEqual(res.json(), { error: `Unable to process Initialization data: Invalid Init. data; expected boolean for key '${key}'.` });
      }
      assert.equal((await initOnly(proxy, { code: HELLO, binary: false, raw: false })).status, 200);
    }));

  test("the user's code/main/binary/raw/actionName keys in value are kept", () =>
    knative({}, async (proxy) => {
      const value = { code: 'c', main: 'm', binary: 'b', raw: 'r', actionName: 'a' };
      const res = await proxy.post('/', { init: { code: RESPONDER }, value });
      const { args } = res.json() as { args: Record<string, unknown> };
      assert.deepEqual({ code: args.code, main: args.main, binary: args.binary, raw: args.raw, actionName: args.actionName }, value);
    }));
});

describe('methods', { concurrency: true }, () => {
  for (const [setting, allowed, warnings] of [
    ['[GET, POST]', 'GET, POST, HEAD', []],
    ['get,Put', 'GET, PUT, HEAD', []],
    [' [ delete ,PATCH ] ', 'DELETE, PATCH', []],
    ['', 'POST', []],
    ['[FETCH, post, TRACE]', 'POST', ['FETCH', 'TRACE']],
  ] as const) {
    test(`__OW_HTTP_METHODS=${JSON.stringify(setting)} allows ${allowed}`, () =>
      knative({ __OW_HTTP_METHODS: setting }, async (proxy) => {
        const methods = allowed.split(', ');
        for (const method of methods) {
          const res = await proxy.request(method, '/', method === 'GET' || method === 'HEAD' ? undefined : { value: {} });
          assert.equal(res.status, 200, `${method} is allowed`);
        }
        const refused = ['GET', 'POST', 'PUT', 'DELETE', 'PATCH'].find((method) => !methods.includes(method))!;
        const res = await proxy.request(refused, '/');
        assert.equal(res.status, 405);
        assert.equal(res.headers.allow, allowed);
        assert.equal(typeof (res.json() as { error: string }).error, 'string');
        const lines = proxy.stderr.withoutSentinels.split('\n').filter((line) => line.startsWith('Environment variable'));
        assert.deepEqual(lines, warnings.map((w) => `Environment variable '__OW_HTTP_METHODS' has an unrecognised value (${w}).`));
      }));
  }

  test('OPTIONS not listed: a CORS preflight answered by the proxy, the action not run', () =>
    knative({}, async (proxy) => {
      const res = await proxy.request('OPTIONS', '/x', undefined, { 'Access-Control-Request-Headers': 'X-Custom, Content-Type' });
      assert.equal(res.status, 200);
      assert.equal(res.text, '');
      assertCors(res.headers, 'X-Custom, Content-Type');
      assert.equal(proxy.stdout.text, '', 'nothing ran');
    }));

  test('OPTIONS listed runs the action; HEAD runs it as HEAD with no body in the answer', () =>
    knative({ __OW_HTTP_METHODS: 'OPTIONS, GET', __OW_ACTION_CODE: RESPONDER }, async (proxy) => {
      const options = await proxy.request('OPTIONS', '/');
      assert.equal(options.status, 200);
      assert.equal((options.json() as { args: { __ow_method: string } }).args.__ow_method, 'OPTIONS');
      const head = await proxy.request('HEAD', '/h');
      assert.equal(head.status, 200);
      assert.equal(head.text, '');
      await proxy.sentinels(2);
      assert.equal((await proxy.request('POST', '/', { value: {} })).status, 405);
    }));
});

describe('web requests', { concurrency: true }, () => {
  const withResponder = (env: Record<string, string>, raw: boolean, fn: (proxy: RunningProxy) => Promise<void>) =>
    knative({ __OW_HTTP_METHODS: 'GET, POST, PUT, OPTIONS', ...env }, async (proxy) => {
      assert.equal((await initOnly(proxy, { code: RESPONDER, name: 'responder', raw })).status, 200);
      await fn(proxy);
    });
  const argsOf = (res: { json(): unknown }) => (res.json() as { args: Record<string, unknown> }).args;

  test('__ow_method, __ow_headers, __ow_path, __ow_user; the init name as action name', () =>
    withResponder({ __OW_NAMESPACE: 'from-env' }, false, async (proxy) => {
      const res = await proxy.request('PUT', '/a/b/c', { value: { k: 1 }, activation: { namespace: 'ns1' } }, { 'X-Mixed-Case': 'v' });
      const args = argsOf(res);
      assert.equal(args.k, 1);
      assert.equal(args.__ow_method, 'PUT');
      assert.equal(args.__ow_path, '/a/b/c');
      assert.equal(args.__ow_user, 'ns1');
      assert.equal((args.__ow_headers as Record<string, string>)['x-mixed-case'], 'v');
      assert.equal(argsOf(await proxy.request('GET', '/')).__ow_user, 'from-env', 'this request has no namespace');
      assert.equal(argsOf(await proxy.request('GET', '/')).__ow_path, '');
    }));

  test('activation values are for one request only; null and non-string activation values', () =>
    knative({}, async (proxy) => {
      assert.equal((await initOnly(proxy, { code: ENV_ECHO, name: 'named' })).status, 200);
      const first = await proxy.post('/', { activation: { api_key: 'secret', n: 5 }, value: {} });
      assert.deepEqual({ ...(first.json() as object), args: undefined }, { args: undefined, key: 'secret', name: 'named', n: '5' });
      const second = await proxy.post('/', { activation: null, value: {} });
      assert.deepEqual({ ...(second.json() as object), args: undefined }, { args: undefined, key: '', name: 'named', n: '' });
      const third = await proxy.post('/', { activation: { action_name: 'other' }, value: {} });
      assert.equal((third.json() as { name: string }).name, 'other');
      const bad = await proxy.post('/', { activation: 'x', value: {} });
      assert.equal(bad.status, 400);
    }));

  test('init.name is the default action_name when the activation\'s is absent or an empty string', () =>
    knative({}, async (proxy) => {
      assert.equal((await initOnly(proxy, { code: ENV_ECHO, name: 'named' })).status, 200);
      for (const activation of [{ action_name: '' }, {}, { namespace: 'ns' }]) {
        assert.equal(((await proxy.post('/', { activation, value: {} })).json() as { name: string }).name, 'named', JSON.stringify(activation));
      }
    }));

  test('an envelope with value and no activation is a direct invocation: the arguments are exactly value', () =>
    knative({}, async (proxy) => {
      assert.equal((await initOnly(proxy, { code: ENV_ECHO })).status, 200);
      const direct = await proxy.post('/', { value: { a: 1, big: 12345678901234567890n.toString() } });
      assert.deepEqual((direct.json() as { args: unknown }).args, { a: 1, big: '12345678901234567890' });
      const withActivation = (await proxy.post('/', { activation: {}, value: { a: 1 } })).json() as { args: Record<string, unknown> };
      assert.deepEqual(Object.keys(withActivation.args), ['a', '__ow_method', '__ow_headers', '__ow_path', '__ow_user']);
    }));

  test('GET with query parameters; POST of a JSON document; a urlencoded form', () =>
    withResponder({}, false, async (proxy) => {
      const get = argsOf(await proxy.request('GET', '/?a=1&b=two&b=three'));
      assert.equal(get.a, '1');
      assert.equal(get.b, 'three');
      const json = argsOf(await proxy.request('POST', '/?a=1&c=q', JSON.stringify({ c: { deep: true }, d: [1] }), { 'Content-Type': 'application/json' }));
      assert.deepEqual({ a: json.a, c: json.c, d: json.d }, { a: '1', c: { deep: true }, d: [1] });
      const form = argsOf(await proxy.request('POST', '/', 'name=J%C3%BCrgen&x=1+2', { 'Content-Type': 'application/x-www-form-urlencoded' }));
      assert.deepEqual({ name: form.name, x: form.x }, { name: 'Jürgen', x: '1 2' });
    }));

  test('text and binary bodies arrive as __ow_body; bad JSON and JSON that is not an object are 400', () =>
    withResponder({}, false, async (proxy) => {
      assert.equal(argsOf(await proxy.request('POST', '/', 'héllo', { 'Content-Type': 'text/plain' })).__ow_body, 'héllo');
      const bytes = Buffer.from([0, 255, 1, 128]);
      assert.equal(argsOf(await proxy.request('POST', '/', bytes, { 'Content-Type': 'application/octet-stream' })).__ow_body, bytes.toString('base64'));
      const bad = await proxy.request('POST', '/', '{"a":', { 'Content-Type': 'application/json' });
      assert.equal(bad.status, 400);
      assertCors(bad.headers);
      const array = await proxy.request('POST', '/', '[1,2]', { 'Content-Type': 'application/json' });
      assert.equal(array.status, 400);
      assert.deepEqual(array.json(), { error: 'The action did not receive a dictionary as an argument.' });
    }));

  test('raw mode: __ow_body and __ow_query as strings', () =>
    withResponder({}, true, async (proxy) => {
      const get = argsOf(await proxy.request('GET', '/p?a=1&b=2'));
      assert.deepEqual({ body: get.__ow_body, query: get.__ow_query, a: get.a }, { body: '', query: 'a=1&b=2', a: undefined });
      const json = argsOf(await proxy.request('POST', '/', '{"x":1}', { 'Content-Type': 'application/json' }));
      assert.equal(Buffer.from(json.__ow_body as string, 'base64').toString(), '{"x":1}');
      assert.equal(argsOf(await proxy.request('POST', '/', 'a=1', { 'Content-Type': 'application/x-www-form-urlencoded' })).__ow_body, 'a=1');
      assert.equal(argsOf(await proxy.request('POST', '/', 'text', { 'Content-Type': 'text/plain' })).__ow_body, 'text');
      const bytes = Buffer.from([1, 2, 250]);
      assert.equal(argsOf(await proxy.request('POST', '/', bytes, { 'Content-Type': 'image/png' })).__ow_body, bytes.toString('base64'));
      // An envelope's value in raw mode: a string as it is, an object as base64 of its JSON.
      assert.equal(argsOf(await proxy.post('/', { value: 'as is' })).__ow_body, 'as is');
      assert.equal(Buffer.from(argsOf(await proxy.post('/', { value: { v: 1 } })).__ow_body as string, 'base64').toString(), '{"v":1}');
    }));
});

describe('responses', { concurrency: true }, () => {
  // One proxy per test, the responder initialized; `respond` is what the action answers.
  const respond = async (result: unknown, headers: Record<string, string> = {}) => {
    const proxy = await startProxy({ env: { __OW_RUNTIME_PLATFORM: 'knative' } });
    try {
      return await proxy.request('POST', '/', { init: { code: RESPONDER }, value: { respond: result } }, headers);
    } finally {
      await proxy.stop();
    }
  };

  test('the spec example: statusCode, headers of any case, a string body', async () => {
    const res = await respond({ statusCode: 201, headers: { 'content-type': 'text/plain', 'X-A': 'b' }, body: 'created' });
    assert.equal(res.status, 201);
    assert.equal(res.headers['content-type'], 'text/plain');
    assert.equal(res.headers['x-a'], 'b');
    assert.equal(res.text, 'created');
    assertCors(res.headers);
  });

  test('the spec example: a base64 image body is sent decoded', async () => {
    const res = await respond({ headers: { 'Content-Type': 'image/png' }, body: 'iVBORw0KGgo=' });
    assert.equal(res.status, 200);
    assert.equal(res.headers['content-type'], 'image/png');
    assert.deepEqual([...res.body], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  });

  test('invalid base64 for a binary content type is a 502 with CORS', async () => {
    const res = await respond({ headers: { 'Content-Type': 'application/pdf' }, body: 'not*base64' });
    assert.equal(res.status, 502);
    assert.match((res.json() as { error: string }).error, /not valid base64/);
    assertCors(res.headers);
  });

  test('a body nested 2,000 deep: in a result a 502, in a raw-mode value a 400, both with CORS', async () => {
    const deep = `${'['.repeat(2_000)}${']'.repeat(2_000)}`;
    const proxy = await startProxy({ env: { __OW_RUNTIME_PLATFORM: 'knative', PROXY_ALLOW_REINIT: '1' } });
    try {
      const result = await proxy.request('POST', '/', { init: { code: `#!/bin/sh\necho '{"body":${deep}}'\n` }, value: {} });
      assert.equal(result.status, 502);
      assert.deepEqual(result.json(), { error: 'The action did not return a dictionary or array.' });
      assertCors(result.headers);
      const raw = await proxy.request('POST', '/', `{"init":{"code":"#!/bin/sh\\necho {}","raw":true},"value":${deep}}`);
      assert.equal(raw.status, 400);
      assert.match(raw.text, /The request body is nested deeper than 1000 levels/);
      assertCors(raw.headers);
    } finally {
      await proxy.stop();
    }
  });

  test('statusCode as a string; invalid statusCodes are 502', async () => {
    assert.equal((await respond({ statusCode: '202', body: 'x' })).status, 202);
    for (const statusCode of ['abc', 99, 600, 1.5, true]) {
      const res = await respond({ statusCode, body: 'x' });
      assert.equal(res.status, 502, JSON.stringify(statusCode));
      assert.match((res.json() as { error: string }).error, /invalid statusCode/);
    }
  });

  test('bodies: string → text/html, object and array → JSON, the rest of the result → JSON, an array result → JSON', async () => {
    const text = await respond({ body: '<p>hi</p>' });
    assert.equal(text.headers['content-type'], 'text/html; charset=utf-8');
    assert.equal(text.text, '<p>hi</p>');
    const object = await respond({ body: { a: 1 } });
    assert.equal(object.headers['content-type'], 'application/json');
    assert.deepEqual(object.json(), { a: 1 });
    assert.deepEqual((await respond({ body: [1, 2] })).json(), [1, 2]);
    const rest = await respond({ statusCode: 200, headers: { 'X-B': 1 }, a: 'A', n: 2 });
    assert.deepEqual(rest.json(), { a: 'A', n: 2 });
    assert.equal(rest.headers['x-b'], '1');
    assert.deepEqual((await respond([{ x: 1 }])).json(), [{ x: 1 }]);
  });

  test('an empty body with status 200 is a 204; with another status it stays', async () => {
    for (const result of [{}, { body: '' }, { statusCode: 200 }, { headers: { 'X-C': 'c' } }]) {
      const res = await respond(result);
      assert.equal(res.status, 204, JSON.stringify(result));
      assert.equal(res.text, '');
    }
    const created = await respond({ statusCode: 201, body: '' });
    assert.equal(created.status, 201);
    assert.equal(created.text, '');
  });

  test('CORS: the request headers echoed; headers the action set are kept, never doubled', async () => {
    const echoed = await respond({ body: 'x' }, { 'Access-Control-Request-Headers': 'X-Mine' });
    assertCors(echoed.headers, 'X-Mine');
    const own = await respond({ headers: { 'access-control-allow-origin': 'https://example.com', 'ACCESS-CONTROL-ALLOW-METHODS': 'GET' }, body: 'x' });
    assert.equal(own.headers['access-control-allow-origin'], 'https://example.com');
    assert.equal(own.headers['access-control-allow-methods'], 'GET');
  });

  test('an action that fails: the /run error and status, with CORS headers, and sentinels', () =>
    knative({}, async (proxy) => {
      const res = await proxy.post('/', { init: { code: '#!/bin/sh\necho oops\nexit 3\n' }, value: {} });
      assert.equal(res.status, 502);
      assert.deepEqual(res.json(), { error: 'The action did not return a dictionary or array.' });
      assertCors(res.headers);
      await proxy.sentinels(1);
      assert.equal(proxy.stdout.withoutSentinels, 'oops\n');
    }));
});
