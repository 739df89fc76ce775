// Verifies a Provisioning API delivery the Standard Webhooks way (Node.js 18+, built-in
// `node:crypto` only).
//
// Use `verify(secret, headers, body)` in your handler before acting on a request:
// `secret` is the handler's `whsec_...` secret, `headers` the request headers (Node's
// `req.headers` has lower-case names already), `body` the raw body as a Buffer, exactly
// as received (collect the chunks; do not re-serialise parsed JSON).
//
// Run as a program (this is how the repository's tests run it):
// `node verify.mjs SECRET HEADERS_JSON < body` prints `valid` and exits 0, or prints
// the reason and exits 1.

import { createHmac, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';

/** How far webhook-timestamp may be from now, in seconds (replay protection). */
export const TOLERANCE_SECONDS = 5 * 60;

/** Returns nothing if the request is authentic; throws an Error saying why otherwise. */
export function verify(secret, headers, body, now = Date.now() / 1000) {
  const id = headers['webhook-id'];
  const timestamp = headers['webhook-timestamp'];
  const signatures = headers['webhook-signature'];
  if (!id || !timestamp || !signatures) {
    throw new Error('missing webhook-id, webhook-timestamp or webhook-signature');
  }
  const seconds = Number.parseInt(timestamp, 10);
  if (!Number.isFinite(seconds) || Math.abs(now - seconds) > TOLERANCE_SECONDS) {
    throw new Error('timestamp outside the tolerance');
  }
  const key = Buffer.from(secret.replace(/^whsec_/, ''), 'base64');
  const expected = createHmac('sha256', key)
    .update(`${id}.${timestamp}.`)
    .update(body)
    .digest();
  // Several space-separated signatures may be sent (e.g. during a key rotation).
  for (const candidate of signatures.split(' ')) {
    const [version, signature] = candidate.split(',', 2);
    const given = Buffer.from(signature ?? '', 'base64');
    if (version === 'v1' && given.length === expected.length && timingSafeEqual(given, expected)) {
      return;
    }
  }
  throw new Error('no matching signature');
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const [secret, headers] = [process.argv[2], JSON.parse(process.argv[3])];
  try {
    verify(secret, headers, readFileSync(0));
    console.log('valid');
  } catch (error) {
    console.log(`invalid: ${error.message}`);
    process.exit(1);
  }
}
