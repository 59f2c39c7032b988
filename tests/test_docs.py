"""The generated reference pages of the documentation site (``docs/hooks.py``) cover every recipe key
and every CLI verb and option, and refuse undocumented ones."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
from pathlib import Path

import pytest

from matmulfree.config import CONFIG_CLASSES, doc_field, field_docs
from matmulfree.recipe import MODEL_KEYS, SECTIONS, TOP_LEVEL_KEYS

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cli_page(hooks):
    return hooks.cli_reference()


def test_recipe_reference_lists_every_key(hooks):
    page = hooks.recipe_reference()
    keys = list(TOP_LEVEL_KEYS) + [f"model.{k}" for k in MODEL_KEYS]
    keys += [f"model.{f.name}" for cls in CONFIG_CLASSES.values() for f in dataclasses.fields(cls)]
    keys += [f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)]
    assert set(keys) == set(hooks.recipe_keys())
    rows = [line.split(" | ")[0].lstrip("| ") for line in page.splitlines() if line.startswith("| `")]
    missing = sorted(set(f"`{k}`" for k in keys) - set(rows))
    assert not missing, f"recipe keys without a row in docs/recipes.md: {missing}"
    assert all(hooks.recipe_keys().values())


def test_undocumented_field_is_refused():
    @dataclasses.dataclass
    class Section:
        documented: int = doc_field(1, "has a description")
        bare: int = 2

    with pytest.raises(ValueError, match=r"Section: field\(s\) \['bare'\] have no description"):
        field_docs(Section)


def test_cli_reference_lists_every_verb_and_option(hooks, cli_page):
    commands = hooks.cli_commands()
    expected = {"matmulfree train", "matmulfree generate", "matmulfree eval", "matmulfree info",
                "matmulfree export", "matmulfree fpga", "matmulfree fpga csim", "matmulfree fpga sim",
                "matmulfree fpga run", "matmulfree power"}
    assert expected <= set(commands)
    for name, parser in commands.items():
        assert f"`{name}`" in cli_page, name
        section = cli_page.split(f"`{name}`\n", 1)[1].split("\n#", 1)[0]
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            names = action.option_strings or [action.metavar or action.dest]
            for option in names:
                assert f"`{option}" in section, f"{name}: {option} missing from the CLI reference"


def test_option_without_help_is_refused(hooks):
    parser = argparse.ArgumentParser(prog="tool")
    parser.add_argument("--quiet", action="store_true")
    with pytest.raises(ValueError, match="tool: option --quiet has no help text"):
        hooks.expand_help(parser._actions[-1], "tool")


def test_markers_are_filled_and_unknown_ones_refused(hooks):
    pages = {name: (ROOT / "docs" / page).read_text() for name, page in
             [("recipe-keys", "recipes.md"), ("presets", "recipes.md"), ("shipped-recipes", "recipes.md"),
              ("cli", "cli.md")]}
    for name, text in pages.items():
        assert hooks.MARKER.format(name) in text, f"docs page lost its marker {name!r}"
    filled = hooks.fill_markers("before\n<!-- generated: presets -->\nafter")
    assert "| `370m` | 24 | 1024 |" in filled and "generated:" not in filled
    with pytest.raises(ValueError, match="unknown generation marker 'nope'"):
        hooks.fill_markers("<!-- generated: nope -->", "x.md")


def test_source_tree_maps_every_subpackage(hooks, tmp_path):
    tree = hooks.link_source_tree(tmp_path)
    for dotted, folder in hooks.package_dirs().items():
        linked = tree.joinpath(*dotted.split("."))
        assert (linked / "__init__.py").resolve() == (folder / "__init__.py").resolve(), dotted
