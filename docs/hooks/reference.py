"""mkdocs hook: the API reference covers every public name, and README sections are included by heading.

Loaded by ``mkdocs.yml`` (``hooks:``); ``tests/test_docs.py`` imports it too
(``public_names``, ``PUBLIC_MODULES``). Everything it finds wrong is logged as
a warning, so ``mkdocs build --strict`` fails on it:

- a public name (in the ``__all__`` of ``nytorch_fn`` or of a module in
  ``PUBLIC_MODULES``, recursively) that no ``::: identifier`` directive of
  the reference renders, or that has no docstring of its own (mkdocstrings
  silently leaves out an object without a docstring);
- an ``<!-- include-readme ... -->`` directive whose README heading or
  markers are gone.

``<!-- include-readme section="Heading" from="text" until="text" -->`` is
replaced by the body of the README's ``## Heading`` section (up to the next
``## ``), optionally starting at the first line that contains ``from`` and
stopping before the first later line that contains ``until``.
"""

from __future__ import annotations

import importlib
import logging
import re
import types
from pathlib import Path
from typing import Any

log = logging.getLogger("mkdocs.plugins.nytorch_reference")

ROOT = Path(__file__).resolve().parents[2]

#: The public modules whose ``__all__`` the reference must cover. ``nytorch_fn.demo``
#: is a program (documented on its own page), not part of the API.
PUBLIC_MODULES = (
    "nytorch_fn",
    "nytorch_fn.optim",
    "nytorch_fn.checkpoint",
    "nytorch_fn.merge",
    "nytorch_fn.algorithms",
    "nytorch_fn.distributed",
)


_DIRECTIVE = re.compile(r"^::: *(\S+)[ \t]*\n((?:[ \t]+.*\n|[ \t]*\n)*)", re.M)
_INCLUDE = re.compile(r"<!--\s*include-readme\s+(.*?)-->", re.S)
_ATTR = re.compile(r'(\w+)="([^"]*)"')


def public_names() -> dict[str, Any]:
    """Every public name: ``"module.name" -> object`` for the ``__all__`` of each public module.

    A module listed in an ``__all__`` is followed (its own ``__all__`` is
    added too).
    """
    found: dict[str, Any] = {}
    todo = list(PUBLIC_MODULES)
    seen: set[str] = set()
    while todo:
        name = todo.pop(0)
        if name in seen:
            continue
        seen.add(name)
        module = importlib.import_module(name)
        for member in getattr(module, "__all__", ()):
            obj = getattr(module, member)
            if isinstance(obj, types.ModuleType):
                todo.append(obj.__name__)
            else:
                found[f"{name}.{member}"] = obj
    return found


def own_doc(obj: Any) -> str | None:
    """The docstring an object has itself (not one inherited from a base class or ``object``)."""
    if isinstance(obj, type):
        doc = obj.__dict__.get("__doc__")
        fields = obj.__dict__.get("_fields")
        if isinstance(fields, tuple) and doc == f"{obj.__name__}({', '.join(fields)})":
            return None  # the docstring collections.namedtuple writes
    elif isinstance(obj, property):
        doc = obj.fget.__doc__ if obj.fget is not None else None
    elif callable(obj):
        doc = obj.__doc__
    else:
        return None
    return doc if doc and doc.strip() else None


def _covered(identifier: str, options: dict[str, Any]) -> set[str]:
    """The public names a ``::: identifier`` directive renders."""
    try:
        obj: Any = importlib.import_module(identifier)
    except ImportError:
        return {identifier}
    members = options.get("members")
    if isinstance(members, list):
        return {f"{identifier}.{m}" for m in members}
    if members is False:
        return set()
    hidden = {f[len("!^"):-1] for f in options.get("filters", []) if f.startswith("!^") and f.endswith("$")}
    return {f"{identifier}.{m}" for m in getattr(obj, "__all__", ()) if m not in hidden}


_rendered: set[str] = set()


def on_pre_build(config: Any) -> None:
    _rendered.clear()


def _include_readme(match: re.Match[str], where: str) -> str:
    attrs = dict(_ATTR.findall(match.group(1)))
    section = attrs.get("section")
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = text.splitlines()
    heading = f"## {section}"
    if heading not in lines:
        log.warning("%s: include-readme: README.md has no heading %r", where, heading)
        return ""
    start = lines.index(heading) + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    body = lines[start:end]
    if "from" in attrs:
        hits = [i for i, line in enumerate(body) if attrs["from"] in line]
        if not hits:
            log.warning("%s: include-readme: no line of README section %r contains %r", where, section, attrs["from"])
            return ""
        body = body[hits[0]:]
    if "until" in attrs:
        hits = [i for i, line in enumerate(body) if attrs["until"] in line and i > 0]
        if not hits:
            log.warning("%s: include-readme: no line of README section %r contains %r", where, section, attrs["until"])
            return ""
        body = body[: hits[0]]
    return "\n".join(body).strip("\n") + "\n"


def directives(markdown: str) -> list[tuple[str, dict[str, Any]]]:
    """The ``::: identifier`` directives of a page with their ``options``."""
    import yaml  # a dependency of mkdocs

    found = []
    for match in _DIRECTIVE.finditer(markdown):
        block = match.group(2)
        options: dict[str, Any] = {}
        if block.strip():
            parsed = yaml.safe_load(block)
            options = (parsed or {}).get("options", {}) if isinstance(parsed, dict) else {}
        found.append((match.group(1), options))
    return found


def covered_names(markdown: str) -> set[str]:
    """The public names the directives of a page render."""
    out: set[str] = set()
    for identifier, options in directives(markdown):
        out |= _covered(identifier, options)
    return out


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    where = page.file.src_uri
    markdown = _INCLUDE.sub(lambda m: _include_readme(m, where), markdown)
    _rendered.update(covered_names(markdown))
    return markdown


def on_post_build(config: Any) -> None:
    names = public_names()
    missing = sorted(n for n in names if n not in _rendered)
    for name in missing:
        log.warning("reference: the public name %s is on no page of the API reference", name)
    for name, obj in sorted(names.items()):
        if (isinstance(obj, type) or callable(obj)) and own_doc(obj) is None:
            log.warning("reference: the public name %s has no docstring (mkdocstrings would leave it out)", name)
