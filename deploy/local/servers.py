"""Start and stop real server processes on free loopback ports: redis-server, a Redis Cluster,
Redis Sentinels, haproxy, and any other command (roomstate nodes).

Used by the integration tests, bench/ and deploy/local/up. Every process is a child of this
Python process (never daemonized), runs in its own session, writes its output to a log file in
the directory it is given, and is stopped by its PID, never by name. Each one is registered when
it starts, so an atexit handler stops whatever a test or a failed start left running; a launcher
that wants its processes to outlive it calls `detach()` on them.

    redis = RedisServer.start(tmp_path)            # redis.url == "redis://127.0.0.1:P/0"
    redis.kill(); redis.restart()                  # same port, same directory
    cluster = RedisCluster.start(tmp_path)         # cluster.seeds == "127.0.0.1:P1,..."
    tls = make_tls_files(tmp_path / "tls")         # a test CA, server and client certificates
    RedisServer.start(tmp_path, tls=tls)           # TLS only: url == "rediss://127.0.0.1:P/0"
    sentinels = RedisSentinels.start(tmp_path, master)  # sentinels.addresses, .master_port()
    lb = Haproxy.start(tmp_path, [("127.0.0.1", 8081), ("127.0.0.1", 8082)])
    ...
    lb.stop(); cluster.stop(); redis.stop()

A missing program raises `MissingBinaryError` naming its package (`find_binary`).
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import csv
import hashlib
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TypeAlias

ROOT = Path(__file__).resolve().parents[2]
HAPROXY_TEMPLATE = ROOT / "deploy" / "haproxy.cfg"
HOST = "127.0.0.1"
CLUSTER_SLOTS = 16384
CLUSTER_BUS_OFFSET = 10000  # a cluster node also listens on port + 10000

# -- finding the programs --------------------------------------------------------------------


class MissingBinaryError(RuntimeError):
    """A program is not installed (`./deploy/dev.sh test` installs what the tests need)."""


_SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")  # not on a normal user's PATH (haproxy)


def find_binary(binary: str, debian_package: str) -> str:
    """Return the path of `binary`, or raise MissingBinaryError naming the package to install.

    Installing is the set-up's job (deploy/dev.sh), not a launcher's: a launcher runs as any user.
    """
    path = os.pathsep.join([os.environ.get("PATH", os.defpath), *_SBIN_DIRS])
    found = shutil.which(binary, path=path)
    if found is None:
        raise MissingBinaryError(
            f"{binary} is not installed: install the Debian/Ubuntu package {debian_package!r} "
            f"(apt-get install {debian_package}, or ./deploy/dev.sh test as root), "
            f"or put {binary} on PATH"
        )
    return found


# -- ports ------------------------------------------------------------------------------------

_handed_out: set[int] = set()
_port_lock = threading.Lock()


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port(*, with_cluster_bus: bool = False) -> int:
    """A TCP port free on 127.0.0.1, never handed out before by this process.

    With `with_cluster_bus`, port + 10000 (a Redis Cluster node's bus port) is free too.
    """
    with _port_lock:
        for _ in range(200):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((HOST, 0))
                port: int = sock.getsockname()[1]
            if port in _handed_out:
                continue
            if with_cluster_bus and (
                port + CLUSTER_BUS_OFFSET > 65535 or not _port_is_free(port + CLUSTER_BUS_OFFSET)
            ):
                continue
            _handed_out.add(port)
            return port
    raise RuntimeError("no free loopback port found")


def port_accepts(port: int, host: str = HOST, timeout: float = 0.5) -> bool:
    """Whether a TCP connection to host:port succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# -- processes --------------------------------------------------------------------------------

_live: dict[int, ManagedProcess] = {}  # by PID, in start order
_live_lock = threading.Lock()
_owner_pid = os.getpid()


def stop_all(timeout: float = 5.0) -> None:
    """Stop, newest first, every process started here and neither stopped nor detached.

    Runs at exit. A forked child inherits the registry but not the processes: it stops nothing.
    """
    if os.getpid() != _owner_pid:
        return
    with _live_lock:
        leftovers = list(_live.values())
    for proc in reversed(leftovers):
        proc.stop(timeout)


atexit.register(stop_all)

_others: list[subprocess.Popen[str]] = []  # started elsewhere (node processes), killed at exit


def track(popen: subprocess.Popen[str]) -> None:
    """Have `stop_all` kill `popen` too if it still runs (its owner normally stops it)."""
    _others.append(popen)


@atexit.register
def _kill_others() -> None:
    if os.getpid() != _owner_pid:
        return
    for popen in _others:
        if popen.poll() is None:
            popen.kill()


def _stop_everything_on_sigterm(signum: int, frame: object) -> None:
    """A run cancelled with SIGTERM (a CI job's timeout) skips atexit: stop what it started
    (each server runs in its own session, out of reach of a signal to pytest's group)."""
    _kill_others()
    stop_all(timeout=2.0)
    os._exit(128 + signum)


if threading.current_thread() is threading.main_thread() and (
    signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
):
    signal.signal(signal.SIGTERM, _stop_everything_on_sigterm)


@dataclass(eq=False)
class ManagedProcess:
    """A child process with its output in a log file, registered for cleanup at exit."""

    name: str
    argv: list[str]
    log: Path
    popen: subprocess.Popen[bytes] = field(repr=False)
    paused: bool = False

    @classmethod
    def spawn(
        cls,
        name: str,
        argv: Sequence[str],
        log: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> ManagedProcess:
        """Start `argv` with stdout and stderr appended to `log`, in a new session.

        The new session keeps a terminal's Ctrl-C or hang-up away from the child: it is stopped
        by its PID, by `stop()` or at exit.
        """
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
            )
        proc = cls(name, list(argv), log, popen)
        with _live_lock:
            _live[popen.pid] = proc
        return proc

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def running(self) -> bool:
        """Whether the process has not exited (a paused process is running)."""
        return self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def _forget(self) -> None:
        with _live_lock:
            _live.pop(self.pid, None)

    def detach(self) -> None:
        """Leave the process running when this Python process exits."""
        self._forget()

    def send_signal(self, sig: int) -> None:
        """Send `sig` to the process, if it is still running."""
        if self.running:
            os.kill(self.pid, sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (after SIGCONT if paused), wait up to `timeout` s, then SIGKILL.

        Returns the exit code (negative: killed by that signal).
        """
        if self.running:
            if self.paused:
                self.resume()
            self.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.send_signal(signal.SIGKILL)
                self.popen.wait(5)
        self._forget()
        return self.popen.returncode

    def kill(self) -> None:
        """SIGKILL and reap: a crash, for fault tests."""
        self.send_signal(signal.SIGKILL)
        self.popen.wait(5)
        self.paused = False
        self._forget()

    def pause(self) -> None:
        """SIGSTOP: the process keeps its sockets but answers nothing."""
        self.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        """SIGCONT after `pause()`."""
        self.send_signal(signal.SIGCONT)
        self.paused = False

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the log, for error messages."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def wait_until(
    ready: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    process: ManagedProcess | None = None,
    interval: float = 0.05,
) -> None:
    """Poll `ready()` until it is true; raise TimeoutError after `timeout` s, or RuntimeError
    as soon as `process` exits (with the end of its log)."""
    deadline = time.monotonic() + timeout
    while True:
        if ready():
            return
        if process is not None and not process.running:
            raise RuntimeError(
                f"{process.name} exited (code {process.returncode}) while waiting for {what}; "
                f"log {process.log}:\n{process.log_tail()}"
            )
        if time.monotonic() > deadline:
            tail = f"; log {process.log}:\n{process.log_tail()}" if process else ""
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}{tail}")
        time.sleep(interval)


# -- a minimal Redis client (RESP2), enough for readiness checks and fault tests --------------

RespValue: TypeAlias = "str | int | list[RespValue] | None"


class RedisReplyError(Exception):
    """Redis answered with an error reply (-ERR ..., -LOADING ...)."""


def _read_reply(reader: IO[bytes]) -> RespValue:
    line = reader.readline()
    if not line.endswith(b"\r\n"):
        raise ConnectionError("connection closed by Redis")
    kind, body = line[:1], line[1:-2].decode(errors="replace")
    if kind == b"+":
        return body
    if kind == b"-":
        raise RedisReplyError(body)
    if kind == b":":
        return int(body)
    if kind == b"$":
        size = int(body)
        if size < 0:
            return None
        data = reader.read(size + 2)
        return data[:-2].decode(errors="replace")
    if kind == b"*":
        count = int(body)
        return None if count < 0 else [_read_reply(reader) for _ in range(count)]
    raise ConnectionError(f"unexpected Redis reply {line[:50]!r}")


def _pack(args: Sequence[str | int]) -> bytes:
    parts = [str(arg).encode() for arg in args]
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def redis_command(
    port: int,
    *args: str | int,
    host: str = HOST,
    timeout: float = 2.0,
    tls: TlsFiles | None = None,
    auth: tuple[str, str] | None = None,
) -> RespValue:
    """Send one command on a new connection and return the reply (errors raise RedisReplyError).
    With `tls`, over TLS (the client certificate is sent); with `auth`, as that ACL user."""
    with socket.create_connection((host, port), timeout=timeout) as raw:
        sock = tls.client_context().wrap_socket(raw, server_hostname=host) if tls else raw
        with sock, sock.makefile("rb") as reader:
            if auth is not None:
                sock.sendall(_pack(("AUTH", *auth)))
                _read_reply(reader)
            sock.sendall(_pack(args))
            return _read_reply(reader)


# -- TLS --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    """A test CA and the certificates it signed (for 127.0.0.1 and localhost), as PEM files."""

    ca: Path  # the CA's certificate: what clients trust
    cert: Path  # the servers' certificate and key (also their client certificate to each other)
    key: Path
    client_cert: Path  # a client's certificate and key, for mutual TLS
    client_key: Path

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca))
        context.load_cert_chain(str(self.client_cert), str(self.client_key))
        return context

    def server_args(self, *, auth_clients: str = "optional") -> tuple[str, ...]:
        """redis-server's TLS options (the TLS port is given apart): clients must show a
        certificate with `auth_clients` yes, may with optional, need not with no."""
        return (
            "--tls-cert-file", str(self.cert),
            "--tls-key-file", str(self.key),
            "--tls-ca-cert-file", str(self.ca),
            "--tls-auth-clients", auth_clients,
        )  # fmt: skip


def make_tls_files(directory: Path, days: int = 2) -> TlsFiles:
    """A new CA, a server and a client certificate it signed, in `directory` (with openssl)."""
    openssl = find_binary("openssl", "openssl")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def run(*args: str) -> None:
        done = subprocess.run(
            [openssl, *args], cwd=directory, capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(f"openssl {args[0]} failed: {done.stderr[-1000:]}")

    run("req", "-x509", "-new", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", str(days),
        "-subj", "/CN=roomstate test CA")  # fmt: skip
    for name in ("server", "client"):
        run("req", "-new", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN=roomstate test {name}")  # fmt: skip
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", str(days),
            "-extfile", "san.ext")  # fmt: skip
    return TlsFiles(
        directory / "ca.pem",
        directory / "server.pem",
        directory / "server.key",
        directory / "client.pem",
        directory / "client.key",
    )


def _parse_info(text: RespValue) -> dict[str, str]:
    """`INFO` / `CLUSTER INFO` text as a dict."""
    result: dict[str, str] = {}
    for line in str(text).splitlines():
        key, sep, value = line.partition(":")
        if sep and not key.startswith("#"):
            result[key.strip()] = value.strip()
    return result


# -- Redis ------------------------------------------------------------------------------------


@dataclass(eq=False)
class RedisServer:
    """A `redis-server` child process on 127.0.0.1.

    Its files, named by port so that several servers can share `tmp_dir`, are in `tmp_dir`:
    `redis-P.log` (Redis's log), `redis-P.out` (stdout and stderr), `appendonly-P.aof*` and
    `nodes-P.conf` (Cluster).

    With `tls`, it listens on TLS only (`port` is its TLS port); `auth` is the ACL user and
    password its own checks (PING, `command`) use, for a server whose default user is off.
    """

    tmp_dir: Path
    port: int
    appendonly: bool = False
    extra_args: tuple[str, ...] = ()
    process: ManagedProcess | None = field(default=None, repr=False)
    tls: TlsFiles | None = None
    tls_auth_clients: str = "optional"  # "yes": mutual TLS, a client certificate is required
    auth: tuple[str, str] | None = None

    @classmethod
    def start(
        cls,
        tmp_dir: Path,
        *,
        port: int | None = None,
        appendonly: bool = False,
        extra_args: Sequence[str] = (),
        timeout: float = 10.0,
        tls: TlsFiles | None = None,
        tls_auth_clients: str = "optional",
        auth: tuple[str, str] | None = None,
    ) -> RedisServer:
        """Start redis-server on `port` (default: a free one) and wait until it answers PING."""
        server = cls.launch(
            tmp_dir,
            port=port,
            appendonly=appendonly,
            extra_args=extra_args,
            tls=tls,
            tls_auth_clients=tls_auth_clients,
            auth=auth,
        )
        try:
            server.wait_ready(timeout)
        except BaseException:
            server.stop()
            raise
        return server

    @classmethod
    def launch(
        cls,
        tmp_dir: Path,
        *,
        port: int | None = None,
        appendonly: bool = False,
        extra_args: Sequence[str] = (),
        tls: TlsFiles | None = None,
        tls_auth_clients: str = "optional",
        auth: tuple[str, str] | None = None,
    ) -> RedisServer:
        """Start redis-server without waiting for it (see `wait_ready`)."""
        server = cls(
            Path(tmp_dir),
            port or free_port(),
            appendonly,
            tuple(extra_args),
            tls=tls,
            tls_auth_clients=tls_auth_clients,
            auth=auth,
        )
        server._spawn()
        return server

    def _spawn(self) -> None:
        binary = find_binary("redis-server", "redis-server")
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        p = self.port
        if self.tls is None:
            listen: tuple[str, ...] = ("--port", str(p))
        else:  # TLS only; replicas reach their master over TLS too
            tls_args = self.tls.server_args(auth_clients=self.tls_auth_clients)
            listen = ("--port", "0", "--tls-port", str(p), "--tls-replication", "yes", *tls_args)
        argv = [
            binary,
            *listen,
            "--bind", HOST,
            "--daemonize", "no",
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--dir", str(self.tmp_dir),
            "--logfile", f"redis-{p}.log",
            "--dbfilename", f"dump-{p}.rdb",
            "--appendfilename", f"appendonly-{p}.aof",
            *self.extra_args,
        ]  # fmt: skip
        self.process = ManagedProcess.spawn(
            f"redis-server:{p}", argv, self.tmp_dir / f"redis-{p}.out", cwd=self.tmp_dir
        )

    def ping(self, timeout: float = 1.0) -> bool:
        """Whether the server answers PING with PONG (false while loading, paused or down)."""
        try:
            return self.command("PING", timeout=timeout) == "PONG"
        except (OSError, RedisReplyError):
            return False

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Wait until the server answers PING; raise if it exits first."""
        wait_until(
            lambda: self.ping(0.5),
            timeout=timeout,
            what=f"redis-server on port {self.port} to answer PING",
            process=self.process,
        )

    @property
    def url(self) -> str:
        return f"{'rediss' if self.tls else 'redis'}://{HOST}:{self.port}/0"

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("not started")
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.running

    @property
    def paused(self) -> bool:
        return self.process is not None and self.process.paused

    @property
    def log(self) -> Path:
        """Redis's own log file."""
        return self.tmp_dir / f"redis-{self.port}.log"

    def command(self, *args: str | int, timeout: float = 2.0) -> RespValue:
        """Run one command on this server (no cluster redirections)."""
        return redis_command(self.port, *args, timeout=timeout, tls=self.tls, auth=self.auth)

    def info(self, section: str = "") -> dict[str, str]:
        """`INFO [section]` as a dict."""
        return _parse_info(self.command("INFO", *([section] if section else [])))

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, wait up to `timeout` s, then SIGKILL."""
        if self.process is not None:
            self.process.stop(timeout)

    def kill(self) -> None:
        """SIGKILL: a crash (unsynced AOF writes are lost)."""
        if self.process is not None:
            self.process.kill()

    def pause(self) -> None:
        """SIGSTOP: connections stay open, nothing is answered."""
        if self.process is not None:
            self.process.pause()

    def resume(self) -> None:
        """SIGCONT after `pause()`."""
        if self.process is not None:
            self.process.resume()

    def restart(self, timeout: float = 10.0) -> RedisServer:
        """Start again on the same port with the same directory (stops it first if running)."""
        self.stop()
        self._spawn()
        self.wait_ready(timeout)
        return self

    def detach(self) -> None:
        """Leave the server running when this Python process exits."""
        if self.process is not None:
            self.process.detach()

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(eq=False)
class RedisCluster:
    """A Redis Cluster of `masters` masters, each with `replicas_per_master` replicas."""

    tmp_dir: Path
    servers: list[RedisServer]
    masters: int
    replicas_per_master: int = 0

    @classmethod
    def start(
        cls,
        tmp_dir: Path,
        masters: int = 3,
        replicas_per_master: int = 0,
        *,
        node_timeout_ms: int = 2000,
        extra_args: Sequence[str] = (),
        timeout: float = 30.0,
        tls: TlsFiles | None = None,
        auth: tuple[str, str] | None = None,
    ) -> RedisCluster:
        """Start the servers, form the cluster with `redis-cli --cluster create`, and wait until
        every node says `cluster_state:ok` with all 16384 slots served. With `tls`, clients,
        replicas and the cluster bus use TLS only; `auth` as for `RedisServer`."""
        if masters < 3:
            raise ValueError("redis-cli --cluster create needs at least 3 masters")
        cli = find_binary("redis-cli", "redis-tools")
        tmp_dir = Path(tmp_dir)
        count = masters * (1 + replicas_per_master)
        servers: list[RedisServer] = []
        try:
            for _ in range(count):  # start them all, then wait for them all
                port = free_port(with_cluster_bus=True)
                args = (
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", f"nodes-{port}.conf",
                    "--cluster-node-timeout", str(node_timeout_ms),
                    # replicas: full sync at once, not after the default 5 s wait
                    "--repl-diskless-sync-delay", "0",
                    # While a failed master's slots wait for a replica to take over, the other
                    # masters keep serving theirs (Redis's default, yes, stops them all): what
                    # roomstate's deployments use (docs/operations.md).
                    "--cluster-require-full-coverage", "no",
                    *(("--tls-cluster", "yes") if tls else ()),
                    *extra_args,
                )  # fmt: skip
                servers.append(
                    RedisServer.launch(tmp_dir, port=port, extra_args=args, tls=tls, auth=auth)
                )
            for server in servers:
                server.wait_ready()
            create_argv = [
                cli,
                "--cluster", "create",
                *(s.address for s in servers),
                "--cluster-replicas", str(replicas_per_master),
                "--cluster-yes",
            ]  # fmt: skip
            if tls is not None:
                create_argv += ["--tls", "--cacert", str(tls.ca), "--cert", str(tls.client_cert),
                                "--key", str(tls.client_key)]  # fmt: skip
            if auth is not None:
                create_argv += ["--user", auth[0], "--pass", auth[1], "--no-auth-warning"]
            create = subprocess.run(
                create_argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
            (tmp_dir / "cluster-create.log").write_text(create.stdout + create.stderr)
            if create.returncode != 0:
                raise RuntimeError(
                    f"redis-cli --cluster create failed ({create.returncode}):\n"
                    f"{(create.stdout + create.stderr)[-2000:]}"
                )
            cluster = cls(tmp_dir, servers, masters, replicas_per_master)
            cluster.wait_ok(timeout)
        except BaseException:
            for server in servers:
                server.stop()
            raise
        return cluster

    @property
    def seeds(self) -> str:
        """`127.0.0.1:P1,127.0.0.1:P2,...`: every node, as a seed list for a cluster client."""
        return ",".join(s.address for s in self.servers)

    @property
    def ports(self) -> list[int]:
        return [s.port for s in self.servers]

    def cluster_info(self, server: RedisServer) -> dict[str, str]:
        """`CLUSTER INFO` of one node as a dict."""
        return _parse_info(server.command("CLUSTER", "INFO"))

    def _node_ok(self, server: RedisServer) -> bool:
        try:
            info = self.cluster_info(server)
            if not (
                info.get("cluster_state") == "ok"
                and info.get("cluster_slots_ok") == str(CLUSTER_SLOTS)
                and info.get("cluster_known_nodes") == str(len(self.servers))
            ):
                return False
            replication = server.info("replication")
            return replication.get("role") == "master" or (
                replication.get("master_link_status") == "up"
            )
        except (OSError, RedisReplyError):
            return False

    def _roles_agree(self, running: list[RedisServer]) -> bool:
        """Every running node's `CLUSTER NODES` gives each running node the role it has: gossip
        has spread who replicates whom (the masters must know it to vote in a failover)."""
        try:
            roles = {s.port: s.info("replication").get("role") for s in running}
            for server in running:
                view = {}
                for line in str(server.command("CLUSTER", "NODES")).splitlines():
                    fields = line.split()
                    port = int(fields[1].split("@")[0].rpartition(":")[2])
                    flags = fields[2].split(",")
                    view[port] = "slave" if "slave" in flags else "master"
                if any(view.get(port) != role for port, role in roles.items()):
                    return False
        except (OSError, RedisReplyError, IndexError, ValueError):
            return False
        return True

    def is_ok(self) -> bool:
        """Every running node: state ok, all slots served, knows every node and every running
        node's role; replicas in sync."""
        running = [s for s in self.servers if s.running and not s.paused]
        return (
            bool(running) and all(self._node_ok(s) for s in running) and self._roles_agree(running)
        )

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Wait until `is_ok()` (e.g. after a failover)."""
        wait_until(self.is_ok, timeout=timeout, what="cluster_state:ok on every node", interval=0.1)

    def master_servers(self) -> list[RedisServer]:
        """The running nodes that are masters now (after a failover, a former replica is one)."""
        result = []
        for server in self.servers:
            try:
                if server.running and server.info("replication").get("role") == "master":
                    result.append(server)
            except (OSError, RedisReplyError):
                pass
        return result

    def master_of(self, key: str) -> RedisServer:
        """The running master that serves `key`'s slot now (asked of any running master)."""
        for asked in self.master_servers():
            try:
                slot = int(asked.command("CLUSTER", "KEYSLOT", key))  # type: ignore[arg-type]
                ranges = asked.command("CLUSTER", "SLOTS")
            except (OSError, RedisReplyError):
                continue
            for start, end, owner, *_ in ranges or []:  # type: ignore[misc]
                if int(start) <= slot <= int(end):
                    port = int(owner[1])
                    return next(s for s in self.servers if s.port == port)
        raise RuntimeError(f"no running master serves {key!r}")

    def replicas_of(self, master: RedisServer) -> list[RedisServer]:
        """The running nodes that replicate `master`."""
        result = []
        for server in self.servers:
            try:
                replication = server.info("replication") if server.running else {}
            except (OSError, RedisReplyError):
                continue
            if replication.get("role") == "slave" and replication.get("master_port") == str(
                master.port
            ):
                result.append(server)
        return result

    def stop(self) -> None:
        """Stop every node and remove the cluster config files."""
        for server in self.servers:
            server.stop()
        for server in self.servers:
            (self.tmp_dir / f"nodes-{server.port}.conf").unlink(missing_ok=True)

    def detach(self) -> None:
        """Leave the nodes running when this Python process exits."""
        for server in self.servers:
            server.detach()

    def __enter__(self) -> RedisCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- Sentinel ---------------------------------------------------------------------------------


@dataclass(eq=False)
class RedisSentinels:
    """`redis-server --sentinel` processes watching one master under the name `name`.

    Each writes its config (Sentinel rewrites it), log and output in `tmp_dir`, named by port:
    `sentinel-P.conf`, `sentinel-P.log`, `sentinel-P.out`. With `tls` they listen on TLS only and
    reach the Redis servers over TLS; `auth` is the user and password they use with those
    servers (the Sentinels themselves ask for none).
    """

    tmp_dir: Path
    name: str
    ports: list[int]
    processes: list[ManagedProcess] = field(repr=False)
    tls: TlsFiles | None = None

    @classmethod
    def start(
        cls,
        tmp_dir: Path,
        master: RedisServer,
        *,
        count: int = 3,
        name: str = "roomstate",
        quorum: int = 2,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 10_000,
        auth: tuple[str, str] | None = None,
        replicas: int = 1,
        timeout: float = 30.0,
    ) -> RedisSentinels:
        """Start `count` Sentinels and wait until each knows the master's `replicas` replicas
        and the other Sentinels."""
        binary = find_binary("redis-server", "redis-server")
        tmp_dir = Path(tmp_dir)
        tmp_dir.mkdir(parents=True, exist_ok=True)
        tls = master.tls
        sentinels = cls(tmp_dir, name, [], [], tls)
        try:
            for _ in range(count):
                port = free_port()
                if tls is None:
                    listen = [f"port {port}"]
                else:
                    listen = [
                        "port 0",
                        f"tls-port {port}",
                        f"tls-cert-file {tls.cert}",
                        f"tls-key-file {tls.key}",
                        f"tls-ca-cert-file {tls.ca}",
                        "tls-auth-clients optional",
                        "tls-replication yes",  # TLS to the servers and the other Sentinels
                    ]
                lines = [
                    *listen,
                    f"bind {HOST}",
                    "daemonize no",
                    f"dir {tmp_dir}",
                    f"logfile sentinel-{port}.log",
                    f"sentinel monitor {name} {HOST} {master.port} {quorum}",
                    f"sentinel down-after-milliseconds {name} {down_after_ms}",
                    f"sentinel failover-timeout {name} {failover_timeout_ms}",
                    f"sentinel parallel-syncs {name} 1",
                ]
                if auth is not None:
                    lines += [f"sentinel auth-user {name} {auth[0]}",
                              f"sentinel auth-pass {name} {auth[1]}"]  # fmt: skip
                config = tmp_dir / f"sentinel-{port}.conf"
                config.write_text("\n".join(lines) + "\n")
                sentinels.ports.append(port)
                sentinels.processes.append(
                    ManagedProcess.spawn(
                        f"redis-sentinel:{port}",
                        [binary, str(config), "--sentinel"],
                        tmp_dir / f"sentinel-{port}.out",
                        cwd=tmp_dir,
                    )
                )
            for port, process in zip(sentinels.ports, sentinels.processes, strict=True):
                wait_until(
                    lambda port=port: sentinels._knows_all(port, count, replicas),  # type: ignore[misc]
                    timeout=timeout,
                    what=f"Sentinel {port} to know {replicas} replica(s) and {count - 1} Sentinels",
                    process=process,
                    interval=0.1,
                )
        except BaseException:
            sentinels.stop()
            raise
        return sentinels

    def command(self, port: int, *args: str | int, timeout: float = 2.0) -> RespValue:
        """One command to the Sentinel on `port`."""
        return redis_command(port, *args, timeout=timeout, tls=self.tls)

    def _knows_all(self, port: int, count: int, replicas: int) -> bool:
        try:
            reply = self.command(port, "SENTINEL", "MASTER", self.name)
        except (OSError, RedisReplyError):
            return False
        assert isinstance(reply, list)
        fields = dict(zip(reply[::2], reply[1::2], strict=True))
        return (
            int(str(fields.get("num-slaves", 0))) >= replicas
            and int(str(fields.get("num-other-sentinels", 0))) >= count - 1
        )

    @property
    def addresses(self) -> str:
        """`127.0.0.1:P1,127.0.0.1:P2,...`, for --redis-sentinel."""
        return ",".join(f"{HOST}:{port}" for port in self.ports)

    def master_port(self) -> int | None:
        """The master's port as the first Sentinel that answers names it."""
        for port, process in zip(self.ports, self.processes, strict=True):
            if not process.running:
                continue
            try:
                reply = self.command(port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.name)
            except (OSError, RedisReplyError):
                continue
            if isinstance(reply, list) and len(reply) == 2:
                return int(str(reply[1]))
        return None

    def failover(self) -> None:
        """`SENTINEL FAILOVER`: promote a replica without the master failing."""
        self.command(self.ports[0], "SENTINEL", "FAILOVER", self.name)

    def stop(self) -> None:
        for process in self.processes:
            process.stop()

    def detach(self) -> None:
        for process in self.processes:
            process.detach()

    def __enter__(self) -> RedisSentinels:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- haproxy ----------------------------------------------------------------------------------


def render_haproxy_config(
    template: str,
    *,
    frontend_port: int,
    backends: Iterable[tuple[str, int]],
    runtime_socket: Path,
    check_path: str = "/readyz",
    bind_host: str = HOST,
) -> str:
    """Fill the placeholders of deploy/haproxy.cfg (documented in its header).

    Backends are named node-1, node-2, ... in order.
    """
    lines = []
    for line in template.splitlines():
        if line.strip() == "{{servers}}":
            indent = line[: len(line) - len(line.lstrip())]
            lines += [
                f"{indent}server node-{i} {host}:{port} check"
                for i, (host, port) in enumerate(backends, 1)
            ]
        else:
            lines.append(line)
    text = "\n".join(lines) + "\n"
    values = {
        "bind_host": bind_host,
        "frontend_port": str(frontend_port),
        "check_path": check_path,
        "runtime_socket": str(runtime_socket),
    }
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    for line in text.splitlines():
        if "{{" in line and not line.lstrip().startswith("#"):  # comments document placeholders
            raise ValueError(f"haproxy template: unknown placeholder in {line.strip()!r}")
    return text


@dataclass(eq=False)
class Haproxy:
    """haproxy in the foreground (`-db`) in front of `backends`, from deploy/haproxy.cfg."""

    tmp_dir: Path
    port: int
    backends: list[tuple[str, int]]
    config: Path
    runtime_socket: Path
    process: ManagedProcess = field(repr=False)

    @classmethod
    def start(
        cls,
        tmp_dir: Path,
        backends: Sequence[tuple[str, int]],
        *,
        check_path: str = "/readyz",
        port: int | None = None,
        template: Path = HAPROXY_TEMPLATE,
        timeout: float = 10.0,
    ) -> Haproxy:
        """Render the config, start haproxy and wait until its frontend accepts connections.

        The backends' health is not awaited: haproxy counts them up until checks fail (see
        `wait_for_states`).
        """
        binary = find_binary("haproxy", "haproxy")
        tmp_dir = Path(tmp_dir)
        tmp_dir.mkdir(parents=True, exist_ok=True)
        port = port or free_port()
        runtime_socket = tmp_dir / f"haproxy-{port}.sock"
        if len(str(runtime_socket)) > 100:  # the limit of a Unix socket path is 108 bytes
            runtime_socket = Path("/tmp") / f"roomstate-haproxy-{os.getpid()}-{port}.sock"
        config = tmp_dir / f"haproxy-{port}.cfg"
        config.write_text(
            render_haproxy_config(
                template.read_text(),
                frontend_port=port,
                backends=backends,
                runtime_socket=runtime_socket,
                check_path=check_path,
            )
        )
        process = ManagedProcess.spawn(
            f"haproxy:{port}", [binary, "-f", str(config), "-db"], tmp_dir / f"haproxy-{port}.log"
        )
        lb = cls(tmp_dir, port, list(backends), config, runtime_socket, process)
        try:
            wait_until(
                lambda: port_accepts(port) and runtime_socket.exists(),
                timeout=timeout,
                what=f"haproxy to listen on port {port}",
                process=process,
            )
        except BaseException:
            lb.stop()
            raise
        return lb

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def server_names(self) -> list[str]:
        return [f"node-{i}" for i in range(1, len(self.backends) + 1)]

    def runtime_command(self, command: str, timeout: float = 2.0) -> str:
        """Send one command to the runtime API (e.g. `show stat`, `disable server nodes/node-1`)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.runtime_socket))
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    def server_states(self) -> dict[str, str]:
        """Each backend's check status by name: "UP", "DOWN", "UP 1/2" (going down), "MAINT"..."""
        lines = self.runtime_command("show stat").splitlines()
        if not lines or not lines[0].startswith("# "):
            raise RuntimeError(f"unexpected `show stat` reply: {lines[:2]}")
        header = lines[0][2:].split(",")
        rows = csv.DictReader(lines[1:], fieldnames=header)
        return {
            row["svname"]: row["status"]
            for row in rows
            if row["pxname"] == "nodes" and row["svname"] not in ("FRONTEND", "BACKEND")
        }

    def wait_for_states(
        self, expected: Mapping[str, str] | None = None, timeout: float = 10.0
    ) -> None:
        """Wait until the backends have the `expected` statuses (default: every one "UP")."""
        want = dict(expected) if expected is not None else dict.fromkeys(self.server_names, "UP")

        def reached() -> bool:
            try:
                states = self.server_states()
            except OSError:
                return False
            return all(states.get(name) == status for name, status in want.items())

        wait_until(reached, timeout=timeout, what=f"haproxy backends {want}", process=self.process)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, wait, then SIGKILL; removes the runtime socket."""
        self.process.stop(timeout)
        self.runtime_socket.unlink(missing_ok=True)

    def kill(self) -> None:
        self.process.kill()

    def detach(self) -> None:
        """Leave haproxy running when this Python process exits."""
        self.process.detach()

    def __enter__(self) -> Haproxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def slow_websocket_server(handshake_s: float) -> Iterator[str]:
    """A WebSocket endpoint that answers the opening handshake after `handshake_s` and then
    nothing: a join there gets no reply. Yields its ws:// URL."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stop, held = threading.Event(), []

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            held.append(conn)
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(4096)
            key = re.search(rb"Sec-WebSocket-Key: *(\S+)", request, re.I)
            assert key is not None
            guid = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
            accept = base64.b64encode(hashlib.sha1(key.group(1) + guid).digest())
            time.sleep(handshake_s)
            conn.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"ws://127.0.0.1:{listener.getsockname()[1]}/v1/rooms/slow/ws"
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        listener.close()


def run_command(argv: Sequence[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """`subprocess.run` with the output captured, except that a command that overruns `timeout`
    gets SIGTERM first (a bench stops the servers it started on it: they run in their own
    sessions, out of reach of a kill of the bench alone), SIGKILL 10 s later."""
    with subprocess.Popen(
        list(argv), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                out, err = proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, err = proc.communicate()
            raise subprocess.TimeoutExpired(list(argv), timeout, out, err) from None
    return subprocess.CompletedProcess(list(argv), proc.returncode, out, err)
