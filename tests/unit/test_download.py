"""`heart fetch` downloading through a real HTTP server on 127.0.0.1 serving the real records.

The server speaks HTTP Range and can be told to corrupt a file or to drop the connection
part-way through it, so resume and verification are exercised over a real socket.
"""

from __future__ import annotations

import hashlib
import re
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from heartcli.data.mitdb import RECORDS, pinned_sha256, record_files

TOTALS = {"N": 90_589, "S": 2_779, "V": 7_236, "F": 803, "Q": 8_039}
ALL_FILES = [name for record in RECORDS for name in record_files(record)]


class RecordServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path) -> None:
        super().__init__(("127.0.0.1", 0), RecordHandler)
        self.root = root
        self.reset()

    def reset(self) -> None:
        self.requests: list[tuple[str, str | None]] = []
        self.corrupt: set[str] = set()
        self.drops: dict[str, tuple[int, int]] = {}  # name -> (times left, bytes sent)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/mitdb/"

    def body(self, name: str) -> bytes:
        data = (self.root / name).read_bytes()
        if name in self.corrupt:
            altered = bytearray(data)
            altered[len(altered) // 2] ^= 0xFF
            data = bytes(altered)
        return data


class RecordHandler(BaseHTTPRequestHandler):
    server: RecordServer

    def do_GET(self) -> None:
        name = self.path.rsplit("/", 1)[-1]
        if not self.path.startswith("/mitdb/") or not (self.server.root / name).is_file():
            self.send_error(404)
            return
        self.server.requests.append((name, self.headers.get("Range")))
        data = self.server.body(name)
        start = 0
        if rng := self.headers.get("Range"):
            match = re.fullmatch(r"bytes=(\d+)-", rng)
            assert match, rng
            start = int(match.group(1))
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        times, cut = self.server.drops.get(name, (0, 0))
        if times:
            # Promise the whole body, send part of it, hang up: an interrupted download.
            self.server.drops[name] = (times - 1, cut)
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server(mitdb_dir: Path) -> Iterator[RecordServer]:
    srv = RecordServer(mitdb_dir)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def srv(server: RecordServer) -> RecordServer:
    server.reset()
    return server


@pytest.fixture(scope="module")
def downloaded(server: RecordServer, tmp_path_factory: pytest.TempPathFactory):
    """All 144 files downloaded from the server and the dataset built, once for this module."""
    from conftest import Heart

    server.reset()
    out = tmp_path_factory.mktemp("download") / "mitbih"
    result = Heart().json("fetch", "--out", out, "--set", f"data.url={server.url}")
    return out, result, list(server.requests)


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def linked_records(source: Path, target: Path, skip: str | None = None) -> Path:
    """A records folder whose files link to verified ones (no 100 MB copy), minus ``skip``."""
    target.mkdir(parents=True)
    for name in ALL_FILES:
        if name != skip:
            (target / name).symlink_to(source / name)
    return target


def test_downloads_all_48_records_verifies_and_builds(downloaded, mitdb_dir):
    out, result, requests = downloaded
    assert result["status"] == "built"
    assert result["downloaded"] == 144
    assert sorted(name for name, _ in requests) == sorted(ALL_FILES)
    assert all(rng is None for _, rng in requests)
    assert {k: v for k, v in result["total"].items() if k != "total"} == TOTALS
    records = out / "records"
    pinned = pinned_sha256()
    for name in ALL_FILES:
        assert hashlib.sha256((records / name).read_bytes()).hexdigest() == pinned[name]
    assert not list(records.glob("*.part"))
    assert (out / "random" / "train.parquet").is_file()


def test_second_download_run_is_a_no_op(heart, srv, downloaded):
    out, _, _ = downloaded
    before = (out / "manifest.json").stat().st_mtime_ns
    result = heart("fetch", "--out", out, "--set", f"data.url={srv.url}")
    assert srv.requests == []
    assert f"{out}: up to date" in result.stdout
    assert (out / "manifest.json").stat().st_mtime_ns == before


def test_interrupted_download_resumes_with_range(heart, srv, downloaded, tmp_path):
    out, _, _ = downloaded
    records = linked_records(out / "records", tmp_path / "records", skip="100.dat")
    srv.drops["100.dat"] = (1, 300_000)  # the first response stops after 300,000 bytes
    result = heart.json(
        "fetch", "--out", out, "--set", f"data.records={records}", "--set", f"data.url={srv.url}"
    )
    assert srv.requests == [("100.dat", None), ("100.dat", "bytes=300000-")]
    assert result["downloaded"] == 1
    assert result["status"] == "up to date"  # the dataset was built from these same files
    digest = hashlib.sha256((records / "100.dat").read_bytes()).hexdigest()
    assert digest == pinned_sha256()["100.dat"]
    assert not (records / "100.dat.part").exists()


def test_part_file_of_an_earlier_run_is_resumed(heart, srv, downloaded, mitdb_dir, tmp_path):
    out, _, _ = downloaded
    records = linked_records(out / "records", tmp_path / "records", skip="100.dat")
    (records / "100.dat.part").write_bytes((mitdb_dir / "100.dat").read_bytes()[:123_456])
    result = heart(
        "fetch", "--out", out, "--set", f"data.records={records}", "--set", f"data.url={srv.url}"
    )
    assert srv.requests == [("100.dat", "bytes=123456-")]
    assert "note: 100.dat: resuming an interrupted download" in result.stderr
    assert (records / "100.dat").read_bytes() == (mitdb_dir / "100.dat").read_bytes()
    assert not (records / "100.dat.part").exists()


def test_download_that_keeps_failing_keeps_the_part_for_next_time(heart, srv, tmp_path):
    records = tmp_path / "d" / "records"
    srv.drops["100.dat"] = (99, 100)  # every response stops after 100 bytes
    result = heart("fetch", "--out", tmp_path / "d", "--set", f"data.url={srv.url}", expect=1)
    # One request and three resumed retries, each adding 100 bytes.
    assert [rng for name, rng in srv.requests if name == "100.dat"] == [
        None,
        "bytes=100-",
        "bytes=200-",
        "bytes=300-",
    ]
    assert last_line(result.stderr) == (
        f"error: {srv.url}100.dat: download interrupted after 400 of 1950000 bytes; "
        "run `heart fetch` again to resume it"
    )
    assert (records / "100.dat.part").stat().st_size == 400
    assert not (records / "100.dat").exists()
    assert not (tmp_path / "d" / "manifest.json").exists()


def test_corrupt_download_is_discarded_with_a_clear_error(heart, srv, mitdb_dir, tmp_path):
    srv.corrupt.add("101.hea")
    got = hashlib.sha256(srv.body("101.hea")).hexdigest()
    expected = pinned_sha256()["101.hea"]
    out = tmp_path / "d"
    result = heart("fetch", "--out", out, "--set", f"data.url={srv.url}", expect=1)
    assert last_line(result.stderr) == (
        f"error: {srv.url}101.hea: SHA-256 mismatch for 101.hea (expected {expected[:12]}…, "
        f"got {got[:12]}…): the download is corrupt and was discarded; run `heart fetch` again "
        "to re-download it, or check data.url"
    )
    records = out / "records"
    # The files before it are complete and verified; nothing of 101.hea, no dataset.
    assert sorted(p.name for p in records.iterdir()) == ["100.atr", "100.dat", "100.hea"]
    assert not (out / "manifest.json").exists()
    assert not list(out.glob("random")) and not list(out.glob(".heart-build-*"))


def test_corrupt_local_file_is_re_downloaded(heart, srv, downloaded, mitdb_dir, tmp_path):
    out, _, _ = downloaded
    records = linked_records(out / "records", tmp_path / "records", skip="100.atr")
    truncated = (mitdb_dir / "100.atr").read_bytes()[:1000]
    (records / "100.atr").write_bytes(truncated)
    result = heart(
        "fetch", "--out", out, "--set", f"data.records={records}", "--set", f"data.url={srv.url}"
    )
    pinned = pinned_sha256()["100.atr"]
    got = hashlib.sha256(truncated).hexdigest()
    assert (
        f"note: {records}/100.atr: SHA-256 mismatch (expected {pinned[:12]}…, got {got[:12]}…): "
        "it will be re-downloaded"
    ) in " ".join(result.stderr.split())
    assert srv.requests == [("100.atr", None)]
    assert (records / "100.atr").read_bytes() == (mitdb_dir / "100.atr").read_bytes()


def test_unreachable_url(heart, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # The port is closed now: nothing listens there.
    url = f"http://127.0.0.1:{port}/mitdb/"
    result = heart("fetch", "--out", tmp_path / "d", "--set", f"data.url={url}", expect=1)
    assert last_line(result.stderr) == (
        f"error: cannot reach {url}100.hea (Connection refused); check data.url and your "
        "network, or build from a local copy with --source DIR"
    )
    assert list((tmp_path / "d" / "records").iterdir()) == []
    assert not (tmp_path / "d" / "manifest.json").exists()


def test_wrong_url_gives_the_http_status(heart, srv, tmp_path):
    url = srv.url.replace("/mitdb/", "/nothing/")
    result = heart("fetch", "--out", tmp_path / "d", "--set", f"data.url={url}", expect=1)
    assert last_line(result.stderr) == (
        f"error: {url}100.hea: HTTP 404 Not Found; check data.url "
        "(PhysioNet: https://physionet.org/files/mitdb/1.0.0/)"
    )


def test_records_folder_not_writable(heart, srv, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = heart(
        "fetch",
        "--out",
        tmp_path / "d",
        "--set",
        f"data.records={blocker}/records",
        "--set",
        f"data.url={srv.url}",
        expect=1,
    )
    assert last_line(result.stderr) == (
        f"error: cannot write to {blocker}/records: Not a directory; "
        "choose a writable records folder (data.records)"
    )
    assert srv.requests == []
