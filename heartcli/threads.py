"""How many CPU threads torch should use here, now: ``[train] threads = "auto"``.

Two facts of the machines heart runs on shape this (measured on 2-vCPU cloud machines,
examples/mitbih.toml's model, bf16, batch 256; benchmarks/bench_contention.py):

- Cores are what the process may really use: its CPU affinity and its cgroup's CPU quota
  (a container limited to 2 CPUs on a 64-core host has 2), not ``os.cpu_count()``.
- Another busy program makes torch's threads wait on a thread that the scheduler has
  parked. Two threads beside one busy loop trained at 700 beats/s against 2,057 alone,
  while one thread kept 1,347. So ``auto`` counts the CPUs other programs keep busy and
  uses the rest, at least one. Programs at a lower priority (``nice`` > 0) are not
  counted: the scheduler gives their CPU to heart as soon as it asks for it.

The count is measured from ``/proc/stat`` (busy time of the whole machine) less this
process's own CPU time, over a window: the data loading before the first epoch, then each
epoch, so a run that starts beside a busy program and outlives it goes back to every core.
Where ``/proc/stat`` does not exist (macOS, Windows) ``auto`` uses every usable core.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

MIN_WINDOW_S = 0.2  # shortest window that /proc/stat's 10 ms ticks can measure
PROC_STAT = Path("/proc/stat")


def cgroup_cpus(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The cgroup's CPU quota in CPUs (v2 ``cpu.max`` or v1 ``cfs_quota_us``), None if none."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity, capped by its cgroup's quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cpus = os.cpu_count() or 1
    quota = cgroup_cpus()
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def _busy_ticks(count_niced: bool) -> int | None:
    """Busy clock ticks of the whole machine since boot (``/proc/stat``'s first line)."""
    try:
        fields = PROC_STAT.read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    # cpu user nice system idle iowait irq softirq steal guest guest_nice
    values = [int(v) for v in fields[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values
    busy = user + system + irq + softirq + steal
    return busy + nice if count_niced else busy


@dataclass
class CpuMeter:
    """CPUs kept busy by other programs between :meth:`reset` and :meth:`others`."""

    count_niced: bool = field(default_factory=lambda: os.nice(0) > 0)
    _ticks: int | None = None
    _own: float = 0.0
    _wall: float = 0.0

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        times = os.times()
        self._ticks = _busy_ticks(self.count_niced)
        self._own = times.user + times.system
        self._wall = time.monotonic()

    def seconds(self) -> float:
        return time.monotonic() - self._wall

    def others(self) -> float | None:
        """Mean number of CPUs other programs used; None where it cannot be measured."""
        ticks = _busy_ticks(self.count_niced)
        if ticks is None or self._ticks is None:
            return None
        wall = self.seconds()
        if wall <= 0:
            return None
        times = os.times()
        own = times.user + times.system - self._own
        busy = (ticks - self._ticks) / os.sysconf("SC_CLK_TCK")
        return max(0.0, (busy - own) / wall)


def auto_threads(usable: int, others: float | None) -> int:
    """The CPUs left to heart: usable ones less those others keep busy, at least one."""
    if others is None:
        return usable
    return max(1, min(usable, usable - math.floor(others + 0.5)))


@dataclass
class ThreadChoice:
    """What a run uses and why (the manifest's ``threads`` and the header of `heart train`)."""

    threads: int
    setting: int | str  # the config's value: "auto", 0 (every usable CPU) or a count
    usable: int
    others: float | None = None  # CPUs other programs kept busy when it was chosen

    def describe(self) -> str:
        count = f"{self.threads} thread{'s' if self.threads != 1 else ''}"
        if self.setting == "auto":
            busy = "" if self.others is None else f", {self.others:.1f} busy elsewhere"
            return f"{count} (auto: {self.usable} usable CPUs{busy})"
        return count

    def warning(self) -> str | None:
        if isinstance(self.setting, int) and self.setting > self.usable:
            return (
                f"train.threads = {self.setting} is more than the {self.usable} CPUs this "
                'process may use; threads will wait on each other (use "auto")'
            )
        return None


class ThreadPolicy:
    """torch's thread count for one run: fixed, or ``auto`` and re-checked every epoch.

    ``cap`` bounds ``auto`` (a tune trial that shares the machine with other trials).
    """

    def __init__(self, setting: int | str, cap: int | None = None) -> None:
        self.setting = setting
        self.usable = usable_cpus()
        self.cap = max(1, min(cap, self.usable)) if cap else self.usable
        self.meter = CpuMeter()
        self.choice = ThreadChoice(threads=1, setting=setting, usable=self.usable)

    def _pick(self) -> ThreadChoice:
        if self.setting == "auto":
            others = self.meter.others()
            threads = min(self.cap, auto_threads(self.usable, others))
            return ThreadChoice(threads, self.setting, self.usable, others)
        count = int(self.setting) or self.cap
        return ThreadChoice(count, self.setting, self.usable)

    def start(self, wait: bool = True) -> ThreadChoice:
        """Choose the first count (``auto``: from the window since this policy was made).

        ``wait=False`` (inference, where 0.2 s matters) measures only a window that is
        already long enough, and otherwise takes every usable CPU.
        """
        import torch

        short = self.meter.seconds() < MIN_WINDOW_S
        if self.setting == "auto" and short and wait:
            time.sleep(MIN_WINDOW_S - self.meter.seconds())
        elif self.setting == "auto" and short:
            self.meter._ticks = None  # too short to tell: no measurement
        self.choice = self._pick()
        torch.set_num_threads(self.choice.threads)
        self.meter.reset()
        return self.choice

    def recheck(self) -> ThreadChoice | None:
        """After an epoch: the new choice if the load changed it, else None."""
        if self.setting != "auto" or self.meter.seconds() < MIN_WINDOW_S:
            return None
        import torch

        choice = self._pick()
        self.meter.reset()
        if choice.threads == self.choice.threads:
            return None
        self.choice = choice
        torch.set_num_threads(choice.threads)
        return choice


def passive_openmp() -> None:
    """Let OpenMP's idle threads sleep instead of spinning, unless the user chose otherwise.

    libgomp reads ``OMP_WAIT_POLICY`` once, when torch loads it, so this runs in the entry
    point before anything imports torch. Spinning threads steal the CPU from a parked
    thread they wait for: beside one busy program, torch's default (active waiting) trained
    at 700 beats/s, passive waiting at 1,246 (2 threads; 2,057 and 2,052 on an idle machine).

    A value libgomp does not know (it takes ACTIVE or PASSIVE, any case, and silently falls
    back to its default for anything else) is replaced by PASSIVE, and
    :func:`omp_wait_policy` says what was given.
    """
    global _REPLACED_POLICY
    given = os.environ.get("OMP_WAIT_POLICY")
    if given is not None and given.strip().upper() not in OMP_POLICIES:
        _REPLACED_POLICY = given
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


OMP_POLICIES = ("ACTIVE", "PASSIVE")
_REPLACED_POLICY: str | None = None


def omp_wait_policy() -> str:
    """The OpenMP wait policy in effect, in words (what a run's start line shows)."""
    policy = os.environ.get("OMP_WAIT_POLICY")
    if policy is None:
        return "(libgomp default)"
    if _REPLACED_POLICY is not None:
        shown = _REPLACED_POLICY[:40] + ("..." if len(_REPLACED_POLICY) > 40 else "")
        return f"{policy} (OMP_WAIT_POLICY={shown!r} is not ACTIVE or PASSIVE)"
    if policy.strip().upper() not in OMP_POLICIES:
        return f"libgomp's default ({policy[:40]!r} is not ACTIVE or PASSIVE)"
    return policy
