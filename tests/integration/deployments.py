"""Deployments the semantic suite runs on: one node in memory, one node + Redis, three nodes +
standalone Redis, three nodes + Redis Cluster behind haproxy.

A `Deployment` hands out room URLs in turn over its entry points, so the participants of a room
are spread over the nodes (through haproxy, its least-connections balancing spreads them).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from deploy.local.servers import Haproxy, RedisCluster, RedisServer

from .conftest import FAST, NodeProcess, start_node

TOPOLOGIES = ("memory", "redis", "3-nodes-redis", "3-nodes-cluster-haproxy")


@dataclass
class Deployment:
    name: str
    nodes: list[NodeProcess]
    entries: list[str]  # base URLs clients connect to (the nodes, or haproxy)
    stop_list: list[object] = field(default_factory=list)  # redis, cluster, haproxy
    _turn: Iterator[int] = field(default_factory=itertools.count)

    @property
    def url(self) -> str:
        """A base URL for REST (the first entry point)."""
        return self.entries[0]

    def _next(self) -> str:
        return self.entries[next(self._turn) % len(self.entries)]

    def room_url(self, room: str) -> str:
        return f"{self._next()}/rooms/{room}"

    def ws_url(self, room: str) -> str:
        return f"{self._next()}/v1/rooms/{room}/ws"

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        for server in reversed(self.stop_list):
            server.stop()  # type: ignore[attr-defined]


def start_deployment(name: str, tmp: Path, env: dict[str, str] | None = None) -> Deployment:
    """Start one of `TOPOLOGIES`; `env` adds ROOMSTATE_* settings for every node."""
    env = {**FAST, **(env or {})}
    if name == "memory":
        node = start_node(tmp, env)
        return Deployment(name, [node], [node.url])
    if name in ("redis", "3-nodes-redis"):
        redis = RedisServer.start(tmp)
        count = 1 if name == "redis" else 3
        nodes = [
            start_node(tmp, {**env, "ROOMSTATE_NODE_ID": f"node-{i}"}, "--redis", redis.url)
            for i in range(count)
        ]
        return Deployment(name, nodes, [n.url for n in nodes], [redis])
    cluster = RedisCluster.start(tmp)
    nodes = [
        start_node(tmp, {**env, "ROOMSTATE_NODE_ID": f"node-{i}"}, "--redis-cluster", cluster.seeds)
        for i in range(3)
    ]
    backends = [("127.0.0.1", int(n.url.rsplit(":", 1)[1])) for n in nodes]
    haproxy = Haproxy.start(tmp, backends)
    return Deployment(name, nodes, [haproxy.url], [cluster, haproxy])
