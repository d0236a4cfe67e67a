"""The servers roomstate is compared with, each run as its own process by `bench.harness`:
python-socketio (`peer_server`), Node.js Socket.IO with a Redis adapter (`node_peer/`), the bare
WebSocket floors (`ws_floor`) and the Redis floor (`redis_floor`). Nothing here imports the
harness beyond `bench.harness.common`."""
