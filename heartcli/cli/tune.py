"""`heart tune`: hyperparameter search over [search.space], with a live table of the trials."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from rich.status import Status
from rich.table import Table

from heartcli.cli._util import ConfigOption, SetOption, out, resolve_config
from heartcli.errors import UsageError
from heartcli.progress import Progress

if TYPE_CHECKING:  # the search package loads torch: imported when a search runs
    from heartcli.search import SearchResult, TrialRecord

COLUMNS = [
    ("trial", 5, "right"),
    ("status", 13, "left"),
    ("metric", 7, "right"),
    ("best", 7, "right"),
    ("epochs", 6, "right"),
    ("time", 7, "right"),
    ("parameters", None, "left"),
]


class LiveTable(Progress):
    """One row per finished trial (stdout; stderr with --json), a spinner while one runs.

    The search tells it (heartcli/search/events.py): ``task("trial-NNN")`` as a trial starts,
    ``done(name, figures)`` after each of its epochs, ``done("trial-NNN", record)`` as it ends.
    """

    def __init__(self) -> None:
        self.o = out()
        self.rows = self.o.err if self.o.json else self.o.console
        self.status: Status | None = None
        self.header = True
        self.metric = "val_macro_f1"
        self.keys: list[str] = []
        self.evals = 0
        self.best: TrialRecord | None = None  # the best trial so far
        self.running: dict[Any, str] = {}  # trial number (or (trial, fold)) -> its text

    def start(self, summary: dict[str, Any]) -> None:
        from heartcli.search import TrialRecord

        self.metric = summary["metric"]
        self.keys = summary["keys"]
        self.evals = summary["evals"]
        self.best = TrialRecord(**summary["best"]) if summary.get("best") else None
        self.o.log(
            f"search {summary['search_dir']}: {summary['evals']} trials "
            f"({summary['done']} done), maximising {self.metric}"
            if not self.metric.endswith("loss")
            else f"search {summary['search_dir']}: {summary['evals']} trials, minimising "
            f"{self.metric}"
        )
        if summary["tracking_run_id"]:
            self.o.log(f"MLflow parent run {summary['tracking_run_id']}")

    def _show(self) -> None:
        text = "; ".join(self.running[n] for n in sorted(self.running, key=str))
        if self.status is None and text:
            self.status = self.o.err.status(text)
            self.status.start()
        elif self.status is not None and text:
            self.status.update(text)
        elif self.status is not None:
            self.status.stop()
            self.status = None

    def task(self, name: str, total: int | None = None) -> None:
        number = int(name.removeprefix("trial-"))
        self.running[number] = f"trial {number}/{self.evals}: starting"
        self._show()

    def _line(self, text: str) -> None:
        """A line between spinner updates."""
        if self.status is not None:
            self.status.stop()
            self.status = None
        self.rows.print(text, highlight=False)
        self._show()

    def stage(self, text: str) -> None:
        self._line(text)

    def note(self, text: str) -> None:
        self._line(f"note: {text}")

    def done(self, name: str, result: Any = None) -> None:
        if isinstance(result, dict) and ("refit" in result or name == "final"):
            self._refit(name, result)
        elif isinstance(result, dict):  # an epoch of a trial
            n, value = result["trial"], result["value"]
            self.running[n] = (
                f"trial {n}/{self.evals}: epoch {result['epoch']}/{result['epochs']}, "
                f"{self.metric} {value:.4f}"
            )
            self._show()
        else:
            self._trial_end(result)

    def _refit(self, name: str, result: dict[str, Any]) -> None:
        """The refit stage: a fold's epoch (spinner), a fold's end, a trial's out-of-fold
        figures, the recommendation."""
        if name == "final":
            lo, hi = result["macro_f1_ci95"]
            self._line(
                f"recommended: {result['dir']} ({result['kind']}), out-of-fold macro-F1 "
                f"{result['macro_f1']:.4f} ({lo:.4f}-{hi:.4f})"
            )
            return
        n, fold = result["refit"], result.get("fold")
        if "epoch" in result:
            self.running[(n, fold)] = (
                f"refit trial {n} fold {fold}/{result['folds']}: epoch {result['epoch']}/"
                f"{result['epochs']}, val_macro_f1 {result['value']:.4f}"
            )
            self._show()
        elif fold is not None:
            self.running.pop((n, fold), None)
            if result.get("status") != "completed":
                self._line(f"refit trial {n} fold {fold}: {result['status']} {result['reason']}")
            else:
                self._show()
        else:
            oof = result["oof"]
            lo, hi = oof["macro_f1_ci95"]
            self._line(
                f"refit trial {n:03d}: out-of-fold macro-F1 {oof['macro_f1']:.4f} "
                f"({lo:.4f}-{hi:.4f}) on {oof['n']:,} beats, {self.metric} {result['metric']:.4f}"
                f", {result['seconds']:.0f}s"
            )

    def _trial_end(self, record: TrialRecord) -> None:
        from heartcli.search import best_of

        maximise = not self.metric.endswith("loss")
        self.best = best = best_of([r for r in (self.best, record) if r is not None], maximise)
        self.running.pop(record.number, None)
        if self.status is not None:  # rows print between spinner updates
            self.status.stop()
            self.status = None
        self.rows.print(self._row(record, best), highlight=False)
        self._show()

    def _row(self, record: TrialRecord, best: TrialRecord | None) -> Table:
        """The table of one finished trial (the header above the first)."""
        table = Table(box=None, show_header=self.header, pad_edge=False, header_style="bold")
        self.header = False
        for title, w, justify in COLUMNS:
            title = "val" if title == "metric" else title
            table.add_column(
                title,
                width=w,
                justify=justify,  # type: ignore[arg-type]
                no_wrap=w is not None,
                overflow="fold",
            )
        from heartcli.search import describe

        params = describe(record.params, self.keys)
        if record.status == "failed":
            params = f"{record.reason}  [{params}]"
        table.add_row(
            f"{record.number:03d}",
            record.status + (" *" if best is not None and best.number == record.number else ""),
            f"{record.metric:.4f}" if record.metric is not None else "-",
            f"{best.metric:.4f}" if best is not None and best.metric is not None else "-",
            str(record.epochs_run),
            f"{record.seconds:.1f}s",
            params,
        )
        return table


def render(result: SearchResult) -> None:
    o = out()
    best = result.best
    o.console.print()
    if result.stopped:
        o.console.print(f"stopped early: the {result.stopped} budget ran out", highlight=False)
    counts = ", ".join(f"{n} {s}" for s, n in result.summary()["status_counts"].items())
    jobs = f", {result.jobs} at a time" if result.jobs > 1 else ""
    o.console.print(f"{len(result.records)} trials ({counts}) in {result.seconds:.0f}s{jobs}")
    if result.report:
        render_report(result.report, result.keys)
    if best is None:
        o.console.print("no trial finished with a score")
        return
    from heartcli.search import describe, trial_name

    o.console.print(
        f"best: {trial_name(best.number)}  {result.metric} {best.metric:.4f}  "
        f"(epoch {best.best_epoch} of {best.epochs_run})",
        highlight=False,
    )

    o.console.print(f"  {describe(best.params, result.keys)}", highlight=False)
    best_dir = result.summary()["best_dir"]
    o.console.print(f"best run:    {best_dir}", highlight=False)
    o.console.print(f"best config: {result.best_config}", highlight=False)
    o.console.print(f"next: heart evaluate {best_dir}", highlight=False)
    for note in result.notes:
        o.console.print(f"note: {note}", highlight=False)


def render_report(data: dict[str, Any], keys: list[str] | None = None) -> None:
    """The top trials: parameters, the rung each reached, wall time; then the PNG's path."""
    from heartcli.search import describe

    o = out()
    table = Table(title=f"top trials by {data['metric']}", title_justify="left", box=None)
    for title, justify in (
        ("trial", "right"),
        ("status", "left"),
        ("val", "right"),
        ("rung", "right"),
        ("epochs", "right"),
        ("time", "right"),
        ("parameters", "left"),
    ):
        table.add_column(title, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for row in data["top"]:
        table.add_row(
            f"{row['number']:03d}",
            row["status"],
            f"{row['metric']:.4f}",
            str(row["rung"]) if row["rung"] else "-",
            f"{row['epochs_run']}",
            f"{row['seconds']:.1f}s",
            describe(row["params"], keys),
        )
    o.console.print(table, highlight=False)
    counts = ", ".join(f"{n} {s}" for s, n in data["status_counts"].items())
    rungs = f"; rungs at epochs {', '.join(map(str, data['rungs']))}" if data["rungs"] else ""
    o.console.print(
        f"{data['trials']} of {data['evals']} trials ({counts}), pruner {data['pruner']}{rungs}",
        highlight=False,
    )
    if data.get("rung_table"):
        render_rungs(data["rung_table"])
    if data.get("refit"):
        render_refit(data["refit"])
    o.console.print(f"curves: {data['png']}", highlight=False)


def _f(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "-"


def render_rungs(rows: list[dict[str, Any]]) -> None:
    """Successive halving's choice at each rung."""
    table = Table(title="rungs (successive halving)", title_justify="left", box=None)
    for title in ("epoch", "reached", "went on", "best", "lowest that went on"):
        table.add_column(title, justify="right")
    for r in rows:
        table.add_row(
            str(r["epoch"]), str(r["reached"]), str(r["went_on"]), _f(r["best"]), _f(r["lowest_on"])
        )
    out().console.print(table, highlight=False)


def render_refit(refit: dict[str, Any]) -> None:
    """The refit table (validation, out of fold with its CI), then what the search chose."""
    o = out()
    table = Table(
        title=f"refit: top {refit['trials']} trials on {refit['folds']} folds, by out-of-fold "
        "macro-F1",
        title_justify="left",
        box=None,
    )
    for title, justify in (
        ("trial", "right"), ("val", "right"), ("rung", "right"), ("out of fold", "right"),
        ("95% CI", "left"), ("folds", "right"), ("time", "right"), ("status", "left"),
    ):  # fmt: skip
        table.add_column(title, justify=justify)  # type: ignore[arg-type]
    for r in refit["rows"]:
        ci = r["oof_macro_f1_ci95"]
        table.add_row(
            f"{r['number']:03d}",
            _f(r["val"]),
            str(r["rung"] or "-"),
            _f(r["oof_macro_f1"]),
            f"{ci[0]:.4f}-{ci[1]:.4f}" if ci else "-",
            f"{r['folds_done']}/{refit['folds']}",
            f"{r['seconds']:.0f}s" if r["seconds"] else "-",
            f"{r['refit']} {r['reason']}".strip(),
        )
    o.console.print(table, highlight=False)
    final = refit.get("final")
    if not final:
        return
    ens = final.get("ensemble")
    if ens:
        picks = ", ".join(f"{int(n):03d} x {w:.3f}" for n, w in ens["weights"].items())
        o.console.print(
            f"greedy ensemble ({ens['kept_rounds']} of {ens['rounds']} rounds): {picks}; "
            f"out of fold {ens['macro_f1_fitted']:.4f} fitted, {ens['macro_f1_cross_fitted']:.4f}"
            f" cross-fitted, best single trial {ens['best_single_macro_f1']:.4f}: "
            + ("kept" if ens["kept"] else "not kept (the rule below)"),
            highlight=False,
        )
    d = final["decision"]
    weights = final["decision_weights"]
    shown = ", ".join(f"{c} {w:.2f}" for c, w in weights.items()) if weights else "none"
    o.console.print(
        f"decision weights: {shown} (out of fold {d['plain']:.4f} without, {d['cross_fitted']:.4f}"
        " cross-fitted with)",
        highlight=False,
    )
    members = ", ".join(f"{m['trial']:03d} x {m['weight']:.3f}" for m in final["members"])
    lo, hi = final["macro_f1_ci95"]
    o.console.print(
        f"final: {final['dir']}: trials {members} ({final['folds']} fold models each); "
        f"out-of-fold macro-F1 {final['macro_f1']:.4f} (95% CI {lo:.4f}-{hi:.4f}), every "
        "choice cross-fitted",
        highlight=False,
    )
    o.console.print(f"rule: {final['rule']}", highlight=False)


def tune(
    config: ConfigOption = None,
    set_: SetOption = None,
    evals: Annotated[
        int | None,
        # max: config.MAX_COUNT (cli/ imports no config); --max-minutes: option_overrides
        typer.Option(
            "--evals", min=1, max=1_000_000, metavar="N", help="Number of trials ([search] evals)."
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            "-n",
            metavar="NAME",
            help="Search folder under [train] runs_dir (default: a timestamp).",
        ),
    ] = None,
    max_minutes: Annotated[
        float | None,
        typer.Option(
            "--max-minutes",
            min=0.0,
            metavar="MINUTES",
            help="Wall-clock budget of this invocation; 0 = none.",
        ),
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            "--resume",
            metavar="RUN_DIR",
            help="Continue the search in this folder (runs/NAME) with its own config.",
            file_okay=False,
        ),
    ] = None,
    backend: Annotated[
        Literal["hyperopt", "ray"] | None,
        typer.Option(
            "--backend",
            help='"hyperopt" (in-process, the default) or "ray" '
            "(Ray Tune; pip install 'heartcli[ray]').",
        ),
    ] = None,
    address: Annotated[
        str | None,
        typer.Option(
            "--address",
            metavar="ADDR",
            help="Ray cluster to join, HOST:PORT as `ray start --head` printed, run from a "
            "node of it (ray backend; without it, a local Ray). Token clusters need "
            "RAY_AUTH_MODE=token and RAY_AUTH_TOKEN. See docs/cluster.md: Tuning on a cluster.",
        ),
    ] = None,
    jobs: Annotated[
        str | None,
        typer.Option(
            "--jobs",
            "-j",
            metavar="N|auto",
            help="Trials at once, each with cores/N threads (default 1); auto picks the faster.",
        ),
    ] = None,
    show_report: Annotated[
        bool,
        typer.Option(
            "--report", help="With --resume: print the search's report (finished or running)."
        ),
    ] = False,
) -> None:
    """Search hyperparameters with hyperopt TPE: every trial is a run folder, the best is linked.

    With --backend ray the trials run on a Ray cluster (--address); they need nothing from
    this machine's disk, and their folders and MLflow runs come back here.
    """
    from heartcli.config import load_document, option_overrides
    from heartcli.model.runs import check_name
    from heartcli.search import report
    from heartcli.search import tune as run_search

    if name is not None:
        check_name(name)
    if resume is not None and (config is not None or set_):
        raise UsageError("--resume continues with the search's own config; drop --config and --set")
    if show_report:
        if resume is None:
            raise UsageError("--report: give the search with --resume runs/NAME")
        data = report(resume)
        out().result(data, lambda: render_report(data))
        return
    # The options that are config keys: --set items after the user's own (search/tune()).
    options = option_overrides(
        search_evals=evals, search_max_minutes=max_minutes, search_backend=backend
    )
    if resume is not None:  # the search's own config, this invocation's budget
        result = run_search(
            None,
            resume=resume,
            evals=evals,
            max_minutes=max_minutes,
            progress=LiveTable(),
            backend=backend,
            address=address,
            jobs=jobs,
        )
    else:
        resolved = resolve_config(config, [*(set_ or ()), *options])
        if address is not None and resolved.search.backend != "ray":
            raise UsageError("--address: only with --backend ray")
        base = load_document(config) if config is not None else None
        result = run_search(
            resolved, name=name, config_base=base, progress=LiveTable(), address=address, jobs=jobs
        )
    out().result(result.summary(), lambda: render(result))
