"""Facts about the MIT-BIH Arrhythmia Database 1.0.0: records, checksums, classes, splits."""

from __future__ import annotations

from functools import cache
from importlib import resources


def _ids(text: str) -> tuple[str, ...]:
    return tuple(text.split())


RECORDS: tuple[str, ...] = _ids(
    "100 101 102 103 104 105 106 107 108 109 111 112 113 114 115 116 117 118 119 121 122 123 "
    "124 200 201 202 203 205 207 208 209 210 212 213 214 215 217 219 220 221 222 223 228 230 "
    "231 232 233 234"
)
EXTENSIONS: tuple[str, ...] = (".hea", ".atr", ".dat")

# de Chazal, O'Dwyer, Reilly 2004: the inter-patient split. The four paced records
# (102, 104, 107, 217) are in neither set.
DS1: tuple[str, ...] = _ids(
    "101 106 108 109 112 114 115 116 118 119 122 124 201 203 205 207 208 209 215 220 223 230"
)
DS2: tuple[str, ...] = _ids(
    "100 103 105 111 113 117 121 123 200 202 210 212 213 214 219 221 222 228 231 232 233 234"
)

FS_HZ = 360
# AAMI EC57 beat classes (index = class) and the MIT-BIH symbols that map onto them.
AAMI_SYMBOLS: tuple[str, ...] = ("N", "S", "V", "F", "Q")
AAMI_MAP: dict[str, int] = {
    **dict.fromkeys("NLRej", 0),  # N: normal, bundle branch blocks, escapes
    **dict.fromkeys("AaJS", 1),  # S: supraventricular ectopic
    **dict.fromkeys("VE", 2),  # V: ventricular ectopic
    "F": 3,  # F: fusion of ventricular and normal
    **dict.fromkeys("/fQ", 4),  # Q: paced, fusion of paced and normal, unclassifiable
}


@cache
def pinned_sha256() -> dict[str, str]:
    """File name -> SHA-256 for all 144 files of mitdb 1.0.0, as PhysioNet publishes them."""
    text = resources.files("heartcli.data").joinpath("mitdb.sha256").read_text(encoding="utf-8")
    sums: dict[str, str] = {}
    for line in text.splitlines():
        if line.strip():
            digest, name = line.split()
            sums[name.lstrip("*")] = digest
    return sums


def record_files(record: str) -> list[str]:
    return [f"{record}{ext}" for ext in EXTENSIONS]
