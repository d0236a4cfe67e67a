"""Redis as production runs it, for tests: TLS certificates made with openssl, a TLS-only
redis-server whose default user is off, and the node's ACL user exactly as docs/operations.md
gives it. Module-scoped fixtures; a test module imports the ones it uses."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.local.servers import RedisCluster, RedisServer, TlsFiles, make_tls_files

ROOT = Path(__file__).resolve().parents[2]
ADMIN = ("admin", "admin-" + uuid.uuid4().hex)  # the tests' own user: the default one is off
ADMIN_ONLY = ("--user", "default", "off", "--user", "admin", "on", ">" + ADMIN[1], "~*", "&*",
              "+@all")  # fmt: skip
NODE_USER = "roomstate"
NODE_PASSWORD = "node-" + uuid.uuid4().hex


def documented_acl_rule() -> list[str]:
    """The ``ACL SETUSER roomstate ...`` line of docs/operations.md, as arguments."""
    text = (ROOT / "docs" / "operations.md").read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip().startswith("ACL SETUSER")]
    assert len(lines) == 1, "docs/operations.md gives one ACL SETUSER line"
    return lines[0].split()[2:]


def documented_cluster_extra() -> list[str]:
    """What docs/operations.md adds to the rule for a Cluster ("In a Cluster, add `...`")."""
    text = " ".join((ROOT / "docs" / "operations.md").read_text().split())
    found = re.search(r"In a Cluster, add `([^`]+)`", text)
    assert found, "docs/operations.md says what a Cluster adds to the ACL rule"
    return found.group(1).split()


def acl_user(server: RedisServer, password: str, *, cluster: bool = False) -> None:
    """Make the node's user on `server` exactly as documented (">PASSWORD" replaced; in a
    Cluster, with what the docs add for it)."""
    rule = [f">{password}" if arg == ">PASSWORD" else arg for arg in documented_acl_rule()]
    extra = documented_cluster_extra() if cluster else []
    assert server.command("ACL", "SETUSER", *rule, *extra) == "OK"


def denials(server: RedisServer) -> list[str]:
    """What ACL LOG recorded as refused (every command, key and channel the node used must
    have been allowed)."""
    entries = server.command("ACL", "LOG") or []
    assert isinstance(entries, list)
    return [str(entry) for entry in entries]


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def acl_redis(tmp_path_factory: pytest.TempPathFactory, tls: TlsFiles) -> Iterator[RedisServer]:
    """TLS only (a client certificate optional), the default user off, the node's user made
    from the documented rule: `rediss://roomstate:NODE_PASSWORD@...`."""
    server = RedisServer.start(
        tmp_path_factory.mktemp("redis"), tls=tls, auth=ADMIN, extra_args=ADMIN_ONLY
    )
    acl_user(server, NODE_PASSWORD)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory, tls: TlsFiles) -> Iterator[RedisCluster]:
    """A 3-master Cluster on TLS only (clients, the cluster bus), the default user off, the
    node's user on every server."""
    cluster = RedisCluster.start(
        tmp_path_factory.mktemp("tls-cluster"), tls=tls, auth=ADMIN, extra_args=ADMIN_ONLY
    )
    for server in cluster.servers:
        acl_user(server, NODE_PASSWORD, cluster=True)
    yield cluster
    cluster.stop()
