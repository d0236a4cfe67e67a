"""The orchestrator: start a system, start load generator processes, run open-loop steps,
measure CPU per process over each step's measured window, merge the generators' histograms.

One `Scenario` = one system (a roomstate topology, a peer, or a floor) with one shape
(rooms x participants, payload, kind of traffic). `ScenarioRun` starts it, connects the
participants once, then runs any number of steps (fixed rates, or a ramp) on the same
connections, and stops everything by PID.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.harness.common import (
    CPU_LATE_MS,
    cdf,
    cpu_stall_s,
    decode_hist,
    machine_cpu,
    machine_steal_s,
    proc_cpu_s,
    proc_rss_bytes,
    summarize,
)
from bench.harness.deploy import ROOT, Deployment, external, start_floor, start_topology
from bench.harness.peers import start_node_peer, start_peer
from roomstate.auth import make_token

P99_LIMIT_MS = 50.0  # a step passes with its p99 at most this (and no loss, no error)
# The reference loads of every run (10 rooms x 10: each app message has 9 deliveries)
REF_RATE = 1000.0  # msgs/s: the reference load (9,000 deliveries/s)
LIGHT_RATE = 100.0  # msgs/s: light load (900 deliveries/s)
RAMP_STEPS = 16  # a bound on rate steps (×1.3 from half the reference); a ramp stops at a failure
FLOOR_RECEIVERS = 99  # the 1 -> N floor's receivers
CORES = os.cpu_count() or 1
SATURATED_PCT = 90.0  # machine busy (of all cores) or one process (of one core) above this


def log(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)


@dataclass
class Scenario:
    label: str
    # a topology name (bench/harness/deploy.py), "peer" (python-socketio), "node-peer-streams" or
    # "node-peer-pubsub" (Node.js Socket.IO), "python-floor", "python-floor-rooms", "external"
    system: str
    participants: int = 10  # per room (floor: receivers)
    rooms: int = 10
    payload: int = 256
    kind: str = "app"  # app | userdata | session
    senders_per_room: int | None = None  # default: min(participants, 10); 1 for userdata/session
    env: dict[str, str] = field(default_factory=dict)  # ROOMSTATE_* for the nodes
    generators: int = 2
    active_nodes: int | None = None  # put the active rooms on the first N nodes only
    idle_rooms: int = 0  # rooms with 2 participants and no traffic, on the other nodes
    urls: tuple[str, ...] = ()  # system "external": the nodes' base URLs (bench/target.py)
    api_key: str | None = None  # "external": sign a meeting token per room with it


class GenProcess:
    """One `python -m bench.harness.loadgen` child (or another generator `module`): commands
    on stdin, JSON lines on stdout."""

    def __init__(
        self, index: int, config: dict[str, Any], tmp: Path, module: str = "bench.harness.loadgen"
    ) -> None:
        self.index = index
        path = tmp / f"gen-{index}-{time.monotonic_ns()}.json"
        path.write_text(json.dumps(config))
        self.stderr_path = path.with_suffix(".log")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with self.stderr_path.open("w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", module, str(path)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                cwd=ROOT,
                env=env,
            )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def read(self, key: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"generator {self.index}: no {key!r} in {timeout:.0f} s")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                tail = self.stderr_path.read_text(errors="replace")[-1500:]
                raise RuntimeError(f"generator {self.index} exited:\n{tail}")
            obj = json.loads(line)
            if "fatal" in obj:
                tail = self.stderr_path.read_text(errors="replace")[-1500:]
                raise RuntimeError(f"generator {self.index}: {obj['fatal']}\n{tail}")
            if key in obj:
                return obj

    def send(self, cmd: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.send({"cmd": "quit"})
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # by PID (Popen.kill)
            self.proc.wait(5)


def _sleep_until(t_ns: int) -> None:
    delay = (t_ns - time.monotonic_ns()) / 1e9
    if delay > 0:
        time.sleep(delay)


def _redis_stats(dep: Deployment) -> dict[str, int]:
    """Calls per command summed over the deployment's Redis servers (INFO commandstats)."""
    total: dict[str, int] = {}
    for server in dep.redis_servers():
        try:
            info = server.info("commandstats")
        except Exception:
            continue
        for key, value in info.items():
            if key.startswith("cmdstat_"):
                calls = int(value.split("calls=", 1)[1].split(",", 1)[0])
                total[key[8:]] = total.get(key[8:], 0) + calls
    return total


QUIET_PCT = 15.0  # other processes' CPU (% of one core) below which the machine counts as quiet
DISTURBED_PCT = 25.0  # a step in which other processes used, or the hypervisor stole, more than
# this (% of one core) is "disturbed"
# ... and so is one whose generators sent a message this late (ms) with the machine not saturated:
# the generator itself stalled (on this virtual machine, for tens of ms at 15 % busy at times),
# which is counted in latency (open loop) but says nothing about the system under test
GEN_STALL_MS = 10.0


def gc_pauses(dep: Deployment) -> list[tuple[float, float]]:
    """Per roomstate node: (seconds its garbage collector has paused it, full collections),
    read from its /metrics (``roomstate_gc_pause_seconds``); NaNs if it cannot be read."""
    out = []
    for base in dep.entries if dep.kind == "roomstate" else ():
        paused = full = math.nan
        try:
            with urllib.request.urlopen(f"{base}/metrics", timeout=2) as r:
                text = r.read().decode()
        except OSError:
            out.append((paused, full))
            continue
        paused = 0.0
        for line in text.splitlines():
            if line.startswith("roomstate_gc_pause_seconds_sum{"):
                paused += float(line.rsplit(" ", 1)[1])
            elif line.startswith('roomstate_gc_pause_seconds_count{generation="2"}'):
                full = float(line.rsplit(" ", 1)[1])
        out.append((paused, full))
    return out


def other_cpu_pct(our_pids: list[int], window_s: float = 0.5) -> float:
    """CPU used by processes that are not ours over `window_s`, in % of one core."""
    m0 = machine_cpu()
    c0 = sum(proc_cpu_s(p) for p in our_pids)
    time.sleep(window_s)
    m1 = machine_cpu()
    c1 = sum(proc_cpu_s(p) for p in our_pids)
    return max(0.0, (m1[0] - m0[0]) - (c1 - c0)) / window_s * 100


class QuietBudget:
    """How long, in all, a run may wait for other processes to quiet down (bounded)."""

    def __init__(self, seconds: float) -> None:
        self.left = seconds
        self.waited = 0.0

    def wait(self, our_pids: list[int], max_s: float) -> float:
        """Wait until the others' CPU is under QUIET_PCT, at most `max_s` and the budget;
        returns the last measured value."""
        started = time.monotonic()
        pct = other_cpu_pct(our_pids, 0.3)
        while pct > QUIET_PCT and time.monotonic() - started < min(max_s, self.left):
            pct = other_cpu_pct(our_pids, 0.5)
        spent = time.monotonic() - started
        self.left -= spent
        self.waited += spent
        return pct


QUIET = QuietBudget(0.0)  # the entry point sets the budget


class ScenarioRun:
    def __init__(self, scenario: Scenario, tmp: Path) -> None:
        self.sc = scenario
        self.tmp = tmp
        self.dep: Deployment | None = None
        self.gens: list[GenProcess] = []
        self.steps: list[dict[str, Any]] = []
        self.step_no = 0
        self.setup_s = 0.0
        self.info: dict[str, Any] = {}

    # -- lifecycle --

    def __enter__(self) -> ScenarioRun:
        started = time.monotonic()
        sc = self.sc
        if sc.system == "peer":
            self.dep = start_peer(self.tmp)
        elif sc.system.startswith("node-peer-"):
            self.dep = start_node_peer(self.tmp, sc.system.removeprefix("node-peer-"))
        elif sc.system == "python-floor":
            self.dep = start_floor(self.tmp)
        elif sc.system == "python-floor-rooms":
            self.dep = start_floor(self.tmp, rooms=True)
        elif sc.system == "python-floor-rooms-picows":  # the same shape on picows (callbacks)
            self.dep = start_floor(self.tmp, rooms=True, lib="picows")
        elif sc.system == "python-floor-rooms-direct":  # aiohttp, writing as the node does
            self.dep = start_floor(self.tmp, rooms=True, lib="direct")
        elif sc.system == "external":
            self.dep = external(list(sc.urls))
        else:
            self.dep = start_topology(sc.system, self.tmp, sc.env)
        try:
            configs = self._configs()
            self.gens = [GenProcess(i, c, self.tmp) for i, c in enumerate(configs)]
            connected = [g.read("ready", 180) for g in self.gens]
            self.info["connect_s"] = round(max(c["connect_s"] for c in connected), 2)
            time.sleep(0.5)
        except BaseException:
            self.__exit__()
            raise
        self.setup_s = time.monotonic() - started
        return self

    def __exit__(self, *exc: object) -> None:
        for g in self.gens:
            g.stop()
        self.gens = []
        if self.dep is not None:
            self.dep.stop()
            self.dep = None

    # -- participants --

    def _configs(self) -> list[dict[str, Any]]:
        sc, dep = self.sc, self.dep
        assert dep is not None
        nodes = len(dep.entries)
        tag = f"b{time.monotonic_ns() % 10**8}"
        people: list[dict[str, Any]] = []
        room_senders: dict[str, list[int]] = {}
        if dep.kind == "floor":
            room = f"{tag}-r0"
            for j in range(sc.participants):
                people.append(
                    {"gid": j, "room": room, "url": dep.ws_url(0, room), "node": 0, "recv": True,
                     "rank": None}
                )  # fmt: skip
            base = dep.entries[0].replace("http://", "ws://")
            people.append(
                {"gid": sc.participants, "room": room, "url": f"{base}/send", "node": 0,
                 "recv": False, "rank": 0}
            )  # fmt: skip
            room_senders[room] = [0]
            total_senders = 1
        else:
            per_room = 1  # userData / session data: one writer per room
            if sc.kind == "app":
                per_room = sc.senders_per_room or min(sc.participants, 10)
            per_room = min(per_room, sc.participants)
            total_senders = per_room * sc.rooms
            active = min(sc.active_nodes or nodes, nodes)
            gid = 0
            for r in range(sc.rooms):
                room = f"{tag}-r{r}"
                room_senders[room] = [j * sc.rooms + r for j in range(per_room)]
                token = None
                if sc.api_key:  # for joining at the start of the run: valid for an hour
                    token = make_token(sc.api_key, room, exp=int(time.time()) + 3600)
                for j in range(sc.participants):
                    node = (r + j) % active
                    rank = j * sc.rooms + r if j < per_room else None
                    people.append(
                        {"gid": gid, "room": room, "url": dep.ws_url(node, room), "node": node,
                         "recv": True, "rank": rank, "token": token}
                    )  # fmt: skip
                    gid += 1
            for r in range(sc.idle_rooms):
                room = f"{tag}-idle{r}"
                room_senders[room] = []
                for j in range(2):
                    node = active + (r + j) % max(1, nodes - active) if nodes > active else 0
                    people.append(
                        {"gid": gid, "room": room, "url": dep.ws_url(node, room), "node": node,
                         "recv": True, "rank": None}
                    )  # fmt: skip
                    gid += 1
        g = max(1, min(sc.generators, len(people)))
        configs = []
        for i in range(g):
            configs.append(
                {
                    "proto": dep.kind,
                    "kind": sc.kind,
                    "gen_index": i,
                    "payload": sc.payload,
                    "total_senders": total_senders,
                    "room_senders": room_senders,
                    "participants": [p for k, p in enumerate(people) if k % g == i],
                }
            )
        self.info["connections"] = len(people)
        self.info["senders"] = total_senders
        return configs

    # -- one step --

    def run_step(
        self,
        rate: float,
        *,
        warmup_s: float = 0.5,
        duration_s: float = 2.5,
        drain_s: float = 5.0,
        precise: bool = False,
        tag: str = "",
    ) -> dict[str, Any]:
        dep, sc = self.dep, self.sc
        assert dep is not None
        self.step_no += 1
        cmd = {
            "cmd": "run",
            "step": self.step_no,
            "t0": 0,
            "rate": rate,
            "warmup_s": warmup_s,
            "duration_s": duration_s,
            "drain_s": drain_s,
            "precise": precise,
        }
        groups = {
            "nodes": dep.node_pids(),
            "stores": dep.store_pids(),
            "gens": [g.pid for g in self.gens],
        }
        quiet_before = QUIET.wait([p for v in groups.values() for p in v] + [os.getpid()], 8.0)
        stats0 = _redis_stats(dep)
        t0 = time.monotonic_ns() + 300_000_000
        cmd["t0"] = t0
        for g in self.gens:
            g.send(cmd)
        tm0 = t0 + int(warmup_s * 1e9)
        tm1 = tm0 + int(duration_s * 1e9)
        # Before the window, in the warm-up: a scrape costs the node a little (not of nodes
        # run elsewhere: a slow or closed /metrics would eat into the window). The CPU is
        # read first thing in the window, which the generators count deliveries in.
        external = sc.system == "external"
        _sleep_until(max(t0, tm0 - 100_000_000))
        gc0 = [] if external else gc_pauses(dep)
        _sleep_until(tm0)
        cpu0 = {pid: proc_cpu_s(pid) for pids in groups.values() for pid in pids}
        m0, s0, w0 = machine_cpu(), cpu_stall_s(), time.monotonic_ns()
        cpu_late_ms = (w0 - tm0) / 1e6  # a slow scrape before it would shorten the CPU's window
        steal0 = machine_steal_s()
        me0 = proc_cpu_s(os.getpid())
        _sleep_until(tm1)
        cpu1 = {pid: proc_cpu_s(pid) for pids in groups.values() for pid in pids}
        m1, s1, w1 = machine_cpu(), cpu_stall_s(), time.monotonic_ns()
        steal1 = machine_steal_s()
        gc1 = [] if external else gc_pauses(dep)
        wall = (w1 - w0) / 1e9
        results = [
            g.read("result", warmup_s + duration_s + drain_s + 60)["result"] for g in self.gens
        ]
        stats1 = _redis_stats(dep)

        h_same, h_cross, h_send = (decode_hist(None) for _ in range(3))
        for r in results:
            h_same.add(decode_hist(r["hist_same"]))
            h_cross.add(decode_hist(r["hist_cross"]))
            h_send.add(decode_hist(r["hist_send"]))
        h_all = decode_hist(None)
        h_all.add(h_same)
        h_all.add(h_cross)

        def total(key: str) -> int:
            return sum(int(r[key]) for r in results)

        in_window = total("in_window")
        cpu_s = {name: [cpu1[p] - cpu0[p] for p in pids] for name, pids in groups.items()}
        cpu_pct = {name: [round(100 * c / wall, 1) for c in v] for name, v in cpu_s.items()}
        busy = (m1[0] - m0[0]) / max(m1[1] - m0[1], 1e-9) * 100  # of all cores
        ours = sum(sum(v) for v in cpu_s.values()) + (proc_cpu_s(os.getpid()) - me0)
        other_pct = max(0.0, (m1[0] - m0[0]) - ours) / wall * 100  # % of one core
        steal_pct = 100 * (steal1 - steal0) / wall

        def per_delivery(name: str) -> float | None:
            if not in_window or not cpu_s[name]:  # nothing delivered, or no such process here
                return None
            return round(1e6 * sum(cpu_s[name]) / in_window, 2)

        expected, unique = total("expected"), total("unique")
        lost = max(0, expected - unique)
        latency = summarize(h_all)
        errors = total("errors")
        closed = total("closed")
        saturated_procs = [
            f"{name}[{i}]"
            for name, values in cpu_pct.items()
            for i, v in enumerate(values)
            if v >= SATURATED_PCT
        ]
        p99 = latency["p99_ms"]
        ok = (
            p99 is not None
            and p99 <= P99_LIMIT_MS
            and lost == 0
            and total("dups") == 0
            and total("misrouted") == 0
            and errors == 0
            and closed == 0
        )
        if sc.kind != "app":
            ok = p99 is not None and lost == 0 and errors == 0 and total("misrouted") == 0
        sent = total("sent")
        max_late_ms = max(r["max_late_ms"] for r in results)
        gen_stalled = busy < SATURATED_PCT and max_late_ms > GEN_STALL_MS
        commands = {k: stats1.get(k, 0) - stats0.get(k, 0) for k in stats1}
        commands = {k: v for k, v in sorted(commands.items()) if v}
        result: dict[str, Any] = {
            "label": sc.label,
            "system": sc.system,
            "participants": sc.participants,
            "rooms": sc.rooms,
            "payload": sc.payload,
            "kind": sc.kind,
            "tag": tag,
            "step": self.step_no,
            "rate": rate,
            "precise": precise,
            "window_s": round(wall, 3),
            "sent": sent,
            "acks": total("acks"),
            "expected": expected,
            "unique": unique,
            "updates_received": total("updates_received"),
            "lost": lost,
            "dups": total("dups"),
            "misrouted": total("misrouted"),
            "errors": errors,
            "error_samples": [s for r in results for s in r["error_samples"]][:3],
            "closed": closed,
            "offered_deliveries_per_s": round(expected / (warmup_s + duration_s)),
            # (the generators count them over exactly [tm0, tm1))
            "deliveries_per_s": round(in_window * 1e9 / (tm1 - tm0)),
            "latency": latency,
            "same_node": summarize(h_same),
            "cross_node": summarize(h_cross),
            "from_send": summarize(h_send),
            "cdf": cdf(h_all),
            "max_late_ms": max_late_ms,
            "drain_ms": max(r["drain_ms"] for r in results),
            "cpu_pct": cpu_pct,
            "node_cpu_us_per_delivery": per_delivery("nodes"),
            "store_cpu_us_per_delivery": per_delivery("stores"),
            "gen_cpu_us_per_delivery": per_delivery("gens"),
            "machine_busy_pct": round(busy, 1),
            "other_cpu_pct": round(other_pct, 1),
            # the hypervisor's: this virtual machine wanted the CPU and did not get it. The
            # machine counts it as busy, so it overlaps the others' CPU, but not exactly (the
            # guest charges some of it to whichever process it interrupted)
            "steal_cpu_pct": round(steal_pct, 1),
            "cpu_stall_pct": round(100 * (s1 - s0) / wall, 1) if s1 == s1 else None,
            "saturated": busy >= SATURATED_PCT,
            # an external deployment on this machine shows up as "others": only a late
            # generator tells a disturbed step then
            "disturbed": disturbed(other_pct, steal_pct, external, gen_stalled)
            or cpu_late_ms > CPU_LATE_MS,
            "generator_stalled": gen_stalled,
            "cpu_window_late_ms": round(cpu_late_ms, 1),
            "other_cpu_pct_before": round(quiet_before, 1),
            "saturated_procs": saturated_procs,
            "node_rss_mb": [round(proc_rss_bytes(p) / 2**20, 1) for p in groups["nodes"]],
            # per node, over the window: ms its garbage collector paused it, full collections
            "gc_pause_ms": [round(1000 * (b[0] - a[0]), 1) for a, b in zip(gc0, gc1, strict=True)],
            "gc_full": [b[1] - a[1] for a, b in zip(gc0, gc1, strict=True)],
            "redis_calls": commands,
            "redis_calls_per_message": {k: round(v / sent, 3) for k, v in commands.items() if sent},
            "ok": ok,
        }
        self.steps.append(result)
        log(_one_line(result))
        return result

    def settle(self, max_s: float = 10.0) -> None:
        """After an overloaded step: wait until the nodes are idle again (bounded)."""
        assert self.dep is not None
        pids = self.dep.node_pids() + self.dep.store_pids()
        if not pids:  # nodes that run elsewhere: a short pause for their queues to drain
            time.sleep(2.0)
            return
        deadline = time.monotonic() + max_s
        while time.monotonic() < deadline:
            c0 = sum(proc_cpu_s(p) for p in pids)
            time.sleep(0.3)
            if sum(proc_cpu_s(p) for p in pids) - c0 < 0.3 * 0.15 * len(pids):
                return

    def ramp(
        self,
        start: float,
        factor: float = 1.3,
        max_steps: int = 16,
        refine: int = 1,
        **step_args: Any,
    ) -> dict[str, Any] | None:
        """Raise the rate by `factor` until a step fails twice in a row (p99 > 50 ms, loss,
        errors), then bisect `refine` times between the last pass and the first failure.
        Returns the passing step with the highest rate (None if even `start` failed), marked
        `capped` when `max_steps` ran out before any step failed: the knee is then only a lower
        bound (a faster machine than the bound was sized for)."""
        best: dict[str, Any] | None = None
        bad: dict[str, Any] | None = None
        rate = start
        for _ in range(max_steps):
            r = self.run_step(rate, tag="ramp", **step_args)
            if not r["ok"] and not r["closed"]:
                # Once more before calling it a failure: a stall of another process on this
                # 2-core machine, or one GC pause, should not end a ramp.
                self.settle()
                r["retried"] = True
                r = self.run_step(rate, tag="ramp", **step_args)
            if r["closed"]:
                bad = r
                break
            if r["ok"]:
                best = r
                rate = rate * factor
            else:
                bad = r
                break
        if best is None and bad is not None and not bad["closed"]:
            for lower in (start / 2, start / 4, start / 8):  # even the start failed: go down
                self.settle()
                r = self.run_step(round(lower), tag="ramp", **step_args)
                if r["ok"]:
                    best = r
                    break
                if r["closed"]:
                    break
        for _ in range(refine):
            if best is None or bad is None or bad["closed"]:
                break
            self.settle()
            mid = round((best["rate"] + bad["rate"]) / 2)
            if mid <= best["rate"] or mid >= bad["rate"]:
                break
            r = self.run_step(mid, tag="ramp", **step_args)
            if r["ok"]:
                best = r
            else:
                bad = r
        if best is not None:
            best["knee"] = True
            best["capped"] = bad is None
            if bad is None:
                log(
                    f"  ramp capped after {max_steps} passing steps: the knee is above "
                    f"{best['rate']:.0f} msgs/s"
                )
        return best


def disturbed(other_pct: float, steal_pct: float, external: bool, gen_stalled: bool) -> bool:
    """Whether a step measured the machine more than the system: other processes took more than
    `DISTURBED_PCT` of a core (not judged for an external deployment, whose nodes may be these
    very "others"), the hypervisor stole as much, or a generator stalled."""
    return (other_pct > DISTURBED_PCT and not external) or steal_pct > DISTURBED_PCT or gen_stalled


def _steal(r: dict[str, Any]) -> str:
    """ ", steal N%" when the hypervisor took CPU from this machine during the step."""
    steal = r.get("steal_cpu_pct")  # absent in steps recorded before it was
    return f", steal {steal}%" if steal else ""


def _one_line(r: dict[str, Any]) -> str:
    lat = r["latency"]
    cross = r["cross_node"]
    return (
        f"  {r['label']:<40} rate {r['rate']:>7.0f}/s  deliv {r['deliveries_per_s']:>7}/s  "
        f"p50 {lat['p50_ms']}  p99 {lat['p99_ms']}  max {lat['max_ms']} ms  "
        f"x-node p50 {cross['p50_ms']}  lost {r['lost']} dup {r['dups']} err {r['errors']}  "
        f"node {r['cpu_pct']['nodes']}% store {r['cpu_pct']['stores']}% "
        f"gens {r['cpu_pct']['gens']}%  "
        f"{r['node_cpu_us_per_delivery']} us/deliv  "
        + (f"gc {r['gc_pause_ms']} ms ({r['gc_full']} full)  " if r.get("gc_pause_ms") else "")
        + f"busy {r['machine_busy_pct']}% "
        f"(others {r['other_cpu_pct']}%{_steal(r)})  {'OK' if r['ok'] else 'FAIL'}"
    )


def geometric(start: float, factor: float, n: int) -> list[float]:
    return [round(start * factor**i) for i in range(n)]


def ceil_div(a: int, b: int) -> int:
    return math.ceil(a / b)


def run_redis_floor(tmp: Path, rate: float = 1000, seconds: float = 3.0) -> dict[str, Any]:
    """Raw redis-py XADD -> XREAD BLOCK one-way latency on a fresh redis-server."""
    from deploy.local.servers import RedisServer

    count = int(rate * seconds)
    redis = RedisServer.start(tmp)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    reader = writer = None
    try:
        QUIET.wait([redis.pid, os.getpid()], 8.0)
        argv = [sys.executable, "-m", "bench.systems.redis_floor"]
        stream = "bench:floor"
        reader = subprocess.Popen(
            [*argv, "read", redis.url, stream, str(count)],
            stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env,
        )  # fmt: skip
        assert reader.stdout is not None
        if "ready" not in reader.stdout.readline():
            raise RuntimeError("redis floor reader did not start")
        t0 = time.monotonic_ns() + 300_000_000
        writer = subprocess.Popen(
            [*argv, "write", redis.url, stream, str(rate), str(count), str(t0)], cwd=ROOT, env=env
        )
        cpu0 = proc_cpu_s(redis.pid)
        writer.wait(seconds + 30)
        line = reader.stdout.readline()
        reader.wait(30)
        cpu = proc_cpu_s(redis.pid) - cpu0
        result = json.loads(line)["result"]
        result.update(
            label="redis-floor", system="redis-floor", rate=rate, sent=count,
            lost=count - result["received"], redis_cpu_us_per_message=round(1e6 * cpu / count, 2),
        )  # fmt: skip
        log(
            f"  redis floor {rate:.0f}/s: from send p50 {result['from_send']['p50_ms']} "
            f"p99 {result['from_send']['p99_ms']} ms; from schedule p50 "
            f"{result['from_sched']['p50_ms']} p99 {result['from_sched']['p99_ms']} ms; "
            f"lost {result['lost']}"
        )
        return result
    finally:
        for proc in (writer, reader):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(5)
        redis.stop()


def idle_memory(
    tmp: Path, system: str, connections: int = 5000, per_room: int = 10
) -> dict[str, Any]:
    """Node RSS growth per idle joined connection."""
    sc = Scenario(f"idle {connections}", system, participants=per_room,
                  rooms=connections // per_room, senders_per_room=1)  # fmt: skip
    dep = None
    run = ScenarioRun(sc, tmp)
    from bench.harness.deploy import start_topology

    dep = start_topology(system, tmp, sc.env)
    try:
        time.sleep(1.0)
        before = [proc_rss_bytes(p) for p in dep.node_pids()]
        run.dep = dep
        configs = run._configs()
        gens = [GenProcess(i, c, tmp) for i, c in enumerate(configs)]
        run.gens = gens
        ready = [g.read("ready", 300) for g in gens]
        time.sleep(2.0)
        after = [proc_rss_bytes(p) for p in dep.node_pids()]
        grown = sum(after) - sum(before)
        result = {
            "label": sc.label, "system": system, "connections": connections,
            "rooms": sc.rooms, "node_rss_before_mb": [round(b / 2**20, 1) for b in before],
            "node_rss_after_mb": [round(a / 2**20, 1) for a in after],
            "kb_per_connection": round(grown / connections / 1024, 1),
            "connect_s": round(max(r["connect_s"] for r in ready), 1),
        }  # fmt: skip
        log(f"  idle memory: {result}")
        return result
    finally:
        run.dep = None
        for g in run.gens:
            g.stop()
        dep.stop()
