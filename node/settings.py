"""Node settings: one frozen dataclass, read from ``ROOMSTATE_*`` environment variables.

`Settings.from_env` is the only place that reads the environment; the CLI layers its options on
top (an option given on the command line wins over the environment). Any setting can also be read
from a file, as Docker and Kubernetes hand out secrets: ``ROOMSTATE_<FIELD>_FILE`` names the file,
whose content (without surrounding whitespace) is the value.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from roomstate.crdt import CrdtError
from roomstate.crdt.hlc import check_node_id
from roomstate.webhooks.events import decode_secret, parse_types

__all__ = ["Settings"]


@dataclass(frozen=True)
class Settings:
    # Network
    host: str = "127.0.0.1"  # address to listen on; without an API key only loopback is allowed
    port: int = 8080  # TCP port (0: pick a free one)
    api_key: str | None = None  # REST bearer key and token signing key; None: development mode
    redis: str | None = None  # redis[s]://[USER:PASSWORD@]HOST:PORT/DB; None: in-memory bus
    redis_cluster: str | None = None  # HOST:PORT[,HOST:PORT...] seed nodes of a Redis Cluster
    node_id: str | None = None  # this node's id in stamps and membership; None: derived
    allowed_origins: tuple[str, ...] = ()  # WebSocket Origin allowlist; empty: any origin

    # Redis access (for a standalone Redis, a Cluster and Sentinel alike)
    redis_sentinel: str | None = None  # HOST:PORT[,HOST:PORT...] Sentinels that name the master
    redis_sentinel_master: str | None = None  # the master's name at the Sentinels
    redis_sentinel_username: str | None = None  # the Sentinels' own ACL user; None: default
    redis_sentinel_password: str | None = None  # the Sentinels' own password; None: none
    redis_username: str | None = None  # ACL user (unless the URL names one); None: default
    redis_password: str | None = None  # its password (unless the URL has one); None: none
    redis_tls: bool = False  # TLS to Redis (rediss:// or a TLS file below implies it)
    redis_tls_ca: str | None = None  # PEM file of the CA Redis's certificate is checked against
    redis_tls_cert: str | None = None  # PEM file: the node's client certificate (mutual TLS)
    redis_tls_key: str | None = None  # PEM file: that certificate's private key

    # Limits
    app_message_bytes: int = 4096  # app message data, bytes of compact JSON
    user_data_bytes: int = 4096  # one participant's userData, bytes of compact JSON
    session_data_bytes: int = 102_400  # the whole meeting session data, bytes of compact JSON
    frame_bytes: int = 128 * 1024  # largest WebSocket frame; bigger ones close with 1009
    max_depth: int = 32  # deepest JSON nesting in a frame
    send_queue_bytes: int = 1024 * 1024  # a connection whose unsent frames pass this is closed
    rate_per_s: float = 100.0  # requests per second per connection (token bucket refill)
    rate_burst: int = 200  # requests a connection may send at once (token bucket size)
    max_headers: int = 100  # HTTP request header lines; more: 400 before any handler runs
    roster_page_bytes: int = 1 << 20  # a larger roster in `joined` comes in pages of this

    # Load (a node over its capacity sheds new joins with a retryable refusal)
    max_loop_lag_ms: int = 500  # event-loop lag (ms) over which new joins are shed
    max_joins_in_flight: int = 200  # joins under way (not yet stored) past which joins are shed
    loop_stuck_s: float = 30.0  # event loop silent this long (s): stuck, the lease is let go

    # Participants
    default_has_presence: bool = True  # tokenless joins (development mode): False joins hidden

    # Timeouts
    user_data_interval_ms: int = 100  # at most one participant-updated per participant per this
    session_data_interval_ms: int = 1000  # at most one session-state event per room per this
    counts_interval_ms: int = 1000  # at most one participant-counts-updated per room per this
    membership_batch_ms: int = 50  # a storm's participant events: one batch per room per this
    room_grace_s: float = 30.0  # an empty room's state is dropped after this
    resume_grace_s: float = 15.0  # a dropped participant may resume this long; 0: leave at once
    heartbeat_s: float = 20.0  # WebSocket ping interval; no pong within half of it: closed
    handshake_timeout_s: float = 10.0  # a connection without a whole request by then is cut off
    max_drift_ms: int = 500  # a clock further from the store's refuses stamped writes (ms)
    # removals are forgotten after this (s); a node out of touch with the store for half of
    # it fences (docs/crdt.md, "Forgetting removals")
    tombstone_keep_s: float = 120.0

    # Process
    # Python's gc.set_threshold: young collections after 10,000 more live objects (not 700);
    # the older generations at Python's own pace (docs/decisions/0005); "python": Python's own
    gc_thresholds: str = "10000,10,10"
    # a directory: trace allocations; each SIGUSR2 appends the sites that grew to a file there
    # (roomstate.memtrace; slower and bigger, for diagnosis only); "": off
    tracemalloc_dir: str = ""
    # node processes sharing the port (SO_REUSEPORT), each a node of its own, under one
    # supervisor ("auto": one per core); 1: this process is the node. More need a Redis bus
    workers: int = 1

    # Webhooks (docs/webhooks.md): room events POSTed to backends, signed
    webhook_url: str = ""  # URL[,URL...] every event is sent to; "": no webhooks
    webhook_secret: str | None = None  # base64 HMAC key of X-Webhook-Signature (16+ bytes)
    webhook_types: str = ""  # TYPE[,TYPE...] sent; "" or "*": all
    webhook_timeout_s: float = 10.0  # a receiver's answer is awaited this long per request
    webhook_retry_s: float = 600.0  # an event is retried this long, then dead-lettered
    webhook_claim_s: float = 30.0  # a dead node's pending events are taken over after this
    webhook_concurrency: int = 8  # requests in flight per node (a room's events go in order)

    # Fault injection (tests)
    clock_offset_ms: int = 0  # added to this node's wall clock (ms): a skewed clock, for tests

    def __post_init__(self) -> None:
        # A bad value stops the node at start, with its name and the rule it breaks.
        self.gc_threshold_values()
        for name, (low, high, low_excluded) in _RANGES.items():
            value = getattr(self, name)
            if value < low or (low_excluded and value == low):
                rule = f"more than {low}" if low_excluded else f"at least {low}"
            elif high is not None and value > high:
                rule = f"at most {high}"
            else:
                continue
            shown = f"{value:g}" if isinstance(value, float) else value
            raise ValueError(f"ROOMSTATE_{name.upper()}={shown} is out of range: must be {rule}")
        if self.node_id is not None:
            try:
                check_node_id(self.node_id)
            except CrdtError as exc:
                raise ValueError(f"ROOMSTATE_NODE_ID / --node-id: {exc}") from None
        self._check_workers()
        if self.api_key is not None and (not self.api_key or self.api_key != self.api_key.strip()):
            # "" is no key, but it is not development mode either: REST would take an empty
            # bearer, and tokens cannot be signed with it
            raise ValueError(
                "ROOMSTATE_API_KEY / --api-key: an API key must not be empty or start or end"
                " with a space (leave it unset for development mode)"
            )
        self._check_redis_access()
        if self.webhook_url and not self.webhook_secret:
            raise ValueError(
                "ROOMSTATE_WEBHOOK_URL is set without ROOMSTATE_WEBHOOK_SECRET: webhooks are"
                " signed (a base64 key; ROOMSTATE_WEBHOOK_SECRET_FILE reads it from a file)"
            )
        if self.webhook_url:
            decode_secret(self.webhook_secret or "")  # (each raises naming its variable)
            parse_types(self.webhook_types)
            if self.webhook_claim_s <= self.webhook_timeout_s:
                raise ValueError(
                    f"ROOMSTATE_WEBHOOK_CLAIM_S={self.webhook_claim_s:g} must be more than"
                    f" ROOMSTATE_WEBHOOK_TIMEOUT_S={self.webhook_timeout_s:g}: a node still"
                    " waiting for a receiver would have its delivery taken over"
                )

    def _check_redis_access(self) -> None:
        url = urlsplit(self.redis) if self.redis is not None else None
        if url is not None and url.scheme not in ("redis", "rediss"):
            # the node's own connections (bus/redis/resp.py) speak TCP, not Unix sockets
            raise ValueError(
                f"ROOMSTATE_REDIS={self.redis!r}: only redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]"
                " and rediss:// (TLS) URLs are supported (no unix://)"
            )
        if self.redis_sentinel and (self.redis or self.redis_cluster):
            raise ValueError(
                "ROOMSTATE_REDIS_SENTINEL is set with ROOMSTATE_REDIS or ROOMSTATE_REDIS_CLUSTER:"
                " give one way to reach Redis (the Sentinels name the master)"
            )
        if bool(self.redis_sentinel) != bool(self.redis_sentinel_master):
            raise ValueError(
                "ROOMSTATE_REDIS_SENTINEL and ROOMSTATE_REDIS_SENTINEL_MASTER go together: the"
                " Sentinels' addresses and the name of the master they watch"
            )
        if bool(self.redis_tls_cert) != bool(self.redis_tls_key):
            raise ValueError(
                "ROOMSTATE_REDIS_TLS_CERT and ROOMSTATE_REDIS_TLS_KEY go together: a client"
                " certificate and its private key"
            )
        if url is not None and url.scheme == "redis" and self.redis_tls_on:
            raise ValueError(
                f"ROOMSTATE_REDIS={self.redis!r} is a plain redis:// URL but TLS is asked for"
                " (ROOMSTATE_REDIS_TLS*): use rediss://"
            )
        if (
            url is not None
            and (url.username or url.password)
            and (self.redis_username is not None or self.redis_password is not None)
        ):
            raise ValueError(
                "ROOMSTATE_REDIS has a user or password and ROOMSTATE_REDIS_USERNAME or"
                " ROOMSTATE_REDIS_PASSWORD is set too: give the credentials once"
            )

    @property
    def redis_tls_on(self) -> bool:
        """Whether the node reaches Redis (and the Sentinels) over TLS."""
        files = (self.redis_tls_ca, self.redis_tls_cert, self.redis_tls_key)
        rediss = self.redis is not None and self.redis.startswith("rediss://")
        return self.redis_tls or rediss or any(files)

    def _check_workers(self) -> None:
        if self.workers == 1:
            return
        if not (self.redis or self.redis_cluster or self.redis_sentinel):
            raise ValueError(
                f"ROOMSTATE_WORKERS={self.workers}: more than one worker needs a Redis bus"
                " (--redis, --redis-cluster or --redis-sentinel): worker processes share no"
                " memory, so on the in-memory bus each would hold rooms of its own"
            )
        if self.node_id is not None:
            try:
                check_node_id(f"{self.node_id}-w{self.workers - 1}")
            except CrdtError as exc:
                raise ValueError(
                    f"ROOMSTATE_NODE_ID / --node-id with {self.workers} workers: each worker's"
                    f" id is the node id and -w<index>: {exc}"
                ) from None

    def gc_threshold_values(self) -> tuple[int, int, int] | None:
        """`gc_thresholds` as the three integers of `gc.set_threshold`; None: Python's own."""
        if self.gc_thresholds.strip().lower() in ("", "python"):
            return None
        parts = self.gc_thresholds.split(",")
        try:
            values = tuple(int(p) for p in parts)
        except ValueError:
            values = ()
        if len(values) != 3 or min(values) < 1:
            raise ValueError(
                f"ROOMSTATE_GC_THRESHOLDS={self.gc_thresholds!r} is not three positive integers"
                " (generation 0, 1, 2 thresholds, e.g. 10000,10,10), or python"
            )
        return values[0], values[1], values[2]

    @property
    def webhook_urls(self) -> tuple[str, ...]:
        """The receivers of webhooks (none: webhooks off)."""
        return tuple(url.strip() for url in self.webhook_url.split(",") if url.strip())

    @property
    def development(self) -> bool:
        """No API key: anonymous joins, open REST, loopback only."""
        return self.api_key is None

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: Any) -> Settings:
        """Settings from ``ROOMSTATE_<FIELD>`` variables, then `overrides` (None = not given)."""
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            variable = f"ROOMSTATE_{f.name.upper()}"
            raw = environ.get(variable)
            if environ.get(f"{variable}_FILE"):
                if raw:
                    raise ValueError(f"{variable} and {variable}_FILE are both set: give one")
                raw = _read_file(f"{variable}_FILE", environ[f"{variable}_FILE"])
            if raw is not None and raw != "":
                values[f.name] = _convert(f.name, raw, f.default)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


# The range of each numeric setting: (lowest, highest or None, whether the lowest is excluded).
_RANGES: dict[str, tuple[float, float | None, bool]] = {
    "port": (0, 65535, False),  # 0: the system picks a free one
    "workers": (1, None, False),
    **dict.fromkeys(
        (
            "app_message_bytes",
            "user_data_bytes",
            "session_data_bytes",
            "frame_bytes",  # (aiohttp takes a limit of 0 as none)
            "max_depth",
            "send_queue_bytes",
            "rate_burst",
            "max_headers",
            "roster_page_bytes",
        ),
        (1, None, False),
    ),
    **dict.fromkeys(("rate_per_s", "heartbeat_s", "handshake_timeout_s"), (0, None, True)),
    **dict.fromkeys(("max_loop_lag_ms", "max_joins_in_flight"), (1, None, False)),
    **dict.fromkeys(("webhook_timeout_s", "webhook_claim_s"), (0, None, True)),
    "webhook_retry_s": (0, None, False),  # 0: one attempt
    "webhook_concurrency": (1, None, False),
    # well above any lag load makes: below the lease TTL a busy node would be let go of
    "loop_stuck_s": (10, None, False),
    # half of it must span two lease renewals (1 s each), or a healthy node would fence
    "tombstone_keep_s": (4, None, False),
    # 0: no batching, no resume, an empty room's state dropped at once
    **dict.fromkeys(
        (
            "user_data_interval_ms",
            "session_data_interval_ms",
            "counts_interval_ms",
            "membership_batch_ms",
            "room_grace_s",
            "resume_grace_s",
            "max_drift_ms",
        ),
        (0, None, False),
    ),
}


def _read_file(variable: str, path: str) -> str:
    """A setting's value from the file `variable` names (a secret mounted by Docker or k8s)."""
    try:
        value = Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{variable}={path!r}: cannot read the file: {exc}") from None
    if not value:
        raise ValueError(f"{variable}={path!r}: the file is empty")
    return value


_BOOLEANS = {"1": True, "true": True, "yes": True, "on": True}
_BOOLEANS.update({"0": False, "false": False, "no": False, "off": False})


def _convert(name: str, raw: str, default: Any) -> Any:
    variable = f"ROOMSTATE_{name.upper()}={raw!r}"
    if name == "allowed_origins":
        return tuple(origin.strip() for origin in raw.split(",") if origin.strip())
    if name == "workers" and raw.strip().lower() == "auto":
        return os.cpu_count() or 1
    if isinstance(default, bool):
        if raw.lower() not in _BOOLEANS:
            raise ValueError(f"{variable} is not a boolean (true or false)")
        return _BOOLEANS[raw.lower()]
    if not isinstance(default, int | float):
        return raw
    try:
        value = int(raw) if isinstance(default, int) else float(raw)
    except ValueError:
        raise ValueError(f"{variable} is not a valid {type(default).__name__}") from None
    # "inf" and "nan" are floats, but no setting means them
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{variable} is not a finite number")
    return value
