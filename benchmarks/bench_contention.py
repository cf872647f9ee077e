"""Training beside other programs: today's thread settings against torch's old defaults.

    python benchmarks/bench_contention.py [--rounds 3] [--only steps,cli,full] [--data DIR]

A shared 2-vCPU machine is the normal case (a browser, a test suite, a second trial).
Three loads, each started and stopped by this script: none; one Python busy loop at nice
19; one at nice 0. Under each, two settings, interleaved round after round in fresh
processes, medians compared:

- ``old``: torch's defaults before heart chose (every core, libgomp's default waiting);
- ``new``: what heart does now (``threads = "auto"``, ``OMP_WAIT_POLICY=PASSIVE``).

Parts:
1. ``steps``: optimiser steps of examples/mitbih.toml's model alone (bf16 where native,
   batch 256, random beats), beats/s of the last windows of a fresh process.
2. ``cli``: `heart train` itself, examples/mitbih.toml on the bundled sample (2 epochs,
   2,000 beats a class), beats/s of epoch 2 from history.csv. The old side runs the same
   app without the entry point's OpenMP setting and with ``train.threads=0``.
3. ``full`` (with ``--data``): one full-data epoch of examples/mitbih.toml, old vs new,
   idle, wall seconds.

Targets (issue 17): with a nice-0 busy loop, ``new`` >= 0.6x of its own idle throughput
(the fair-share limit is about 0.67x); idle ``new`` within 5% of ``old`` or better.
Results go to benchmarks/results/bench_contention.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MITBIH = REPO / "examples" / "mitbih.toml"
SAMPLE = REPO / "data" / "sample"
LOADS = {"idle": None, "nice19": 19, "nice0": 0}

# One process of part 1: build the model, pick threads the way a setting does, time steps.
STEPS_SCRIPT = """
import json, sys, time
import torch
from torch import nn
torch.set_flush_denormal(True)
from heartcli.config import load_config
from heartcli.model.network import build_model
from heartcli.threads import ThreadPolicy
from heartcli.training.precision import autocast, resolve_precision
setting = sys.argv[1]
if setting == "new":
    ThreadPolicy("auto").start()
cfg = load_config(sys.argv[2], [])
torch.manual_seed(0)
model = build_model(cfg.model, 187, 5)
device = torch.device("cpu")
precision = resolve_precision("auto", device)
opt = torch.optim.AdamW(model.parameters(), 1e-3)
x, y = torch.randn(256, 187), torch.randint(0, 5, (256,))
rates = []
for window in range(6):
    t = time.perf_counter()
    for _ in range(4):
        opt.zero_grad()
        with autocast(device, precision):
            loss = nn.functional.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()
    rates.append(4 * 256 / (time.perf_counter() - t))
print(json.dumps({"threads": torch.get_num_threads(), "beats_per_s": rates[2:]}))
"""


@contextmanager
def load(nice: int | None) -> Iterator[None]:
    """One busy loop at ``nice`` (None: no load) for the duration of the block."""
    if nice is None:
        yield
        return
    proc = subprocess.Popen(["nice", "-n", str(nice), sys.executable, "-c", "while True: pass"])
    time.sleep(0.5)
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


def env_for(setting: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    if setting == "new":
        env["OMP_WAIT_POLICY"] = "PASSIVE"  # what heart's entry point sets
    return env


def run_steps(setting: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", STEPS_SCRIPT, setting, str(MITBIH)],
        env=env_for(setting),
        capture_output=True,
        text=True,
        check=True,
    )
    data = json.loads(done.stdout.strip().splitlines()[-1])
    return {"threads": data["threads"], "beats_per_s": statistics.median(data["beats_per_s"])}


def heart_train(setting: str, data_dir: Path, *sets: str) -> tuple[list[dict[str, str]], float]:
    """`heart train` of examples/mitbih.toml in a fresh process: (history.csv rows, seconds).

    The old side runs the same app without the entry point's OpenMP setting and with
    ``train.threads=0`` (every core), as heart did before it chose.
    """
    with tempfile.TemporaryDirectory() as tmp:
        args = ["train", "--config", str(MITBIH), "--name", "b", "-q"]
        extra = ["train.threads=0"] if setting == "old" else []
        for s in (f"data.dir={data_dir}", f"train.runs_dir={tmp}", "tracking.enabled=false",
                  *sets, *extra):  # fmt: skip
            args += ["--set", s]
        entry = ["-c", "from heartcli.cli.app import app; app()"] if setting == "old" else [
            "-m", "heartcli"
        ]  # fmt: skip
        t = time.perf_counter()
        subprocess.run([sys.executable, *entry, *args], env=env_for(setting), check=True)
        seconds = time.perf_counter() - t
        with open(Path(tmp) / "b" / "history.csv") as f:
            return list(csv.DictReader(f)), seconds


def run_cli(setting: str, data_dir: Path) -> dict[str, Any]:
    """2 epochs on the sample (2,000 beats a class): beats/s of the last epoch."""
    rows, _ = heart_train(setting, data_dir, "train.epochs=2", "resample.target=2000")
    last = rows[-1]
    return {"threads": int(last.get("threads") or 0), "beats_per_s": float(last["beats_per_s"])}


def run_full(setting: str, data_dir: Path) -> dict[str, Any]:
    """One full-data epoch of examples/mitbih.toml: wall seconds and beats/s."""
    rows, seconds = heart_train(setting, data_dir, "train.epochs=1")
    return {"seconds": seconds, "beats_per_s": float(rows[-1]["beats_per_s"])}


def compare(part: str, rounds: int, measure: Any) -> dict[str, Any]:
    """Every load, both settings interleaved, ``rounds`` times; medians and ratios."""
    table: dict[str, dict[str, Any]] = {}
    for name, nice in LOADS.items():
        samples: dict[str, list[dict[str, Any]]] = {"old": [], "new": []}
        with load(nice):
            for _ in range(rounds):
                for setting in ("old", "new"):
                    samples[setting].append(measure(setting))
        table[name] = {
            s: {
                "beats_per_s": round(statistics.median(r["beats_per_s"] for r in v), 1),
                "threads": sorted({r["threads"] for r in v}),
                "all": [round(r["beats_per_s"], 1) for r in v],
            }
            for s, v in samples.items()
        }
        print(part, name, json.dumps(table[name]), flush=True)
    for setting in ("old", "new"):
        idle = table["idle"][setting]["beats_per_s"]
        for name in ("nice19", "nice0"):
            table[name][setting]["of_idle"] = round(table[name][setting]["beats_per_s"] / idle, 3)
    table["idle_new_over_old"] = round(
        table["idle"]["new"]["beats_per_s"] / table["idle"]["old"]["beats_per_s"], 3
    )
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default="steps,cli", help="comma-separated: steps, cli, full")
    parser.add_argument("--data", default="", help="full dataset folder for part 3 (full)")
    args = parser.parse_args()
    parts = set(args.only.split(","))
    result: dict[str, Any] = {"loadavg_before": os.getloadavg(), "cpus": os.cpu_count()}
    if "steps" in parts:
        result["steps"] = compare("steps", args.rounds, run_steps)
    if "cli" in parts:
        result["cli"] = compare("cli", args.rounds, lambda s: run_cli(s, SAMPLE))
    if "full" in parts and args.data:
        rows: dict[str, list[dict[str, Any]]] = {"old": [], "new": []}
        for _ in range(max(1, args.rounds // 2)):
            for setting in ("old", "new"):
                rows[setting].append(run_full(setting, Path(args.data)))
        result["full_epoch"] = {
            s: {"seconds": [round(r["seconds"], 1) for r in v]}
            | {"beats_per_s": [round(r["beats_per_s"]) for r in v]}
            for s, v in rows.items()
        }
    result["loadavg_after"] = os.getloadavg()
    print(json.dumps(result, indent=2))
    out = REPO / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_contention.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
