"""The documentation: the site builds strictly, every public name is documented, every example runs.

- ``test_site_builds_strictly``: ``mkdocs build --strict`` into a temporary
  folder, in a subprocess; any warning fails it (broken links and anchors,
  unresolved cross-references, docstrings griffe cannot parse, and, through
  ``docs/hooks/reference.py``, a public name on no reference page or
  without a docstring). Skipped only when the ``docs`` extra is not installed.
- ``test_docstrings``: every public name of ``nytorch_fn`` and its public
  modules (their ``__all__``, recursively, and their classes' public
  methods) and every name of the legacy API reference has a docstring with
  a one-line summary; functions and methods taking arguments have an
  ``Args:`` section (naming each argument), those returning something a
  ``Returns:`` section; no ``Args:`` entry names several arguments at once
  (``a, b: ...``: one entry per name).
- ``test_docstring_examples``: the ``Examples:`` of every module of
  ``nytorch_fn`` and of the legacy ``nytorch`` run as doctests (the merging
  examples with the names docs/reference/merge.md lists, the distributed ones
  in a one-process gloo group). The site's pages run as doctests through pytest's
  ``--doctest-glob=docs/*.md`` (pyproject.toml);
  ``test_page_code_is_doctest`` makes sure no Python block escapes that.
"""

from __future__ import annotations

import contextlib
import doctest
import importlib
import importlib.util
import inspect
import os
import pkgutil
import re
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch
from torch import nn

import nytorch_fn as nf

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SPEC = ROOT.parent / "shared" / "spec" / "nytorch-api-reference.txt"


def _hook() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("_docs_reference_hook", DOCS / "hooks" / "reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HOOK = _hook()

_DOCS_EXTRA = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")


def _missing_docs_extra() -> list[str]:
    missing = []
    for name in _DOCS_EXTRA:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            missing.append(name)
    return missing


needs_docs_extra = pytest.mark.skipif(
    bool(_missing_docs_extra()),
    reason=f"the docs extra is not installed (missing {', '.join(_missing_docs_extra())}): "
    "pip install -e '.[docs]'",
)

#: The modules whose docstring examples run here: every module of nytorch_fn
#: (found by walking the package, so a new module is included) and of the
#: legacy nytorch package.
EXAMPLE_MODULES = tuple(
    sorted(
        (
            {"nytorch_fn", "nytorch"}
            | {m.name for m in pkgutil.walk_packages(nf.__path__, "nytorch_fn.")}
            | {m.name for m in pkgutil.walk_packages(importlib.import_module("nytorch").__path__, "nytorch.")}
        )
        - {"nytorch_fn.merge.__main__"}  # importing it runs the command line
    )
)

#: Modules without docstring examples of their own (private helpers, entry points).
NO_EXAMPLES_EXPECTED = frozenset({"nytorch_fn.checkpoint", "nytorch_fn.optim"})

LEGACY_MODULES = ("base", "kernel", "module", "mtype", "particle_module", "particle_updater", "utils", "version_updater")

_SECTION = re.compile(r"^(\w[\w ]*):\s*$")
_ARGS_TITLES = {"args", "arguments", "parameters", "params", "keyword args", "keyword arguments", "other parameters"}
_ATTR_TITLES = {"attributes"}
_RETURN_TITLES = {"returns", "return", "yields", "yield"}


# ---------------------------------------------------------------------------
# the site
# ---------------------------------------------------------------------------


@needs_docs_extra
def test_site_builds_strictly(tmp_path: Path) -> None:
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    seconds = time.perf_counter() - start
    output = result.stdout + result.stderr
    warnings = [line for line in output.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert result.returncode == 0 and not warnings, f"mkdocs build --strict failed:\n" + "\n".join(warnings or [output])
    pages = sorted(p for p in (tmp_path / "site").rglob("index.html"))
    sources = sorted(p for p in DOCS.rglob("*.md") if "hooks" not in p.parts)
    assert len(pages) == len(sources), (len(pages), len(sources))
    print(f"\nsite: {len(pages)} pages in {seconds:.1f} s")


def test_public_modules_are_all_listed() -> None:
    """Every non-private module of nytorch_fn is a public module of the reference (or the demo program)."""
    found = {f"nytorch_fn.{m.name}" for m in pkgutil.iter_modules(nf.__path__) if not m.name.startswith("_")}
    assert found - {"nytorch_fn.demo"} <= set(HOOK.PUBLIC_MODULES), found - set(HOOK.PUBLIC_MODULES)


def test_reference_pages_cover_every_public_name() -> None:
    pytest.importorskip("yaml", reason="PyYAML (a dependency of mkdocs) reads the directives' options")
    covered: set[str] = set()
    for page in (DOCS / "reference").rglob("*.md"):
        covered |= HOOK.covered_names(page.read_text(encoding="utf-8"))
    missing = sorted(set(HOOK.public_names()) - covered)
    assert not missing, f"public names on no page of docs/reference/: {missing}"
    for module in LEGACY_MODULES:
        page = DOCS / "reference" / "legacy" / f"{module}.md"
        assert f"::: nytorch.{module}\n" in page.read_text(encoding="utf-8"), page


def test_page_code_is_doctest() -> None:
    """Every ```python block of the site is a doctest (so pytest's --doctest-glob runs it)."""
    offenders = []
    for page in sorted(DOCS.rglob("*.md")):
        rel = page.relative_to(DOCS).as_posix()
        for block in re.findall(r"^```python[^\n]*\n(.*?)^```", page.read_text(encoding="utf-8"), re.M | re.S):
            if not block.lstrip().startswith(">>>"):
                offenders.append(f"{rel}: {block.strip().splitlines()[0]!r}")
    assert not offenders, "Python blocks that would not run as doctests:\n" + "\n".join(offenders)


def test_bad_input_page_matches_the_table() -> None:
    from tests.fn.test_bad_input import readme_table

    page = (DOCS / "reference" / "bad-input.md").read_text(encoding="utf-8")
    assert readme_table() in page, "docs/reference/bad-input.md: paste `python -m tests.fn.test_bad_input`'s table"


# ---------------------------------------------------------------------------
# docstrings
# ---------------------------------------------------------------------------


def _sections(doc: str) -> dict[str, str]:
    """Google-style sections: title (lower case) -> their text."""
    out: dict[str, str] = {}
    current = None
    for line in doc.splitlines():
        match = _SECTION.match(line)
        if match and not line.startswith(" "):
            current = match.group(1).strip().lower()
            out[current] = ""
        elif current is not None:
            out[current] += line + "\n"
    return out


def _callable_problems(fn: Any, doc: str, *, method: bool) -> list[str]:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return []
    params = [p for p in sig.parameters.values() if not (method and p.name in ("self", "cls"))]
    sections = _sections(doc)
    problems = []
    if params:
        args = next((sections[t] for t in sections if t in _ARGS_TITLES), None)
        if args is None:
            problems.append("no Args: section")
        else:
            for p in params:
                stars = {inspect.Parameter.VAR_POSITIONAL: "*", inspect.Parameter.VAR_KEYWORD: "**"}.get(p.kind, "")
                if not re.search(rf"^\s+{re.escape(stars + p.name)}\b", args, re.M):
                    problems.append(f"Args: does not name {stars}{p.name}")
    ret = sig.return_annotation
    returns = next((sections[t] for t in sections if t in _RETURN_TITLES), None)
    if ret is inspect.Signature.empty:
        problems.append("no return annotation")
    elif ret not in (None, "None", type(None), "NoReturn") and returns is None:
        problems.append("no Returns: section")
    first = (returns or "").strip().splitlines()[:1]
    if first and ":" in first[0]:
        # Google style reads "type: description" there; the type comes from the annotation
        problems.append(f"Returns: griffe would read {first[0].split(':')[0]!r} as the type (no ':' on its first line)")
    return problems


_MULTI_NAME_ENTRY = re.compile(r"^(\*{0,2}\w+(?:\s*,\s*\*{0,2}\w+)+)\s*(?:\([^)]*\))?:")


def _multi_name_entries(doc: str) -> list[str]:
    """The ``a, b: text`` entries of the Args-like sections (one entry per name is the rule)."""
    found = []
    for title, text in _sections(doc).items():
        if title not in _ARGS_TITLES:
            continue
        body = [line for line in text.splitlines() if line.strip()]
        indent = min((len(line) - len(line.lstrip()) for line in body), default=0)
        for line in body:
            if len(line) - len(line.lstrip()) == indent:
                match = _MULTI_NAME_ENTRY.match(line.strip())
                if match:
                    found.append(match.group(1))
    return found


def _doc_problems(obj: Any, *, method: bool = False) -> list[str]:
    doc = HOOK.own_doc(obj)
    if doc is None:
        return ["no docstring"]
    doc = inspect.cleandoc(doc)
    lines = doc.splitlines()
    problems = [f"Args: {names!r} is one entry for several names (one entry per name)"
                for names in _multi_name_entries(doc)]
    if len(lines) > 1 and lines[1].strip():
        problems.append("the summary is more than one line")
    if re.search(r"^Example:\s*$", doc, re.M):
        problems.append("'Example:' (griffe renders only 'Examples:' as code)")
    target = obj.fget if isinstance(obj, property) else obj
    if isinstance(obj, property):
        return problems
    if isinstance(obj, type):
        if issubclass(obj, BaseException):
            return problems
        fields = getattr(obj, "_fields", None) or [a.name for a in getattr(obj, "__attrs_attrs__", ())]
        init = obj.__dict__.get("__init__")
        sections = _sections(doc)
        if fields and not any(t in sections for t in _ATTR_TITLES | _ARGS_TITLES):
            problems.append("no Attributes: (or Args:) section for its fields")
        elif init is not None and not fields:
            sig = inspect.signature(init)
            if len(sig.parameters) > 1 and not any(t in sections for t in _ARGS_TITLES):
                problems.append("no Args: section for the constructor")
        return problems
    if callable(target):
        problems += _callable_problems(target, doc, method=method)
    return problems


def _members(cls: type) -> dict[str, Any]:
    """The public methods and properties a class defines itself."""
    out = {}
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(value, (staticmethod, classmethod)):
            value = value.__func__
        if isinstance(value, property) or inspect.isfunction(value):
            out[name] = value
    return out


def _legacy_names() -> list[str]:
    from tests.compat.test_reference_names import REFERENCE

    names = {path for kind, path, _ in REFERENCE if kind in ("class", "func", "method")}
    if SPEC.is_file():  # the legacy API reference itself, where it ships beside the repository
        text = SPEC.read_text(encoding="utf-8")
        names |= set(re.findall(r"^class (nytorch\.\w+\.\w+)", text, re.M))
        names |= set(re.findall(r"^(nytorch\.\w+\.\w+)\(", text, re.M))
    return sorted(names)


def _resolve(path: str) -> Any:
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        owner = None
        for part in parts[i:]:
            owner, obj = obj, inspect.getattr_static(obj, part)
        if isinstance(obj, (staticmethod, classmethod)):
            obj = obj.__func__
        return obj, owner
    raise ImportError(path)


GROUPS = list(HOOK.PUBLIC_MODULES) + ["legacy nytorch"]


@pytest.mark.parametrize("group", GROUPS)
def test_docstrings(group: str) -> None:
    problems: list[str] = []
    if group == "legacy nytorch":
        for path in _legacy_names():
            obj, owner = _resolve(path)
            # as Sphinx's autodoc did for the legacy reference, a method that
            # overrides a documented one without a docstring inherits it
            doc = HOOK.own_doc(obj) or (inspect.getdoc(getattr(owner, path.rpartition(".")[2])) if owner else None)
            if doc is None:
                problems.append(f"{path}: no docstring")
            elif not inspect.cleandoc(doc).splitlines()[0].strip():
                problems.append(f"{path}: no summary line")
    else:
        names = {n: o for n, o in HOOK.public_names().items() if n.rpartition(".")[0] == group}
        assert names, group
        for name, obj in sorted(names.items()):
            if not (callable(obj) or isinstance(obj, type)):
                continue
            problems += [f"{name}: {p}" for p in _doc_problems(obj)]
            if isinstance(obj, type):
                for member, value in _members(obj).items():
                    problems += [f"{name}.{member}: {p}" for p in _doc_problems(value, method=True)]
    assert not problems, f"{len(problems)} docstring problems:\n" + "\n".join(problems)


# ---------------------------------------------------------------------------
# examples
# ---------------------------------------------------------------------------


def _merge_namespace(folder: Path) -> dict[str, Any]:
    """The names the merging examples use (docs/reference/merge.md says what they are).

    ``base`` is a particle of a two-layer net, ``ft_a``, ``ft_b``, ``ft_c`` (and
    the other names of fine-tuned models) the base plus small noise; ``folder``
    gets ``base/``, ``ft_a/``, ``ft_b/`` (safetensors checkpoints of them) and
    ``ties.yml`` (a mergekit configuration over those).
    """
    from safetensors.torch import save_file

    from nytorch_fn import merge

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    base = nf.particle(net)
    g = torch.Generator().manual_seed(1)
    ft_a, ft_b, ft_c = (base + 0.1 * base.randn(generator=g) for _ in range(3))
    for name, p in (("base", base), ("ft_a", ft_a), ("ft_b", ft_b)):
        (folder / name).mkdir()
        save_file({k: v.detach().contiguous() for k, v in p.params.items()}, str(folder / name / "model.safetensors"))
    (folder / "ties.yml").write_text(
        "merge_method: ties\nbase_model: base\nmodels:\n"
        "  - model: ft_a\n    parameters: {weight: 1.0, density: 0.5}\n"
        "  - model: ft_b\n    parameters: {weight: 0.5, density: 0.5}\n"
    )
    x_val = torch.randn(64, 4, generator=g)
    y_val = torch.randint(0, 3, (64,), generator=g)

    def accuracy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``[N]`` accuracies of ``[N, B, C]`` logits against ``[B]`` labels."""
        return (logits.argmax(-1) == y).float().mean(-1)

    def fitness_fn(pop: Any) -> torch.Tensor:
        return accuracy(nf.vmap_apply(pop, x_val), y_val)

    return dict(
        merge=merge, base=base, ft_a=ft_a, ft_b=ft_b, ft_c=ft_c, experts=[ft_a, ft_b, ft_c],
        a=ft_a, b=ft_b, c=ft_c, p=ft_a, q=ft_b, other=ft_a, ft_math=ft_a, ft_code=ft_b,
        ft_1=ft_a, ft_2=ft_b, ft_3=ft_c, agent_a=ft_a, agent_b=ft_b,
        x_val=x_val, y_val=y_val, accuracy=accuracy, fitness_fn=fitness_fn,
    )


@pytest.mark.parametrize("module_name", EXAMPLE_MODULES)
def test_docstring_examples(module_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = importlib.import_module(module_name)
    globs = {**vars(module), "torch": torch, "nn": nn, "nf": nf}
    if module_name.startswith(("nytorch_fn._merge", "nytorch_fn.merge")):
        globs.update(_merge_namespace(tmp_path))
    monkeypatch.chdir(tmp_path)  # examples that write files write them there
    with contextlib.ExitStack() as stack:
        if module_name in ("nytorch_fn._distributed", "nytorch_fn.distributed"):
            stack.enter_context(_one_process_group(monkeypatch))
        _run_examples(module, module_name, globs)


@contextlib.contextmanager
def _one_process_group(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A gloo group of this process alone, as ``torchrun --nproc-per-node 1`` would set it up."""
    import socket

    import nytorch_fn.distributed as nfd

    if not torch.distributed.is_available():
        pytest.skip("this torch build has no torch.distributed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                           MASTER_PORT=str(port)).items():
        monkeypatch.setenv(key, value)
    nfd.init(backend="gloo", timeout=60)
    try:
        yield
    finally:
        nfd.shutdown()


def _run_examples(module: types.ModuleType, module_name: str, globs: dict[str, Any]) -> None:
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    failed: list[str] = []
    report: list[str] = []  # doctest swaps sys.stdout while it runs: collect its report instead
    for test in finder.find(module, module_name, globs=globs):
        if not test.examples:
            continue
        if runner.run(test, out=report.append).failed:
            failed.append(test.name)
    torch._dynamo.reset()
    assert not failed, f"docstring examples failed: {sorted(failed)}\n" + "".join(report)
