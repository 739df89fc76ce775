// A real provisiond (its own embedded database, a free loopback port) and a recording
// HTTP endpoint, for the tests that drive the service from Node.js. `PROVISIOND` names
// the binary (default: the workspace's target/debug/provisiond).

import { spawn } from 'node:child_process';
import { chmodSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import { createServer as createNetServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { connect } from '../src/index.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const PROVISIOND = process.env.PROVISIOND ?? path.join(ROOT, 'target/debug/provisiond');

/** A free loopback port (released at once; harmless in tests). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = createNetServer();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** `provisiond --listen 127.0.0.1:<free port> --data-dir <temp dir>`, healthy. */
export async function startServer() {
  const dataDir = mkdtempSync(path.join(tmpdir(), 'prov-node-'));
  chmodSync(dataDir, 0o755);
  const target = `127.0.0.1:${await freePort()}`;
  const env = Object.fromEntries(
    Object.entries(process.env).filter(
      ([key]) => !key.startsWith('PROVISIOND_') && key !== 'DATABASE_URL',
    ),
  );
  const logPath = path.join(dataDir, 'provisiond.log');
  const log = openSync(logPath, 'w');
  const child = spawn(PROVISIOND, ['--listen', target, '--data-dir', dataDir], {
    env,
    stdio: ['ignore', log, log],
  });
  const exited = new Promise((resolve) => child.on('exit', resolve));
  const server = {
    target,
    log: () => readFileSync(logPath, 'utf8'),
    async stop() {
      child.kill('SIGTERM');
      await exited;
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
  const probe = connect(target);
  try {
    await probe.waitForReady(90_000);
  } catch (error) {
    await server.stop().catch(() => {});
    throw new Error(`provisiond did not start: ${error.message}\n${server.log()}`);
  } finally {
    probe.close();
  }
  return server;
}

/** An HTTP endpoint that records every POST and answers 200 with an empty body. */
export async function startReceiver() {
  const requests = [];
  const server = createServer((req, res) => {
    const chunks = [];
    req.on('data', (chunk) => chunks.push(chunk));
    req.on('end', () => {
      requests.push({ headers: req.headers, body: Buffer.concat(chunks) });
      res.writeHead(200, { 'content-length': 0 }).end();
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    requests,
    url: `http://127.0.0.1:${server.address().port}/hook`,
    stop: () => new Promise((resolve) => server.close(resolve)),
  };
}
