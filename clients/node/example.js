// The Provisioning API from Node.js: register a BEFORE and an AFTER handler, emit both
// kinds of event, and stream the execution log. Run against a server:
//
//     node example.js 127.0.0.1:50051 http://127.0.0.1:8080/hook
//
// (the URL is your handler endpoint; it must answer 2xx). Its test runs `main` against
// a real server.

import { pathToFileURL } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';

import { connect } from './src/index.js';

export async function main(target, handlerUrl) {
  const client = connect(target, { token: process.env.PROVISIONING_TOKEN });
  try {
    const handlers = {};
    for (const [phase, event] of [
      ['PHASE_BEFORE', 'clients.update'],
      ['PHASE_AFTER', 'clients.create'],
    ]) {
      const handler = await client.call('handlers', 'Create', {
        name: `node example ${event}`,
        event,
        phase,
        http: { url: handlerUrl },
      });
      handlers[event] = handler.id;
      console.log(`handler ${handler.id} for ${event}`);
    }

    // BEFORE: the handlers run now and decide.
    const before = await client.emit({
      event: 'clients.update',
      phase: 'PHASE_BEFORE',
      data_json: JSON.stringify({ id: 15, name: 'Acme' }),
    });
    console.log(`BEFORE decision: ${before.decision}`);

    // AFTER: stored, then delivered with retries. emit() adds an idempotency key, so
    // the retries of the service config can never store the event twice.
    const after = await client.emit({
      event: 'clients.create',
      phase: 'PHASE_AFTER',
      data_json: JSON.stringify({ id: 15 }),
    });
    console.log(`AFTER event ${after.event_id} stored, ${after.deliveries} delivery`);

    // The execution log, streamed: wait for the delivery's row.
    let rows = [];
    for (const deadline = Date.now() + 20_000; Date.now() < deadline; await sleep(100)) {
      rows = await client.search({
        filter: { events: ['clients.update', 'clients.create'] },
        limit: 10,
      });
      if (rows.some((row) => row.log.event === 'clients.create')) break;
    }
    for (const { log } of rows) {
      console.log(`log ${log.id}: ${log.event} ${log.phase} ${log.status} ${log.duration_ms} ms`);
    }
    return { decision: before.decision, eventId: after.event_id, rows, handlers };
  } finally {
    client.close();
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  await main(process.argv[2], process.argv[3]);
}
