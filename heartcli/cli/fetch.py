"""`heart fetch`: download (or take a local copy of) MIT-BIH, verify it, build the beat dataset."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as Bars
from rich.table import Table

from heartcli.cli._util import ConfigOption, SetOption, out, resolve_config
from heartcli.data.events import CUTTING, DOWNLOADS, FetchResult
from heartcli.errors import UsageError
from heartcli.progress import Progress

if TYPE_CHECKING:
    from heartcli.config import DataConfig


class FetchProgress(Progress):
    """Draws the fetch progress on stderr: files downloaded, bytes of the current file, records
    (the tasks of :mod:`heartcli.data.events`)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Bars(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self.files: TaskID | None = None
        self.current: TaskID | None = None  # the bytes of the file being downloaded
        self.file: str | None = None
        self.records: TaskID | None = None
        self.cutting: int | None = None  # the records to cut, once the build began

    def __enter__(self) -> FetchProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def stage(self, text: str) -> None:
        self.console.print(text, highlight=False)

    def note(self, text: str) -> None:
        self.console.print(f"[yellow]note:[/] {text}", highlight=False)

    def task(self, name: str, total: int | None = None) -> None:
        if name == DOWNLOADS:
            self.files = self.progress.add_task("downloading", total=total)
            self.current = self.progress.add_task("", total=None)
        elif name == CUTTING:
            self.cutting = total
        elif self.current is not None and name == self.file:
            self.progress.update(self.current, total=total)  # the file's size is known
        elif self.current is not None:
            self.file = name
            self.progress.reset(self.current, total=total, description=f"  {name}")

    def advance(self, n: int = 1) -> None:
        if self.cutting is not None:
            if self.records is None:
                self.records = self.progress.add_task("cutting beats", total=self.cutting)
            self.progress.advance(self.records, n)
        elif self.current is not None:
            self.progress.update(self.current, advance=n)

    def done(self, name: str, result: Any = None) -> None:
        if self.files is not None and name not in (DOWNLOADS, CUTTING) and self.cutting is None:
            self.progress.advance(self.files)


class ImportProgress(Progress):
    """`heart fetch --import`: a line per file read, under the "importing" spinner."""

    def __init__(self, log: Callable[[str], None]) -> None:
        self.log = log

    def stage(self, text: str) -> None:
        self.log(text)


def render_counts(console: Console, title: str, manifest: dict[str, Any]) -> None:
    classes = [str(c) for c in manifest.get("classes", [])]
    table = Table(title=title, title_justify="left")
    table.add_column("split")
    table.add_column("part")
    for name in classes:
        table.add_column(name, justify="right")
    table.add_column("total", justify="right")
    for split, parts in (manifest.get("splits") or {}).items():
        for part, counts in parts.items():
            row = [f"{counts.get(c, 0):,}" for c in classes]
            table.add_row(split, part, *row, f"{counts['total']:,}")
    total = manifest.get("total")
    if total:
        table.add_section()
        table.add_row(
            "all beats", "", *[f"{total.get(c, 0):,}" for c in classes], f"{total['total']:,}"
        )
    console.print(table)


def summary(result: FetchResult) -> dict[str, Any]:
    data: dict[str, Any] = {
        "status": result.status,
        "dir": str(result.out_dir),
        "records_dir": str(result.records_dir),
        "downloaded": len(result.downloaded),
        "classes": result.manifest["classes"],
        "splits": result.manifest["splits"],
        "total": result.manifest.get("total"),
    }
    if result.sample is not None:
        data["sample"] = {"dir": str(result.sample_dir), "splits": result.sample["splits"]}
    return data


FilesArgument = Annotated[
    list[Path] | None,
    typer.Argument(
        help="With --import: the beat files to import (Kaggle .csv, MADS .parq).",
        metavar="FILES",
        show_default=False,
    ),
]
OutOption = Annotated[
    Path | None,
    typer.Option(
        "--out",
        "-o",
        help="Dataset folder to write (default [data] dir); the downloaded records go to "
        "OUT/records unless [data] records is set.",
    ),
]
SourceOption = Annotated[
    Path | None,
    typer.Option(
        "--source",
        help="Build from a local copy of the 48 records instead of downloading "
        "(e.g. ../shared/data/mitdb); every file is verified, nothing is copied.",
        file_okay=False,
    ),
]
ImportOption = Annotated[
    bool,
    typer.Option(
        "--import",
        help="Import beat files you already have (FILES: Kaggle mitbih_*/ptbdb_* CSVs, "
        "MADS heart_*.parq) instead of building from the records. NAME_train + NAME_test "
        "become split NAME; other files (ptbdb_normal + ptbdb_abnormal -> ptbdb) are "
        "split 80/20 stratified.",
    ),
]
SampleOutOption = Annotated[
    Path | None,
    typer.Option(
        "--sample-out",
        help="Also write the small stratified sample (seed 0) into this folder: "
        "`heart fetch --source ../shared/data/mitdb --sample-out data/sample` made "
        "the bundled data/sample.",
    ),
]


def fetch(
    files: FilesArgument = None,
    config: ConfigOption = None,
    set_: SetOption = None,
    out_dir: OutOption = None,
    source: SourceOption = None,
    import_: ImportOption = False,
    sample_out: SampleOutOption = None,
) -> None:
    """Download MIT-BIH (PhysioNet mitdb 1.0.0), verify every file, build the beat dataset.

    Writes DIR/random/{train,test}.parquet, DIR/inter-patient/{train,test}.parquet and
    DIR/manifest.json, then prints the beats per class and split. A second run with
    everything present and verified is a no-op ("up to date").
    """
    cfg = resolve_config(config, set_).data
    if files and not import_:
        raise UsageError(f"{files[0]}: files are only taken with --import")
    if import_ and not files:
        raise UsageError("--import needs the files to import, e.g. --import mitbih_train.csv ...")
    if import_ and (source is not None or sample_out is not None):
        raise UsageError("--import cannot be combined with --source or --sample-out")
    target = out_dir if out_dir is not None else Path(cfg.dir)
    if import_:
        assert files
        _import(files, target, cfg)
    else:
        _fetch(target, out_dir, source, sample_out, cfg)


def _import(files: list[Path], target: Path, cfg: DataConfig) -> None:
    """`heart fetch --import FILES`: import, then the beats per class and split."""
    o = out()
    with o.err.status("importing"):
        from heartcli.data.importer import import_files  # pandas: only for imports

        manifest = import_files(
            files,
            target,
            test_fraction=cfg.test_fraction,
            seed=cfg.seed,
            progress=ImportProgress(o.log),
        )
    data = {
        "status": "imported",
        "dir": str(target),
        "classes": manifest["classes"],
        "splits": manifest["splits"],
    }
    o.result(data, lambda: render_counts(o.console, f"imported into {target}", manifest))


def _fetch(
    target: Path,
    out_dir: Path | None,
    source: Path | None,
    sample_out: Path | None,
    cfg: DataConfig,
) -> None:
    """`heart fetch`: the records (downloaded or ``--source``), the build, the counts."""
    from heartcli.config import DataConfig
    from heartcli.data.fetch import fetch as fetch_records

    o = out()
    default_records = DataConfig.model_fields["records"].default
    if out_dir is not None and cfg.records == default_records:
        records = out_dir / "records"
    else:
        records = Path(cfg.records)
    with FetchProgress(o.err) as progress:
        result = fetch_records(
            target,
            records,
            url=cfg.url,
            source=source,
            lead=cfg.lead,
            test_fraction=cfg.test_fraction,
            seed=cfg.seed,
            sample_out=sample_out,
            progress=progress,
        )

    def render() -> None:
        render_counts(o.console, f"{target}: {result.status}", result.manifest)
        if result.sample is not None:
            render_counts(o.console, f"sample in {result.sample_dir}", result.sample)

    o.result(summary(result), render)
