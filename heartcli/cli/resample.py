"""`heart resample`: write the rebalanced training fold that `heart train` would train on."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from heartcli.cli._util import ConfigOption, SetOption, out, resolve_config


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
    """Write what one training epoch draws from the training fold under [resample]."""
    from heartcli.data.dataset import write_beats
    from heartcli.io import check_output
    from heartcli.training import prepare_folds

    resolved = resolve_config(config, set_)
    check_output(out_file)  # before the work: never the dataset's own files (a heart folder)
    folds = prepare_folds(resolved)
    # What training's first epoch draws: the fold's beats, as often as the sampler takes them.
    write_beats(out_file, folds.train.subset(folds.sampler.indices(1)))
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
        for title in ("before", "one epoch draws", "validation (untouched)"):
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
