// An Express document portal, written the way most new Node.js portals are, for Vigie's tests
// (tests/tests/vigie/node.rs): documents are read by libuv pool threads, never by the thread that
// reads the request, and go out with `writev([head, body])` or in stream chunks, so Vigie can
// only attribute them by content. Deliberately vulnerable: any authenticated user may read any
// document.
//
//   node portal.js --root DIR --serve read-file|stream [--cluster N]
//
// A request carrying a session id (`?sid=` or a `session` cookie) is checked first with an
// internal HTTP call (`GET /internal/session?sid=...` on the portal itself), and, in cluster
// workers, reported to the primary over the cluster's IPC channel, as session-sharing portals
// do: both carry the raw session id, which Vigie must never record.
//
// Identity: the `X-Remote-User` header (an auth proxy's). Documents: ROOT/users/<owner>/<name>,
// served at /docs/<owner>/<name>. Prints `LISTENING <ip:port>` once every worker listens.
'use strict';

const cluster = require('node:cluster');
const fs = require('node:fs');
const path = require('node:path');
const express = require('express');
const http = require('node:http');

function option(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1] : fallback;
}

const root = option('root');
const serve = option('serve', 'read-file');
const workers = Number(option('cluster', '0'));
if (!root || !['read-file', 'stream'].includes(serve) || !(workers >= 0)) {
  console.error('usage: portal.js --root DIR --serve read-file|stream [--cluster N]');
  process.exit(2);
}

// The session id a request carries, if any.
function sessionOf(req) {
  if (req.query.sid) return String(req.query.sid);
  const m = /(?:^|;\s*)session=([^;]*)/.exec(req.get('cookie') || '');
  return m ? m[1] : null;
}

// Asks the portal's own session endpoint about `sid` (an internal HTTP call, on loopback).
function checkSession(port, sid) {
  return new Promise((resolve) => {
    const path = `/internal/session?sid=${encodeURIComponent(sid)}`;
    http
      .get({ host: '127.0.0.1', port, path, agent: false }, (r) => {
        r.resume();
        r.on('end', resolve);
      })
      .on('error', resolve);
  });
}

function app() {
  const a = express();
  a.get('/internal/session', (req, res) => {
    res.json({ known: Boolean(req.query.sid) });
  });
  a.get('/docs/:owner/:name', async (req, res) => {
    const sid = sessionOf(req);
    if (sid) {
      await checkSession(req.socket.localPort, sid);
      if (process.send) process.send({ cmd: 'session-seen', sid });
    }
    if (!req.get('x-remote-user')) {
      res.status(401).end('no identity\n');
      return;
    }
    const file = path.join(root, 'users', req.params.owner, req.params.name);
    if (serve === 'read-file') {
      try {
        // Read on a pool thread; the reply is one writev of the head and the whole body.
        const body = await fs.promises.readFile(file);
        res.type('application/octet-stream').end(body);
      } catch {
        res.status(404).end('not found\n');
      }
    } else {
      // The length first (a stat, no read), as `res.sendFile` does; then small chunks, so that
      // a document is read in several pieces, by several pool threads.
      let size;
      try {
        size = (await fs.promises.stat(file)).size;
      } catch {
        res.status(404).end('not found\n');
        return;
      }
      res.type('application/octet-stream').set('Content-Length', String(size));
      fs.createReadStream(file, { highWaterMark: 4096 }).pipe(res);
    }
  });
  return a;
}

if (workers > 0 && cluster.isPrimary) {
  // Workers listening on port 0 share one port the primary picks (it accepts and hands each
  // connection to a worker over IPC, round-robin).
  let listening = 0;
  for (let i = 0; i < workers; i++) {
    const w = cluster.fork();
    w.on('message', () => {});
    w.on('listening', (address) => {
      listening += 1;
      if (listening === workers) console.log(`LISTENING 127.0.0.1:${address.port}`);
    });
  }
} else {
  const server = app().listen(0, '127.0.0.1', () => {
    if (workers === 0) console.log(`LISTENING 127.0.0.1:${server.address().port}`);
  });
  server.keepAliveTimeout = 60000;
}
