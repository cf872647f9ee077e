"""Shared fixtures and builders: the real MIT-BIH records, the bundled sample, a CLI runner,
the one trained run of the session, and the configs the tests train and search with.

Two small configs, each defined once here:

- **TINY** (:data:`TINY`, written by :func:`make_config`) is what "tiny" means in these
  tests: a one-layer CNN of 8 channels (kernel 3, max pooling, no squeeze-excite, no
  residual, 4 pooled outputs, one 16-unit dense layer) on the bundled sample, 150 beats a
  class drawn at random, 1 epoch of batch 64 on 1 thread, MLflow off. A test states only
  the keys it needs to differ (its search space, its epochs, its tracking), section by
  section: ``make_config(tmp_path, train={"epochs": 4}, search={...})``.
- **QUICK** (:data:`QUICK_SETS`; :func:`quick_args` gives a command's ``--config`` and
  ``--set`` arguments) is the quick-start recipe (``examples/quickstart.toml``, a 3-layer
  CNN) shrunk: the bundled sample, 200 beats a class, 1 epoch, MLflow off. It is the
  config of :func:`trained_run`, the one run trained per session; a test adds its own
  ``--set`` after these (the last one wins).

``examples/tiny.toml`` is a different thing: the project's device recipe (test_edge).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from heartcli.cli.app import app

# The `mlflow server`s the tests start run no job runner: MLflow 3 starts a pool of huey
# consumers beside every server (six more Python processes, seconds of CPU each), which no
# test uses.
os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")

REPO = Path(__file__).resolve().parents[1]
MITDB = REPO.parent / "shared" / "data" / "mitdb"
SAMPLE = REPO / "data" / "sample"
EXAMPLES = REPO / "examples"
QUICKSTART = EXAMPLES / "quickstart.toml"

# The one tiny config (see the module docstring); make_config() writes it, section by section.
TINY: dict[str, dict[str, Any]] = {
    "data": {"dir": str(SAMPLE)},
    "tracking": {"enabled": False},
    "model": {
        "conv_layers": 1,
        "channels": [8],
        "kernel_sizes": [3],
        "pooling": ["max"],
        "squeeze_excite": False,
        "residual": False,
        "pool_output": 4,
        "fc": [16],
    },
    "resample": {"strategy": "random", "target": 150},
    "train": {"epochs": 1, "batch_size": 64, "threads": 1},
}

# The quick-start recipe shrunk (see the module docstring), as `--set` overrides.
QUICK_SETS = ("resample.target=200", "train.epochs=1")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist (`make test`), the tests of a file that builds its own module- or
    session-scoped fixture (a trained search, an export, a server) run on one worker, so the
    fixture is built once, not once per worker; the Ray tests keep their own group."""
    for item in items:
        if item.get_closest_marker("xdist_group") is not None:
            continue
        here = item.nodeid.split("::")[0]
        info = getattr(item, "_fixtureinfo", None)
        defs = info.name2fixturedefs.values() if info is not None else ()
        if any(d[-1].scope in ("module", "session") and d[-1].baseid == here for d in defs):
            item.add_marker(pytest.mark.xdist_group(here.removeprefix("tests/")))


def pytest_configure(config: pytest.Config) -> None:
    """Refuse `--dist loadgroup` where it would group nothing: on pytest 9.2 pytest-xdist
    3.8 cannot mark a test's group (pytest-xdist#1386), and the Ray tests would run beside
    each other (pyproject.toml keeps pytest below 9.2)."""
    from packaging.version import Version  # pytest's own dependency

    release = Version(pytest.__version__).release[:2]
    if config.getoption("dist", default="no") == "loadgroup" and release >= (9, 2):
        raise pytest.UsageError(
            f"pytest-xdist's --dist loadgroup groups nothing on pytest {pytest.__version__} "
            "(pytest-xdist#1386); install the locked versions: make setup"
        )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (for a server a test starts)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def mitdb_dir() -> Path:
    """The real MIT-BIH Arrhythmia Database (48 records), read-only."""
    if not (MITDB / "100.dat").exists():
        pytest.fail(f"the real records are missing at {MITDB}; the tests need ../shared/data/mitdb")
    return MITDB


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """The bundled sample of real beats under data/sample."""
    return SAMPLE


@dataclass
class Built:
    dir: Path  # the 48-record dataset (treat as read-only: copy it to change it)
    sample: Path  # its --sample-out
    summary: dict[str, Any]  # `heart --json fetch` of the build
    stderr: str  # what the build wrote on stderr


@pytest.fixture(scope="session")
def mitbih_build(mitdb_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Built:
    """`heart --json fetch --source <mitdb> --out DIR --sample-out SAMPLE`, once per session
    (about 8 s): the 48 records built, shared by every test that reads the built dataset."""
    root = tmp_path_factory.mktemp("mitbih")
    out, sample = root / "mitbih", root / "sample"
    result = Heart()("--json", "fetch", "--source", mitdb_dir, "--out", out, "--sample-out", sample)
    return Built(out, sample, json.loads(result.stdout), result.stderr)


@pytest.fixture(scope="session")
def mitbih(mitbih_build: Built) -> Path:
    """The 48 MIT-BIH records built by `heart fetch` (default parameters), once per session.
    Read-only: a test that changes a dataset changes its own copy,
    ``shutil.copytree(mitbih, tmp_path / "d")``."""
    return mitbih_build.dir


class Heart:
    """Runs `heart` in-process through Typer's CliRunner at a fixed width, no terminal."""

    def __init__(self) -> None:
        self.runner = CliRunner(env={"COLUMNS": "120", "NO_COLOR": "1", "TERM": "dumb"})

    def __call__(self, *args: str | os.PathLike[str], expect: int | None = 0) -> Any:
        result = self.runner.invoke(app, [str(a) for a in args], catch_exceptions=False)
        if expect is not None:
            assert result.exit_code == expect, (
                f"exit {result.exit_code} != {expect}\nstdout:\n{result.stdout}\n"
                f"stderr:\n{result.stderr}"
            )
        return result

    def json(self, *args: str | os.PathLike[str]) -> Any:
        return json.loads(self("--json", *args).stdout)


@pytest.fixture
def heart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Heart:
    """The CLI, run from an empty temp folder (MLflow store and runs land there)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return Heart()


def all_commands(group: Any = None, prefix: tuple[str, ...] = ()) -> Any:
    """Every (command path, Click command) of the Typer app, groups and their subcommands."""
    import typer.main

    group = group or typer.main.get_command(app)
    for name, command in group.commands.items():
        path = (*prefix, name)
        yield path, command
        if hasattr(command, "commands"):
            yield from all_commands(command, path)


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


# --------------------------------------------------------------------------- processes


def heart_env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    out["PYTHONPATH"] = str(REPO)
    return out


def heart_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "heartcli", *args]


def start(cwd: Path, *args: str) -> subprocess.Popen:
    """`heart ARGS` in the background, its stderr kept."""
    return subprocess.Popen(
        heart_cmd(*args),
        cwd=cwd,
        env=heart_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(cwd: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`heart ARGS` to its end, stdout and stderr kept."""
    return subprocess.run(
        heart_cmd(*args), cwd=cwd, env=heart_env(), capture_output=True, text=True, timeout=timeout
    )


def read_state(search: Path) -> dict:
    try:
        return json.loads((search / "search.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {"trials": []}


def wait_for(proc: subprocess.Popen, what: str, check, timeout: float = 900):
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert proc.poll() is None, f"the search ended before {what}: {proc.stderr.read()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def interrupt(proc: subprocess.Popen, what: str, check) -> tuple[Any, str]:
    """SIGTERM ``proc`` once ``check`` holds: it must end as an interrupted heart (exit
    130, last line ``error: interrupted``, no traceback). What ``check`` gave, and stderr."""
    try:
        found = wait_for(proc, what, check)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "error: interrupted"
    return found, err


def cli(
    *args: str | os.PathLike[str],
    cwd: Path,
    timeout: float = 120,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """`heart` as a user runs it: its own process (worker tracebacks reach its stderr)."""
    full = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    full.update({"OMP_WAIT_POLICY": "PASSIVE", "COLUMNS": "120", **(env or {})})
    return subprocess.run(
        [sys.executable, "-m", "heartcli", *map(str, args)],
        cwd=cwd,
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_error(stderr: str) -> str:
    """The stderr of a failed command: one `error:` line and no traceback."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr
    return lines[0]


def error_line(result: Any, exit_code: int) -> str:
    """A failed in-process command's one line: exit ``exit_code``, nothing else on stderr
    but one `error: ...` line, no traceback."""
    assert result.exit_code == exit_code, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in result.stderr
    return lines[0]


def sh_order(records: list[dict]) -> list[int]:
    """Successive halving's ranking: ran its course, then the rung reached, then value."""
    done = [r for r in records if r["metric"] is not None and r["status"] != "failed"]
    ranked = sorted(
        done,
        key=lambda r: (
            r["status"] not in ("completed", "early_stopped"),
            -max([int(e) for e in r["rungs"]] or [0]),
            -r["metric"],
            r["number"],
        ),
    )
    return [r["number"] for r in ranked]


_STORE: list[Path] = []


def mlflow_store(where: Path) -> None:
    """An empty MLflow store in ``where`` (mlflow.db, where heart's default tracking URI
    points when it runs from there): a copy of one made once per test process. Making a
    store runs MLflow's database migrations, 2-3 s each time; the searches that log to
    MLflow need a store, not its making (tests/cli/test_train.py checks a new one)."""
    if not _STORE:
        import contextlib
        import tempfile
        import warnings

        from mlflow.tracking import MlflowClient

        path = Path(tempfile.mkdtemp(prefix="heart-mlflow-")) / "mlflow.db"
        # made from its own folder: the store's Default experiment records the folder it
        # was made from (./mlruns), which must not be the repository
        with warnings.catch_warnings(), contextlib.chdir(path.parent):
            warnings.simplefilter("ignore")
            MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
        _STORE.append(path)
    shutil.copyfile(_STORE[0], where / "mlflow.db")


# --------------------------------------------------------------------------- configs


def make_config(where: Path, name: str = "tiny.toml", **sections: dict[str, Any] | None) -> Path:
    """Write :data:`TINY` to ``where/name`` (or to ``where`` itself when it ends in .toml),
    each keyword replacing the keys it names in that section (a key or a section given as
    ``None`` is dropped: the default holds). A table value (``search={"space": {...}}``,
    ``data={"classes": {...}}``) is written as a sub-table.
    """
    path = where if where.suffix == ".toml" else where / name
    config: dict[str, dict[str, Any]] = {k: dict(v) for k, v in TINY.items()}
    for section, keys in sections.items():
        if keys is None:
            config.pop(section, None)
        else:
            config.setdefault(section, {}).update(keys)
            config[section] = {k: v for k, v in config[section].items() if v is not None}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(toml(config))
    return path


def toml(config: dict[str, dict[str, Any]]) -> str:
    """TOML text of ``config``: one table per section, a table value as a sub-table of
    inline values (the way the tests' configs were written by hand)."""
    out: list[str] = []
    for section, keys in config.items():
        tables = {k: v for k, v in keys.items() if isinstance(v, dict)}
        out.append(f"[{section}]")
        out += [f"{_key(k)} = {_value(v)}" for k, v in keys.items() if k not in tables]
        for name, table in tables.items():
            out += ["", f"[{section}.{_key(name)}]"]
            out += [f"{_key(k)} = {_value(v)}" for k, v in table.items()]
        out.append("")
    return "\n".join(out)


def _key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(map(_value, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML for {value!r}")


def quick_args(
    *sets: str, data: str | os.PathLike[str] = SAMPLE, tracking: bool = False
) -> list[str]:
    """``--config examples/quickstart.toml`` and the ``--set`` overrides of QUICK_SETS on
    ``data``, then ``sets`` (the last wins); MLflow off unless ``tracking``."""
    args = ["--config", str(QUICKSTART), "--set", f"data.dir={data}"]
    for item in (*QUICK_SETS, *sets):
        args += ["--set", item]
    if not tracking:
        args += ["--set", "tracking.enabled=false"]
    return args


# The quick-start CNN on the sample's inter-patient split without Q, every class kept.
QUICK_INTER_PATIENT = quick_args(
    "data.split=inter-patient", 'data.classes={Q = "drop"}', "resample.min_beats=1",
    "train.scheduler=cosine",
)  # fmt: skip


def strata(beats: Any, records: Any) -> set[str]:
    """The classes S and V present among the beats of ``records``."""
    import numpy as np

    mask = np.isin(beats.record.astype(str), list(records))
    return {beats.classes[c] for c in np.unique(beats.y[mask])} & {"S", "V"}


# --------------------------------------------------------------------------- the trained run


@dataclass
class Exported:
    run: Path  # an evaluated copy of the trained run (treat as read-only)
    export: Path  # its export: every format and int8 (dynamic)
    summary: dict[str, Any]  # `heart --json export` of that export


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's one trained run: QUICK (the quick-start CNN, 1 epoch on the bundled
    sample), trained once through `heart train`, not evaluated. Read-only: a test that
    changes a run works on :func:`copy_run` of it."""
    runs = tmp_path_factory.mktemp("trained") / "runs"
    Heart()("-q", "train", *quick_args(f"train.runs_dir={runs}"), "--name", "tiny")
    return runs / "tiny"


@pytest.fixture(scope="session")
def exported(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    """The trained run, evaluated and exported in every format with an int8 copy
    (`heart export --format all --quantize dynamic`), once per session."""
    base = tmp_path_factory.mktemp("exported")
    run = copy_run(trained_run, base / "runs" / "tiny")
    return evaluate_and_export(run, base / "export", "--format", "all", "--quantize", "dynamic")


def evaluate_and_export(run: Path, out: Path, *export: str) -> Exported:
    """`heart evaluate RUN` (its eval.json), then `heart export RUN EXPORT... --out OUT`."""
    heart = Heart()
    heart("-q", "--json", "evaluate", run)
    return Exported(run, out, heart.json("export", run, *export, "--out", out))


def copy_run(run: Path, dest: Path) -> Path:
    """A private copy of a run folder, free to change."""
    return Path(shutil.copytree(run, dest))


def copy_record(mitdb_dir: Path, dest: Path, name: str = "100", atr: bool = True) -> Path:
    """A real record's .hea and .dat (and its .atr) copied into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for ext in (".hea", ".dat") + ((".atr",) if atr else ()):
        shutil.copy(mitdb_dir / f"{name}{ext}", dest / f"{name}{ext}")
    return dest / name


def record_at_250_hz(mitdb_dir: Path, dest: Path, sampto: int) -> Path:
    """Record 100's first ``sampto`` samples (360 Hz) rewritten at 250 Hz, with its .atr
    moved to the new rate, as ``dest/slow``."""
    import numpy as np
    import wfdb
    from scipy.signal import resample_poly

    rec = wfdb.rdrecord(str(mitdb_dir / "100"), sampto=sampto, channels=[0])
    ann = wfdb.rdann(str(mitdb_dir / "100"), "atr", sampto=sampto)
    slow = resample_poly(rec.p_signal[:, 0], 25, 36)
    dest.mkdir(parents=True, exist_ok=True)
    wfdb.wrsamp(
        "slow", fs=250, units=["mV"], sig_name=["MLII"], p_signal=slow[:, None],
        fmt=["16"], adc_gain=[200.0], baseline=[0], write_dir=str(dest),
    )  # fmt: skip
    samples = np.rint(np.asarray(ann.sample) * 250 / 360).astype(int)
    wfdb.wrann("slow", "atr", samples, symbol=ann.symbol, write_dir=str(dest), fs=250)
    return dest / "slow"


def cut_record(mitdb_dir: Path, dest: Path, name: str, minutes: float = 8) -> Path:
    """The first minutes of a real record (both signals, raw units, its .atr), as a record
    of its own: detection on it costs a few seconds instead of ~10."""
    import wfdb

    end = int(minutes * 60 * 360)
    rec = wfdb.rdrecord(str(mitdb_dir / name), sampto=end, physical=False)
    ann = wfdb.rdann(str(mitdb_dir / name), "atr", sampto=end - 1)
    dest.mkdir(parents=True, exist_ok=True)
    wfdb.wrsamp(
        name, fs=rec.fs, units=rec.units, sig_name=rec.sig_name, d_signal=rec.d_signal,
        fmt=rec.fmt, adc_gain=rec.adc_gain, baseline=rec.baseline, write_dir=str(dest),
    )  # fmt: skip
    wfdb.wrann(name, "atr", ann.sample, symbol=ann.symbol, write_dir=str(dest))
    return dest / name
