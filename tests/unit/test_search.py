"""The search space grammar, its errors, TPE determinism across resume, the median stopping rule."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import make_config

from heartcli.config import HeartConfig, load_config
from heartcli.search.pruners import Asha, MedianStopper, rungs
from heartcli.search.records import TrialRecord
from heartcli.search.tpe import Suggester, trial_seed

SPACE = """
[search.space]
"train.lr" = {loguniform = [1e-4, 1e-2]}
"model.dropout" = {uniform = [0.1, 0.5]}
"train.batch_size" = {choice = [16, 32, 64, 128]}
"train.epochs" = {quniform = [5, 50, 1]}
"train.steps_fraction" = {quniform = [0.1, 1.0, 0.1]}
"model.attention" = {bool = true}
"train.optimizer" = {choice = ["adam", "adamw"]}
"model.fc" = {each = [{choice = [128, 256]}, {choice = [64, 128]}, {quniform = [32, 128, 32]}]}
"model.conv_layers" = {choice = [2, 3, 4]}
"model.channels" = {per_layer = [
    {choice = [32, 64]}, {choice = [64, 96]}, {choice = [96]}, {choice = [128, 160]},
]}
"model.kernel_sizes" = {per_layer = {choice = [3, 5, 7]}}
"model.pooling" = {per_layer = {choice = ["max", "avg", "none"]}}
"""


def space_config(tmp_path: Path, text: str = SPACE) -> HeartConfig:
    path = tmp_path / "s.toml"
    path.write_text(text)
    return load_config(path)


def test_every_distribution_and_the_conditional_layers_parse(tmp_path):
    config = space_config(tmp_path)
    space = config.search.parsed_space()
    kinds = {p.key: p.dist.kind for p in space.params if p.dist is not None}
    assert kinds == {
        "train.lr": "loguniform",
        "model.dropout": "uniform",
        "train.batch_size": "choice",
        "train.epochs": "quniform",
        "train.steps_fraction": "quniform",
        "model.attention": "bool",
        "train.optimizer": "choice",
        "model.conv_layers": "choice",
    }
    suggester = Suggester(space, config.model.conv_layers, seed=7, startup_trials=3)
    depths = set()
    for number in range(1, 31):
        vals = suggester.suggest(number)
        values = suggester.values(vals)
        n = values["model.conv_layers"]
        depths.add(n)
        # Per-layer lists exist for exactly the layers this trial has...
        for key in ("model.channels", "model.kernel_sizes", "model.pooling"):
            assert len(values[key]) == n
        # ...and the labels of the other depths are inactive (TPE sees the structure).
        for label, v in vals.items():
            if "|" in label:
                assert bool(v) == (label.endswith(f"|{n}"))
        assert 1e-4 <= values["train.lr"] <= 1e-2
        assert 0.1 <= values["model.dropout"] <= 0.5
        assert values["train.batch_size"] in (16, 32, 64, 128)
        assert isinstance(values["train.epochs"], int) and 5 <= values["train.epochs"] <= 50
        assert 0.1 <= values["train.steps_fraction"] <= 1.0
        assert isinstance(values["model.attention"], bool)
        assert values["model.channels"][:2] in ([32, 64], [32, 96], [64, 64], [64, 96])
        assert values["model.fc"][2] in (32, 64, 96, 128)
        assert all(isinstance(v, int) for v in values["model.fc"])
        assert set(values["model.pooling"]) <= {"max", "avg", "none"}
        # Every sample is a valid config.
        data = config.to_dict()
        for key, value in values.items():
            section, name = key.split(".")
            data[section][name] = value
        HeartConfig.model_validate(data)
        suggester.add(number, vals, -values["model.dropout"])
    assert depths == {2, 3, 4}


def test_fixed_layer_count_uses_per_layer_for_its_layers(tmp_path):
    config = space_config(
        tmp_path,
        "[model]\nconv_layers = 2\nchannels = [8, 8]\nkernel_sizes = [3, 3]\n"
        'pooling = ["max", "max"]\n'
        '[search.space]\n"model.channels" = {per_layer = {choice = [4, 16]}}\n',
    )
    suggester = Suggester(config.search.parsed_space(), 2, seed=1, startup_trials=1)
    values = suggester.values(suggester.suggest(1))
    assert len(values["model.channels"]) == 2


BAD_SPACES = [
    (
        '"train.lrr" = {loguniform = [1e-4, 1e-2]}',
        'search.space.train.lrr: unknown config key; did you mean "train.lr"?',
    ),
    (
        '"lr" = {choice = [1]}',
        'search.space.lr: not a config key; use section.key, e.g. "train.lr"',
    ),
    (
        '"train.batch_size" = {choice = []}',
        "search.space.train.batch_size: choice needs at least one option (got an empty array)",
    ),
    (
        '"model.dropout" = {uniform = [0.5, 0.1]}',
        "search.space.model.dropout: uniform low 0.5 is above high 0.1",
    ),
    (
        '"train.lr" = {loguniform = [0, 0.1]}',
        "search.space.train.lr: loguniform needs low > 0 (got 0)",
    ),
    (
        '"train.lr" = {logniform = [1e-4, 1e-2]}',
        'search.space.train.lr: unknown distribution "logniform"; did you mean "loguniform"?',
    ),
    (
        '"train.epochs" = {uniform = [5, 50]}',
        "search.space.train.epochs: train.epochs takes integers; use quniform with integer bounds",
    ),
    (
        '"train.optimizer" = {choice = ["adam", "sgd"]}',
        'search.space.train.optimizer: choice value "sgd": input should be "adam" or "adamw"',
    ),
    (
        '"model.dropout" = {uniform = [0.1, 1.5]}',
        "search.space.model.dropout: uniform value 1.5: input should be less than 1",
    ),
    (
        '"model.attention" = {bool = false}',
        "search.space.model.attention: bool takes true ({bool = true} searches false and true)",
    ),
    (
        '"train.lr" = 0.1',
        "search.space.train.lr: a distribution is a table with one of choice, uniform, "
        "loguniform, quniform, bool, e.g. {choice = [16, 32]} (got 0.1)",
    ),
    (
        '"model.fc" = {per_layer = [{choice = [8]}]}',
        "search.space.model.fc: per_layer is for model.channels, model.kernel_sizes, "
        "model.pooling; use each for other lists",
    ),
    (
        '"train.lr" = {each = [{choice = [0.1]}]}',
        "search.space.train.lr: each is for list keys; train.lr is not a list",
    ),
    (
        '"search.evals" = {choice = [1, 2]}',
        "search.space.search.evals: the search settings themselves cannot be searched",
    ),
    (
        '"model.conv_layers" = {choice = [2, 3]}',
        "search.space.model.conv_layers: a searched layer count needs model.channels, "
        "model.kernel_sizes, model.pooling in the space too, e.g. {per_layer = {choice = "
        "[...]}}",
    ),
    (
        '"model.conv_layers" = {choice = [2, 3]}\n'
        '"model.channels" = {per_layer = [{choice = [8]}, {choice = [8]}]}\n'
        '"model.kernel_sizes" = {per_layer = {choice = [3]}}\n'
        '"model.pooling" = {per_layer = {choice = ["max"]}}',
        "search.space.model.channels: per_layer has 2 entries but model.conv_layers goes up "
        "to 3; give one per possible layer",
    ),
]


@pytest.mark.parametrize(("line", "message"), BAD_SPACES)
def test_bad_space_is_a_clear_error(heart, tmp_path, line, message):
    path = tmp_path / "bad.toml"
    path.write_text(f"[train]\nepochs = 2\n\n[search.space]\n{line}\n")
    result = heart("tune", "--config", path, expect=2)
    # The error names the line of the space key it is about.
    key = message.split(":")[0].removeprefix("search.space.")
    lineno = 5 + next(i for i, text in enumerate(line.splitlines()) if f'"{key}"' in text)
    assert result.stderr.strip().splitlines() == [f"error: {path}:{lineno} {message}"]


def test_every_bad_key_is_reported_at_once(heart, tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(
        '[search]\nmetric = "f1"\n[search.space]\n"train.lrr" = {uniform = [0.1, 0.2]}\n'
        '"train.batch_size" = {choice = []}\n'
    )
    lines = heart("tune", "--config", path, expect=2).stderr.strip().splitlines()
    assert lines == [
        f'error: {path}:2 search.metric: "f1" is not a validation metric; use "val_macro_f1", '
        '"val_loss" or "val_recall_<class>", e.g. "val_recall_S"',
        f'error: {path}:4 search.space.train.lrr: unknown config key; did you mean "train.lr"?',
        f"error: {path}:5 search.space.train.batch_size: choice needs at least one option "
        "(got an empty array)",
    ]


def test_empty_space_and_bad_resume_are_usage_errors(heart, tmp_path):
    result = heart("tune", expect=2)
    assert result.stderr.strip() == (
        "error: search.space: empty; add search.space entries, e.g. "
        '"train.lr" = {loguniform = [1e-5, 1e-2]} (see examples/exp.toml)'
    )
    result = heart("tune", "--resume", "runs/nope", expect=2)
    assert result.stderr.strip() == (
        "error: runs/nope: no such search folder; start one with `heart tune`"
    )
    result = heart("tune", "--resume", "runs/nope", "--set", "train.epochs=1", expect=2)
    assert "drop --config and --set" in result.stderr


# TINY (conftest) on 100 beats a class, searched by TPE: 6 trials, 2 of them at random.
REAL_SEARCH = {
    "evals": 6, "seed": 5, "startup_trials": 2, "pruner": "none",
    "space": {
        "train.lr": {"loguniform": [1e-4, 1e-2]},
        "model.dropout": {"uniform": [0.0, 0.4]},
        "model.channels": {"each": [{"choice": [4, 8]}]},
    },
}  # fmt: skip


@pytest.mark.slow
def test_the_real_loop_resumed_suggests_the_same_points(heart, tmp_path, sample_dir):
    """`heart tune` itself (not a copy of its loop): 6 trials at once, or 3 and a resume."""
    path = make_config(
        tmp_path / "real.toml",
        data={"dir": str(sample_dir)},
        resample={"target": 100},
        search=REAL_SEARCH,
    )
    whole = heart.json("tune", "--config", path, "--name", "whole")["records"]
    part = heart.json("tune", "--config", path, "--name", "part", "--evals", "3")["records"]
    assert len(part) == 3
    resumed = heart.json("tune", "--resume", "runs/part", "--evals", "6")["records"]
    assert [r["vals"] for r in resumed] == [r["vals"] for r in whole]
    assert resumed[:3] == part  # the finished trials were kept as they were
    assert [r["seen"] for r in whole] == [list(range(1, n)) for n in range(1, 7)]
    # Every point is TPE's suggestion from the history the loop gave it, and that history
    # matters: without it, TPE suggests other points once its start-up trials are done.
    config = load_config(path)
    space = config.search.parsed_space()
    suggester = Suggester(space, 1, config.search.seed, 2)
    for r in whole:
        assert suggester.suggest(r["number"]) == r["vals"]
        suggester.add(r["number"], r["vals"], -r["metric"])
    blind = Suggester(space, 1, config.search.seed, 2)
    assert [blind.suggest(n) for n in (4, 5, 6)] != [r["vals"] for r in whole[3:]]


def test_trial_seed_depends_only_on_seed_and_number():
    assert trial_seed(42, 3) == trial_seed(42, 3)
    assert len({trial_seed(42, n) for n in range(1, 50)}) == 49
    assert trial_seed(42, 3) != trial_seed(43, 3)
    assert 0 <= trial_seed(-1, 1) < 2**31 - 1


def test_median_stopping_rule():
    finished = [[0.5, 0.6, 0.7, 0.8], [0.4, 0.5, 0.6], [0.6, 0.5, 0.9, 0.9]]
    stopper = MedianStopper(finished, warmup=1, min_trials=3, maximise=True)
    # Best-so-far at epoch 2: 0.6, 0.5, 0.6 -> median 0.6.
    assert stopper.median_at(2) == 0.6
    assert not stopper.stops([0.1])  # warm-up
    assert stopper.stops([0.1, 0.55])
    assert not stopper.stops([0.1, 0.6])
    # A shorter finished curve counts with its last value: epoch 4 -> 0.8, 0.6, 0.9.
    assert stopper.median_at(4) == 0.8
    assert MedianStopper(finished[:2], 1, 3, True).median_at(2) is None  # too few trials
    losses = MedianStopper([[1.0, 0.5], [1.0, 0.7], [1.0, 0.9]], 1, 3, maximise=False)
    assert losses.stops([1.0, 0.8]) and not losses.stops([1.0, 0.6])
    # Never at a trial's last epoch: nothing is left to save by stopping.
    record = TrialRecord(9, {}, {})
    assert stopper.should_stop(record, [0.1, 0.55], epochs=3)
    assert not stopper.should_stop(record, [0.1, 0.55], epochs=2)


def test_asha_rule_as_ray_tune():
    """Rungs at min_epochs x factor^k; a trial goes on at a rung only if its value there is
    not below the (1 - 1/factor) quantile of the values recorded there so far."""
    assert rungs(1, 3, 27) == [1, 3, 9, 27]
    assert rungs(2, 2, 9) == [2, 4, 8]
    asha = Asha(min_epochs=1, factor=3, max_epochs=9, maximise=True)
    trials = [TrialRecord(n, {}, {}) for n in range(1, 6)]
    # Rung 1: the first trial always goes on; then each is compared with those before it.
    assert not asha.should_stop(trials[0], [0.50], 9)
    assert asha.should_stop(trials[1], [0.40], 9)  # below 0.50
    assert not asha.should_stop(trials[2], [0.60], 9)  # 2/3 quantile of 0.5, 0.4 is 0.4667
    # 2/3 quantile of 0.5, 0.4, 0.6 is 0.5333: 0.52 stops, 0.55 goes on.
    assert asha.cutoff(1) == pytest.approx(0.5333333)
    assert asha.should_stop(trials[3], [0.52], 9)
    assert not asha.should_stop(trials[4], [0.55], 9)
    # Epochs between rungs never stop; a rung is judged once per trial.
    assert not asha.should_stop(trials[0], [0.5, 0.1], 9)
    assert not asha.should_stop(trials[0], [0.5, 0.1, 0.3], 9)  # first at rung 3
    assert asha.should_stop(trials[4], [0.55, 0.5, 0.2], 9)  # below 0.3, the first at rung 3
    assert trials[0].rungs == {"1": 0.5, "3": 0.3} and trials[4].rungs == {"1": 0.55, "3": 0.2}
    # The records are the trials' own: a resumed search rebuilds the same cut-offs.
    again = Asha(1, 3, 9, True, trials)
    assert again.cutoff(1) == asha.cutoff(1) and again.cutoff(3) == asha.cutoff(3)
    # A loss is lower-is-better; the last epoch is recorded but never stopped at.
    losses = Asha(1, 2, 2, maximise=False)
    assert not losses.should_stop(TrialRecord(1, {}, {}), [0.5], 2)
    assert losses.should_stop(TrialRecord(2, {}, {}), [0.9], 2)
    last = TrialRecord(3, {}, {})
    assert not losses.should_stop(last, [0.3, 5.0], 2) and not losses.should_stop(
        TrialRecord(4, {}, {}), [0.2, 9.0], 2
    )
    assert last.rungs == {"2": 5.0}


def test_trial_record_loss():
    record = TrialRecord(1, {}, {}, status="completed", metric=0.8)
    assert record.loss(maximize=True) == -0.8
    assert TrialRecord(2, {}, {}, status="failed").loss(maximize=True) is None
