"""Large rooms: one room of P present and H hidden participants (Daily's `hasPresence: false`) over
2 nodes and Redis, driven through a webinar's phases; what each phase costs and whether every
client's view comes right.

    python -m bench webinar           # webinar 2,500 / 5,000 / 10,000; all present 1,000-4,000
    python -m bench webinar --quick   # webinar 1,000; all present 500 and 1,000 (under 3 min)
    python -m bench webinar --sizes 400 --present 4 --rate 200   # one webinar shape
    python -m bench webinar --sizes 2000 --all-present           # one all-present shape (50/s)

Phases, each timed from its first scheduled action until every client's view is right (or a
timeout): a join storm at R joins/s (clients spread over both nodes; a refusal `unavailable` is
retried after its retryAfter, counted apart), hand raises (a share of the hidden set userData
`{"hand": true}`; both owners must see every hand, nobody else any), broadcasts (a host's app
message to "*", several per second), session data (a host's shallow-merge writes, seen by all),
a leave storm (everyone but the hosts, at R/s). A view is right when its participant counts, its
roster of present participants and its session data are the run's (bench.harness.webinar_view).
Per phase: node, Redis and load generator CPU; p50/p99 latency (join: join to `joined`; hands: to
the owners; broadcast and session data: to each client; leave: to its ack); every error frame,
unexpected close (4002 fencing, 1008) and leak counted.

The webinar shape keeps 1 % of the room present (2 owners among them) so that doubling N doubles
both; the growth exponent of node CPU per phase is the slope of log(CPU) on log(N). The load
generators run on the same cores as the nodes and Redis: their CPU is reported beside the nodes'
so a reader sees when the clients were the limit. Results: bench/out/webinar[-quick].{json,md}.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from bench.harness.common import decode_hist, proc_cpu_s, summarize
from bench.harness.deploy import Deployment, start_topology
from bench.harness.machine import machine
from bench.harness.report import OUT
from bench.harness.runner import GenProcess, log
from bench.harness.webinar_report import write as write_report
from bench.harness.webinar_view import combine, merge, trouble

API_KEY = "bench-webinar-key-" + "k" * 24
GEN_MODULE = "bench.harness.webinar_gen"
CLIENTS_PER_GEN = 2500  # load generator processes: one per this many clients, at least 2


@dataclass(frozen=True)
class Shape:
    label: str
    present: int  # present participants, the hosts among them
    hidden: int
    join_rate: float  # joins/s (and leaves/s)
    hosts: int = 2  # owners (token `o: true`), present, one per node
    hand_share: float = 0.1  # of the hidden: raise a hand
    hand_rate: float = 200.0  # hand raises/s
    bcast_rate: float = 5.0  # a host's app messages to "*" per second
    bcasts: int = 20
    session_rate: float = 2.0  # a host's session data writes per second
    sessions: int = 6
    timeout_s: float = 60.0  # a phase's view check gives up this long after its last action

    @property
    def total(self) -> int:
        return self.present + self.hidden


def webinar(n: int, rate: float = 200.0, **kw: Any) -> Shape:
    present = max(2, n // 100)
    return Shape(f"webinar {n:,} ({present} present)", present, n - present, rate, **kw)


def all_present(n: int, rate: float = 50.0, **kw: Any) -> Shape:
    return Shape(f"all present {n:,}", n, 0, rate, **kw)


def token(room: str, role: str) -> str:
    """A meeting token for a role: host (owner), present, hidden (`p: {"hp": false}`)."""
    from roomstate.auth import make_token

    exp = int(time.time()) + 7200
    if role != "hidden":
        return make_token(API_KEY, room, owner=role == "host", exp=exp)
    try:
        return make_token(API_KEY, room, exp=exp, has_presence=False)
    except TypeError:  # the node's auth before hidden participants: sign the claim directly
        import jwt

        return jwt.encode({"r": room, "o": False, "p": {"hp": False}, "exp": exp}, API_KEY,
                          algorithm="HS256")  # fmt: skip


def roles(shape: Shape) -> list[str]:
    """Each client's role in join order: the hosts first, the other present participants spread
    evenly among the hidden (the counts change all through the storm)."""
    others = shape.present - shape.hosts
    rest = shape.total - shape.hosts
    out = ["host"] * shape.hosts
    placed = 0
    for i in range(rest):
        due = (i + 1) * others // rest if rest else 0
        if due > placed:
            out.append("present")
            placed += 1
        else:
            out.append("hidden")
    return out


class WebinarRun:
    """One shape on a fresh deployment: its generators, its phases."""

    def __init__(self, shape: Shape, tmp: Path) -> None:
        self.shape = shape
        self.tmp = tmp
        self.dep: Deployment | None = None
        self.gens: list[GenProcess] = []
        self.roles = roles(shape)
        self.phases: list[dict[str, Any]] = []
        self.joined: list[dict[str, Any]] = []

    def __enter__(self) -> WebinarRun:
        env = {"ROOMSTATE_API_KEY": API_KEY}
        self.dep = start_topology("2-nodes-redis", self.tmp, env)
        room = f"web{time.monotonic_ns() % 10**8}"
        tokens = {role: token(room, role) for role in ("host", "present", "hidden")}
        g = max(2, -(-self.shape.total // CLIENTS_PER_GEN))
        configs: list[dict[str, Any]] = [{"gen_index": i, "clients": []} for i in range(g)]
        for gid, role in enumerate(self.roles):
            node = gid % 2
            configs[gid % g]["clients"].append(
                {"gid": gid, "url": self.dep.ws_url(node, room), "node": node, "role": role,
                 "token": tokens[role]}
            )  # fmt: skip
        try:
            self.gens = [GenProcess(i, c, self.tmp, GEN_MODULE) for i, c in enumerate(configs)]
            for gen in self.gens:
                gen.read("ready", 60)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for gen in self.gens:
            gen.stop()
        self.gens = []
        if self.dep is not None:
            self.dep.stop()

    def _cpu(self) -> dict[str, list[float]]:
        assert self.dep is not None
        return {
            "nodes": [proc_cpu_s(p) for p in self.dep.node_pids()],
            "redis": [proc_cpu_s(p) for p in self.dep.store_pids()],
            "gens": [proc_cpu_s(g.pid) for g in self.gens],
        }

    def phase(self, name: str, what: str, gids: list[int], rate: float,
              expect: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
        """Run one phase: `gids` do `what` at `rate`/s in this order, then every client's view is
        awaited against `expect` (filled in from the join's answers)."""
        g = len(self.gens)
        slots: list[list[list[int]]] = [[] for _ in range(g)]
        for slot, gid in enumerate(gids):
            slots[gid % g].append([gid, slot])
        last_action_s = (len(gids) - 1) / rate if gids else 0.0  # the last one's slot
        t0 = time.monotonic_ns() + 300_000_000
        cpu0, w0 = self._cpu(), time.monotonic_ns()
        for gen, mine in zip(self.gens, slots, strict=True):
            gen.send({"cmd": "act", "what": what, "t0": t0, "rate": rate, "slots": mine})
        limit = last_action_s + self.shape.timeout_s + 200
        acted = [gen.read("acted", limit)["acted"] for gen in self.gens]
        if what == "join":
            self.joined = acted
        expect = self._expect(expect)
        for gen in self.gens:
            gen.send({"cmd": "await", "expect": expect, "timeout_s": self.shape.timeout_s})
        awaited = [gen.read("awaited", self.shape.timeout_s + 60)["awaited"] for gen in self.gens]
        cpu1, w1 = self._cpu(), time.monotonic_ns()
        tallies = []
        for gen in self.gens:
            gen.send({"cmd": "tally"})
            tallies.append(gen.read("tally", 60)["tally"])
        hist = decode_hist(None)
        for t in tallies:
            hist.add(decode_hist(t.pop("hist")))
        totals = merge(tallies)
        window = (w1 - w0) / 1e9
        cpu = {k: [round(b - a, 3) for a, b in zip(cpu0[k], cpu1[k], strict=True)] for k in cpu0}
        views = sum(a["views"] for a in awaited)
        ok = sum(a["converged"] for a in awaited)
        last = max((a["last_change_ns"] for a in awaited), default=0)
        record = {
            "phase": name, "actions": len(gids), "rate": rate,
            "scheduled_s": round(last_action_s, 2), "window_s": round(window, 2),
            "views": views, "converged": ok, "all_converged": ok == views,
            "converge_s": round(max(0, last - t0) / 1e9, 2) if ok == views else None,
            "cpu_s": cpu, "node_cpu_s": round(sum(cpu["nodes"]), 3),
            "cpu_pct": {k: [round(100 * c / window, 1) for c in v] for k, v in cpu.items()},
            "latency": summarize(hist), "totals": totals, "trouble": trouble(totals),
            "expect": {k: v for k, v in expect.items() if k != "roster_x"},
        }  # fmt: skip
        record["gens_saturated"] = any(p >= 90.0 for p in record["cpu_pct"]["gens"])
        self.phases.append(record)
        lat = record["latency"]
        log(f"  {self.shape.label:<28} {name:<10} {ok}/{views} right"
            f" in {record['converge_s']} s (scheduled {record['scheduled_s']} s)"
            f"  node CPU {record['node_cpu_s']} s  redis {sum(cpu['redis']):.2f} s"
            f"  gens {sum(cpu['gens']):.2f} s  p50 {lat['p50_ms']} p99 {lat['p99_ms']} ms"
            f"  trouble {record['trouble']}  unavailable {totals['unavailable']}")  # fmt: skip
        return record

    def _expect(self, want: dict[str, Any]) -> dict[str, Any]:
        """The whole room's expectation: the roster of every present participant that got in
        (or of the hosts only, `hosts_only`), the counts when the server sends them."""
        parts = self.joined
        if want.pop("hosts_only", False):
            n, x = combine([tuple(p["hosts"]) for p in parts])
            counts: list[int] | None = [0, n]
        else:
            n, x = combine([(p["present"], p["present_x"]) for p in parts])
            counts = [sum(p["hidden"] for p in parts), n]
        out = {"roster_n": n, "roster_x": x, **want}
        if any(p["counts_sent"] for p in parts):
            out["counts"] = counts
        return out

    def run(self) -> dict[str, Any]:
        s = self.shape
        everyone = list(range(s.total))
        hidden = [gid for gid, role in enumerate(self.roles) if role == "hidden"]
        hands = hidden[: int(len(hidden) * s.hand_share)]
        audience = [gid for gid, role in enumerate(self.roles) if role != "host"]
        self.phase("join", "join", everyone, s.join_rate, {})
        if hands:
            self.phase("hands", "hand", hands, s.hand_rate, {"hands": len(hands)})
        self.phase("broadcast", "bcast", [0] * s.bcasts, s.bcast_rate,
                   {"hands": len(hands) or None, "bcast": s.bcasts, "bcast_sender": 0})  # fmt: skip
        last = s.sessions - 1
        self.phase("session", "session", [0] * s.sessions, s.session_rate,
                   {"hands": len(hands) or None, "session_seq": last})  # fmt: skip
        self.phase("leave", "leave", audience, s.join_rate,
                   {"hosts_only": True, "session_seq": last})  # fmt: skip
        assert self.dep is not None
        alive = [n.running for n in self.dep.nodes]
        return {"label": s.label, "shape": s.__dict__ | {"total": s.total}, "phases": self.phases,
                "nodes_alive": alive, "generators": len(self.gens)}  # fmt: skip


def run_shape(shape: Shape, tmp: Path) -> dict[str, Any]:
    log(f"== {shape.label}: {shape.present} present + {shape.hidden} hidden, "
        f"joins at {shape.join_rate:g}/s")  # fmt: skip
    try:
        with WebinarRun(shape, tmp / shape.label.replace(" ", "-").replace(",", "")) as run:
            return run.run()
    except (RuntimeError, TimeoutError) as exc:  # a generator died, a phase never answered
        log(f"  {shape.label} failed: {exc}")
        return {"label": shape.label, "shape": shape.__dict__ | {"total": shape.total},
                "phases": [], "failed": str(exc)[:2000]}  # fmt: skip


QUICK = (all_present(500), all_present(1000), webinar(1000))
FULL_WEBINAR = (2500, 5000, 10000)
FULL_PRESENT = (1000, 2000, 4000)


def shapes(quick: bool) -> tuple[list[Shape], list[Shape]]:
    """(webinar shapes, all-present shapes) of a run."""
    if quick:
        return [QUICK[2]], [QUICK[0], QUICK[1]]
    return [webinar(n) for n in FULL_WEBINAR], [all_present(n) for n in FULL_PRESENT]


def measure(
    tmp: Path, quick: bool = False, only: list[Shape] | None = None, group: str = "webinar"
) -> dict[str, Any]:
    """Every shape of the run (or `only` these, as `group`), one deployment each; the results."""
    started = time.monotonic()
    web, present = shapes(quick)
    groups = {"webinar": web, "all_present": present} if only is None else {group: only}
    results: dict[str, Any] = {
        "mode": "webinar-quick" if quick else "webinar",
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m bench webinar" + (" --quick" if quick else ""),
        "machine": machine(), "groups": {},
    }  # fmt: skip
    for name, group in groups.items():
        results["groups"][name] = [run_shape(s, tmp) for s in group]
    results["duration_s"] = round(time.monotonic() - started, 1)
    return results


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench webinar", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--quick", action="store_true", help="small sizes, under 3 minutes")
    ap.add_argument("--sizes", help="comma-separated webinar sizes to run instead")
    ap.add_argument("--present", type=int, help="with --sizes: present participants (default 1 %%)")
    ap.add_argument("--rate", type=float, help="with --sizes: joins/s (200; 50 all present)")
    ap.add_argument("--all-present", action="store_true", help="with --sizes: nobody hidden")
    ap.add_argument("--out", type=Path, default=OUT, help="directory for the .json/.md")
    args = ap.parse_args(argv)
    only = None
    if args.sizes:
        try:
            sizes = [int(n) for n in args.sizes.split(",")]
        except ValueError:
            ap.error(f"--sizes must be comma-separated integers, not {args.sizes!r}")
        if any(n < 4 for n in sizes):
            ap.error("every size must be at least 4 (2 hosts and an audience)")
        if args.present is not None and not 2 <= args.present < min(sizes):
            ap.error("--present must be at least 2 (the hosts) and below every size")
        if args.all_present and args.present is not None:
            ap.error("--all-present and --present exclude each other")
        rate = args.rate or (50.0 if args.all_present else 200.0)
        only = [
            all_present(n, rate) if args.all_present else
            webinar(n, rate) if args.present is None else
            Shape(f"webinar {n:,} ({args.present} present)", args.present, n - args.present,
                  rate, timeout_s=30.0, bcasts=10, sessions=4)
            for n in sizes
        ]  # fmt: skip
    tmp = Path(tempfile.mkdtemp(prefix="roomstate-webinar-"))
    try:
        results = measure(tmp, args.quick, only, "all_present" if args.all_present else "webinar")
    finally:
        if os.environ.get("BENCH_KEEP_LOGS") != "1":
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            log(f"logs kept in {tmp}")
    stem = "webinar-quick" if args.quick else "webinar" if only is None else "webinar-custom"
    summary, paths = write_report(results, args.out, stem)
    log(f"results: {paths}")
    sys.stdout.write(orjson.dumps(summary).decode() + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
