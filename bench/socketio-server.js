// roomcast-bench's adapter for the Socket.IO peer: Socket.IO 4.8 with @socket.io/redis-adapter,
// WebSocket transport only, bound to loopback. Installed outside the repo by bench/peers-install.sh;
// run with NODE_PATH=$PEERS_DIR/socketio/node_modules PORT=... REDIS_URL=redis://127.0.0.1:P.
// Events: "join"(room, ack) joins a room; "pub"(room, data, ack) emits "m" with data to the room
// through the adapter, then acks, so the generator can time publishes like it does everywhere else.
const http = require("http");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

// Under overload the Redis client's commands time out; log it rather than let an unhandled rejection
// kill the process, as any production deployment would.
process.on("unhandledRejection", (e) => console.error("unhandled rejection:", e && e.name));

(async () => {
  const pub = createClient({ url: process.env.REDIS_URL });
  const sub = pub.duplicate();
  pub.on("error", (e) => console.error("redis pub:", e && e.name));
  sub.on("error", (e) => console.error("redis sub:", e && e.name));
  await Promise.all([pub.connect(), sub.connect()]);
  const server = http.createServer();
  const io = new Server(server, { transports: ["websocket"], adapter: createAdapter(pub, sub) });
  io.on("connection", (socket) => {
    socket.on("join", (room, ack) => {
      socket.join(room);
      if (typeof ack === "function") ack();
    });
    socket.on("pub", (room, data, ack) => {
      io.to(room).emit("m", data);
      if (typeof ack === "function") ack();
    });
  });
  server.listen(Number(process.env.PORT), "127.0.0.1", () => {
    console.log(`LISTEN 127.0.0.1:${server.address().port}`);
  });
})();
