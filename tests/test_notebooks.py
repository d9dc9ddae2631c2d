"""Every notebook in notebooks/ runs top to bottom and ends with a picture or a table.

The notebooks are stored without outputs; each is executed in memory (nothing
is written back) on a kernel running this very interpreter: a kernelspec made
for the test in a temporary folder names ``sys.executable``, so a stale
``python3`` kernelspec elsewhere on the machine cannot run another Python.
Kernels start with ``OMP_NUM_THREADS=1`` (the models are tiny; on a shared
2-core runner, thread contention made a step 5x slower).

Needs the ``notebooks`` extra (``pip install -e ".[dev,notebooks]"``); the
module is skipped when nbclient is missing.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import pytest

# jupyter_core 5.0-5.8 warns on import unless JUPYTER_PLATFORM_DIRS is set;
# the notebooks do not care where Jupyter keeps its files.
PLATFORM_DIRS = "ignore:Jupyter is migrating its paths to use standard platformdirs:DeprecationWarning"
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "Jupyter is migrating its paths", DeprecationWarning)
    nbclient = pytest.importorskip("nbclient")
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))
KERNEL = "nytorch-fn-test"
PICTURES = ("image/png", "text/html")

# Two deprecations of the Jupyter machinery itself (not of our code, and not a
# failure of a notebook) that some supported versions raise while a kernel
# starts or talks; none fires with the versions in the dev venv. Every other
# warning stays an error.
pytestmark = [
    pytest.mark.filterwarnings(PLATFORM_DIRS),
    # jupyter_client 7-8 with an ipykernel that sends naive timestamps
    pytest.mark.filterwarnings("ignore:Interpreting naive datetime as local:DeprecationWarning"),
]


@pytest.fixture(scope="module")
def kernel_env(tmp_path_factory: pytest.TempPathFactory):
    """A kernelspec for this interpreter, found first through JUPYTER_PATH."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": KERNEL, "language": "python"}))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("JUPYTER_PATH", str(root))
        mp.setenv("OMP_NUM_THREADS", "1")
        yield


def execute(nb):
    """Run ``nb`` in memory; a cell that raises raises ``CellExecutionError`` here."""
    client = nbclient.NotebookClient(
        nb, timeout=600, kernel_name=KERNEL, resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute()
    return nb


def test_there_are_notebooks():
    assert [p.name for p in PATHS] == [
        "01_functional_tour.ipynb",
        "02_migrating_legacy_code.ipynb",
        "03_population_hybrid.ipynb",
        "04_model_merging.ipynb",
        "05_algorithms.ipynb",
    ]


def test_kernel_runs_this_interpreter(kernel_env):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import sys; print(sys.executable)")])
    out = execute(nb).cells[0].outputs
    assert [o.get("text", "").strip() for o in out] == [sys.executable]


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_stored_without_outputs(path: Path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, f"{path.name}: clear the outputs of cells {dirty} before committing"


@pytest.mark.parametrize("path", PATHS, ids=[p.stem for p in PATHS])
def test_notebook_runs_and_ends_with_a_picture(kernel_env, path: Path):
    before = path.read_bytes()
    nb = execute(nbformat.read(path, as_version=4))
    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{path.name}: {errors}"
    last = code[-1].outputs
    kinds = [k for o in last for k in o.get("data", {})]
    assert any(k in PICTURES for k in kinds), f"{path.name}: the last code cell showed {kinds}, expected one of {PICTURES}"
    assert path.read_bytes() == before, f"{path.name} was written to"
