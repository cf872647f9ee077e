"""The one config loader: defaults, file, --set, and every malformed config's exact message."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomlkit

from heartcli.config import HeartConfig, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_init_writes_every_key_with_a_comment_and_loads_back(heart, tmp_path):
    heart("config", "init", "h.toml")
    text = Path("h.toml").read_text()
    doc = tomlkit.parse(text)
    for section, body in HeartConfig().to_dict().items():
        for key in body:
            assert key in doc[section], f"{section}.{key} missing"
    # Every key line is preceded by a comment line.
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if " = " in line and not line.startswith("#"):
            assert lines[i - 1].startswith("#"), f"no comment above: {line}"
    assert load_config("h.toml") == HeartConfig()


def test_init_refuses_to_overwrite(heart):
    heart("config", "init", "h.toml")
    result = heart("config", "init", "h.toml", expect=2)
    assert "error: h.toml already exists; pass --force to overwrite it" in result.stderr


def test_precedence_set_over_file_over_defaults(heart, tmp_path):
    cfg = write(tmp_path, "[train]\nepochs = 7\nlr = 0.01\n")
    shown = heart.json("config", "show", "--config", cfg, "--set", "train.lr=0.5")
    assert shown["train"]["epochs"] == 7
    assert shown["train"]["lr"] == 0.5
    assert shown["train"]["batch_size"] == 256
    # A bare word is taken as a string.
    shown = heart.json("config", "show", "--set", "data.split=inter-patient")
    assert shown["data"]["split"] == "inter-patient"


def test_show_keeps_user_comments(heart, tmp_path):
    cfg = write(tmp_path, "# my notes\n[train]\nepochs = 7  # short run\n")
    out = heart("config", "show", "--config", cfg, "--set", "train.epochs=9").stdout
    assert "# my notes" in out
    assert "epochs = 9  # short run" in out
    assert "batch_size = 256" in out


BAD_CONFIGS = [
    (
        "[train]\nepocs = 3\n",
        'c.toml:2 train.epocs: unknown key; did you mean "epochs"?',
    ),
    ("[trian]\nepochs = 3\n", 'c.toml:1 trian: unknown section; did you mean "train"?'),
    (
        '[train]\nlr = "fast"\n',
        'c.toml:2 train.lr: input should be a valid number (expected a number, got string "fast")',
    ),
    (
        "[train]\nepochs = 2.5\n",
        "c.toml:2 train.epochs: input should be a valid integer "
        "(expected an integer, got float 2.5)",
    ),
    (
        "[train]\nepochs = 0\n",
        "c.toml:2 train.epochs: input should be greater than or equal to 1 "
        "(expected a value >= 1, got integer 0)",
    ),
    (
        '[train]\noptimizer = "sgd"\n',
        "c.toml:2 train.optimizer: input should be 'adam' or 'adamw' "
        '(expected one of "adam" or "adamw", got string "sgd")',
    ),
    (
        "[model]\ndropout = 1.5\n",
        "c.toml:2 model.dropout: input should be less than 1 "
        "(expected a value < 1.0, got float 1.5)",
    ),
    (
        "[model]\nconv_layers = 3\n",
        "c.toml:1 model.channels: needs one entry per conv layer "
        "(expected 3 for conv_layers = 3, got 5)",
    ),
    (
        '[tracking]\ntensorboard = "yes"\n',
        "c.toml:2 tracking.tensorboard: input should be a valid boolean "
        '(expected true or false, got string "yes")',
    ),
    (
        '[data]\nlead = "V5"\n',
        "c.toml:2 data.lead: input should be 'channel0' or 'MLII' "
        '(expected one of "channel0" or "MLII", got string "V5")',
    ),
    ("train = 3\n", "c.toml:1 train: must be a table, got integer 3"),
    ("[train\n", "c.toml:1 UnexpectedCharError: Unexpected character"),
    (
        '[resample]\nstrategy = "smote"\ntarget = -5\n',
        "c.toml:3 resample.target: input should be greater than or equal to 1",
    ),
]


@pytest.mark.parametrize(("text", "message"), BAD_CONFIGS)
def test_malformed_config_exact_message(heart, tmp_path, text, message):
    cfg = write(tmp_path, text)
    result = heart("config", "show", "--config", cfg, expect=2)
    assert f"error: {tmp_path}/{message}" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_every_problem_at_once(heart, tmp_path):
    cfg = write(tmp_path, '[train]\nepocs = 3\nlr = "x"\n[model]\ndropout = 2\n')
    err = heart("config", "show", "--config", cfg, expect=2).stderr
    assert err.count("error:") == 3


def test_bad_overrides_name_the_override(heart):
    err = heart("config", "show", "--set", "train.lr=abc", "--set", "nokey", expect=2).stderr
    assert "error: --set nokey: expected section.key=value, e.g. --set train.epochs=5" in err
    err = heart("config", "show", "--set", "train.lr=abc", expect=2).stderr
    assert (
        "error: --set train.lr: input should be a valid number "
        '(expected a number, got string "abc")'
    ) in err


def test_missing_config_file(heart):
    err = heart("config", "show", "--config", "nope.toml", expect=2).stderr
    assert (
        "error: nope.toml: config file not found; create one with `heart config init nope.toml`"
    ) in err


def _numeric_keys() -> list[tuple[str, str, str]]:
    """(section, key, a value far beyond any sensible bound) for every numeric key."""
    from heartcli.config import SECTIONS

    keys = []
    for section, model in SECTIONS.items():
        for key, field in model.model_fields.items():
            kind = str(field.annotation)
            default = field.default
            if "int" in kind and "list[int]" in kind:
                huge = "[" + ", ".join([str(2**40)] * len(default)) + "]"
            elif "int" in kind:
                huge = str(2**64)
            elif "float" in kind:
                huge = "1e300"
            else:
                continue
            keys.append((section, key, huge))
    return keys


def test_every_numeric_key_has_an_upper_bound(heart):
    """`[export] latency_threads` = 2^32 and its kind: a number no machine means is one
    line naming the key (exit 2), never a traceback or an allocation of that size."""
    keys = _numeric_keys()
    assert ("export", "latency_threads", str(2**64)) in keys and len(keys) > 40
    for section, key, huge in keys:
        r = heart("config", "show", "--set", f"{section}.{key}={huge}", expect=2)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and f"{section}.{key}" in lines[0], (key, r.stderr)
    r = heart("config", "show", "--set", f"export.latency_threads={2**32}", expect=2)
    assert "less than or equal to 1,024" in r.stderr
    r = heart("config", "show", "--set", "export.opset=99", expect=2)
    assert "export.opset" in r.stderr


def test_an_overlong_number_is_not_echoed_whole(heart):
    r = heart("config", "show", "--set", f"train.epochs={'9' * 300}", expect=2)
    assert "9999999999999999...9999 (300 digits)" in r.stderr and "9" * 40 not in r.stderr
