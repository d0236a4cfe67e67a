"use strict";
/*
 * The Node.js Socket.IO peer of roomstate's bench: what most users would pick instead of
 * roomstate, Socket.IO 4.8 on Node.js, several processes sharing rooms through one Redis with one
 * of Socket.IO's two Redis adapters:
 *
 *   node server.js --port P --redis redis://127.0.0.1:R/0 --adapter streams|pubsub
 *
 * - streams: @socket.io/redis-streams-adapter (every process XADDs to one stream and reads it
 *   with XREAD BLOCK);
 * - pubsub: @socket.io/redis-adapter (PUBLISH on a channel per room, PSUBSCRIBE).
 *
 * The same events as bench/systems/peer_server.py (the python-socketio peer): "join" (a room
 * name; acknowledged with "ok") enters the room; "msg" re-emits its data to the room without
 * the sender. Both adapters get an ioredis client: the Redis client both adapters' own test
 * suites run against. Server options are Socket.IO's defaults, as a user would start.
 * Prints "peer listening on http://127.0.0.1:P" once it listens.
 */

const http = require("node:http");
const { parseArgs } = require("node:util");
const { Redis } = require("ioredis");
const { Server } = require("socket.io");

function adapterFor(kind, redisUrl) {
  const client = new Redis(redisUrl);
  if (kind === "streams") {
    return require("@socket.io/redis-streams-adapter").createAdapter(client);
  }
  if (kind === "pubsub") {
    return require("@socket.io/redis-adapter").createAdapter(client, client.duplicate());
  }
  throw new Error(`--adapter must be streams or pubsub, not ${JSON.stringify(kind)}`);
}

function main() {
  const { values } = parseArgs({
    options: {
      port: { type: "string" },
      redis: { type: "string" },
      adapter: { type: "string", default: "streams" },
    },
  });
  if (!values.port || !values.redis) {
    throw new Error("usage: node server.js --port P --redis URL [--adapter streams|pubsub]");
  }
  const httpServer = http.createServer();
  const io = new Server(httpServer, { adapter: adapterFor(values.adapter, values.redis) });
  io.on("connection", (socket) => {
    let room = null;
    socket.on("join", (name, ack) => {
      socket.join(name);
      room = name;
      if (typeof ack === "function") ack("ok");
    });
    socket.on("msg", (data) => {
      if (room !== null) socket.to(room).emit("msg", data);
    });
  });
  const port = Number(values.port);
  httpServer.listen(port, "127.0.0.1", () => {
    console.log(`peer listening on http://127.0.0.1:${port}`);
  });
}

main();
