"""The method table: every merge method's parameters, defaults, inputs and kernel.

One table drives the particle functions, ``merge_files`` and the mergekit YAML
reader, so a parameter means the same thing (and is checked the same way)
everywhere. Parameter names are mergekit's; in Python ``lambda`` is spelled
``lambda_`` and NuSLERP's ``nuslerp_row_wise`` / ``nuslerp_flatten`` are
``row_wise`` / ``flatten``, multislerp's ``normalize_weights`` is ``normalize``.
"""

from __future__ import annotations

import math
import numbers
from functools import partial
from typing import Any, Callable, cast

import attrs

from . import _kernels as K

REQUIRED = object()


@attrs.frozen
class Param:
    """One parameter: ``per_model`` ones take one value per (non-base) model."""

    name: str  # Python keyword
    yaml: str  # mergekit's name
    kind: type  # float, int or bool
    default: Any = REQUIRED
    per_model: bool = False
    check: str | None = None  # "fraction": (0, 1]; "nonneg"; "positive"; "unit": [0, 1]


@attrs.frozen
class Method:
    name: str
    kernel: Callable
    params: tuple[Param, ...]
    base: str  # "required", "optional" or "ignored"
    min_models: int = 1  # non-base models
    max_models: int | None = None
    random: bool = False
    normalize_checks_sum: bool = False  # normalize=True with weights summing to 0 is an error

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)


def _w(default: Any = REQUIRED) -> Param:
    return Param("weight", "weight", float, default, per_model=True)


def _density() -> Param:
    return Param("density", "density", float, 1.0, per_model=True, check="fraction")


_LAMBDA = Param("lambda_", "lambda", float, 1.0)
_INT8 = Param("int8_mask", "int8_mask", bool, False)  # mergekit's memory option; masks here are bool anyway


def _gta(name: str, *, sparsify: str | None, consensus: bool, normalize: bool, rescale: bool) -> Method:
    params = [_w(), _density(), _LAMBDA, Param("normalize", "normalize", bool, normalize),
              Param("rescale", "rescale", bool, rescale), _INT8]
    if sparsify == "outliers":
        params.append(Param("gamma", "gamma", float, 0.01, per_model=True, check="unit"))
    if sparsify == "della":
        params.append(Param("epsilon", "epsilon", float, 0.15, per_model=True, check="nonneg"))
    if sparsify is None:
        params.remove(params[1])  # task arithmetic has no density
    return Method(
        name,
        partial(_gta_kernel, sparsify=sparsify, consensus=consensus),
        tuple(params),
        "required",
        random=sparsify in ("random", "della"),
        normalize_checks_sum=True,
    )


def _gta_kernel(ctx, *, sparsify, consensus, int8_mask=False, **kw):
    return K.task_vectors(ctx, sparsify=sparsify, consensus=consensus, **kw)


def _drop(kernel: Callable, *names: str) -> Callable:
    def run(ctx, **kw):
        for n in names:
            kw.pop(n, None)
        return kernel(ctx, **kw)
    return run


METHODS: dict[str, Method] = {}


def _add(m: Method) -> None:
    METHODS[m.name] = m


_add(Method("linear", K.linear, (_w(), Param("normalize", "normalize", bool, True)), "ignored",
            normalize_checks_sum=True))
_add(Method("slerp", K.slerp, (Param("t", "t", float, check="unit"),), "required", 1, 1))
_add(Method("multislerp", K.multislerp, (_w(), Param("normalize", "normalize_weights", bool, True),
            Param("eps", "eps", float, 1e-8, check="positive")), "optional", normalize_checks_sum=True))
_add(Method("nuslerp", K.nuslerp, (_w(), Param("row_wise", "nuslerp_row_wise", bool, False),
            Param("flatten", "nuslerp_flatten", bool, True)), "optional", 2, 2))
_add(Method("karcher", K.karcher, (Param("weight", "weight", float, None, per_model=True, check="nonneg"),
            Param("max_iter", "max_iter", int, 10, check="nonneg"), Param("tol", "tol", float, 1e-5, check="positive")),
            "ignored"))
_add(_gta("task_arithmetic", sparsify=None, consensus=False, normalize=False, rescale=False))
_add(_gta("ties", sparsify="magnitude", consensus=True, normalize=True, rescale=False))
_add(_gta("dare_ties", sparsify="random", consensus=True, normalize=False, rescale=True))
_add(_gta("dare_linear", sparsify="random", consensus=False, normalize=False, rescale=True))
_add(_gta("breadcrumbs", sparsify="outliers", consensus=False, normalize=False, rescale=False))
_add(_gta("breadcrumbs_ties", sparsify="outliers", consensus=True, normalize=False, rescale=False))
_add(_gta("della", sparsify="della", consensus=True, normalize=True, rescale=True))
_add(_gta("della_linear", sparsify="della", consensus=False, normalize=False, rescale=True))
_add(Method("model_stock", K.model_stock, (Param("filter_wise", "filter_wise", bool, False),), "required", 2))
_add(Method("nearswap", K.nearswap, (Param("t", "t", float, check="nonneg"),), "required", 1, 1))
_add(Method("sce", _drop(K.sce, "int8_mask"), (Param("select_topk", "select_topk", float, 1.0, check="fraction"), _INT8),
            "required"))
_add(Method("arcee_fusion", K.arcee_fusion, (), "required", 1, 1))
_add(Method("ram", K.ram, (Param("epsilon", "epsilon", float, 1e-5, check="nonneg"),), "required"))
_add(Method("ramplus_tl", K.ram, (Param("r", "r", float, 0.1, check="nonneg"), Param("alpha", "alpha", float, 0.2, check="nonneg"),
            Param("epsilon", "epsilon", float, 1e-5, check="nonneg")), "required"))
_add(Method("passthrough", K.passthrough, (Param("scale", "scale", float, None, per_model=True),), "ignored", 1, 1))

NAMES = tuple(METHODS)


def get(name: Any, where: str) -> Method:
    if not isinstance(name, str) or name not in METHODS:
        raise ValueError(f"{where}: unknown merge method {name!r}; expected one of {', '.join(NAMES)}")
    return METHODS[name]


# ---------------------------------------------------------------------------
# value checks (shared by Python and YAML)
# ---------------------------------------------------------------------------


def check_value(m: Method, p: Param, value: Any, where: str) -> Any:
    """One value of parameter ``p`` (a per-model parameter: one model's value)."""
    if value is None and p.default is None:
        return None
    if p.kind is bool:
        if not isinstance(value, bool):
            raise TypeError(f"{where}: {m.name} parameter {p.yaml!r} expects true or false, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{where}: {m.name} parameter {p.yaml!r} expects a number, got {value!r}")
    real = cast(float, value)  # a numbers.Real
    if p.kind is int:
        if float(real) != int(real):
            raise TypeError(f"{where}: {m.name} parameter {p.yaml!r} expects an integer, got {value!r}")
        value = int(real)
    else:
        value = float(real)
    if not math.isfinite(value):
        raise ValueError(f"{where}: {m.name} parameter {p.yaml!r} expects a finite number, got {value!r}")
    bad = {
        "fraction": not 0 < value <= 1,
        "unit": not 0 <= value <= 1,
        "nonneg": value < 0,
        "positive": value <= 0,
    }.get(p.check or "", False)
    if bad:
        expected = {"fraction": "a value in (0, 1]", "unit": "a value in [0, 1]", "nonneg": "a value >= 0",
                    "positive": "a value > 0"}[cast(str, p.check)]
        raise ValueError(f"{where}: {m.name} parameter {p.yaml!r} expects {expected}, got {value!r}")
    return value


def check_group(m: Method, values: dict[str, Any], where: str) -> None:
    """Checks across parameters of one output tensor (values already checked one by one)."""
    if m.normalize_checks_sum and values.get("normalize", False):
        w = values.get("weight")
        if w is not None and sum(w) == 0:
            raise ValueError(
                f"{where}: {m.name} with normalize expects weights with a non-zero sum, got {list(w)}"
                f" (set normalize to false, or change the weights)"
            )
    if "epsilon" in values and "density" in values and m.name.startswith("della"):
        for d, e in zip(values["density"], values["epsilon"]):
            if d < 1 and not (0 < d - e and d + e < 1):
                raise ValueError(
                    f"{where}: {m.name} expects density - epsilon > 0 and density + epsilon < 1, "
                    f"got density {d} and epsilon {e}"
                )
