"""`heart evaluate MODEL --records ... --plot DIR`: where the model is wrong on each
recording, as ECG strips (people read a strip, not a table).

For every scored record, the :data:`STRIPS` stretches of :data:`STRIP_S` seconds that hold the
most disagreements between the reference and the model (bxb's pairs of the EC57 scoring: a
beat labelled another class, a missed reference beat, a false test beat; the learning
period is not scored, so it is never shown) are drawn one above the other in
``DIR/<record>.png``: the signal of the scored lead in millivolts, the reference class of
every beat above it, the model's below, each disagreement marked in red. A record without a
disagreement gets no PNG (its entry says so).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from heartcli.errors import UsageError
from heartcli.evaluate import ec57
from heartcli.io import unwritable

STRIP_S = 10.0  # seconds per strip
STRIPS = 3  # strips per record, the ones with the most errors


def check_plot_dir(folder: str | Path) -> Path:
    """``--plot DIR``: a folder (made if missing) heart can write into, checked before any
    record is read."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--plot {folder}: not a folder; name a folder for the PNGs")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise unwritable(folder, exc, "choose another --plot folder") from None
    probe = folder / ".heart-plot-probe"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise unwritable(folder, exc, "choose another --plot folder") from None
    return folder


@dataclass
class Stretch:
    start: int  # first sample (the record's own rate)
    end: int  # one past the last
    errors: int


def error_positions(pairs: list[tuple[int, int, int, int]]) -> np.ndarray:
    """The sample of every disagreement among bxb's pairs (the reference beat's, or the
    false test beat's), sorted."""
    wrong = [r if r >= 0 else t for r, t, row, col in pairs if row != col]
    return np.sort(np.asarray(wrong, dtype=np.int64))


def worst_stretches(
    errors: np.ndarray, fs: float, length: int, strip_s: float = STRIP_S, count: int = STRIPS
) -> list[Stretch]:
    """Up to ``count`` non-overlapping windows of ``strip_s`` seconds, each centred on the
    error whose window holds the most errors not yet shown, most errors first."""
    width = max(round(strip_s * fs), 1)
    left = np.asarray(errors, dtype=np.int64)
    chosen: list[Stretch] = []
    while len(left) and len(chosen) < count:
        start = np.clip(left - width // 2, 0, max(length - width, 0))
        inside = np.searchsorted(left, start + width) - np.searchsorted(left, start)
        best = int(np.argmax(inside))
        s = int(start[best])
        stretch = Stretch(s, s + width, int(inside[best]))
        if any(s < c.end and c.start < stretch.end for c in chosen):
            left = np.delete(left, best)  # its best window overlaps one shown: drop it
            continue
        chosen.append(stretch)
        left = left[(left < s) | (left >= s + width)]
    return chosen


def plot_record(
    path: Path,
    pairs: list[tuple[int, int, int, int]],
    fs: float,
    length: int,
    folder: Path,
    *,
    lead: str = "auto",
    png_name: str | None = None,
) -> dict[str, object]:
    """``folder/<record>.png`` of the record's worst stretches (see the module docstring);
    what was drawn, or why nothing was."""
    from heartcli.data.mitdb import FS_HZ
    from heartcli.plots import ecg_strips
    from heartcli.predict.segment import read_record

    errors = error_positions(pairs)
    if not len(errors):
        return {"png": None, "errors": 0, "stretches": []}
    stretches = worst_stretches(errors, fs, length)
    rec = read_record(path, lead)
    mv = (np.asarray(rec.signal, dtype=np.float64) - rec.baseline) / rec.gain
    strips = []
    for st in stretches:
        a, b = int(st.start * FS_HZ / fs), int(np.ceil(st.end * FS_HZ / fs))
        beats = [
            (
                (r if r >= 0 else t) / fs,
                ec57.CLASSES[row] if row < ec57.O else "",
                ec57.CLASSES[col] if col < ec57.O else "",
            )
            for r, t, row, col in pairs
            if st.start <= (r if r >= 0 else t) < st.end
        ]
        strips.append({"t": np.arange(a, min(b, len(mv))) / FS_HZ, "mv": mv[a:b], "beats": beats})
    target = folder / f"{png_name or path.name}.png"
    title = (
        f"record {path.name} ({rec.lead}): {len(errors):,} disagreements after the learning period"
    )
    ecg_strips(strips, target, title)
    return {
        "png": str(target),
        "errors": len(errors),
        "stretches": [
            {"from_s": round(s.start / fs, 2), "to_s": round(s.end / fs, 2), "errors": s.errors}
            for s in stretches
        ],
    }
