"""`heart train`: train the configured CNN into a run folder, or resume one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichBar
from rich.table import Table

from heartcli.cli._util import ConfigOption, SetOption, out, resolve_config
from heartcli.errors import UsageError
from heartcli.progress import Progress


class RichProgress(Progress):
    """A progress bar per epoch on stderr and one table row per epoch (* = best so far).

    Columns: epoch, train loss, val loss, val macro-F1, val recall (sensitivity) per class,
    learning rate, training beats per second. Each run (a fold, the final run) starts its
    own table; ``stage`` lines (the folds of --folds) are logs, ``note`` a warning.
    """

    def __init__(self) -> None:
        self.o = out()
        # Rows are part of the result on stdout, unless stdout carries the JSON summary.
        self.rows = self.o.err if self.o.json else self.o.console
        self.bar: RichBar | None = None
        self.bar_task: Any = None
        self.classes: list[str] = []
        self.header = True

    def note(self, text: str) -> None:
        self.o.warn(f"warning: {text}")

    def stage(self, text: str) -> None:
        self.o.log(text)

    def start(self, summary: dict[str, Any]) -> None:
        self.classes = summary["classes"]
        self.header = True
        counts = ", ".join(
            f"{c} {summary['train_counts'][c]}->{summary['resampled_counts'][c]}"
            for c in self.classes
        )
        self.o.log(
            f"run {summary['run_dir']}  ({summary['device']}, {summary['precision']}, "
            f"{summary['threads_text']}, batch {summary['batch_size']})"
        )
        if summary["device"] == "cpu":
            self.o.log(f"OpenMP waiting: {summary['omp_wait_policy']}")
        if summary.get("threads_warning"):
            self.o.warn(f"warning: {summary['threads_warning']}")
        self.o.log(f"model: {summary['parameters']:,} parameters")
        self.o.log(
            f"training fold -> one epoch's draws: {counts}; "
            f"validation: {sum(summary['val_counts'].values())}"
        )
        if summary["start_epoch"] > 1:
            self.o.log(f"resuming at epoch {summary['start_epoch']} of {summary['epochs']}")

    def task(self, name: str, total: int | None = None) -> None:
        if not self.o.err.is_terminal:
            return
        self.bar = RichBar(
            TextColumn(name),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.o.err,
            transient=True,
        )
        self.bar_task = self.bar.add_task("train", total=total)
        self.bar.start()

    def advance(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.advance(self.bar_task, n)

    def done(self, name: str, result: Any = None) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
        self.rows.print(self._row(result))

    def _row(self, info: Any) -> Table:
        """One epoch's figures as a one-row table (the header above the first)."""
        table = Table(
            box=None,
            show_header=self.header,
            pad_edge=False,
            collapse_padding=True,
            header_style="bold",
        )
        self.header = False
        widths = [
            ("epoch", 5),
            ("loss", 6),
            ("val loss", 8),
            ("val F1", 6),
            *[(f"Se {c}"[:5], 5) for c in self.classes],
            ("lr", 8),
            ("beats/s", 7),
            ("", 1),
        ]
        for title, width in widths:
            table.add_column(title, justify="right", min_width=width, no_wrap=True)
        recall = [
            f"{info.val_recall[c]:.3f}" if c in info.val_recall else "-" for c in self.classes
        ]
        table.add_row(
            f"{info.epoch}",
            f"{info.train_loss:.4f}",
            f"{info.val_loss:.4f}",
            f"{info.val_macro_f1:.4f}",
            *recall,
            f"{info.lr:.2e}",
            f"{info.beats_per_s:.0f}",
            "*" if info.best else "",
        )
        return table


def train(
    config: ConfigOption = None,
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            "-n",
            metavar="NAME",
            help="Run folder name under [train] runs_dir: letters, digits, '.', '_', '-', at "
            "most 100 (default: a timestamp).",
        ),
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            "--resume",
            metavar="RUN_DIR",
            help="Continue this run folder from its last epoch, with its own config.toml "
            "(--set may change keys, e.g. train.epochs).",
            file_okay=False,
        ),
    ] = None,
    max_minutes: Annotated[
        str | None,
        typer.Option(
            "--max-minutes",
            metavar="MINUTES",
            help="Training budget: stop after the epoch that crosses it, best weights kept "
            '(status "budget"); the same as --set train.max_minutes=MINUTES.',
        ),
    ] = None,
    folds: Annotated[
        int | None,
        typer.Option(
            "--folds",
            metavar="K",
            help="K-fold cross-validation on the training split (whole records for "
            "inter-patient, every fold holding S and V beats; stratified beats otherwise), "
            "out-of-fold macro-F1 with its 95% CI, then the final model: on all of it for "
            "the folds' mean best epoch, without validation, or with train.final = "
            '"ensemble" the K fold models as one.',
        ),
    ] = None,
    set_: SetOption = None,
) -> None:
    """Train the [model] CNN on the training split; the test split is never read."""
    from heartcli.config import option_overrides
    from heartcli.training import train_command
    from heartcli.training.crossval import CrossValResult

    set_ = [*(set_ or ()), *option_overrides(train_max_minutes=max_minutes)]
    _check_options(config, name, resume, folds)
    resolved, base = None, None
    if resume is None:
        from heartcli.config import load_document

        resolved = resolve_config(config, set_)
        base = load_document(config) if config is not None else None
    result = train_command(
        resolved,
        name=name,
        resume=resume,
        overrides=set_,
        folds=folds,
        config_base=base,
        progress=RichProgress(),
    )
    if isinstance(result, CrossValResult):
        out().result(result.summary(), lambda: _render_folds(result))
        final = result.final
    else:
        out().result(result.summary(), lambda: _render_run(result))
        final = result
    if final.status == "interrupted":
        raise typer.Exit(130)


def _check_options(
    config: Path | None, name: str | None, resume: Path | None, folds: int | None
) -> None:
    """--folds and --resume go with which other options."""
    if folds is not None and (folds < 2 or resume is not None):
        raise UsageError(
            f"--folds {folds}: use 2 or more folds"
            if folds < 2
            else "--folds trains a new run; it cannot --resume one"
        )
    if resume is not None and (config is not None or name is not None):
        raise UsageError(
            "--resume continues a run with its own config.toml; drop --config/--name "
            "(use --set to change keys)"
        )


def _render_run(result: Any) -> None:
    console = out().console
    console.print(
        f"{result.status}: best val macro-F1 {result.best_metric:.4f} at epoch "
        f"{result.best_epoch} ({result.epochs_run} epochs, {result.seconds:.1f} s, "
        f"{result.seconds_to_best:.1f} s to the best); "
        f"run saved in {result.run_dir}",
        highlight=False,
    )
    console.print(f"next: heart evaluate {result.run_dir}", highlight=False)


FIGURE_NAMES = {
    "macro_f1": "macro-F1",
    "sveb_se": "SVEB Se",
    "sveb_ppv": "SVEB +P",
    "veb_se": "VEB Se",
    "veb_ppv": "VEB +P",
}


def _render_folds(result: Any) -> None:
    """`heart train --folds K`: the folds' figures, the out-of-fold figure, the final run."""
    console = out().console
    console.print(_folds_table(result))
    k, oof, final = len(result.folds), result.oof or {}, result.final
    if oof:
        lo, hi = oof["macro_f1_ci95"]
        console.print(
            f"out-of-fold macro-F1 {oof['macro_f1']:.4f} (95% CI {lo:.4f}-{hi:.4f}) on "
            f"{oof['n']:,} beats; F1 " + ", ".join(f"{c} {v:.3f}" for c, v in oof["f1"].items()),
            highlight=False,
        )
    what = (
        f"the {k} fold models as one ensemble (mean probability)"
        if "ensemble" in final.manifest
        else f"trained on the whole training split for {result.epochs} epochs (the "
        "folds' mean best epoch)"
    )
    console.print(
        f"{final.status}: final model {what}, {final.seconds:.1f} s; "
        f"{result.seconds:.1f} s in all; run saved in {final.run_dir}",
        highlight=False,
    )
    console.print(f"next: heart evaluate {final.run_dir}", highlight=False)


def _folds_table(result: Any) -> Table:
    from heartcli.training.crossval import FIGURES

    kind = "record-wise" if any(f.records for f in result.folds) else "stratified"
    table = Table(
        title=f"{len(result.folds)}-fold {kind} cross-validation (validation, best epoch)"
    )
    table.add_column("fold")
    table.add_column("records" if kind == "record-wise" else "beats")
    table.add_column("best epoch", justify="right")
    for key in FIGURES:
        table.add_column(FIGURE_NAMES[key], justify="right")
    for f in result.folds:
        table.add_row(
            str(f.fold),
            " ".join(f.records) if f.records else f"{f.beats:,}",
            str(f.best_epoch),
            *[f"{f.figures[key]:.4f}" for key in FIGURES],
        )
    fig = result.figures()
    table.add_row(
        "mean ± sd",
        "",
        f"{fig['best_epoch']['mean']:.1f} ± {fig['best_epoch']['std']:.1f}",
        *[f"{fig[key]['mean']:.4f} ± {fig[key]['std']:.4f}" for key in FIGURES],
    )
    return table
