"""`heart resample`: write the rebalanced training fold that `heart train` would train on."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from heartcli.cli._util import ConfigOption, SetOption, out, resolve_config, training_split


def resample(
    config: ConfigOption = None,
    out_file: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Parquet file to write the resampled training fold to.",
            dir_okay=False,
        ),
    ] = Path("resampled.parquet"),
    set_: SetOption = None,
) -> None:
    """Apply [resample] to the training fold (after the validation carve-out) and save it."""
    from heartcli.dataset import write_beats
    from heartcli.training import prepare_folds

    resolved = resolve_config(config, set_)
    folds = prepare_folds(resolved, training_split(resolved))
    write_beats(out_file, folds.train)
    o = out()
    validation = folds.val.counts()
    data: dict[str, Any] = {
        "strategy": resolved.resample.strategy,
        "before": folds.before,
        "after": folds.after,
        "validation": validation,
        "out": str(out_file),
    }

    def render() -> None:
        table = Table(title=f"training fold, resample.strategy = {resolved.resample.strategy}")
        table.add_column("class")
        for title in ("before", "after", "validation (untouched)"):
            table.add_column(title, justify="right")
        for name in folds.train.classes:
            table.add_row(
                name,
                f"{folds.before[name]:,}",
                f"{folds.after[name]:,}",
                f"{validation[name]:,}",
            )
        table.add_row(
            "total",
            f"{sum(folds.before.values()):,}",
            f"{sum(folds.after.values()):,}",
            f"{sum(validation.values()):,}",
        )
        o.console.print(table)
        o.console.print(f"wrote {out_file}", highlight=False)

    o.result(data, render)
