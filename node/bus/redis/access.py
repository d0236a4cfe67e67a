"""How the node reaches Redis: where (a standalone Redis's URL, a Cluster's seeds, or the master
that Sentinels name), over TLS or not, and as which ACL user.

redis-py's client and the hot path's connections (resp.py) are both made here, from the same
settings, so both speak TLS and authenticate alike, with every server of a Cluster. Behind
Sentinel, redis-py follows the master itself (``redis.asyncio.sentinel``); the hot path asks the
Sentinels for the master each time it opens a connection, which it does after losing one (a
failover: the Sentinels close the old master's clients) or after a ``READONLY`` reply, and
`Connections` asks them every `MASTER_CHECK_S` whether the master changed (`master_address`).
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel

from roomstate.bus.redis.resp import RespConnection, RespError
from roomstate.settings import Settings

__all__ = ["MASTER", "Access", "Address"]

Address = tuple[str, int]  # a Redis server
MASTER: Address = ("", 0)  # the one master of a standalone Redis or of a Sentinel's group


def _addresses(listed: str | None) -> list[Address]:
    """``HOST:PORT[,HOST:PORT...]`` as addresses."""
    result = []
    for item in (listed or "").split(","):
        if item.strip():
            host, _, port = item.strip().rpartition(":")
            result.append((host, int(port)))
    return result


def _auth(user: str | None, password: str | None) -> tuple[str, ...]:
    """``AUTH``'s arguments: (user, password), (password,), or none."""
    if user:
        return (user, password or "")  # a user without a password: a `nopass` user
    return (password,) if password else ()


class Access:
    """The settings that say how to reach Redis, made into connections."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        url = urlsplit(settings.redis) if settings.redis else None
        user, password = settings.redis_username, settings.redis_password
        if url is not None and (url.username or url.password):
            user = unquote(url.username) if url.username else None
            password = unquote(url.password) if url.password else None
        self.auth = _auth(user, password)  # for every data server
        self.db = int(url.path.lstrip("/") or 0) if url is not None else 0
        self.standalone: Address | None = None
        if url is not None:
            self.standalone = (url.hostname or "127.0.0.1", url.port or 6379)
        self.seeds = _addresses(settings.redis_cluster)
        self.sentinels = _addresses(settings.redis_sentinel)
        self.sentinel_auth = _auth(
            settings.redis_sentinel_username, settings.redis_sentinel_password
        )
        self.ssl = self._ssl_context() if settings.redis_tls_on else None
        self._sentinel: Sentinel | None = None  # redis-py's, behind Sentinel
        self._next_sentinel = 0  # the one asked first: the last that answered
        self._asked: RespConnection | None = None  # kept open to the Sentinel last asked
        self.connected_master: Address | None = None  # the master the hot path last reached

    def _ssl_context(self) -> ssl.SSLContext:
        s = self.settings
        context = ssl.create_default_context(cafile=s.redis_tls_ca)  # None: the system's CAs
        if s.redis_tls_cert and s.redis_tls_key:
            context.load_cert_chain(s.redis_tls_cert, s.redis_tls_key)
        return context

    def _redis_py_options(self) -> dict[str, Any]:
        """redis-py's TLS options, for its connections to Redis and to the Sentinels."""
        if self.ssl is None:
            return {}
        s = self.settings
        return {
            "ssl": True,
            "ssl_ca_certs": s.redis_tls_ca,
            "ssl_certfile": s.redis_tls_cert,
            "ssl_keyfile": s.redis_tls_key,
            "ssl_cert_reqs": "required",
            "ssl_check_hostname": True,
        }

    def _credentials(self, auth: tuple[str, ...]) -> dict[str, Any]:
        if len(auth) == 2:
            return {"username": auth[0], "password": auth[1]}
        return {"password": auth[0]} if auth else {}

    def client(self, timeout: float, connect_timeout: float) -> aioredis.Redis | RedisCluster:
        """redis-py's client: for snapshots, leases' reads, the Cluster's slot map."""
        options = {
            "socket_timeout": timeout,
            "socket_connect_timeout": connect_timeout,
            "driver_info": None,  # no CLIENT SETINFO: one command fewer for the ACL user
            **self._credentials(self.auth),
            **self._redis_py_options(),
        }
        if self.seeds:
            nodes = [ClusterNode(host, port) for host, port in self.seeds]
            return RedisCluster(startup_nodes=nodes, **options)
        if self.sentinels:
            self._sentinel = Sentinel(
                self.sentinels,
                sentinel_kwargs={
                    "socket_timeout": timeout,
                    "socket_connect_timeout": connect_timeout,
                    **self._credentials(self.sentinel_auth),
                    **self._redis_py_options(),
                },
                **options,
            )
            assert self.settings.redis_sentinel_master is not None
            master: aioredis.Redis = self._sentinel.master_for(
                self.settings.redis_sentinel_master, db=self.db
            )
            return master
        assert self.standalone is not None
        host, port = self.standalone
        return aioredis.Redis(host=host, port=port, db=self.db, **options)

    async def close(self) -> None:
        if self._asked is not None:
            self._asked.close()
        if self._sentinel is not None:
            await self._sentinel.aclose()

    async def master_address(self, timeout: float) -> Address:
        """The master's address as the Sentinels name it now (asked on a connection kept open
        to the Sentinel that answered last, or to the next one)."""
        name = self.settings.redis_sentinel_master
        assert name is not None
        failures = []
        for i in range(len(self.sentinels)):
            index = (self._next_sentinel + i) % len(self.sentinels)
            try:
                if self._asked is None or self._asked.closed or i > 0:
                    if self._asked is not None:
                        self._asked.close()
                    host, port = self.sentinels[index]
                    self._asked = await RespConnection.open(
                        host, port, timeout=timeout, ssl=self.ssl, auth=self.sentinel_auth
                    )
                found = await self._asked.call(
                    "SENTINEL", "GET-MASTER-ADDR-BY-NAME", name, timeout=timeout
                )
            except (OSError, TimeoutError, RespError) as exc:
                failures.append(f"{self.sentinels[index]}: {exc or type(exc).__name__}")
                continue
            if not found:
                failures.append(f"{self.sentinels[index]} knows no master {name!r}")
                continue
            self._next_sentinel = index
            return (found[0].decode(), int(found[1]))
        raise ConnectionError(f"no Sentinel names the master: {'; '.join(failures)}")

    async def open(self, address: Address, *, timeout: float) -> RespConnection:
        """A hot-path connection to `address` (`MASTER`: the standalone Redis, or the master
        the Sentinels name now), over TLS and authenticated as the settings say."""
        if address == MASTER:
            if self.sentinels:
                return await self._open_master(timeout)
            assert self.standalone is not None
            address = self.standalone
        return await RespConnection.open(
            *address, timeout=timeout, ssl=self.ssl, auth=self.auth, db=self.db
        )

    async def _open_master(self, timeout: float) -> RespConnection:
        """Connect to the master the Sentinels name, if it says it is the master (a Sentinel
        may not know of a failover yet)."""
        master = await self.master_address(timeout)
        conn = await RespConnection.open(
            *master, timeout=timeout, ssl=self.ssl, auth=self.auth, db=self.db
        )
        try:
            role = await conn.call("ROLE", timeout=timeout)
        except BaseException:
            conn.close()
            raise
        if role[0] != b"master":
            conn.close()
            raise ConnectionError(f"the Sentinels name {master}, which is a {role[0]!r} now")
        self.connected_master = master
        return conn
