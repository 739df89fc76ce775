// Verifies a Provisioning API delivery with the Standard Webhooks library for
// JavaScript (npm `standardwebhooks`: `npm install standardwebhooks`; here
// `npm ci` in docs/examples).
//
// In a handler:
//
//   import { Webhook } from 'standardwebhooks';
//   const webhook = new Webhook(process.env.WEBHOOK_SECRET); // the whsec_... secret
//   try { webhook.verify(body, req.headers, { jsonParse: false }); }
//   catch { res.writeHead(401).end(); return; }
//
// `body` is the raw body as a Buffer, exactly as received (collect the chunks; do not
// re-serialise parsed JSON); `req.headers` has lower-case names already. `verify`
// checks the three `webhook-*` headers, the 5-minute timestamp tolerance and every
// `v1,` signature, the same checks as the `node:crypto` `verify.mjs` next to this file.
//
// Run as a program (this is how the repository's tests run it):
// `node verify_standardwebhooks.mjs SECRET HEADERS_JSON < body` prints `valid` and
// exits 0, or prints the reason and exits 1.

import { readFileSync } from 'node:fs';
import { Webhook } from 'standardwebhooks';

const [secret, headers] = [process.argv[2], JSON.parse(process.argv[3])];
try {
  new Webhook(secret).verify(readFileSync(0), headers, { jsonParse: false });
  console.log('valid');
} catch (error) {
  console.log(`invalid: ${error.message}`);
  process.exit(1);
}
