// :nodejs beside the runtime it imitates: the same actions sent to openwhisk-runtime-nodejs (its
// core/nodejsActionBase, run from a checkout in a container of the proxy's base image) and to :nodejs,
// and their answers compared, so that "as it answers" is measured. Needs a checkout of
// apache/openwhisk-runtime-nodejs with that folder's dependencies installed, named by OW_RUNTIME_NODEJS
// (`git clone https://github.com/apache/openwhisk-runtime-nodejs && (cd openwhisk-runtime-nodejs/core/nodejsActionBase
// && npm install --omit=dev)`); without one the test is skipped and says why.

import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { request } from '../helpers.ts';
import { withContainer } from './container.ts';

const CHECKOUT = process.env.OW_RUNTIME_NODEJS;
const BASE = process.env.PROXY_IMAGE_BASE_USED ?? 'localhost/action-proxy-base:node24';
const skip = !CHECKOUT || !existsSync(join(CHECKOUT, 'core', 'nodejsActionBase', 'node_modules', 'express'))
  ? 'OW_RUNTIME_NODEJS does not name a checkout of apache/openwhisk-runtime-nodejs with core/nodejsActionBase\'s dependencies installed'
  : false;

const ACTIONS: Array<[name: string, code: string, args: object]> = [
  ['an object', 'function main(p) { return { hello: p.name, id: process.env.__OW_ACTIVATION_ID, init: process.env.FROM_INIT }; }', { name: 'Jane' }],
  ['a Promise', 'function main(p) { return new Promise((resolve) => setTimeout(() => resolve({ later: p.name }), 5)); }', { name: 'Jane' }],
  ['no result', 'function main() {}', {}],
  ['a rejection', 'function main() { return Promise.reject(new Error("nope")); }', {}],
  ['reject()', 'function main() { return Promise.reject(); }', {}],
  ['exports.main', 'exports.main = (p) => ({ exported: p.name });', { name: 'Jane' }],
  ['a throw', 'function main() { throw new Error("boom"); }', {}],
];

/** An answer with the parts that differ by nature (a stack's file paths and line numbers) taken out. */
function comparable(text: string): unknown {
  const json = JSON.parse(text) as { error?: { stack?: string } };
  if (json.error && typeof json.error === 'object' && json.error.stack) json.error.stack = json.error.stack.split('\n')[0];
  return json;
}

test('openwhisk-runtime-nodejs and :nodejs answer the same actions the same way (a throw aside: its 502 is a 200 in a loop)', { skip }, async () => {
  const ours: Array<[number, unknown]> = [];
  const theirs: Array<[number, unknown]> = [];
  for (const [, code, args] of ACTIONS) {
    await withContainer([], async (container) => {
      await container.post('/init', { value: { code, main: 'main', env: { FROM_INIT: 'yes' } } });
      const res = await container.post('/run', { value: args, activation_id: 'a1' });
      ours.push([res.status, comparable(res.text)]);
    }, { image: 'localhost/action-proxy:nodejs' });
    await withContainer(
      ['-v', `${CHECKOUT}:/runtime:ro`, '--entrypoint', 'sh'],
      async (container) => {
        // express reads JSON bodies only with a JSON Content-Type.
        const json = { 'Content-Type': 'application/json' };
        const init = await request(container.port, 'POST', '/init', { value: { code, main: 'main', env: { FROM_INIT: 'yes' } } }, json);
        assert.equal(init.status, 200, `${init.text}\n${await container.logs()}`);
        const res = await request(container.port, 'POST', '/run', { value: args, activation_id: 'a1' }, json);
        theirs.push([res.status, comparable(res.text)]);
      },
      { image: BASE, command: ['-c', 'cd /runtime/core/nodejsActionBase && exec node app.js'] },
    );
  }
  for (let i = 0; i < ACTIONS.length; i++) {
    const [name] = ACTIONS[i]!;
    if (name === 'a throw') {
      assert.deepEqual(theirs[i], [502, { error: 'An error has occurred: Error: boom' }]);
      assert.deepEqual(ours[i], [200, { error: 'An error has occurred: Error: boom' }], 'the same body; the loop protocol answers it with 200');
    } else assert.deepEqual(ours[i], theirs[i], name);
  }
});
