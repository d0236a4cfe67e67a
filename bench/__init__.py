"""roomstate's benchmark: what a node costs per delivery, against the peers users would pick
instead and against bare floors, on real processes over loopback (docs/performance.md).

- `bench.harness`: how a run measures: start a deployment (`deploy`, `peers`), drive it with load
  generator processes (`loadgen`), run open-loop steps and ramps and read each process's CPU
  (`runner`, `common`), record the machine (`machine`), write the report (`report`) and make
  the run of record (`record`);
- `bench.systems`: the servers compared that are not roomstate itself, run as their own
  processes: the python-socketio peer (`peer_server`), the Node.js Socket.IO peer
  (`node_peer/`), the floors (`ws_floor`, `redis_floor`); roomstate's topologies are
  `bench.harness.deploy.TOPOLOGIES`;
- `bench.studies`: one measurement each, run on its own (`python -m bench STUDY`);
- `bench.suite` (`python -m bench quick|full`) and `bench.summary` (its summary and targets).

Imports go one way: suite and summary → studies → harness; systems import only
`bench.harness.common`, and the harness starts them by path, never imports them
(tests/unit/test_bench_layout.py).
"""
