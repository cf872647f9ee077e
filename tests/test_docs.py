"""README stays true: every command and every config key is documented there."""

from __future__ import annotations

import re

import tomlkit
import typer.main
from conftest import REPO

from heartcli.cli.app import app
from heartcli.config import SECTIONS, HeartConfig

README = REPO / "README.md"


def test_readme_documents_every_command():
    text = README.read_text()
    for name in typer.main.get_command(app).commands:
        assert f"### `heart {name}" in text, f"README has no section for heart {name}"


def test_readme_config_reference_lists_every_key_with_its_default():
    text = README.read_text()
    defaults = HeartConfig().to_dict()
    for section, model in SECTIONS.items():
        block = text.split(f"### [{section}]", 1)
        assert len(block) == 2, f"README has no [{section}] reference"
        body = block[1].split("\n### ", 1)[0]
        for key in model.model_fields:
            row = re.search(rf"^\| `{key}` \| `(.*?)` \| (.*) \|$", body, re.M)
            assert row, f"{section}.{key} not in README"
            shown = tomlkit.parse(f"v = {row.group(1)}")["v"]
            shown = shown.unwrap() if hasattr(shown, "unwrap") else shown
            assert shown == defaults[section][key], (
                f"README says {section}.{key} defaults to {row.group(1)}, "
                f"the schema says {defaults[section][key]!r}"
            )
            description = model.model_fields[key].description or ""
            assert row.group(2).replace("\\|", "|") == description, f"{section}.{key}"
        assert len(re.findall(r"^\| `", body, re.M)) == len(defaults[section])


def test_readme_two_commands_exist_in_the_makefile():
    text = README.read_text()
    makefile = (README.parent / "Makefile").read_text()
    for target in ("demo", "test"):
        assert f"make {target}" in text
        assert re.search(rf"^{target}:", makefile, re.M)
    ci = (README.parent / ".ci" / "run").read_text()
    assert "make test" in ci
