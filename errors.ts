// The vocabulary every layer speaks: the error that carries its HTTP status, and the fixed texts
// clients see. It sits at the bottom of the import graph so that nothing has to import upward for it.

import type { OutgoingHttpHeaders } from 'node:http';

/** The fixed texts clients see; the specific cause goes to the logs. */
export const MESSAGES = {
  reinit: 'Cannot initialize the action more than once.',
  initFailed: 'The action failed to generate or locate a binary. See logs for details.',
  noBinary: 'The action failed to locate a binary. See logs for details.',
  badArguments: 'The action did not receive a dictionary or array as an argument.',
  badResult: 'The action did not return a dictionary or array.',
  exited: 'The action exited before returning a result. See logs for details.',
  notStarted: 'The action did not start. See logs for details.',
  /** A loop action that fails to come up at init, as OpenWhisk's actionloop runtime images answer it. */
  cannotStart: 'Cannot start action. Check logs for details.',
  /** An init without code where a compiler (a language runtime) needs some, as every OpenWhisk runtime answers it. */
  noCode: 'Missing main/no code to execute.',
  cancelled: 'The client closed the connection; the activation was stopped.',
  shuttingDown: 'The proxy is shutting down. Try again.',
} as const;

/**
 * The status of a request whose client went away before it was answered (nginx's "client closed
 * request"). Nothing is sent for it: there is no one to answer. Whether its activation ran (and so
 * ends with sentinels) the message says: MESSAGES.cancelled when it did.
 */
export const CLIENT_CLOSED = 499;

/** An error that knows its HTTP status (and any headers its answer needs). Only the HTTP layer turns it into a response. */
export class ProxyError extends Error {
  readonly status: number;
  readonly headers: OutgoingHttpHeaders | undefined;
  constructor(status: number, message: string, options?: ErrorOptions & { headers?: OutgoingHttpHeaders }) {
    super(message, options);
    this.name = 'ProxyError';
    this.status = status;
    this.headers = options?.headers;
  }
}
