"""The device targets of issue 22, from exports of trained runs.

    python benchmarks/bench_edge.py --tiny runs/tiny [--default runs/mitbih]
        [--tiny-ip runs/tiny-ip --full-ip runs/interpatient] [--exported]

For each run (trained and evaluated with `heart evaluate`): `heart export RUN --format
onnx --format pte --quantize static` (skipped with --exported when RUN/export-edge holds
it already), then the figures against the targets:

- tiny (random split): test macro-F1 >= 0.92 in float; int8 ONNX (static) and int8 .pte
  within 0.005 of float; <= 30,000 parameters; int8 file <= 64 kB; latency per beat at
  batch 1, one thread, in ONNX Runtime and ExecuTorch (target <= 50 us);
- default model: int8 static within 0.005 macro-F1 of float; int8 file <= 1/3.5 of float;
- inter-patient: SVEB and VEB Se and +P of the tiny rhythm model within 0.05 of the full
  model's (from each run's eval.json).

Each target prints PASS or MISS with its figure; everything goes to
benchmarks/results/bench_edge.json. Latency is measured by `heart export` itself (median
of repeats, `[export] latency_threads` = 1).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
KB = 1000


def export(run: Path, reuse: bool) -> dict[str, Any]:
    out = run / "export-edge"
    if not (reuse and (out / "model_card.json").exists()):
        subprocess.run(
            [
                sys.executable,
                "-m",
                "heartcli",
                "-q",
                "export",
                str(run),
                "--format",
                "onnx",
                "--format",
                "pte",
                "--quantize",
                "static",
                "--out",
                str(out),
                "--force",
            ],
            check=True,
        )
    card: dict[str, Any] = json.loads((out / "model_card.json").read_text())
    return card


def check(name: str, ok: bool, figure: str, rows: list[dict[str, Any]]) -> None:
    rows.append({"target": name, "pass": ok, "figure": figure})
    print(f"{'PASS' if ok else 'MISS'}  {name}: {figure}")


def tiny_targets(card: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    files = {f["file"]: f for f in card["files"]}
    scores = {q["file"]: q for q in card["int8"]}
    flt = card["evaluation"].get("macro_f1")
    check("tiny float test macro-F1 >= 0.92", flt is not None and flt >= 0.92, f"{flt}", rows)
    for name in ("model.int8.onnx", "model.int8.pte"):
        q = scores[name]
        check(
            f"tiny {name} within 0.005 of float",
            q["macro_f1_loss"] <= 0.005,
            f"int8 {q['macro_f1_int8']:.4f} vs float {q['macro_f1_float']:.4f} "
            f"(loss {q['macro_f1_loss']:+.4f})",
            rows,
        )
        check(
            f"tiny {name} <= 64 kB",
            files[name]["bytes"] <= 64 * KB,
            f"{files[name]['bytes']:,} bytes",
            rows,
        )
    params = card["costs"]["parameters"]
    check("tiny <= 30,000 parameters", params <= 30_000, f"{params:,}", rows)
    for name in ("model.onnx", "model.int8.onnx", "model.pte", "model.int8.pte"):
        lat = files[name]["latency"]
        us = lat["batch_1_us_per_beat"]
        check(
            f"tiny {name} batch 1, {lat['threads']} thread, {lat['runtime']} <= 50 us/beat",
            us <= 50,
            f"{us:.1f} us/beat (batch 256: {lat['batch_256_us_per_beat']:.1f})",
            rows,
        )


def default_targets(card: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    files = {f["file"]: f for f in card["files"]}
    for q in card["int8"]:
        check(
            f"default {q['file']} within 0.005 of float",
            q["macro_f1_loss"] <= 0.005,
            f"int8 {q['macro_f1_int8']:.4f} vs float {q['macro_f1_float']:.4f} "
            f"(loss {q['macro_f1_loss']:+.4f})",
            rows,
        )
    for flt, q8 in (("model.onnx", "model.int8.onnx"), ("model.pte", "model.int8.pte")):
        if flt not in files or q8 not in files:
            continue
        ratio = files[flt]["bytes"] / files[q8]["bytes"]
        check(f"default {q8} <= 1/3.5 of {flt}", ratio >= 3.5, f"{ratio:.2f}x smaller", rows)


def interpatient_targets(tiny: Path, full: Path, rows: list[dict[str, Any]]) -> None:
    a = json.loads((tiny / "eval.json").read_text())["aami"]["rows"]
    b = json.loads((full / "eval.json").read_text())["aami"]["rows"]
    for row in ("SVEB", "VEB"):
        for key, label in (("se", "Se"), ("ppv", "+P")):
            diff = a[row][key] - b[row][key]
            check(
                f"inter-patient tiny {row} {label} within 0.05 of full",
                abs(diff) <= 0.05,
                f"tiny {a[row][key]:.4f} vs full {b[row][key]:.4f} ({diff:+.4f})",
                rows,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", type=Path, required=True)
    parser.add_argument("--default", type=Path)
    parser.add_argument("--tiny-ip", type=Path)
    parser.add_argument("--full-ip", type=Path)
    parser.add_argument("--exported", action="store_true", help="reuse RUN/export-edge")
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    cards = {"tiny": export(args.tiny, args.exported)}
    tiny_targets(cards["tiny"], rows)
    if args.default:
        cards["default"] = export(args.default, args.exported)
        default_targets(cards["default"], rows)
    if args.tiny_ip and args.full_ip:
        interpatient_targets(args.tiny_ip, args.full_ip, rows)
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {
        "targets": rows,
        "costs": {k: c["costs"] for k, c in cards.items()},
        "files": {k: c["files"] for k, c in cards.items()},
    }
    (RESULTS / "bench_edge.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS / 'bench_edge.json'}")


if __name__ == "__main__":
    main()
