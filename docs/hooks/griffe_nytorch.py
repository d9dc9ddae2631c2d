"""griffe extension for the API reference: attrs constructors and Google entries naming several arguments.

Loaded by ``mkdocs.yml`` (``mkdocstrings`` -> ``python`` -> ``options`` ->
``extensions``). griffe reads the sources statically, so it misses two things
our docstrings rely on; without them the strict build warns:

- **attrs classes** (``@attrs.frozen`` and friends) have an ``__init__`` that
  attrs writes at import time: griffe sees no constructor, so the ``Args:``
  of such a class name parameters "that do not appear in the signature". Here
  each attrs class gets the ``__init__`` attrs generated (read from the
  imported class: names, aliases, kinds and defaults; annotations from the
  sources where griffe has them), as griffe's own ``dataclasses`` extension
  does for dataclasses.
- **one entry for several arguments** (``lr_mean, lr_sigma: the learning
  rates``) is common Google style that griffe's parser does not split: here
  such an entry of an ``Args:`` section becomes one entry per name, each with
  the shared description.
"""

from __future__ import annotations

import importlib
import inspect
import re
from typing import Any

import griffe

_ARGS_TITLES = ("Args:", "Arguments:", "Parameters:", "Params:", "Keyword Args:", "Keyword Arguments:",
                "Other Parameters:")
_MULTI = re.compile(r"^(\s+)(\*{0,2}\w+(?:, *\*{0,2}\w+)+)(\s*(?:\([^)]*\))?:.*)$")


def split_multi_name_entries(text: str) -> str:
    """The docstring with every ``a, b: text`` entry of an Args-like section written as ``a: text`` and ``b: text``."""
    lines = text.splitlines()
    out: list[str] = []
    in_args = False
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped and not line.startswith((" ", "\t")):
            in_args = stripped in _ARGS_TITLES
        match = _MULTI.match(line) if in_args else None
        if match is None:
            out.append(line)
            i += 1
            continue
        indent, names, rest = match.groups()
        body = [rest]
        i += 1
        while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > len(indent)):
            if not lines[i].strip() and (i + 1 >= len(lines) or
                                         len(lines[i + 1]) - len(lines[i + 1].lstrip()) <= len(indent)):
                break  # a blank line that ends the entry
            body.append(lines[i])
            i += 1
        for name in (n.strip() for n in names.split(",")):
            out.append(indent + name + body[0])
            out.extend(body[1:])
    return "\n".join(out)


def _runtime(obj: griffe.Class) -> Any:
    module = importlib.import_module(obj.module.path)
    found: Any = module
    for part in obj.path[len(obj.module.path) + 1:].split("."):
        found = getattr(found, part)
    return found


def _default(value: Any) -> str | None:
    if value is inspect.Parameter.empty:
        return None
    return repr(value)


def _attrs_init(cls: griffe.Class) -> None:
    """Give an attrs class the ``__init__`` attrs generated for it."""
    if "__init__" in cls.members:
        return
    try:
        import attrs

        runtime = _runtime(cls)
    except Exception:  # not importable: left as griffe found it
        return
    if not (inspect.isclass(runtime) and attrs.has(runtime)) or "__init__" not in vars(runtime):
        return
    signature = inspect.signature(runtime.__init__)
    by_alias = {f.alias: f for f in attrs.fields(runtime)}
    kinds = {
        inspect.Parameter.POSITIONAL_ONLY: griffe.ParameterKind.positional_only,
        inspect.Parameter.POSITIONAL_OR_KEYWORD: griffe.ParameterKind.positional_or_keyword,
        inspect.Parameter.KEYWORD_ONLY: griffe.ParameterKind.keyword_only,
        inspect.Parameter.VAR_POSITIONAL: griffe.ParameterKind.var_positional,
        inspect.Parameter.VAR_KEYWORD: griffe.ParameterKind.var_keyword,
    }
    parameters = []
    for p in signature.parameters.values():
        field = by_alias.get(p.name)
        member = cls.members.get(field.name) if field is not None else None
        annotation = getattr(member, "annotation", None) if member is not None and not member.is_alias else None
        if annotation is None and field is not None and field.type is not None:
            # a field inherited from an attrs base class: its annotation as attrs recorded it
            annotation = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
        default = _default(p.default)
        if field is not None and isinstance(field.default, attrs.Factory):  # type: ignore[arg-type]
            factory = field.default.factory
            default = f"{getattr(factory, '__name__', 'factory')}()"
        parameters.append(griffe.Parameter(p.name, annotation=annotation, kind=kinds[p.kind], default=default))
    init = griffe.Function("__init__", lineno=0, endlineno=0, parent=cls,
                           parameters=griffe.Parameters(*parameters), returns="None")
    cls.set_member("__init__", init)
    cls.labels.add("attrs")


def _walk(obj: griffe.Object, seen: set[str]) -> None:
    if obj.path in seen:
        return
    seen.add(obj.path)
    if obj.docstring is not None:
        obj.docstring.value = split_multi_name_entries(obj.docstring.value)
    if isinstance(obj, griffe.Class):
        _attrs_init(obj)
    for member in list(obj.members.values()):
        if not member.is_alias:
            _walk(member, seen)  # type: ignore[arg-type]


class NytorchDocs(griffe.Extension):
    """attrs constructors and split multi-name argument entries, for every loaded package."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        _walk(pkg, set())
