"""Benchmark: R-peak detection on the 44 MIT-BIH records EC57 scores, and the scoring time.

For every record but the paced four, the beats `heart predict --peaks detect` gives
(``heart``: its default detector, gqrs with its marks moved to the R-peak; ``heart-xqrs``:
XQRS as heart runs it; on the MLII lead at 360 Hz, after the beat cut) and, for
comparison, the raw peaks of XQRS and of wfdb's gqrs, are scored against the .atr by
:func:`heartcli.evaluate.ec57.compare` (bxb's rules: 150 ms, the first 5 minutes left out). Prints
the gross and average QRS Se and +P of each detector, the records below 0.995, and the
time the EC57 comparison of all records takes (target: <= 30 s beyond prediction).

    python benchmarks/bench_ec57.py [--records ../shared/data/mitdb]
        [--detectors heart,heart-xqrs,xqrs,gqrs]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from heartcli.data.mitdb import FS_HZ, RECORDS
from heartcli.evaluate import ec57
from heartcli.evaluate.records import read_beats
from heartcli.predict.segment import detect_r_peaks, read_record, segment_record
from heartcli.predict.wfdb import read_header

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "ec57.json"
TARGET = 0.995
TARGET_SCORE_S = 30.0


def peaks_of(detector: str, path: Path) -> np.ndarray:
    """Test beat samples (the record's own rate: 360 Hz for MIT-BIH) of one detector."""
    if detector.startswith("heart"):  # heart, heart-xqrs: the beats heart predict gives
        chosen = detector.partition("-")[2] or None
        return segment_record(path, peaks="detect", detector=chosen).sample
    rec = read_record(path, "auto")
    mv = (np.asarray(rec.signal, dtype=np.float64) - rec.baseline) / rec.gain
    if detector == "xqrs":
        return detect_r_peaks(mv, FS_HZ)
    from wfdb.processing import gqrs_detect

    return np.unique(np.asarray(gqrs_detect(sig=mv, fs=FS_HZ), dtype=np.int64))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", default=str(REPO.parent / "shared" / "data" / "mitdb"))
    parser.add_argument("--detectors", default="heart,heart-xqrs,xqrs,gqrs")
    args = parser.parse_args()
    names = [r for r in RECORDS if r not in ec57.PACED_RECORDS]
    results: dict[str, dict] = {}
    for detector in args.detectors.split(","):
        entries, detect_s, score_s = [], 0.0, 0.0
        for name in names:
            path = Path(args.records) / name
            t0 = time.perf_counter()
            header = read_header(path)
            reference = read_beats(path, "atr", header)
            sample = peaks_of(detector, path)
            t1 = time.perf_counter()
            test = ec57.BeatAnnotations(sample, np.zeros(len(sample), dtype=np.int64))
            comparison = ec57.compare(reference, test, fs=header.fs, end=header.length)
            t2 = time.perf_counter()
            entries.append(ec57.record_entry(name, comparison, header.fs))
            detect_s += t1 - t0
            score_s += t2 - t1
        gross, average = ec57.totals(entries)
        below = {
            e["record"]: [round(e["qrs_se"], 4), round(e["qrs_ppv"], 4)]
            for e in entries
            if e["qrs_se"] < TARGET or e["qrs_ppv"] < TARGET
        }
        results[detector] = {
            "gross": {k: gross[k] for k in ("qrs_se", "qrs_ppv", "qrs_tp", "qrs_fn", "qrs_fp")},
            "average": {k: average[k] for k in ("qrs_se", "qrs_ppv")},
            "records_below_target": below,
            "detect_s": round(detect_s, 1),
            "score_s": round(score_s, 2),
        }
        print(detector, json.dumps(results[detector]), flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(RESULTS.read_text()).get("detectors", {}) if RESULTS.exists() else {}
    merged = {**previous, **results}
    RESULTS.write_text(json.dumps({"records": len(names), "detectors": merged}, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
