"""`heart tune`: what pruning and parallel trials buy, on the bundled sample.

Three measurements, all with the quickstart space and model (examples/quickstart.toml) on
data/sample, MLflow off so the figures are the search's own:

1. threads: two one-thread trials side by side (--jobs 2) against the same two trials one
   after the other with two threads each (--jobs 1), interleaved and repeated; this is what
   `--jobs auto` is set from (heartcli/search/workers.py).
2. pruners: the same 30-trial search (same seed) with pruner "none", "asha" and "median":
   wall time, epochs trained, best validation macro-F1. Target: asha >= 3x less wall time
   than none, best within 0.01.
3. jobs: a 20-trial asha search with --jobs 2 against --jobs 1.
4. exit: how long the parent waits, once it has told a worker to exit, for a spawned
   process with heart's training loaded (torch, an optimizer) to end: through the
   interpreter's teardown, or through workers.exit_now as heart's workers do;
   interleaved and repeated.

Prints the ratios and writes benchmarks/results/bench_tune.json.

    python benchmarks/bench_tune.py [--evals 30] [--jobs-evals 20] [--repeats 2] [--only exit]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from heartcli.config import load_config  # noqa: E402
from heartcli.search.claim import new_search  # noqa: E402
from heartcli.search.spec import Search  # noqa: E402
from heartcli.search.tpe import run_search  # noqa: E402

QUICKSTART = REPO / "examples" / "quickstart.toml"


def search(work: Path, name: str, overrides: list[str], jobs: int) -> dict[str, Any]:
    config = load_config(
        QUICKSTART,
        [
            f"data.dir={REPO / 'data' / 'sample'}",
            f"train.runs_dir={work / 'runs'}",
            "tracking.enabled=false",
            "train.threads=0",
            *overrides,
        ],
    )
    started = time.perf_counter()
    search = Search.plan(config, name)
    lock = new_search(search)
    result = run_search(search, jobs=jobs, lock=lock)
    seconds = time.perf_counter() - started
    statuses: dict[str, int] = {}
    for r in result.records:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    return {
        "name": name,
        "jobs": jobs,
        "trials": len(result.records),
        "statuses": statuses,
        "epochs": sum(r.epochs_run for r in result.records),
        "wall_s": round(seconds, 1),
        "best_val_macro_f1": round(result.best.metric, 4) if result.best else None,
        "best_trial": result.best.number if result.best else None,
    }


def threads(work: Path, repeats: int) -> dict[str, Any]:
    """Two 8-epoch trials: side by side with one thread each, or in turn with two."""
    fixed = ["search.evals=2", "search.pruner=none", "train.patience=100"]
    one, two = [], []
    for i in range(repeats):
        one.append(search(work, f"threads1-{i}", fixed, jobs=2)["wall_s"])
        two.append(search(work, f"threads2-{i}", fixed, jobs=1)["wall_s"])
    ratio = statistics.median(two) / statistics.median(one)
    print(
        f"2 trials: side by side, 1 thread each {statistics.median(one):.1f}s; in turn, "
        f"2 threads each {statistics.median(two):.1f}s -> {ratio:.2f}x for side by side",
        flush=True,
    )
    return {"side_by_side_s": one, "in_turn_s": two, "ratio": round(ratio, 2)}


def pruners(work: Path, evals: int, png: Path | None) -> dict[str, Any]:
    rows = {}
    for pruner in ("asha", "none", "median"):
        # One thread: what is compared is the epochs each pruner saves.
        overrides = [f"search.evals={evals}", f"search.pruner={pruner}", "train.threads=1"]
        rows[pruner] = search(work, pruner, overrides, 1)
        print(f"pruner {pruner}: {rows[pruner]}", flush=True)
        if png is not None and pruner == "asha":
            png.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(work / "runs" / "asha" / "report.png", png)
    for pruner in ("asha", "median"):
        speedup = rows["none"]["wall_s"] / rows[pruner]["wall_s"]
        gap = rows["none"]["best_val_macro_f1"] - rows[pruner]["best_val_macro_f1"]
        rows[f"{pruner}_speedup"] = round(speedup, 2)
        rows[f"{pruner}_best_gap"] = round(gap, 4)
        print(
            f"{pruner} vs none: {speedup:.2f}x less wall time, best val macro-F1 "
            f"{rows[pruner]['best_val_macro_f1']:.4f} vs {rows['none']['best_val_macro_f1']:.4f} "
            f"(gap {gap:+.4f})",
            flush=True,
        )
    return rows


def jobs(work: Path, evals: int) -> dict[str, Any]:
    one = search(work, "jobs1", [f"search.evals={evals}"], 1)
    two = search(work, "jobs2", [f"search.evals={evals}"], 2)
    ratio = one["wall_s"] / two["wall_s"]
    print(f"--jobs 1: {one}\n--jobs 2: {two}\n--jobs 2 is {ratio:.2f}x faster", flush=True)
    return {"jobs1": one, "jobs2": two, "ratio": round(ratio, 2)}


def _exiting_worker(conn: Any, fast: bool) -> None:
    """A worker's start (heart's training imported, an optimizer built), then its end: the
    interpreter's teardown, or workers.exit_now as heart's tune workers end."""
    import torch

    import heartcli.search.trial  # noqa: F401  (what a worker imports)
    from heartcli.search.workers import exit_now

    torch.optim.AdamW(torch.nn.Linear(4, 4).parameters())
    conn.send("ready")
    conn.recv()
    conn.close()
    if fast:
        exit_now()


def worker_exit(repeats: int) -> dict[str, Any]:
    """Seconds from the parent's "exit" to the worker's end, both ways, interleaved."""
    ctx = multiprocessing.get_context("spawn")
    waits: dict[str, list[float]] = {"teardown": [], "exit_now": []}
    for _ in range(repeats):
        for way in ("teardown", "exit_now"):
            parent, child = ctx.Pipe()
            process = ctx.Process(target=_exiting_worker, args=(child, way == "exit_now"))
            process.start()
            child.close()
            parent.recv()
            started = time.perf_counter()
            parent.send("exit")
            process.join()
            waits[way].append(round(time.perf_counter() - started, 3))
    ratio = statistics.median(waits["teardown"]) / statistics.median(waits["exit_now"])
    print(
        f"a worker's end: teardown {statistics.median(waits['teardown']):.3f}s, exit_now "
        f"{statistics.median(waits['exit_now']):.3f}s (medians of {repeats}) -> {ratio:.1f}x",
        flush=True,
    )
    return {**waits, "ratio": round(ratio, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--evals", type=int, default=30)
    parser.add_argument("--jobs-evals", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only", choices=["threads", "pruners", "jobs", "exit"])
    parser.add_argument("--png", type=Path, help="copy the asha search's report.png here")
    args = parser.parse_args()
    out: dict[str, Any] = {"evals": args.evals, "jobs_evals": args.jobs_evals}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.only == "exit":
            out["exit"] = worker_exit(max(args.repeats, 5))
        else:  # the first search of a process pays for imports and the disk cache
            search(work, "warmup", ["search.evals=1", "train.epochs=1", "train.threads=1"], 1)
        if args.only in (None, "threads"):
            out["threads"] = threads(work, args.repeats)
        if args.only in (None, "pruners"):
            out["pruners"] = pruners(work, args.evals, args.png)
        if args.only in (None, "jobs"):
            out["jobs"] = jobs(work, args.jobs_evals)
        if args.only is None:
            out["exit"] = worker_exit(max(args.repeats, 5))
    path = (
        REPO / "benchmarks" / "results" / f"bench_tune{'-' + args.only if args.only else ''}.json"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
