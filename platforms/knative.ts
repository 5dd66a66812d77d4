// Knative: placeholder until the Knative platform lands (issue 4).
import type { IncomingMessage, ServerResponse } from 'node:http';
import { sendError } from '../proxy.ts';

export async function handle(_req: IncomingMessage, res: ServerResponse): Promise<void> {
  sendError(res, 501, 'The Knative platform is not implemented yet.');
}
