"""Make a run the run of record: copy its report and plots into bench/results/ with a compact
JSON, which holds what the report and the plots read and nothing more.

    python -m bench.harness.record bench/out/full.json [--stem full]

A run writes its full JSON into bench/out/ (every step's latency split three ways, a CDF per
step, Redis's command counts): about 1 MB for a full run, which git would keep once per run of
record. The compact JSON drops, per step, the CDF points of steps no plot draws (the plots draw
the light and reference steps' CDFs), the same-node and from-send latency splits, Redis's raw
command counts, and the commands per message of steps other than a knee; it is written without
indentation. The markdown is written again from the compact JSON (so it shows that nothing it
reads was dropped) and the plots are copied. bench/results/README.md, which says how the run was
made and how to make it again, is written by hand.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from bench.harness.report import PLOTS, RECORD, markdown

# per step: what neither the report nor the plots read (the summary already holds the figures
# it took from them)
DROPPED = ("same_node", "from_send", "redis_calls")
CDF_TAGS = ("light", "ref")  # the steps whose CDF the plots draw


def compact_step(step: dict[str, Any]) -> dict[str, Any]:
    out = {k: v for k, v in step.items() if k not in DROPPED}
    if not set((step.get("tag") or "").split(",")) & set(CDF_TAGS):
        out.pop("cdf", None)
    if not step.get("knee"):
        out.pop("redis_calls_per_message", None)
    return out


def compact(results: dict[str, Any]) -> dict[str, Any]:
    """`results` with its steps (and knees) compacted by `compact_step`."""
    scenarios = []
    for sc in results.get("scenarios") or ():
        knee = sc.get("knee")
        steps = [compact_step(s) for s in sc["steps"]]
        scenarios.append({**sc, "steps": steps, "knee": compact_step(knee) if knee else knee})
    return {**results, "scenarios": scenarios}


def record(run_json: Path, stem: str, out_dir: Path = RECORD) -> dict[str, str]:
    """Write `stem`.json (compact) and `stem`.md into `out_dir` and copy the run's plots there as
    `stem`-*.png; returns the paths written."""
    results = compact(json.loads(run_json.read_text()))
    run_stem = run_json.stem
    out_dir.mkdir(parents=True, exist_ok=True)
    plots: dict[str, str] = {}
    for title, name in PLOTS.items():
        source = run_json.parent / f"{run_stem}-{name}.png"
        if not source.exists():
            continue
        target = out_dir / f"{stem}-{name}.png"
        if source.resolve() != target.resolve():
            shutil.copyfile(source, target)
        plots[title] = str(target)
    json_path, md_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(results, separators=(",", ":"), ensure_ascii=False) + "\n")
    md_path.write_text(markdown(results, plots))
    return {"json": str(json_path), "md": str(md_path), **plots}


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.harness.record", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("run", type=Path, help="a run's JSON, e.g. bench/out/full.json")
    ap.add_argument("--stem", help="the record's file names (default: the run's)")
    ap.add_argument("--out", type=Path, default=RECORD, help="default: bench/results/")
    args = ap.parse_args()
    paths = record(args.run, args.stem or args.run.stem, args.out)
    print(json.dumps(paths, indent=1))
    print("now say in bench/results/README.md how this run was made (command, commit, machine)")


if __name__ == "__main__":
    main()
