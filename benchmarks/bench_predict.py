"""Inference speed: ONNX Runtime vs eager PyTorch at batch 256, and `heart predict` end to end.

    python benchmarks/bench_predict.py [--model EXPORT/model.onnx] [--record PATH] [--repeat N]

1. beats/s of the seed CNN (default [model]) and of the quick-start CNN, eager PyTorch
   (inference_mode) vs ONNX Runtime (CPU provider), batch 256 of real beats, same threads;
2. wall time of `heart predict MODEL.onnx RECORD` as a fresh process (start-up, record
   reading, segmentation and inference included) on record 100 with its .atr and with
   detected R-peaks (the same record without .atr), median of --repeat runs.

Without --model a quick-start run is trained for one epoch and exported to ONNX first.
Figures are printed and written to benchmarks/results/bench_predict.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"
RECORD = REPO.parent / "shared" / "data" / "mitdb" / "100"
RESULTS = REPO / "benchmarks" / "results"
BATCH = 256


def heart(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "heartcli", *args], capture_output=True, text=True, check=True
    )


def throughput(fn, x: np.ndarray, seconds: float = 3.0) -> float:
    """Beats per second of ``fn`` on batches of ``x``, after a warm-up."""
    for _ in range(3):
        fn(x)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn(x)
        n += len(x)
    return n / (time.perf_counter() - start)


def bench_models(threads: int) -> dict[str, dict[str, float]]:
    import onnxruntime as ort
    import torch

    from heartcli.config import HeartConfig, load_config
    from heartcli.data.dataset import load_split
    from heartcli.export.formats import export_onnx, probability_module
    from heartcli.model.network import build_model

    torch.set_num_threads(threads)
    beats = load_split(SAMPLE, "random", "test").x
    x = np.ascontiguousarray(np.resize(beats, (BATCH, beats.shape[1])), dtype=np.float32)
    configs = {
        "seed CNN (default [model])": HeartConfig().model,
        "quick-start CNN": load_config(REPO / "examples" / "quickstart.toml").model,
    }
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, cfg in configs.items():
            torch.manual_seed(0)
            module = probability_module(build_model(cfg, 187, 5).eval())
            path = Path(tmp) / "m.onnx"
            export_onnx(module, torch.from_numpy(x[:2].copy()), path, 18)
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

            def run_torch(b: np.ndarray, m=module) -> np.ndarray:
                with torch.inference_mode():
                    return m(torch.from_numpy(b)).numpy()

            def run_ort(b: np.ndarray, s=session) -> np.ndarray:
                return s.run(None, {"beats": b})[0]

            t = throughput(run_torch, x)
            o = throughput(run_ort, x)
            results[name] = {"torch_beats_per_s": t, "onnxruntime_beats_per_s": o, "speedup": o / t}
            print(f"{name}: eager PyTorch {t:,.0f} beats/s, ONNX Runtime {o:,.0f} beats/s "
                  f"({o / t:.2f}x), batch {BATCH}, {threads} threads")  # fmt: skip
    return results


def bench_predict(model: Path, record: Path, repeat: int) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        bare = Path(tmp) / record.name
        for ext in (".hea", ".dat"):
            shutil.copy(f"{record}{ext}", f"{bare}{ext}")
        for label, path in (("with .atr", record), ("detected R-peaks", bare)):
            walls: list[float] = []
            summary: dict = {}
            for _ in range(repeat):
                start = time.perf_counter()
                done = heart("--json", "predict", str(model), str(path), "--rows", "0")
                walls.append(time.perf_counter() - start)
                summary = json.loads(done.stdout)
            wall = statistics.median(walls)
            stages = summary["seconds"]
            results[label] = {"wall_s": wall, "beats": summary["beats"], **stages}
            print(f"heart predict {record.name} ({label}): {summary['beats']:,} beats, "
                  f"{wall:.2f} s end to end (median of {repeat}); in-process: "
                  + ", ".join(f"{k} {v:.2f} s" for k, v in stages.items()))  # fmt: skip
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import heartcli.cli.app"], check=True)
    startup = time.perf_counter() - start
    print(f"python start-up + import heartcli.cli.app: {startup:.2f} s")
    results["startup"] = {"wall_s": startup}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="an exported model.onnx (model card beside it)")
    parser.add_argument("--record", type=Path, default=RECORD, help="WFDB record, no extension")
    parser.add_argument("--repeat", type=int, default=3, help="runs of heart predict per case")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    models = bench_models(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            runs = Path(tmp) / "runs"
            heart("-q", "train", "--config", str(REPO / "examples" / "quickstart.toml"),
                  "--name", "bench", "--set", f"data.dir={SAMPLE}", "--set",
                  f"train.runs_dir={runs}", "--set", "train.epochs=1", "--set",
                  "tracking.enabled=false")  # fmt: skip
            heart("-q", "export", str(runs / "bench"), "--format", "onnx")
            model = runs / "bench" / "export" / "model.onnx"
        predict = bench_predict(model, args.record, args.repeat)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "bench_predict.json"
    out.write_text(
        json.dumps({"cpu_threads": args.threads, "models": models, "predict": predict}, indent=2)
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
