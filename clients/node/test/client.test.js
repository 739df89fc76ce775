// The client against a real provisiond (idempotency keys, error codes, the README's
// example) and, for the retry policy, against a scripted EventService that fails
// before it succeeds: grpc-js must retry Emit with the same idempotency key, as
// docs/grpc-service-config.json says, and must not retry what is not retryable.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';

import { connect, grpc, loadApi, serviceConfig, SERVICE_CONFIG_PATH } from '../src/index.js';
import { main as example } from '../example.js';
import { startReceiver, startServer } from './support.js';

describe('against a real provisiond', () => {
  let server;
  let receiver;
  let client;
  before(async () => {
    server = await startServer();
    receiver = await startReceiver();
    client = connect(server.target);
  });
  after(async () => {
    client?.close();
    await receiver?.stop();
    await server?.stop();
  });

  test('a repeated AFTER emit with the same key is stored once', async () => {
    const request = {
      event: 'accounts.create',
      phase: 'PHASE_AFTER',
      data_json: '{"id": 9007199254740993, "amount": 12.50}',
      idempotency_key: 'node-test-1',
    };
    const first = await client.emit(request);
    const again = await client.emit(request);
    assert.equal(first.duplicate, false);
    assert.equal(again.duplicate, true);
    assert.equal(again.event_id, first.event_id);
  });

  test('AFTER emits without a key get a fresh one each', async () => {
    const request = { event: 'accounts.create', phase: 'PHASE_AFTER', data_json: '{"id": 1}' };
    const first = await client.emit(request);
    const second = await client.emit(request);
    assert.notEqual(first.event_id, second.event_id);
    assert.equal(second.duplicate, false);
    const batch = await client.emitBatch([request, request]);
    assert.equal(batch.acks.length, 2);
    assert.equal(batch.acks.filter((ack) => ack.duplicate).length, 0);
  });

  test('bad input is INVALID_ARGUMENT, not retried into anything else', async () => {
    await assert.rejects(
      client.emit({ event: 'no.such', phase: 'PHASE_AFTER', data_json: '{}' }),
      (error) => error.code === grpc.status.INVALID_ARGUMENT && /no\.such/.test(error.details),
    );
  });

  test('the README example creates handlers, emits BEFORE and AFTER and reads the log', async () => {
    const result = await example(server.target, receiver.url);
    assert.equal(result.decision, 'DECISION_ALLOWED');
    assert.ok(result.rows.some((row) => row.log.event === 'clients.create'), 'the AFTER run');
    assert.ok(result.rows.some((row) => row.log.event === 'clients.update'), 'the BEFORE run');
    assert.ok(receiver.requests.length >= 2, 'both handlers were called');
  });
});

describe('retry policy', () => {
  let fake;
  let port;
  const attempts = [];
  let failures = [];
  before(async () => {
    const api = loadApi();
    fake = new grpc.Server();
    fake.addService(api.EventService.service, {
      Emit(call, callback) {
        attempts.push({
          key: call.request.idempotency_key,
          authorization: call.metadata.get('authorization')[0],
        });
        const code = failures.shift();
        if (code !== undefined) {
          callback({ code, details: 'scripted failure' });
        } else {
          callback(null, { event_id: '42', deliveries: 1 });
        }
      },
    });
    port = await new Promise((resolve, reject) =>
      fake.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (error, bound) =>
        error ? reject(error) : resolve(bound),
      ),
    );
  });
  after(() => fake?.forceShutdown());

  test('the channel uses docs/grpc-service-config.json', () => {
    assert.deepEqual(serviceConfig(), JSON.parse(readFileSync(SERVICE_CONFIG_PATH, 'utf8')));
    const emit = serviceConfig().methodConfig.find((config) =>
      config.name.some((name) => name.method === 'Emit'),
    );
    assert.deepEqual(emit.retryPolicy.retryableStatusCodes, ['UNAVAILABLE', 'DEADLINE_EXCEEDED']);
  });

  test('Emit is retried on UNAVAILABLE with the same idempotency key and token', async () => {
    attempts.length = 0;
    failures = [grpc.status.UNAVAILABLE, grpc.status.UNAVAILABLE];
    const client = connect(`127.0.0.1:${port}`, { token: 'secret-token' });
    try {
      const reply = await client.emit({
        event: 'accounts.create',
        phase: 'PHASE_AFTER',
        data_json: '{}',
      });
      assert.equal(reply.event_id, '42');
    } finally {
      client.close();
    }
    assert.equal(attempts.length, 3, 'two failures, then success');
    assert.ok(attempts[0].key, 'a key was added');
    assert.ok(attempts.every((attempt) => attempt.key === attempts[0].key), 'one key for all');
    assert.ok(attempts.every((attempt) => attempt.authorization === 'Bearer secret-token'));
  });

  test('errors outside the policy are not retried', async () => {
    attempts.length = 0;
    failures = [grpc.status.FAILED_PRECONDITION];
    const client = connect(`127.0.0.1:${port}`);
    try {
      await assert.rejects(
        client.emit({ event: 'accounts.create', phase: 'PHASE_AFTER', data_json: '{}' }),
        (error) => error.code === grpc.status.FAILED_PRECONDITION,
      );
    } finally {
      client.close();
    }
    assert.equal(attempts.length, 1);
  });
});
