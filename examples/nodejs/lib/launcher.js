// The action-loop launcher of the Node.js runtime built on the action proxy (PROXY_ACTION_LOOP=1).
//
// Run as `node launcher.js <module> <function>` in the action's folder: it loads the action's function,
// acknowledges on fd 3 when the proxy waits for that, then reads one activation per line on stdin,
// `{"value": {...}, "activation_id": ..., ...}`, calls the function with the value, and writes its
// result (awaited when it is a Promise) as one line of JSON on fd 3. Answers and environment are those of
// openwhisk-runtime-nodejs: each string field of the line is `__OW_<FIELD>` in process.env (the init's
// `env` is the process's own), no result is `{}`, a thrown error is `{"error": "An error has occurred: …"}`
// (that runtime's 502, which the loop protocol can't carry: the `error` field is what OpenWhisk reads),
// and a rejected Promise is `{"error": <the rejection, serialized>}`.
'use strict';
const fs = require('node:fs');
const path = require('node:path');

/**
 * The action's function. A script is run as that runtime evaluates one: `main` is a function of its own
 * scope or of its exports. A folder (an archive's) is a module: `package.json`'s main or index.js, or
 * `file.function` names both.
 */
function load(target, name) {
  if (fs.statSync(target).isDirectory()) {
    const dot = name.indexOf('.');
    const file = dot === -1 ? target : path.join(target, name.slice(0, dot));
    const exported = require(file)[dot === -1 ? name : name.slice(dot + 1)];
    return exported;
  }
  if (!/^[A-Za-z_$][\w$]*$/.test(name)) throw new Error(`The entry point '${name}' is not a JavaScript name.`);
  const module = { exports: {} };
  const source = fs.readFileSync(target, 'utf8');
  const scoped = new Function('exports', 'require', 'module', '__filename', '__dirname', `${source}\n;return typeof ${name} === 'function' ? ${name} : undefined;`);
  return scoped(module.exports, require, module, target, path.dirname(target)) ?? module.exports[name];
}

/** What serialize-error makes of a rejection: an Error's name, message, stack and own fields; anything else as it is. */
function serialize(value) {
  if (value instanceof Error) {
    const fields = { name: value.name, message: value.message, stack: value.stack };
    for (const key of Object.keys(value)) fields[key] = serialize(value[key]);
    return fields;
  }
  return value;
}

/** Runs one activation line: its env, the action, the answer on fd 3 (awaited only for a Promise). */
function activate(action, line, answer) {
  const message = JSON.parse(line);
  for (const key of Object.keys(message)) {
    const value = message[key];
    if (key !== 'value' && typeof value === 'string') process.env[`__OW_${key.toUpperCase()}`] = value;
  }
  let result;
  try {
    result = action(message.value ?? {});
  } catch (error) {
    console.error(error);
    return answer({ error: `An error has occurred: ${error}` });
  }
  if (!(result instanceof Promise) && typeof result?.then !== 'function') return answer(result === undefined ? {} : result);
  return Promise.resolve(result).then(
    (value) => answer(value === undefined ? {} : value),
    (error) => {
      console.error(error);
      answer({ error: error ? serialize(error) : {} });
    },
  );
}

function main() {
  const [target, name = 'main'] = process.argv.slice(2);
  const action = load(path.resolve(target), name);
  if (typeof action !== 'function') throw new Error(`Action entrypoint '${name}' is not a function.`);
  const answer = (result) => void fs.writeSync(3, `${JSON.stringify(result)}\n`);
  if (process.env.__OW_WAIT_FOR_ACK) answer({ ok: true });
  // One line per activation, one at a time: lines that arrive while a Promise is pending wait their turn.
  let held = '';
  let busy = Promise.resolve();
  process.stdin.setEncoding('utf8');
  process.stdin.on('data', (chunk) => {
    held += chunk;
    for (let end = held.indexOf('\n'); end !== -1; end = held.indexOf('\n')) {
      const line = held.slice(0, end);
      held = held.slice(end + 1);
      busy = busy
        .then(() => activate(action, line, answer))
        .catch((error) => {
          console.error(error);
          answer({ error: `An error has occurred: ${error}` });
        });
    }
  });
}

try {
  main();
} catch (error) {
  console.error(error);
  process.exit(1);
}
