"""The documentation stays true: a short README with the two commands, and a site where every
command and every config section has its page, generated from the code (docs/hooks)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import tomlkit
import typer.main
import yaml
from conftest import REPO

from heartcli.cli.app import app
from heartcli.config import SECTIONS, HeartConfig

README = REPO / "README.md"
DOCS = REPO / "docs"


def reference():
    """docs/hooks/reference.py, the MkDocs hook that renders the generated references."""
    spec = importlib.util.spec_from_file_location(
        "heart_docs_reference", DOCS / "hooks/reference.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def mkdocs_config() -> dict:
    class Loader(yaml.SafeLoader):
        pass

    # mkdocs.yml's own tags (!relative) are MkDocs's business: read them as plain values.
    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    return yaml.load((REPO / "mkdocs.yml").read_text(), Loader=Loader)


def nav_pages(nav) -> list[str]:
    pages = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        pages += nav_pages(value) if isinstance(value, list) else [value]
    return pages


def marker_pages() -> dict[str, Path]:
    """ "command tune" / "config train" / "commands" -> the page whose marker asks for it."""
    ref = reference()
    found = {}
    for page in DOCS.rglob("*.md"):
        for kind, name in ref.markers(page.read_text()):
            key = "commands" if kind == "commands" else f"{kind} {name}"
            assert key not in found, f"{key} on both {found[key]} and {page}"
            found[key] = page
    return found


def test_site_documents_every_command():
    pages = marker_pages()
    nav = nav_pages(mkdocs_config()["nav"])
    ref = reference()
    root = typer.main.get_command(app)
    paths = ref.command_paths()
    assert {p[0] for p in paths} == set(root.commands)
    assert ("config", "init") in paths and ("config", "show") in paths
    for path in paths:
        name = " ".join(path)
        page = pages.get(f"command {name}")
        assert page, f"the site has no page for heart {name}"
        assert page.relative_to(DOCS).as_posix() in nav, f"{page} is not in mkdocs.yml's nav"
        assert page.read_text().startswith(f"# heart {name}\n"), page
        text = ref.render_command(path, {"": "index.md"})
        assert text.startswith(f"```text\nheart {name} [OPTIONS]"), text[:80]
        command, _ = ref.contexts(path)
        for param in command.params:
            if not getattr(param, "hidden", False):
                for opt in param.opts if param.param_type_name == "option" else ():
                    assert f"{opt}" in text, f"heart {name} {opt} missing from its reference"
        shown = re.sub(r"\\(.)", r"\1", text).replace("&lt;", "<").replace("&gt;", ">")
        shown = " ".join(shown.split())
        assert " ".join(ref.help_text(command).split()) in shown, f"heart {name}'s help"
    assert "commands" in pages


def test_site_config_reference_lists_every_key_with_its_default():
    pages = marker_pages()
    nav = nav_pages(mkdocs_config()["nav"])
    ref = reference()
    defaults = HeartConfig().to_dict()
    for section, model in SECTIONS.items():
        page = pages.get(f"config {section}")
        assert page, f"the site has no [{section}] reference"
        assert page.relative_to(DOCS).as_posix() in nav
        body = ref.render_section(section)
        for key in model.model_fields:
            row = re.search(rf"^\| `{key}` \| [^|]* \| `(.*?)` \| [^|]* \| (.*) \|$", body, re.M)
            assert row, f"{section}.{key} not in the site's reference"
            shown = tomlkit.parse(f"v = {row.group(1)}")["v"]
            shown = shown.unwrap() if hasattr(shown, "unwrap") else shown
            assert shown == defaults[section][key], (
                f"the site says {section}.{key} defaults to {row.group(1)}, "
                f"the schema says {defaults[section][key]!r}"
            )
            description = model.model_fields[key].description or ""
            unescaped = re.sub(r"\\(.)", r"\1", row.group(2))
            unescaped = unescaped.replace("&lt;", "<").replace("&gt;", ">")
            assert unescaped == description, f"{section}.{key}"
        assert len(re.findall(r"^\| `", body, re.M)) == len(defaults[section])
        # the section as `heart config init` writes it, key by key
        for key in model.model_fields:
            assert re.search(rf"^    {key} = |^    \[{section}\.{key}\]", body, re.M), key


def test_config_reference_shows_bounds_and_choices():
    ref = reference()
    train = ref.render_section("train")
    assert re.search(r"^\| `val_fraction` \| number \| `0.1` \| 0 < x < 1 \|", train, re.M)
    assert re.search(
        r"^\| `precision` \| string \| `\"auto\"` \| `\"auto\"`, `\"fp32\"`", train, re.M
    )
    assert re.search(r"^\| `seed` \| integer \| `42` \| 0 ≤ x ≤ 4,294,967,295 \|", train, re.M)
    export = ref.render_section("export")
    assert "max \\|p\\_export - p\\_torch\\| allowed" in export  # escaped, shown as written


def test_readme_two_commands_exist_in_the_makefile():
    text = README.read_text()
    makefile = (README.parent / "Makefile").read_text()
    for target in ("demo", "test"):
        assert f"make {target}" in text
        assert re.search(rf"^{target}:", makefile, re.M)
    ci = (README.parent / ".ci" / "run").read_text()
    assert "make test" in ci
    # CI builds the site: `make test` needs docs-build, which fails on any warning
    assert re.search(r"^test:.*\bdocs-build\b", makefile, re.M)
    build = re.search(r"^docs-build:.*\n\t(.*)$", makefile, re.M)
    assert build and "mkdocs build --strict" in build.group(1)
    assert re.search(r"^docs:.*\n\t.*mkdocs serve", makefile, re.M)


def test_readme_is_short_and_its_links_lead_somewhere():
    text = README.read_text()
    assert len(text.splitlines()) <= 150
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    assert any(link.startswith("docs/") for link in links)
    for link in links:
        assert (REPO / link).is_file(), f"README links to {link}, which does not exist"


def test_site_is_material_with_the_reference_hook():
    config = mkdocs_config()
    assert config["theme"]["name"] == "material"
    assert config["hooks"] == ["docs/hooks/reference.py"]
    for page in nav_pages(config["nav"]):
        assert (DOCS / page).is_file(), page
    # the picture and the config the tune page shows stay where the site and README link them
    assert (DOCS / "tune-asha.png").is_file() and (DOCS / "tune-asha.toml").is_file()
    assert "../tune-asha.png" in (DOCS / "commands/tune.md").read_text()


# --------------------------------------------- moved here from tests/test_hardening.py


def test_readme_says_which_commands_take_config_and_set(heart):
    from conftest import REPO, all_commands

    readme = (REPO / "README.md").read_text()
    claim = re.search(r"`--config FILE` and `--set` are taken by ([^.]+)\.", readme)
    assert claim, "README must say which commands take --config and --set"
    named = set(re.findall(r"`heart ([a-z ]+?)`", claim.group(1)))
    takes = {
        " ".join(path)
        for path, command in all_commands()
        if not hasattr(command, "commands")
        and {"--config", "--set"} <= {o for p in command.params for o in p.opts}
    }
    assert named == takes
