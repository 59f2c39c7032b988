"""Griffe extension of the API pages (``extensions:`` of the Python handler in ``mkdocs.yml``).

Once the package is loaded it rewrites the tree so that mkdocstrings renders it well:

* **Sphinx roles as links.** The docstrings write cross-references as Sphinx roles
  (``:func:`name```, ``:class:`~a.b.C```, ``:mod:`.cpu```); each becomes an autorefs link
  ``[`name`][full.path]``, resolved the way Python resolves the name: leading dots relative to the
  docstring's package, other names in the object's scope (members, imports, parents); a
  re-exported name links to its definition. ``~`` shows the last component only. A name imported
  from another package (``ctypes``) becomes plain code; one that resolves to nothing stays a link
  to that name, so ``mkdocs build --strict`` fails on it instead of hiding a stale reference.
* **reST literal marker.** A paragraph ending in ``::`` ends in ``:`` (its indented block already
  is a Markdown code block).
* **``#:`` comments.** A module or class attribute documented by ``#:`` lines right above it (the
  Sphinx convention this package uses) gets them as its docstring.
* **One place per object.** A package that re-exports objects of its own submodules
  (``from .cpu import PackedCPUDecoder``) would render them twice; the re-exports are dropped, so
  each object is documented once, in the module that defines it.
"""

from __future__ import annotations

import re

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|data|attr|obj|exc|const):`(~?)([^`]+)`")
LITERAL_MARKER = re.compile(r"(\S)::$", re.MULTILINE)


def _relative(module: griffe.Module, target: str) -> str:
    """``.x`` / ``..x`` against ``module`` with the rules of relative imports."""
    dots = len(target) - len(target.lstrip("."))
    base = module if module.is_init_module else module.parent
    for _ in range(dots - 1):
        base = base.parent
    rest = target[dots:]
    return f"{base.path}.{rest}" if rest else base.path


def resolve(obj: griffe.Object, target: str) -> tuple[str, bool]:
    """``(full path, inside the package)`` of what ``target`` names in the docstring of ``obj``.

    A name imported from outside the package (``ctypes``) is not inside; a name that resolves to
    nothing is returned as written and counts as inside, so its link fails the build.
    """
    package = obj.package.name
    if target.startswith("."):
        return canonical(obj, _relative(obj.module, target)), True
    if target == package or target.startswith(package + "."):  # absolute (models/ has a module named matmulfree)
        return canonical(obj, target), True
    head, _, tail = target.partition(".")
    for scope in (obj, obj.module):
        try:
            path = scope.resolve(head)
        except (griffe.NameResolutionError, griffe.AliasResolutionError, KeyError):
            continue
        path = f"{path}.{tail}" if tail else path
        return canonical(obj, path), path.split(".")[0] == package
    return canonical(obj, target), True


def canonical(obj: griffe.Object, path: str) -> str:
    """Where the object named ``path`` is defined (a re-export names its definition), else ``path``."""
    try:
        found = obj.modules_collection.get_member(path)
        return found.final_target.path if found.is_alias else found.path
    except (griffe.AliasResolutionError, griffe.CyclicAliasError, KeyError, ValueError):
        return path


def convert(obj: griffe.Object, text: str) -> str:
    """``text`` (a docstring of ``obj``) with roles as autorefs links and ``::`` as ``:``."""

    def link(m: re.Match) -> str:
        short, target = m.group(1), m.group(2).strip()
        shown = target.lstrip(".").rsplit(".", 1)[-1] if short else target.lstrip(".") or target
        path, inside = resolve(obj, target)
        return f"[`{shown}`][{path}]" if inside else f"`{shown}`"

    return LITERAL_MARKER.sub(r"\1:", ROLE.sub(link, text))


def comment_docstring(attr: griffe.Object) -> str | None:
    """The ``#:`` comment lines right above an attribute's definition, joined (``None`` if none)."""
    lines, n = attr.module.lines, (attr.lineno or 0) - 2
    found: list[str] = []
    while 0 <= n < len(lines) and lines[n].lstrip().startswith("#:"):
        found.insert(0, lines[n].lstrip()[2:].strip())
        n -= 1
    return " ".join(found) or None


class MatmulfreeDocstrings(griffe.Extension):
    """Rewrite the loaded package as the module docstring says."""

    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        objects = _walk(pkg)
        for obj in objects:
            if obj.is_attribute and obj.docstring is None and (text := comment_docstring(obj)):
                obj.docstring = griffe.Docstring(text, parent=obj)
            if obj.docstring is not None:
                obj.docstring.value = convert(obj, obj.docstring.value)
        for module in (o for o in objects if o.is_module and o.is_init_module):
            for name, member in list(module.members.items()):
                if member.is_alias and _reexport_of_own(module, member):
                    del module.members[name]


def _walk(pkg: griffe.Module) -> list[griffe.Object]:
    """Every object defined in the package (aliases are not followed)."""
    found, stack = [], [pkg]
    while stack:
        obj = stack.pop()
        found.append(obj)
        stack.extend(m for m in obj.members.values() if not m.is_alias)
    return found


def _reexport_of_own(module: griffe.Module, alias: griffe.Alias) -> bool:
    """Whether ``alias`` (a member of package ``module``) names an object defined under ``module``."""
    return alias.target_path.startswith(module.path + ".") and not alias.target_path.startswith(
        f"{module.path}.{alias.name}")
