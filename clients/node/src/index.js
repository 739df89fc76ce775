// Node.js client of the Provisioning API (provisioning.v1).
//
// The API is the proto files under the repository's `proto/`, loaded at run time by
// @grpc/proto-loader (no generated code to keep in step); this module adds what every
// caller needs around the stubs:
//
// - one channel for the three services, with a bearer token sent on every call;
// - the retry policy of `docs/grpc-service-config.json` (read from that file, so the
//   two cannot differ): grpc-js retries Emit and EmitBatch on UNAVAILABLE and
//   DEADLINE_EXCEEDED, and a few reads on UNAVAILABLE, with backoff;
// - idempotency keys: `emit` and `emitBatch` give every AFTER event a fresh key
//   unless the caller set one, so a retried call (by grpc-js or by the caller with the
//   same request) never stores an event twice;
// - promise versions of the unary calls.

import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';

const here = path.dirname(fileURLToPath(import.meta.url));
/** The repository's proto directory (the API's source of truth). */
export const PROTO_DIR = path.resolve(here, '../../../proto');
/** The documented gRPC service config, whose retry policy the channel uses. */
export const SERVICE_CONFIG_PATH = path.resolve(here, '../../../docs/grpc-service-config.json');

const PROTO_FILES = ['handlers.proto', 'events.proto', 'logs.proto'].map(
  (file) => `provisioning/v1/${file}`,
);

/**
 * Loads provisioning.v1. Enums are names (`'PHASE_AFTER'`), 64-bit integers strings
 * (ids beyond 2^53 stay exact), fields keep their proto (snake_case) names.
 */
export function loadApi(protoDir = PROTO_DIR) {
  const definition = protoLoader.loadSync(PROTO_FILES, {
    includeDirs: [protoDir],
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(definition).provisioning.v1;
}

/** The service config of `docs/grpc-service-config.json`, as grpc-js takes it. */
export function serviceConfig(file = SERVICE_CONFIG_PATH) {
  return JSON.parse(readFileSync(file, 'utf8'));
}

/** Sends `authorization: Bearer <token>` with every call. */
function bearer(token) {
  return (options, nextCall) =>
    new grpc.InterceptingCall(nextCall(options), {
      start(metadata, listener, next) {
        metadata.set('authorization', `Bearer ${token}`);
        next(metadata, listener);
      },
    });
}

/** Adds a fresh idempotency key to an AFTER event that has none. */
function withKey(event) {
  const phase = event.phase ?? 'PHASE_AFTER';
  if (phase !== 'PHASE_AFTER' && phase !== 2) return event;
  return event.idempotency_key ? event : { ...event, idempotency_key: randomUUID() };
}

/** Calls a unary method and resolves with its reply. */
function unary(stub, method, request, options = {}) {
  return new Promise((resolve, reject) => {
    const metadata = options.metadata ?? new grpc.Metadata();
    const callOptions = options.deadline ? { deadline: options.deadline } : {};
    stub[method](request, metadata, callOptions, (error, reply) =>
      error ? reject(error) : resolve(reply),
    );
  });
}

/**
 * A client of one server.
 *
 * - `handlers`, `events`, `logs`: the raw grpc-js stubs (streams: `logs.Search`,
 *   `logs.Tail`, `events.EmitStream`);
 * - `call(service, method, request, options)`: any unary method as a promise, e.g.
 *   `call('handlers', 'Create', {...})`;
 * - `emit(request)`, `emitBatch(events)`: Emit and EmitBatch with idempotency keys;
 * - `search(request)`: Search collected into an array;
 * - `close()`.
 */
export class Client {
  /**
   * @param {string} target `host:port`
   * @param {object} [options]
   * @param {string} [options.token] bearer token (see the server's tokens file)
   * @param {grpc.ChannelCredentials} [options.credentials] TLS; plaintext by default
   * @param {string} [options.protoDir] where provisioning/v1/*.proto live
   * @param {object} [options.serviceConfig] replaces docs/grpc-service-config.json
   */
  constructor(target, options = {}) {
    const api = loadApi(options.protoDir);
    const credentials = options.credentials ?? grpc.credentials.createInsecure();
    const channelOptions = {
      'grpc.service_config': JSON.stringify(options.serviceConfig ?? serviceConfig()),
      'grpc.enable_retries': 1,
    };
    if (options.token) channelOptions.interceptors = [bearer(options.token)];
    this.handlers = new api.HandlerService(target, credentials, channelOptions);
    // The other stubs share the first one's channel.
    const shared = { ...channelOptions, channelOverride: this.handlers.getChannel() };
    this.events = new api.EventService(target, credentials, shared);
    this.logs = new api.ExecutionLogService(target, credentials, shared);
  }

  /** A unary call of `service` (`'handlers'`, `'events'` or `'logs'`) as a promise. */
  call(service, method, request = {}, options = {}) {
    return unary(this[service], method, request, options);
  }

  /** Emit; an AFTER event without `idempotency_key` gets a fresh one. */
  emit(request, options = {}) {
    return this.call('events', 'Emit', withKey(request), options);
  }

  /** EmitBatch (one transaction); every AFTER event without a key gets a fresh one. */
  emitBatch(events, options = {}) {
    return this.call('events', 'EmitBatch', { events: events.map(withKey) }, options);
  }

  /** Search, collected: resolves with the `LogEntry` messages, newest first. */
  search(request = {}) {
    return new Promise((resolve, reject) => {
      const entries = [];
      const stream = this.logs.Search(request);
      stream.on('data', (entry) => entries.push(entry));
      stream.on('error', reject);
      stream.on('end', () => resolve(entries));
    });
  }

  /** Resolves once the channel is connected; rejects after `timeoutMs`. */
  waitForReady(timeoutMs = 10_000) {
    return new Promise((resolve, reject) =>
      this.handlers.waitForReady(Date.now() + timeoutMs, (error) =>
        error ? reject(error) : resolve(),
      ),
    );
  }

  close() {
    this.handlers.close();
  }
}

/** `new Client(target, options)`. */
export function connect(target, options = {}) {
  return new Client(target, options);
}

export { grpc };
