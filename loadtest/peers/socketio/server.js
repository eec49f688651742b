// Socket.IO peer for Switchyard's load test.
//
// One node of a Socket.IO cluster that uses the Redis adapter, as its docs
// recommend for several nodes: every node consumes the same Kafka topic in
// one consumer group (kafkajs), turns each event into one emit to the rooms
// of its scopes ("p:<product>") -- or to everyone when it has none -- and
// the adapter relays the emit to the other nodes through Redis. A client
// names its products in the handshake's `auth` ({"products": [...]}); the
// node joins those rooms and then emits "ready".
//
// Environment: HOST, PORT, REDIS_URL, REDIS_KEY (adapter prefix),
// KAFKA_BROKERS, KAFKA_TOPIC, KAFKA_GROUP, FETCH_WAIT_MS, NODE_ID.
// GET /readyz answers 200 once Redis is connected and the consumer joined.
"use strict";

const http = require("node:http");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");
const { Kafka, logLevel } = require("kafkajs");

const env = (k, d) => (process.env[k] === undefined ? d : process.env[k]);
const host = env("HOST", "127.0.0.1");
const port = Number(env("PORT", "3000"));
const nodeId = env("NODE_ID", String(process.pid));
const redisUrl = env("REDIS_URL", "redis://127.0.0.1:6379");
const redisKey = env("REDIS_KEY", "socket.io");
const brokers = env("KAFKA_BROKERS", "127.0.0.1:9092").split(",");
const topic = env("KAFKA_TOPIC", "switchyard.events");
const group = env("KAFKA_GROUP", "socketio-peer");
const fetchWaitMs = Number(env("FETCH_WAIT_MS", "100"));

let redisReady = false;
let kafkaReady = false;
let emitted = 0;

const httpServer = http.createServer((req, res) => {
  if (req.url === "/readyz") {
    const ok = redisReady && kafkaReady;
    res.writeHead(ok ? 200 : 503, { "content-type": "text/plain" });
    res.end(ok ? "ready\n" : `starting redis=${redisReady} kafka=${kafkaReady}\n`);
    return;
  }
  if (req.url === "/healthz") {
    res.writeHead(200, { "content-type": "text/plain" });
    res.end(`ok emitted=${emitted}\n`);
    return;
  }
  res.writeHead(404);
  res.end();
});

const io = new Server(httpServer, {
  transports: ["websocket"],
  serveClient: false,
  perMessageDeflate: false,
  httpCompression: false,
  maxHttpBufferSize: 1e5,
});

io.on("connection", (socket) => {
  const auth = socket.handshake.auth || {};
  const products = Array.isArray(auth.products) ? auth.products : [];
  for (const p of products) socket.join("p:" + p);
  socket.emit("ready");
});

async function main() {
  const pub = createClient({ url: redisUrl });
  const sub = pub.duplicate();
  pub.on("error", (e) => console.error("redis pub:", e.message));
  sub.on("error", (e) => console.error("redis sub:", e.message));
  await Promise.all([pub.connect(), sub.connect()]);
  io.adapter(createAdapter(pub, sub, { key: redisKey }));
  redisReady = true;

  const kafka = new Kafka({ clientId: "socketio-" + nodeId, brokers, logLevel: logLevel.WARN });
  const consumer = kafka.consumer({
    groupId: group,
    maxWaitTimeInMs: fetchWaitMs,
    sessionTimeout: 10000,
    heartbeatInterval: 1000,
  });
  consumer.on(consumer.events.GROUP_JOIN, () => {
    kafkaReady = true;
  });
  await consumer.connect();
  await consumer.subscribe({ topic, fromBeginning: false });
  await consumer.run({
    eachMessage: async ({ message }) => {
      let ev;
      try {
        ev = JSON.parse(message.value);
      } catch (e) {
        return;
      }
      const rooms = [];
      for (const s of ev.scopes || []) for (const v of s.values || []) rooms.push("p:" + v);
      if (rooms.length > 0) io.to(rooms).emit("m", ev);
      else io.emit("m", ev);
      emitted++;
    },
  });

  const stop = async () => {
    try {
      await consumer.disconnect();
    } catch (e) {
      // exiting anyway
    }
    process.exit(0);
  };
  process.on("SIGTERM", stop);
  process.on("SIGINT", stop);
}

httpServer.listen(port, host, () => {
  console.log(`socket.io node ${nodeId} on ws://${host}:${port}`);
});
main().catch((e) => {
  console.error("fatal:", e);
  process.exit(1);
});
