"""`heart fetch`: download (or take a local copy of) MIT-BIH, verify it, build the beat dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from heartcli.cli._util import ConfigOption, SetOption, out, resolve_config
from heartcli.data.events import FetchListener, FetchResult
from heartcli.errors import UsageError


class RichListener(FetchListener):
    """Draws the fetch progress on stderr: files downloaded, bytes of the current file, records."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self.bytes = Progress(
            TextColumn("  {task.description}"),
            BarColumn(),
            DownloadColumn(),
            console=console,
            transient=True,
        )
        self.files: TaskID | None = None
        self.current: TaskID | None = None
        self.records: TaskID | None = None

    def __enter__(self) -> RichListener:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def stage(self, text: str) -> None:
        self.console.print(text, highlight=False)

    def note(self, text: str) -> None:
        self.console.print(f"[yellow]note:[/] {text}", highlight=False)

    def downloads(self, names: list[str]) -> None:
        self.files = self.progress.add_task("downloading", total=len(names))
        self.current = self.progress.add_task("", total=None)

    def file_start(self, name: str) -> None:
        if self.current is not None:
            self.progress.reset(self.current, total=None, description=f"  {name}")

    def file_bytes(self, n: int, total: int | None) -> None:
        if self.current is not None:
            self.progress.update(self.current, advance=n, total=total)

    def file_done(self, name: str) -> None:
        if self.files is not None:
            self.progress.advance(self.files)

    def record_built(self, record: str) -> None:
        if self.records is None:
            self.records = self.progress.add_task("cutting beats", total=48)
        self.progress.advance(self.records)


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


def fetch(
    files: Annotated[
        list[Path] | None,
        typer.Argument(
            help="With --import: the beat files to import (Kaggle .csv, MADS .parq).",
            metavar="FILES",
            show_default=False,
        ),
    ] = None,
    config: ConfigOption = None,
    set_: SetOption = None,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Dataset folder to write (default [data] dir); the downloaded records go to "
            "OUT/records unless [data] records is set.",
        ),
    ] = None,
    source: Annotated[
        Path | None,
        typer.Option(
            "--source",
            help="Build from a local copy of the 48 records instead of downloading "
            "(e.g. ../shared/data/mitdb); every file is verified, nothing is copied.",
            file_okay=False,
        ),
    ] = None,
    import_: Annotated[
        bool,
        typer.Option(
            "--import",
            help="Import beat files you already have (FILES: Kaggle mitbih_*/ptbdb_* CSVs, "
            "MADS heart_*.parq) instead of building from the records. NAME_train + NAME_test "
            "become split NAME; other files (ptbdb_normal + ptbdb_abnormal -> ptbdb) are "
            "split 80/20 stratified.",
        ),
    ] = False,
    sample_out: Annotated[
        Path | None,
        typer.Option(
            "--sample-out",
            help="Also write the small stratified sample (seed 0) into this folder: "
            "`heart fetch --source ../shared/data/mitdb --sample-out data/sample` made "
            "the bundled data/sample.",
        ),
    ] = None,
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
    o = out()
    if import_:
        assert files
        with o.err.status("importing"):
            from heartcli.data.importer import import_files  # pandas: only for imports

            manifest = import_files(
                files,
                target,
                test_fraction=cfg.test_fraction,
                seed=cfg.seed,
                on_file=lambda p: o.log(f"reading {p}"),
            )
        data = {
            "status": "imported",
            "dir": str(target),
            "classes": manifest["classes"],
            "splits": manifest["splits"],
        }
        o.result(data, lambda: render_counts(o.console, f"imported into {target}", manifest))
        return

    from heartcli.config import DataConfig

    default_records = DataConfig.model_fields["records"].default
    if out_dir is not None and cfg.records == default_records:
        records = out_dir / "records"
    else:
        records = Path(cfg.records)
    from heartcli.data.fetch import fetch as fetch_records

    with RichListener(o.err) as listener:
        result = fetch_records(
            target,
            records,
            url=cfg.url,
            source=source,
            lead=cfg.lead,
            test_fraction=cfg.test_fraction,
            seed=cfg.seed,
            sample_out=sample_out,
            listener=listener,
        )

    def render() -> None:
        render_counts(o.console, f"{target}: {result.status}", result.manifest)
        if result.sample is not None:
            render_counts(o.console, f"sample in {result.sample_dir}", result.sample)

    o.result(summary(result), render)
