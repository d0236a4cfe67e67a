"""The Redis Streams bus, for a standalone Redis or a Redis Cluster: the only package that
imports `redis` and `hiredis`."""

from roomstate.bus.redis.bus import RedisBus

__all__ = ["RedisBus"]
