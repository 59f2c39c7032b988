"""MkDocs hooks of the documentation site (``hooks:`` in ``mkdocs.yml``).

1. **Generated reference.** A page line ``<!-- generated: NAME -->`` is replaced at build time by
   the Markdown of ``GENERATORS[NAME]``: every recipe key from the recipe dataclasses
   (:mod:`matmulfree.recipe`) and the model configs (:mod:`matmulfree.config`), with the one-line
   description each field carries in ``metadata["doc"]``; the presets; the shipped recipes; and
   every verb, sub-verb and option of ``matmulfree.cli.build_parser()``. A field or option without
   a description is an error, so a new key cannot ship undocumented (``tests/test_docs.py``).
2. **API source tree.** The package is installed from three folders (``matmulfree/``, ``fpga/`` as
   ``matmulfree.fpga``, ``triton_kernels/`` as ``matmulfree.triton_kernels``: ``package-dir`` in
   ``pyproject.toml``). mkdocstrings reads sources statically and cannot follow that mapping, so the
   build links the folders into one ``matmulfree/`` tree in a temporary directory and points the
   Python handler there.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

try:
    from mkdocs.plugins import event_priority
except ImportError:  # imported without MkDocs (the generator tests)

    def event_priority(priority: float):
        return lambda f: f


if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "matmulfree"


# --------------------------------------------------------------------------- API source tree
def package_dirs(root: Path = ROOT) -> dict[str, Path]:
    """``{dotted package: folder}`` from ``[tool.setuptools.package-dir]`` of ``pyproject.toml``."""
    with open(root / "pyproject.toml", "rb") as f:
        mapping = tomllib.load(f)["tool"]["setuptools"]["package-dir"]
    return {name: root / folder for name, folder in mapping.items()}


def link_source_tree(dest: Path, root: Path = ROOT) -> Path:
    """Build ``dest/matmulfree`` from symbolic links so that every subpackage sits in its folder."""
    dirs = package_dirs(root)
    top = dest / PACKAGE
    top.mkdir(parents=True)
    mapped = {name.split(".", 1)[1]: folder for name, folder in dirs.items() if name.startswith(f"{PACKAGE}.")}
    for child in sorted(dirs[PACKAGE].iterdir()):
        if child.name not in mapped and child.name != "__pycache__":
            (top / child.name).symlink_to(child)
    for name, folder in mapped.items():
        if "." in name:
            raise ValueError(f"pyproject.toml package-dir: nested mapping {name!r} is not supported by docs/hooks.py")
        (top / name).symlink_to(folder)
    return dest


_tree: Path | None = None


@event_priority(100)  # before mkdocstrings reads its handler options
def on_config(config):
    global _tree
    on_shutdown()  # `mkdocs serve` reloads the config on every rebuild
    _tree = Path(tempfile.mkdtemp(prefix="matmulfree-docs-src-"))
    link_source_tree(_tree)
    python = config.plugins["mkdocstrings"].config.handlers.setdefault("python", {})
    python["paths"] = [str(_tree)]
    return config


def on_shutdown():
    global _tree
    if _tree is not None:
        shutil.rmtree(_tree, ignore_errors=True)
        _tree = None


# --------------------------------------------------------------------------- Markdown helpers
_ESCAPE = str.maketrans({c: "\\" + c for c in "\\`*_[]|<>"})


def md(text: str) -> str:
    """Plain text as Markdown that renders as written (also inside a table cell); text between
    backticks stays inline code."""
    text = " ".join(str(text).split())
    parts = text.split("`")
    if len(parts) % 2 == 0:  # an unpaired backtick: all plain text
        return text.translate(_ESCAPE)
    return "".join(p.translate(_ESCAPE) if i % 2 == 0 else "`" + p.replace("|", "\\|") + "`"
                   for i, p in enumerate(parts))


def code(value: Any) -> str:
    """A value as inline code (YAML spelling for None / booleans / strings with newlines)."""
    if value is None:
        text = "null"
    elif isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, str):
        text = repr(value) if (not value or value != value.strip() or "\n" in value) else value
    else:
        text = str(value)
    return "`" + text.replace("|", "\\|").replace("`", "'") + "`"


_ROLE = re.compile(r":[a-z]+:`~?\.?([^`]+)`")


def docstring_md(text: str) -> str:
    """A docstring paragraph (reST-style ````code```` and ``:mod:`x``` roles) as one Markdown line."""
    return " ".join(_ROLE.sub(r"`\1`", text.replace("``", "`")).split())


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


# --------------------------------------------------------------------------- recipe reference
def recipe_keys() -> dict[str, str]:
    """``{"section.key": description}`` of every key a recipe may hold (what the reference lists)."""
    from matmulfree.config import CONFIG_CLASSES, field_docs
    from matmulfree.recipe import MODEL_KEYS, SECTIONS, TOP_LEVEL_KEYS, Recipe

    top = field_docs(Recipe)
    keys = {key: top[key] for key in TOP_LEVEL_KEYS}
    keys.update({f"model.{name}": doc for name, doc in MODEL_KEYS.items()})
    for cls in CONFIG_CLASSES.values():
        keys.update({f"model.{name}": doc for name, doc in field_docs(cls).items()})
    for section, cls in SECTIONS.items():
        keys.update({f"{section}.{name}": doc for name, doc in field_docs(cls).items()})
    return keys


def recipe_reference() -> str:
    """Tables of every recipe key: top level, ``model`` (per architecture) and each section."""
    from matmulfree.config import CONFIG_CLASSES, field_docs
    from matmulfree.recipe import DEFAULT_ARCHITECTURE, MODEL_KEYS, SECTIONS, TOP_LEVEL_KEYS, Recipe

    fields = {f.name: f for f in dataclasses.fields(Recipe)}
    docs = field_docs(Recipe)
    rows = []
    for key in TOP_LEVEL_KEYS:
        default = _default(fields[key])
        shown = "required" if key == "model" else code(default) if key in ("description", "out") else "—"
        if key == "name":
            shown = "file name"
        rows.append([f"`{key}`", shown, md(docs[key])])
    out = ["## Top level", "", table(["key", "default", "description"], rows), ""]

    archs = list(CONFIG_CLASSES)
    out += ["## `model`", "",
            "Any field of the model config of the chosen architecture, plus `architecture` and `preset`. "
            "A key that the architecture does not have is an error.", ""]
    model_defaults = {"architecture": DEFAULT_ARCHITECTURE, "preset": None}
    rows = [[f"`model.{k}`", code(model_defaults[k]), "all", md(v)] for k, v in MODEL_KEYS.items()]
    seen: dict[str, list[str]] = {}
    described: dict[str, tuple[dataclasses.Field, str]] = {}
    for arch, cls in CONFIG_CLASSES.items():
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            seen.setdefault(f.name, []).append(arch)
            described.setdefault(f.name, (f, docs[f.name]))
    for name, (f, doc) in described.items():
        where = "all" if len(seen[name]) == len(archs) else ", ".join(seen[name])
        rows.append([f"`model.{name}`", code(_default(f)), where, md(doc)])
    out += [table(["key", "default", "architectures", "description"], rows), ""]

    for section, cls in SECTIONS.items():
        docs = field_docs(cls)
        rows = [[f"`{section}.{f.name}`", md(str(f.type)), code(_default(f)), md(docs[f.name])]
                for f in dataclasses.fields(cls)]
        summary = (cls.__doc__ or "").strip().split("\n\n")[0]
        out += [f"## `{section}`", "", docstring_md(summary), "",
                table(["key", "type", "default", "description"], rows), ""]
    return "\n".join(out)


def presets_table() -> str:
    """The named model shapes of :data:`matmulfree.config.PRESETS`."""
    from matmulfree.config import PRESETS, preset

    rows = []
    for name in PRESETS:
        c = preset(name)
        rows.append([f"`{name}`", str(c.n_layers), str(c.d_model), str(c.intermediate_size), f"{c.vocab_size:,}",
                     f"{c.max_seq_len:,}"])
    return table(["preset", "layers", "d_model", "intermediate_size", "vocab_size", "max_seq_len"], rows)


def shipped_recipes_table() -> str:
    """Every recipe in ``recipes/`` (loaded and validated) with its description and main settings."""
    from matmulfree.recipe import load_recipe, recipe_dir

    rows = []
    for path in sorted(recipe_dir().glob("*.yaml")):
        r = load_recipe(str(path))
        c = r.model_config(vocab_size=1)  # the shape does not depend on the tokenizer's vocabulary
        rows.append([f"`{path.stem}`", md(r.description), code(c.architecture), f"{c.n_layers} × {c.d_model}",
                     code(r.data.source), code(r.data.tokenizer), f"{r.train.steps:,}"])
    return table(["recipe", "what", "architecture", "layers × d_model", "data", "tokenizer", "steps"], rows)


def top_level_api() -> str:
    """``matmulfree.__all__``: each name with its first docstring line, linked to its definition."""
    import inspect

    import matmulfree

    rows = []
    for name in matmulfree.__all__:
        obj = getattr(matmulfree, name)
        path = f"{obj.__module__}.{obj.__qualname__}"
        doc = (inspect.getdoc(obj) or "").split("\n\n")[0]
        shown = f"`matmulfree.{name}`" + ("" if obj.__name__ == name else f" (= `{obj.__name__}`)")
        rows.append([f"[{shown}][{path}]", docstring_md(doc)])
    return table(["name", "what"], rows)


# --------------------------------------------------------------------------- CLI reference
def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _sub_help(parser: argparse.ArgumentParser) -> dict[str, str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return {a.dest: a.help or "" for a in action._choices_actions}
    return {}


def cli_commands(parser: argparse.ArgumentParser | None = None, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    """``{"matmulfree train": parser, "matmulfree fpga sim": parser, ...}``: every verb and sub-verb."""
    if parser is None:
        from matmulfree.cli import build_parser

        parser = build_parser()
    name = prefix or parser.prog
    found = {name: parser}
    for verb, sub in _subparsers(parser).items():
        found.update(cli_commands(sub, f"{name} {verb}"))
    return found


def expand_help(action: argparse.Action, prog: str) -> str:
    """An option's help with ``%(default)s`` and friends filled in, as argparse prints it."""
    if not action.help:
        raise ValueError(f"{prog}: option {'/'.join(action.option_strings) or action.dest} has no help text")
    params = {k: v for k, v in dict(vars(action), prog=prog).items() if v is not argparse.SUPPRESS}
    for k, v in list(params.items()):
        if hasattr(v, "__name__"):
            params[k] = v.__name__
    if params.get("choices") is not None:
        params["choices"] = ", ".join(map(str, params["choices"]))
    return action.help % params


def _argument_row(action: argparse.Action, prog: str) -> list[str]:
    choices = "{" + ",".join(map(str, action.choices)) + "}" if action.choices is not None else None
    if action.option_strings:
        metavar = "" if action.nargs == 0 else " " + (action.metavar or choices or action.dest.upper())
        name = ", ".join(f"`{o}{metavar}`" for o in action.option_strings)
    else:
        name = f"`{action.metavar or choices or action.dest}`"
    if action.required or (not action.option_strings and action.nargs is None):
        default = "required"
    elif action.nargs == 0 or action.default in (None, argparse.SUPPRESS):
        default = "—"
    else:
        default = code(action.default)
    return [name, default, md(expand_help(action, prog))]


def usage(parser: argparse.ArgumentParser, width: int = 100) -> str:
    formatter = argparse.HelpFormatter(parser.prog, width=width)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    return formatter.format_help().strip()


def cli_reference() -> str:
    """One section per verb and sub-verb: description, usage and a table of its arguments."""
    commands = cli_commands()
    helps: dict[str, str] = {}
    for name, parser in commands.items():
        helps.update({f"{name} {verb}": text for verb, text in _sub_help(parser).items()})
    out = []
    for name, parser in commands.items():
        level = "#" * min(name.count(" ") + 1, 4)
        out += [f"{level} `{name}`", ""]
        if name in helps:
            out += [f"*{md(helps[name])}*", ""]
        if parser.description:
            out += [md(parser.description), ""]
        out += ["```text", usage(parser), "```", ""]
        subs = _sub_help(parser)
        if subs:
            out += [table(["command", "what"], [[f"[`{name} {v}`](#{_anchor(f'{name} {v}')})", md(t)]
                                                for v, t in subs.items()]), ""]
        for title, actions in _argument_groups(parser):
            if title:
                out += [f"**{md(title)}**", ""]
            out += [table(["argument", "default", "description"], [_argument_row(a, name) for a in actions]), ""]
    return "\n".join(out)


def _argument_groups(parser: argparse.ArgumentParser) -> list[tuple[str | None, list[argparse.Action]]]:
    """``[(None, positionals and general options), (group title, its options), ...]`` without ``--help``."""
    general: list[argparse.Action] = []
    titled = []
    for group in parser._action_groups:
        actions = [a for a in group._group_actions
                   if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]
        if group in (parser._positionals, parser._optionals):
            general += actions
        elif actions:
            titled.append((group.title, actions))
    return ([(None, general)] if general else []) + titled


def _anchor(heading: str) -> str:
    """The id MkDocs' toc extension gives a heading ``\\`matmulfree fpga sim\\```."""
    return "-".join(heading.lower().split())


# --------------------------------------------------------------------------- the hook
#: Marker name -> generator of the Markdown that replaces ``<!-- generated: NAME -->``.
GENERATORS: dict[str, Callable[[], str]] = {
    "recipe-keys": recipe_reference,
    "presets": presets_table,
    "shipped-recipes": shipped_recipes_table,
    "cli": cli_reference,
    "top-level-api": top_level_api,
}
MARKER = "<!-- generated: {} -->"


def fill_markers(markdown: str, where: str = "page") -> str:
    """Replace every generation marker of ``markdown``; an unknown marker name is an error."""
    out = []
    for line in markdown.split("\n"):
        stripped = line.strip()
        if stripped.startswith("<!-- generated:") and stripped.endswith("-->"):
            name = stripped[len("<!-- generated:"):-len("-->")].strip()
            if name not in GENERATORS:
                raise ValueError(f"{where}: unknown generation marker {name!r}; known: {sorted(GENERATORS)}")
            out.append(GENERATORS[name]())
        else:
            out.append(line)
    return "\n".join(out)


def on_page_markdown(markdown, page, config, files):
    return fill_markers(markdown, page.file.src_uri)
