"""`heart tune --backend ray --address` on a real 2-node Ray cluster with a real MLflow server.

Everything runs inside a network namespace whose only interface is the loopback (so no
server can listen on the machine's network address, whatever Ray binds), started with
`unshare` and entered with `nsenter`:

- an ``mlflow server`` on 127.0.0.1:5000 (the tracking URI of every search here);
- a Ray head (1 CPU) started from the driver's folder, with token authentication;
- a second Ray node (1 CPU) in its own mount namespace: the test's whole folder and the
  repository's data/ are covered by empty tmpfs there, so its trials run from a working
  folder of their own, with no access to the driver's runs/, data/ or MLflow store;
- the `heart` CLI as the driver, run where a user runs it: on the head's machine.

Every process in the namespace is killed at the end (also when a test fails).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import make_config

# One Ray cluster on fixed ports (6379, 5000): these tests, and every other test that starts
# Ray, run on one pytest-xdist worker (`--dist loadgroup`), one after another.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("ray")]

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
GCS = "127.0.0.1:6379"
MLFLOW = "http://127.0.0.1:5000"

# TINY (conftest) with the quick-start's three conv layers, read from the driver's folder,
# logged to the MLflow server: 4 trials, 2 at a time.
CONFIG: dict[str, dict[str, Any]] = {
    "data": {"dir": "data/sample"},
    "tracking": {"enabled": None, "uri": MLFLOW, "experiment": "cluster"},
    "model": {
        "conv_layers": 3, "channels": [16, 32, 32], "kernel_sizes": [7, 5, 3],
        "pooling": ["max", "max", "none"], "squeeze_excite": None, "residual": None,
        "fc": [64, 32, 16],
    },
    "resample": {"target": 300, "majority": "cap"},
    "train": {"epochs": 2, "lr": 0.003, "patience": 10, "threads": None},
    "search": {
        "evals": 4, "seed": 42, "pruner": "none", "concurrency": 2,
        "space": {
            "train.lr": {"loguniform": [1e-3, 1e-2]},
            "train.batch_size": {"choice": [32, 64, 128]},
            "model.dropout": {"uniform": [0.1, 0.4]},
            "model.kernel_sizes": {"per_layer": {"choice": [3, 5, 7]}},
            # a seed: every trial carves its own validation fold from the whole split Ray
            # hands it
            "train.seed": {"choice": [1, 2]},
        },
    },
}  # fmt: skip

WAIT_FOR_CLUSTER = """
import socket, sys, time, ray
deadline = time.time() + float(sys.argv[1])
while time.time() < deadline:
    try:
        socket.create_connection(("127.0.0.1", 5000), timeout=1).close()
        break
    except OSError:
        time.sleep(0.5)
else:
    sys.exit("mlflow server did not start")
ray.init(address=sys.argv[2], include_dashboard=False, log_to_driver=False)
while time.time() < deadline:
    if sum(n["Alive"] for n in ray.nodes()) == int(sys.argv[3]):
        sys.exit(0)
    time.sleep(0.5)
sys.exit(f"{sum(n['Alive'] for n in ray.nodes())} Ray nodes alive, not {sys.argv[3]}")
"""


def _can_unshare() -> bool:
    if not (shutil.which("unshare") and shutil.which("nsenter") and shutil.which("ip")):
        return False
    probe = ["unshare", "-Urn", "sh", "-c", "ip link set lo up"]
    return subprocess.run(probe, capture_output=True).returncode == 0


class Loopback:
    """A network namespace with only ``lo``; commands run inside it through nsenter."""

    def __init__(self) -> None:
        self.holder = subprocess.Popen(
            ["unshare", "-Urn", "sh", "-c", "ip link set lo up && exec sleep 100000"],
            start_new_session=True,
        )
        self.netns = ""
        deadline = time.time() + 10
        while time.time() < deadline:
            ns = os.readlink(f"/proc/{self.holder.pid}/ns/net")
            if ns != os.readlink("/proc/self/ns/net"):
                self.netns = ns
                break
            time.sleep(0.05)
        assert self.netns, "unshare did not make a network namespace"

    def cmd(self, *args: str | os.PathLike[str]) -> list[str]:
        return ["nsenter", "-t", str(self.holder.pid), "-U", "-n", "--", *map(str, args)]

    def popen(self, *args: str | os.PathLike[str], **kw: Any) -> subprocess.Popen:
        return subprocess.Popen(self.cmd(*args), start_new_session=True, **kw)

    def run(self, *args: str | os.PathLike[str], **kw: Any) -> subprocess.CompletedProcess:
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        return subprocess.run(self.cmd(*args), **kw)

    def pids(self, mnt: str | None = None) -> list[int]:
        """Processes inside (and, with ``mnt``, in that mount namespace)."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == self.holder.pid:
                continue
            with contextlib.suppress(OSError):
                if os.readlink(entry / "ns/net") != self.netns:
                    continue
                if mnt is not None and os.readlink(entry / "ns/mnt") != mnt:
                    continue
                found.append(int(entry.name))
        return found

    def close(self) -> None:
        for _ in range(20):
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
        self.holder.kill()
        self.holder.wait(timeout=10)


class Cluster:
    """The namespace, its servers and the folders of the driver and the second node."""

    def __init__(self, root: Path, sample_dir: Path):
        self.root = root
        self.driver = root / "driver"
        shutil.copytree(sample_dir, self.driver / "data" / "sample")
        make_config(self.driver / "quick.toml", **CONFIG)
        (root / "server").mkdir()
        (root / "home").mkdir()
        self.ray_tmp = Path(tempfile.mkdtemp(prefix="hr", dir="/tmp"))  # short socket paths
        self.token = secrets.token_hex(32)
        self.env = {
            **os.environ,
            "HOME": str(root / "home"),
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": self.token,
            "RAY_USAGE_STATS_ENABLED": "0",
            "MPLBACKEND": "Agg",
            "NO_COLOR": "1",
            "COLUMNS": "120",
        }
        self.env.pop("MLFLOW_TRACKING_URI", None)
        self.env.pop("RAY_ADDRESS", None)
        self.ns = Loopback()
        self.logs: list[Path] = []
        self.worker_mnt = ""

    def start(self) -> None:
        store = f"sqlite:///{self.root / 'server' / 'mlflow.db'}"
        artifacts = str(self.root / "server" / "artifacts")
        self._spawn(
            "mlflow",
            [BIN / "mlflow", "server", "--host", "127.0.0.1", "--port", "5000", "--workers", "1",
             "--backend-store-uri", store, "--artifacts-destination", artifacts],
            cwd=self.root / "server",
        )  # fmt: skip
        self._spawn(
            "head",
            [BIN / "ray", "start", "--head", "--node-ip-address", "127.0.0.1", "--port", "6379",
             "--num-cpus", "1", "--include-dashboard", "false", "--disable-usage-stats",
             "--temp-dir", str(self.ray_tmp), "--block"],
            cwd=self.driver,
        )  # fmt: skip
        self.wait(nodes=1)
        self.start_worker()
        self.wait(nodes=2)

    def start_worker(self) -> None:
        """The second node, which sees neither this test's folder nor the repo's data/."""
        script = (
            f"mount -t tmpfs none {self.root} && mount -t tmpfs none {REPO / 'data'} && "
            f"mkdir -p {self.root / 'worker'} && cd {self.root / 'worker'} && "
            f"HOME={self.root / 'worker'} exec {BIN / 'ray'} start --address {GCS} "
            "--node-ip-address 127.0.0.1 --num-cpus 1 --disable-usage-stats --block"
        )
        proc = self._spawn("worker", ["unshare", "-m", "sh", "-c", script], cwd="/")
        deadline = time.time() + 10
        while time.time() < deadline and not self.worker_mnt:
            with contextlib.suppress(OSError):
                mnt = os.readlink(f"/proc/{proc.pid}/ns/mnt")
                if mnt != os.readlink("/proc/self/ns/mnt"):
                    self.worker_mnt = mnt
            time.sleep(0.05)

    def _spawn(self, name: str, args: list[Any], cwd: Any) -> subprocess.Popen:
        log = self.root / f"{name}.log"
        self.logs.append(log)
        with open(log, "ab") as fh:
            return self.ns.popen(*args, cwd=cwd, env=self.env, stdout=fh, stderr=fh)

    def wait(self, nodes: int, timeout: float = 240) -> None:
        r = self.python("-c", WAIT_FOR_CLUSTER, str(timeout), GCS, str(nodes), timeout=timeout)
        assert r.returncode == 0, r.stderr[-2000:] + self.tail()

    def python(self, *args: str, timeout: float = 600, env: Any = None) -> Any:
        return self.ns.run(
            sys.executable, *args, cwd=self.driver, env=env or self.env, timeout=timeout
        )

    def heart(self, *args: str | os.PathLike[str], env: Any = None, timeout: float = 600) -> Any:
        return self.ns.run(
            BIN / "heart", *args, cwd=self.driver, env=env or self.env, timeout=timeout
        )

    def heart_popen(self, *args: str | os.PathLike[str]) -> subprocess.Popen:
        return self.ns.popen(
            BIN / "heart",
            *args,
            cwd=self.driver,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def tail(self) -> str:
        return "".join(f"\n--- {p.name}\n{p.read_text()[-1500:]}" for p in self.logs if p.exists())

    def mlflow(self) -> Any:
        """The server's own store, read directly (not through the server)."""
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=f"sqlite:///{self.root / 'server' / 'mlflow.db'}")

    def close(self) -> None:
        self.ns.close()
        shutil.rmtree(self.ray_tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, sample_dir: Path) -> Iterator[Cluster]:
    if not _can_unshare():
        pytest.fail("these tests need unshare/nsenter/ip and unprivileged user namespaces")
    c = Cluster(tmp_path_factory.mktemp("cluster"), sample_dir)
    try:
        c.start()
        yield c
    finally:
        c.close()


def one_line_error(r: Any) -> str:
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    return lines[0]


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def children_of(client: Any, parent_id: str) -> dict[str, Any]:
    parent = client.get_run(parent_id)
    runs = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'"
    )
    return {r.info.run_name: r for r in runs}


def test_connection_problems_are_one_line_and_claim_nothing(cluster):
    base = ("tune", "--config", "quick.toml", "--backend", "ray", "--name", "refused")
    no_token = {k: v for k, v in cluster.env.items() if not k.startswith("RAY_AUTH")}
    wrong = {**cluster.env, "RAY_AUTH_TOKEN": "0" * 64}
    cases = [
        # --jobs counts the cluster's trials, not this machine's cores.
        (("--address", "127.0.0.1:1", "--jobs", "64"), None, 1, "nothing answers at 127.0.0.1:1"),
        (("--address", "ray://127.0.0.1:10001"), None, 2, "Ray Client (ray://)"),
        (("--address", "head"), None, 2, "not HOST:PORT"),
        (("--address", GCS), no_token, 2, "refused this process's token"),
        (("--address", GCS), wrong, 2, "refused this process's token"),
    ]
    for extra, env, code, words in cases:
        started = time.perf_counter()
        r = cluster.heart(*base, *extra, env=env)
        seconds = time.perf_counter() - started
        assert r.returncode == code, (extra, r.stderr)
        line = one_line_error(r)
        assert words in line, line
        if "token" in words:
            assert "RAY_AUTH_MODE=token" in line and "RAY_AUTH_TOKEN" in line, line
        assert seconds < 15, (extra, seconds)  # Ray alone retries for 20 s
        assert not (cluster.driver / "runs" / "refused").exists()  # claimed only after connect


def test_a_search_across_two_nodes_comes_back_to_the_driver(cluster):
    r = cluster.heart(
        "--json",
        "tune",
        "--config",
        "quick.toml",
        "--name",
        "two",
        "--backend",
        "ray",
        "--address",
        GCS,
    )
    assert r.returncode == 0, r.stderr[-3000:] + cluster.tail()
    summary = json.loads(r.stdout)  # nothing but the JSON document, with an HTTP tracking URI
    assert summary["trials"] == 4 and summary["status_counts"] == {"completed": 4}, summary
    records = summary["records"]
    assert sorted(t["number"] for t in records) == [1, 2, 3, 4]
    # The second node ran trials too, with no access to this folder.
    assert len({t["node"] for t in records}) == 2, [t["node"] for t in records]
    search = cluster.driver / "runs" / "two"
    client = cluster.mlflow()
    children = children_of(client, summary["tracking_run_id"])
    assert sorted(children) == ["trial-001", "trial-002", "trial-003", "trial-004"]
    for t in records:
        folder = search / f"trial-{t['number']:03d}"
        for name in ("manifest.json", "history.csv", "model.safetensors", "config.toml"):
            assert (folder / name).exists(), folder / name
        manifest = json.loads((folder / "manifest.json").read_text())
        run = children[folder.name]
        assert manifest["status"] == "completed" == run.data.tags["heart.status"]
        assert manifest["tracking"]["run_id"] == run.info.run_id
        assert manifest["data"]["manifest_sha256"]  # filled in by the driver
        assert run.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_macro_f1")]
        assert steps == [1, 2]
        assert run.data.params["train.lr"] == str(t["params"]["train.lr"])
        stored = Path(run.info.artifact_uri.replace("mlflow-artifacts:", "")).relative_to("/")
        assert (cluster.root / "server" / "artifacts" / stored / "model.safetensors").exists()
    assert not [
        run
        for run in client.search_runs([children["trial-001"].info.experiment_id])
        if run.info.status == "RUNNING"
    ]
    # The best trial is evaluated on the driver (and logged to its own run).
    r = cluster.heart("--json", "evaluate", "runs/two/best")
    assert r.returncode == 0, r.stderr[-2000:]
    best = children[f"trial-{summary['best']['number']:03d}"]
    assert "test_macro_f1" in client.get_run(best.info.run_id).data.metrics
    # The best trial exports from its MLflow run's artifacts alone.
    stored = Path(best.info.artifact_uri.replace("mlflow-artifacts:", "")).relative_to("/")
    alone = cluster.driver / "from-mlflow"
    shutil.copytree(cluster.root / "server" / "artifacts" / stored, alone)
    r = cluster.heart("--json", "export", "from-mlflow", "--format", "onnx", "--out", "exported")
    assert r.returncode == 0, r.stderr[-2000:]
    assert (cluster.driver / "exported" / "model.onnx").exists()
    # Nothing was logged on the second node (no store of its own next to its trials).
    node = next(iter(cluster.ns.pids(cluster.worker_mnt)))
    seen = Path(f"/proc/{node}/root") / str(cluster.root / "worker").lstrip("/")
    assert seen.is_dir()
    assert not [p for p in seen.rglob("*") if p.name in ("mlflow.db", "mlruns")]
    # Every server listens on the loopback only: it is the one interface there is.
    links = cluster.ns.run("ip", "-o", "link").stdout.split("\n")
    assert [line.split(":")[1].strip() for line in links if line.strip()] == ["lo"]
    listening = [line.split()[3] for line in cluster.ns.run("ss", "-ltnH").stdout.splitlines()]
    assert {"127.0.0.1:5000"} <= set(listening) and any(a.endswith(":6379") for a in listening)


def wait_until(what: str, check: Any, proc: subprocess.Popen, timeout: float = 400) -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = check()
        if found:
            return found
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"heart tune ended before {what}:\n{out[-1500:]}\n{err[-3000:]}")
        time.sleep(0.3)
    proc.kill()
    pytest.fail(f"timed out waiting for {what}")


def trial_on(cluster: Cluster, mnt: str) -> int | None:
    """The number of a trial running in that mount namespace (its scratch folder's name)."""
    for pid in cluster.ns.pids(mnt):
        with contextlib.suppress(OSError):
            for entry in os.listdir(f"/proc/{pid}/cwd"):
                if entry.startswith("heart-trial-"):
                    return int(entry.split("-")[2])
    return None


def epochs_done(folder: Path) -> int:
    with contextlib.suppress(OSError):
        return len(rows(folder / "history.csv"))
    return 0


def test_train_json_stays_clean_with_an_http_tracking_server(cluster):
    r = cluster.heart(
        "--json", "train", "--config", "quick.toml", "--name", "one", "--set", "train.epochs=1"
    )
    assert r.returncode == 0, r.stderr[-2000:]
    run_id = json.loads(r.stdout)["tracking_run_id"]  # MLflow's "View run" line is not there
    assert cluster.mlflow().get_run(run_id).info.status == "FINISHED"


def test_a_lost_node_costs_the_trial_its_last_epoch_not_the_trial(cluster):
    search = cluster.driver / "runs" / "lost"
    proc = cluster.heart_popen(
        "--json", "tune", "--config", "quick.toml", "--name", "lost", "--backend", "ray",
        "--address", GCS, "--evals", "2", "--set", "train.epochs=6",
    )  # fmt: skip
    number = wait_until(
        "a trial on the second node", lambda: trial_on(cluster, cluster.worker_mnt), proc
    )
    folder = search / f"trial-{number:03d}"
    wait_until("its first epoch on the driver", lambda: epochs_done(folder) >= 1, proc)
    before = rows(folder / "history.csv")
    for pid in cluster.ns.pids(cluster.worker_mnt):  # kill -9 the second node's raylet
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() == "raylet":
                os.kill(pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:] + cluster.tail()
    summary = json.loads(out)
    assert summary["status_counts"] == {"completed": 2}, summary  # 0 failed
    records = {t["number"]: t for t in summary["records"]}
    assert sorted(records) == [1, 2]  # the report names the trials that ran, no other
    lost = records[number]
    assert lost["retries"] >= 1 and lost["epochs_run"] == 6, lost
    # The retry went on from the checkpoint: the epochs before the loss were not redone.
    after = rows(folder / "history.csv")
    assert [r["epoch"] for r in after] == ["1", "2", "3", "4", "5", "6"]
    assert after[: len(before)] == before
    client = cluster.mlflow()
    children = children_of(client, summary["tracking_run_id"])
    assert sorted(children) == ["trial-001", "trial-002"]
    run = children[folder.name]
    assert run.info.status == "FINISHED" and run.data.tags["heart.retries"] == str(lost["retries"])
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_macro_f1")]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert not [
        r for r in client.search_runs([run.info.experiment_id]) if r.info.status == "RUNNING"
    ]
    cluster.start_worker()  # the next test has two nodes again
    cluster.wait(nodes=2)


def test_resume_continues_an_interrupted_ray_search(cluster):
    search = cluster.driver / "runs" / "again"
    proc = cluster.heart_popen(
        "tune", "--config", "quick.toml", "--name", "again", "--backend", "ray",
        "--address", GCS, "--evals", "3", "--set", "train.epochs=8",
    )  # fmt: skip

    def saved() -> bool:
        state = list((search / "ray").glob("experiment_state*.json"))
        done = epochs_done(search / "trial-001") + epochs_done(search / "trial-002")
        return bool(state) and done >= 1 and "trial_id" in state[0].read_text()

    wait_until("a saved state with a trial's epoch", saved, proc)
    before = {n: rows(search / n / "history.csv") for n in ("trial-001", "trial-002")
              if epochs_done(search / n)}  # fmt: skip
    os.kill(proc.pid, signal.SIGINT)  # Ctrl-C
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    client = cluster.mlflow()
    experiment = client.get_experiment_by_name("cluster").experiment_id
    assert not [r for r in client.search_runs([experiment]) if r.info.status == "RUNNING"]
    assert any(
        json.loads((search / n / "manifest.json").read_text())["status"] == "interrupted"
        for n in before
    )
    r = cluster.heart("tune", "--resume", "runs/again", "--address", GCS, "--evals", "5")
    assert r.returncode == 2 and "drop them" in one_line_error(r)
    r = cluster.heart("--json", "tune", "--resume", "runs/again", "--address", GCS)
    assert r.returncode == 0, r.stderr[-3000:] + cluster.tail()
    summary = json.loads(r.stdout)
    assert summary["status_counts"] == {"completed": 3}, summary
    assert sorted(t["number"] for t in summary["records"]) == [1, 2, 3]
    for name, rows_before in before.items():
        assert rows(search / name / "history.csv")[: len(rows_before)] == rows_before
    runs = client.search_runs(
        [experiment],
        filter_string=f"tags.mlflow.parentRunId = '{summary['tracking_run_id']}'",
    )
    assert sorted(run.info.run_name for run in runs) == ["trial-001", "trial-002", "trial-003"]
    assert all(run.info.status == "FINISHED" for run in runs)
    assert client.get_run(summary["tracking_run_id"]).info.status == "FINISHED"
