"""Benchmark: build the whole MIT-BIH beat dataset from the local records.

Runs ``build_dataset`` in a fresh subprocess (so imports and peak memory are its own) and
reports wall time and peak resident memory. Targets: <= 10 s wall, <= 2 GB peak. The
rhythm columns (RR features) are checked by a second build without them, interleaved with
the first: they may add at most 1 s (median against median).

    python benchmarks/bench_build.py [--records ../shared/data/mitdb] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "build.json"
TARGET_S = 10.0
TARGET_MB = 2048.0
TARGET_RHYTHM_S = 1.0

CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from heartcli.data.build import build_dataset
t1 = time.perf_counter()
manifest = build_dataset(sys.argv[1], sys.argv[2], rhythm=sys.argv[3] == "rhythm")
t2 = time.perf_counter()
peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({
    "import_s": t1 - t0,
    "build_s": t2 - t1,
    "peak_mb": peak_kb / 1024,
    "total": manifest["total"],
}))
"""


def run_once(records: Path, rhythm: bool = True) -> dict:
    mode = "rhythm" if rhythm else "plain"
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run(
            [sys.executable, "-c", CHILD, str(records), str(Path(tmp) / "mitbih"), mode],
            capture_output=True,
            text=True,
            check=True,
            cwd=REPO,
        )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=Path, default=REPO.parent / "shared/data/mitdb")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    runs, plain = [], []
    for i in range(args.repeat):  # interleaved, order alternating: the same load for both
        for rhythm in (True, False) if i % 2 == 0 else (False, True):
            (runs if rhythm else plain).append(run_once(args.records, rhythm))
    best = min(runs, key=lambda r: r["build_s"])

    def median(values: list[float]) -> float:
        return sorted(values)[len(values) // 2]

    added = median([r["build_s"] for r in runs]) - median([r["build_s"] for r in plain])
    result = {
        "benchmark": "build the whole dataset (48 records, both splits) from local records",
        "records": str(args.records),
        "runs": [{k: round(v, 3) for k, v in r.items() if k != "total"} for r in runs],
        "build_s_best": round(best["build_s"], 3),
        "build_s_median": round(median([r["build_s"] for r in runs]), 3),
        "build_s_median_without_rhythm": round(median([r["build_s"] for r in plain]), 3),
        "rhythm_added_s": round(added, 3),
        "target_rhythm_s": TARGET_RHYTHM_S,
        "peak_mb_max": round(max(r["peak_mb"] for r in runs), 1),
        "target_s": TARGET_S,
        "target_mb": TARGET_MB,
        "beats": best["total"],
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    result["within_target"] = (
        result["build_s_median"] <= TARGET_S
        and result["peak_mb_max"] <= TARGET_MB
        and added <= TARGET_RHYTHM_S
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"build: best {result['build_s_best']:.2f} s, median {result['build_s_median']:.2f} s "
        f"(target <= {TARGET_S:.0f} s); peak memory {result['peak_mb_max']:.0f} MB "
        f"(target <= {TARGET_MB:.0f} MB); {best['total']['total']:,} beats"
    )
    print(
        f"rhythm columns add {added:.2f} s (median {result['build_s_median']:.2f} s with, "
        f"{result['build_s_median_without_rhythm']:.2f} s without; target <= "
        f"{TARGET_RHYTHM_S:.0f} s)"
    )
    print(f"wrote {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
