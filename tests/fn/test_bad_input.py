"""Bad input across the public API, as one table (the site's page docs/reference/bad-input.md is generated from it).

Every row calls one public function with one kind of bad input and expects
either a clear exception (type and message) or the documented result; in
every case nothing the caller passed in is modified (``Snapshot``).
Expected values come from plain torch, not from the code under test.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import pytest
import torch
from torch import nn

import nytorch_fn as nf
from nytorch_fn import checkpoint as ck
from nytorch_fn import optim
from tests.helpers import Snapshot


class Ctx:
    """Fresh inputs for one row (so rows never share state)."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
        self.p = nf.particle(self.net)
        self.q = nf.particle(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)))  # other species
        self.pop = nf.stack([self.p, self.p.randn(generator=torch.Generator().manual_seed(1))])
        self.pop3 = nf.stack([self.p, self.p, self.p])
        self.empty = self.pop[0:0]
        self.meta = nf.particle(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to("meta"))
        s = self.p.species.add_param("count", torch.arange(3))
        self.intp = nf.migrate(self.p, s)  # an operational int64 parameter
        self.intp_off = nf.migrate(self.p, s.with_config("count", operational=False))
        self.frozen_net = nn.Linear(2, 2).requires_grad_(False)
        self.frozen = nf.particle(self.frozen_net)
        self.x = torch.randn(5, 3)
        self.noncontig = nf.Particle(
            self.p.species, {n: (t.t().contiguous().t() if t.dim() == 2 else t) for n, t in self.p.params.items()}
        )

    def inputs(self) -> tuple:
        return (self.net, self.p, self.q, self.pop, self.pop3, self.empty, self.intp, self.intp_off,
                self.frozen_net, self.frozen, self.x, self.noncontig)


class Row(NamedTuple):
    function: str
    case: str
    call: Callable[[Ctx], Any]
    expect: Any  # an exception type, or a predicate (ctx, result) -> bool for a documented result
    match: str = ""


def _eq(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a.isnan(), b.isnan())) and bool(
        torch.equal(torch.nan_to_num(a), torch.nan_to_num(b)))


def _zero_size_species() -> nf.Particle:
    with pytest.warns(UserWarning, match="zero-element"):
        return nf.particle(nn.Linear(3, 0))


NAN, INF = float("nan"), float("inf")
SME = nf.SpeciesMismatchError
ROWS: list[Row] = [
    # -- particle arithmetic --------------------------------------------------
    Row("Particle + x", "None", lambda c: c.p + None, nf.OperandError, "expected a Python number, a 0-d tensor or a Particle"),
    Row("Particle + x", "str", lambda c: c.p + "a", nf.OperandError, "got str 'a'"),
    Row("Particle + x", "list", lambda c: c.p + [1.0], nf.OperandError, "got list"),
    Row("Particle + x", "complex number", lambda c: c.p + 1j, nf.OperandError, "got complex"),
    Row("Particle + x", "tensor of shape (3,) with a single particle", lambda c: c.p + torch.ones(3), nf.OperandShapeError, r"shape \(3,\)"),
    Row("Particle * x", "tensor of shape (2, 1) with a population", lambda c: c.pop * torch.ones(2, 1), nf.OperandShapeError, r"vector of shape \(2,\)"),
    Row("Particle * x", "[N] vector of the wrong size", lambda c: c.pop * torch.ones(3), nf.PopulationSizeError, r"expected shape \(2,\).*got \(3,\)"),
    Row("Particle * x", "[N] vector of dtype bool", lambda c: c.pop * torch.ones(2, dtype=torch.bool), TypeError, "real floating or integer"),
    Row("Particle + x", "particle of another species", lambda c: c.p + c.q, SME, "species"),
    Row("Particle + x", "populations of 2 and 3", lambda c: c.pop + c.pop3, nf.PopulationSizeError, "2 members, the right 3"),
    Row("Particle + x", "NaN (IEEE: propagates)", lambda c: c.p + NAN, lambda c, r: all(t.isnan().all() for t in r.tensors)),
    Row("Particle * x", "inf (IEEE: propagates)", lambda c: c.p * INF,
        lambda c, r: all(_eq(t, x * INF) for t, x in zip(r.tensors, c.p.tensors))),
    Row("Particle / x", "zero (IEEE: inf/NaN)", lambda c: c.p / 0.0,
        lambda c, r: all(_eq(t, x / 0.0) for t, x in zip(r.tensors, c.p.tensors))),
    Row("Particle + x", "empty population", lambda c: c.empty + 1, lambda c, r: r.tensors[0].shape == (0, 4, 3)),
    Row("Particle * x", "non-contiguous tensors", lambda c: c.noncontig * 2,
        lambda c, r: all(_eq(t, x * 2) for t, x in zip(r.tensors, c.p.tensors))),
    Row("Particle + x", "int parameter (dtype kept)", lambda c: c.intp + 1.5,
        lambda c, r: _eq(r.params["count"], (torch.arange(3) + 1.5).to(torch.int64))),
    Row("Particle + x", "meta device", lambda c: c.meta + 1,
        lambda c, r: all(t.device.type == "meta" and t.shape == x.shape for t, x in zip(r.tensors, c.meta.tensors))),
    Row("Particle + x", "zero-size parameters", lambda c: _zero_size_species() + 1, lambda c, r: r.tensors[0].shape == (0, 3)),
    Row("Particle + x", "frozen (requires_grad=False) module", lambda c: c.frozen + 1,
        lambda c, r: _eq(r.tensors[0], c.frozen_net.weight + 1)),
    Row("Particle.map", "fn returns a number", lambda c: c.p.map(lambda t, cfg: 1), nf.OperatorResultError, "must return a tensor for '0.weight'"),
    Row("Particle.map", "fn changes the shape", lambda c: c.p.map(lambda t, cfg: t.flatten()), nf.OperatorResultError, "keep the shape of '0.weight'"),
    Row("Particle.map", "fn changes the dtype", lambda c: c.p.map(lambda t, cfg: t.double()), nf.OperatorResultError, "keep the dtype"),
    Row("Particle.zip_with", "a number", lambda c: c.p.zip_with(1, lambda a, b, cfg: a), nf.OperandError, "expected a Particle"),
    Row("Particle.zip_with", "other species", lambda c: c.p.zip_with(c.q, lambda a, b, cfg: a), SME, "species"),
    Row("Particle.randn", "generator is an int", lambda c: c.p.randn(generator=1), TypeError, "torch.Generator"),
    Row("Particle.randn", "operational int parameter", lambda c: c.intp.randn(), TypeError, "mark it non-operational"),
    Row("Particle.rand", "non-operational int parameter (copied)", lambda c: c.intp_off.rand(),
        lambda c, r: _eq(r.params["count"], torch.arange(3))),
    Row("Particle.randn", "meta device", lambda c: c.meta.randn(), lambda c, r: r.tensors[0].device.type == "meta"),
    Row("len(Particle)", "single particle", lambda c: len(c.p), nf.NotAPopulationError, "single particle"),
    Row("Particle[i]", "single particle", lambda c: c.p[0], nf.NotAPopulationError, "single particle"),
    Row("Particle[i]", "out of range", lambda c: c.pop[5], IndexError, "out of range for a population of 2"),
    Row("Particle[i]", "float", lambda c: c.pop[1.5], TypeError, "expected an int, slice"),
    Row("Particle[i]", "float tensor", lambda c: c.pop[torch.tensor([0.5])], TypeError, "integer or boolean tensor"),
    Row("Particle[i]", "2-d index tensor", lambda c: c.pop[torch.zeros(2, 2, dtype=torch.long)], IndexError, "0-d or 1-d"),
    Row("Particle[i]", "mask of the wrong length", lambda c: c.pop[torch.ones(3, dtype=torch.bool)], IndexError, r"shape \(2,\)"),
    Row("Particle()", "not a Species", lambda c: nf.Particle(1, {}), TypeError, "expected a Species"),
    Row("Particle()", "wrong names", lambda c: nf.Particle(c.p.species, {"x": torch.ones(1)}), SME, "missing"),
    Row("Particle()", "wrong shape", lambda c: nf.Particle(c.p.species, {n: torch.ones(1) for n in c.p.species.names}),
        nf.OperandShapeError, r"'0.weight' expected shape \(4, 3\)"),
    Row("Particle()", "wrong dtype", lambda c: nf.Particle(c.p.species, {n: t.double() for n, t in c.p.params.items()}), TypeError, "expected dtype torch.float32"),
    Row("Particle()", "a number as value", lambda c: nf.Particle(c.p.species, {n: 1.0 for n in c.p.species.names}), TypeError, "expected a tensor"),
    Row("lerp", "particles of another species", lambda c: nf.lerp(c.p, c.q, 0.5), SME, "species"),
    Row("lerp", "a number as end", lambda c: nf.lerp(c.p, 1.0, 0.5), TypeError, "expected two Particles"),
    Row("lerp", "weight vector of the wrong length", lambda c: nf.lerp(c.pop, c.p, torch.ones(3)),
        nf.PopulationSizeError, r"\[N\] vector of 2 entries.*got shape \(3,\)"),
    Row("lerp", "weight vector with a single particle", lambda c: nf.lerp(c.p, c.p, torch.ones(2)), nf.OperandShapeError, "a number, a 0-d tensor"),
    Row("lerp", "integer weight tensor", lambda c: nf.lerp(c.p, c.p, torch.tensor(1)), TypeError, "floating-point tensor, got dtype torch.int64"),
    Row("lerp", "bool weight", lambda c: nf.lerp(c.p, c.p, True), TypeError, "weight expects a number"),
    Row("lerp", "string weight", lambda c: nf.lerp(c.p, c.p, "half"), TypeError, "weight expects a number"),
    Row("lerp", "operational int parameter", lambda c: nf.lerp(c.intp, c.intp, 0.5), TypeError, "cannot interpolate the torch.int64 parameter 'count'"),
    Row("lerp", "donate=True with end = start", lambda c: nf.lerp(c.pop, c.pop, 0.5, donate=True), ValueError, "share no storage"),
    Row("lerp", "donate=True with end a view of start", lambda c: nf.lerp(c.pop, c.pop[0], 0.5, donate=True), ValueError, "share no storage"),
    Row("lerp", "donate not a bool", lambda c: nf.lerp(c.p, c.p.clone(), 0.5, donate=1), TypeError, "donate expects a bool"),
    Row("lerp", "donate=True on a population that autograd records (allocates)",
        lambda c: nf.lerp(c.pop.map(lambda t, cfg: t.clone().requires_grad_()), c.p, 0.5, donate=True),
        lambda c, r: all(_eq(t.detach(), torch.lerp(x, y, 0.5)) for t, x, y in zip(r.tensors, c.pop.tensors, c.p.tensors))),
    Row("lincomb", "lengths differ", lambda c: nf.lincomb([1.0], [c.p, c.p]), ValueError, "as many weights as particles"),
    Row("lincomb", "empty", lambda c: nf.lincomb([], []), ValueError, "at least one"),
    Row("lincomb", "particles of another species", lambda c: nf.lincomb([0.5, 0.5], [c.p, c.q]), SME, "species"),
    Row("lincomb", "populations of 2 and 3", lambda c: nf.lincomb([0.5, 0.5], [c.pop, c.pop3]), nf.PopulationSizeError, "2 members, operand 1 has 3"),
    Row("lincomb", "a number among the particles", lambda c: nf.lincomb([0.5, 0.5], [c.p, 1.0]), TypeError, r"particles\[1\] expected a Particle"),
    Row("lincomb", "integer weight tensor", lambda c: nf.lincomb([torch.tensor(1), 0.5], [c.p, c.p]), TypeError, r"weights\[0\] expects a floating-point tensor"),
    Row("lincomb", "donate=True with the donated particle repeated", lambda c: nf.lincomb([0.5, 0.5], [c.pop, c.pop], donate=True), ValueError, "share no storage"),
    Row("optim.apply_updates", "donate=True with updates = params", lambda c: optim.apply_updates(c.pop, c.pop, donate=True), ValueError, "share no storage"),
    # -- module boundary ------------------------------------------------------------
    Row("particle", "None", lambda c: nf.particle(None), TypeError, "expected an nn.Module"),
    Row("particle", "a tensor", lambda c: nf.particle(torch.ones(2)), TypeError, "expected an nn.Module"),
    Row("particle", "frozen module (requires_grad kept for to_module)", lambda c: nf.to_module(nf.particle(c.frozen_net)),
        lambda c, r: r.weight.requires_grad is False and _eq(r.weight.detach(), c.frozen_net.weight)),
    Row("apply", "None", lambda c: nf.apply(None, c.x), TypeError, "expected a Particle"),
    Row("apply", "a population", lambda c: nf.apply(c.pop, c.x), nf.NotAPopulationError, "vmap_apply"),
    Row("apply", "NaN input (propagates)", lambda c: nf.apply(c.p, torch.full((2, 3), NAN)), lambda c, r: bool(r.isnan().all())),
    Row("apply", "meta input and particle", lambda c: nf.apply(c.meta, torch.ones(2, 3, device="meta")),
        lambda c, r: r.device.type == "meta" and r.shape == (2, 2)),
    Row("apply", "input of the wrong shape (the module's own error)", lambda c: nf.apply(c.p, torch.ones(2, 5)), RuntimeError, "shapes cannot be multiplied"),
    Row("apply_with_buffers", "args as a list", lambda c: nf.apply_with_buffers(c.p, None, [c.x]), TypeError, "args expects a tuple"),
    Row("apply_with_buffers", "buffers as a str", lambda c: nf.apply_with_buffers(c.p, "x", (c.x,)), TypeError, "expected a mapping"),
    Row("apply_with_buffers", "unknown buffer", lambda c: nf.apply_with_buffers(c.p, {"x": torch.ones(1)}, (c.x,)), nf.UnknownNameError, "unknown"),
    Row("to_module", "None", lambda c: nf.to_module(None), TypeError, "expected a Particle"),
    Row("to_module", "a population", lambda c: nf.to_module(c.pop), nf.NotAPopulationError, "to_modules"),
    Row("to_module", "meta device (a meta module)", lambda c: nf.to_module(c.meta), lambda c, r: r[0].weight.device.type == "meta"),
    Row("migrate", "None", lambda c: nf.migrate(None, c.p.species), TypeError, "expected a Particle"),
    Row("migrate", "species None", lambda c: nf.migrate(c.p, None), TypeError, "expected a Species"),
    Row("migrate", "another species", lambda c: nf.migrate(c.p, c.q.species), SME, "another branch or of another species"),
    Row("migrate", "an earlier version", lambda c: nf.migrate(c.intp, c.p.species), SME, "earlier version"),
    # -- species edits ------------------------------------------------------------
    Row("Species.add_param", "name None", lambda c: c.p.species.add_param(None, torch.ones(1)), KeyError, "non-empty dotted path"),
    Row("Species.add_param", "value None", lambda c: c.p.species.add_param("x", None), TypeError, "expected a tensor value"),
    Row("Species.add_param", "existing name", lambda c: c.p.species.add_param("0.weight", torch.ones(1)), ValueError, "already a parameter"),
    Row("Species.add_param", "unknown prefix", lambda c: c.p.species.add_param("9.x", torch.ones(1)), KeyError, "existing submodule path"),
    Row("Species.add_param", "config not a ParamConfig", lambda c: c.p.species.add_param("x", torch.ones(1), config=1), TypeError, "ParamConfig"),
    Row("Species.add_module", "not a module", lambda c: c.p.species.add_module("x", 1), TypeError, "nn.Module or None"),
    Row("Species.add_buffer", "not a tensor", lambda c: c.p.species.add_buffer("x", 1), TypeError, "tensor or None"),
    Row("Species.remove", "unknown name", lambda c: c.p.species.remove("nope"), KeyError, "got 'nope'"),
    Row("Species.remove", "the root ''", lambda c: c.p.species.remove(""), KeyError, "got ''"),
    Row("Species.set_none", "unknown name", lambda c: c.p.species.set_none("nope"), KeyError, "got 'nope'"),
    Row("Species.with_config", "unknown key", lambda c: c.p.species.with_config(foo=1), TypeError, "expected keys among"),
    Row("Species.with_config", "operational=1", lambda c: c.p.species.with_config(operational=1), TypeError, "expects a bool"),
    Row("Species.with_config", "tags not a mapping", lambda c: c.p.species.with_config(tags=1), TypeError, "tags expects a mapping"),
    Row("Species.with_config", "unknown name", lambda c: c.p.species.with_config("nope", clone=False), KeyError, "got 'nope'"),
    Row("ParamConfig", "operational=1", lambda c: nf.ParamConfig(operational=1), TypeError, "expected a bool"),
    Row("ParamConfig", "tags a list", lambda c: nf.ParamConfig(tags=[1]), TypeError, "mapping of labels"),
    # -- populations -----------------------------------------------------------------
    Row("stack", "empty list", lambda c: nf.stack([]), ValueError, "at least one particle"),
    Row("stack", "None", lambda c: nf.stack(None), TypeError, "expected a sequence"),
    Row("stack", "a number among particles", lambda c: nf.stack([c.p, 1]), TypeError, "expected Particles"),
    Row("stack", "other species", lambda c: nf.stack([c.p, c.q]), SME, "species"),
    Row("stack", "a population", lambda c: nf.stack([c.pop]), TypeError, "concat"),
    Row("stack", "meta particles", lambda c: nf.stack([c.meta, c.meta]), lambda c, r: r.tensors[0].shape == (2, 4, 3)),
    Row("stack", "non-contiguous particles", lambda c: nf.stack([c.noncontig]), lambda c, r: _eq(r.tensors[0][0], c.p.tensors[0])),
    Row("concat", "empty list", lambda c: nf.concat([]), ValueError, "at least one population"),
    Row("concat", "None", lambda c: nf.concat(None), TypeError, "expected a sequence"),
    Row("concat", "an empty population", lambda c: nf.concat([c.empty, c.pop]), lambda c, r: len(r) == 2),
    Row("unstack", "single particle", lambda c: nf.unstack(c.p), nf.NotAPopulationError, "single particle"),
    Row("unstack", "empty population", lambda c: nf.unstack(c.empty), lambda c, r: r == []),
    Row("random_population", "n=0", lambda c: nf.random_population(c.p, 0), ValueError, "size >= 1, got 0"),
    Row("random_population", "n=2.0", lambda c: nf.random_population(c.p, 2.0), ValueError, "got 2.0"),
    Row("random_population", "template a population", lambda c: nf.random_population(c.pop, 2), TypeError, "single particle"),
    Row("random_population", "unknown distribution", lambda c: nf.random_population(c.p, 2, distribution="x"), ValueError, "'randn' or 'rand'"),
    Row("random_population", "generator an int", lambda c: nf.random_population(c.p, 2, generator=3), TypeError, "torch.Generator"),
    Row("random_population", "operational int parameter", lambda c: nf.random_population(c.intp, 2), TypeError, "non-operational"),
    Row("init_population", "n=0", lambda c: nf.init_population(c.net, 0), ValueError, "size >= 1"),
    Row("init_population", "not a module", lambda c: nf.init_population(c.p, 2), TypeError, "expected an nn.Module"),
    Row("init_population", "generator an int", lambda c: nf.init_population(c.net, 2, generator=1), TypeError, "torch.Generator"),
    Row("stack_modules", "empty list", lambda c: nf.stack_modules([]), ValueError, "at least one module"),
    Row("stack_modules", "None", lambda c: nf.stack_modules(None), TypeError, "expected a sequence"),
    Row("stack_modules", "other architecture", lambda c: nf.stack_modules([c.net, nn.Linear(3, 4)]), SME, "module 1 has parameters"),
    Row("stack_modules", "other shapes", lambda c: nf.stack_modules([c.net, nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))]),
        SME, r"'0.weight' is \(5, 3\)"),
    Row("stack_modules", "species an int", lambda c: nf.stack_modules([c.net], species=1), TypeError, "Species or None"),
    Row("stack_buffers", "species None", lambda c: nf.stack_buffers(None, 2), TypeError, "expected a Species"),
    Row("stack_buffers", "n=0", lambda c: nf.stack_buffers(c.p.species, 0), ValueError, "size >= 1"),
    Row("to_modules", "single particle", lambda c: nf.to_modules(c.p), nf.NotAPopulationError, "single particle"),
    Row("to_modules", "empty population", lambda c: nf.to_modules(c.empty), lambda c, r: r == []),
    Row("vmap_apply", "single particle", lambda c: nf.vmap_apply(c.p, c.x), nf.NotAPopulationError, "single particle"),
    Row("vmap_apply", "empty population", lambda c: nf.vmap_apply(c.empty, c.x), lambda c, r: r.shape == (0, 5, 2)),
    Row("vmap_apply_with", "args as a list", lambda c: nf.vmap_apply_with(c.pop, [c.x]), TypeError, "args expects a tuple"),
    Row("vmap_apply_with", "in_dims of the wrong length", lambda c: nf.vmap_apply_with(c.pop, (c.x,), in_dims=(0, 0)), ValueError, "one per arg"),
    Row("vmap_apply_with", "per-member input of the wrong size", lambda c: nf.vmap_apply_with(c.pop, (torch.ones(3, 3),), in_dims=0),
        nf.PopulationSizeError, "expected 2"),
    Row("vmap_apply_with", "in_dims past the input's dims", lambda c: nf.vmap_apply_with(c.pop, (torch.ones(3),), in_dims=(1,)), ValueError, "out of range"),
    Row("vmap_apply_with", "buffers as a str", lambda c: nf.vmap_apply_with(c.pop, (c.x,), buffers="x"), TypeError, "mapping"),
    Row("vmap_apply_with", "unknown randomness", lambda c: nf.vmap_apply_with(c.pop, (c.x,), randomness="x"), ValueError, "randomness"),
    Row("best", "single particle", lambda c: nf.best(c.p, torch.zeros(1)), nf.NotAPopulationError, "single particle"),
    Row("best", "empty population", lambda c: nf.best(c.empty, torch.zeros(0)), ValueError, "empty population"),
    Row("best", "fitness None", lambda c: nf.best(c.pop, None), TypeError, r"shape \(2,\)"),
    Row("best", "fitness of the wrong size", lambda c: nf.best(c.pop, torch.zeros(3)), nf.PopulationSizeError, r"got \(3,\)"),
    Row("best", "fitness bool", lambda c: nf.best(c.pop, torch.zeros(2, dtype=torch.bool)), TypeError, "real dtype"),
    Row("best", "fitness strings", lambda c: nf.best(c.pop, ["a", "b"]), TypeError, "expected numbers"),
    Row("best", "fitness on meta", lambda c: nf.best(c.pop, torch.zeros(2, device="meta")), ValueError, "meta device"),
    Row("best", "NaN fitness (counts as worst)", lambda c: nf.best(c.pop, torch.tensor([NAN, -5.0])),
        lambda c, r: _eq(r.tensors[0], c.pop.tensors[0][1])),
    Row("best", "all-NaN fitness", lambda c: nf.best(c.pop, torch.tensor([NAN, NAN])), ValueError, "every value is NaN"),
    Row("top_k", "k=0", lambda c: nf.top_k(c.pop, torch.zeros(2), 0), ValueError, "1 <= k <= 2"),
    Row("top_k", "k > N", lambda c: nf.top_k(c.pop, torch.zeros(2), 3), ValueError, "1 <= k <= 2"),
    Row("top_k", "empty population", lambda c: nf.top_k(c.empty, torch.zeros(0), 1), ValueError, "1 <= k <= 0"),
    Row("mean", "single particle", lambda c: nf.mean(c.p), nf.NotAPopulationError, "single particle"),
    Row("mean", "empty population", lambda c: nf.mean(c.empty), ValueError, "empty population"),
    Row("mean", "int parameter (mean in float64, dtype kept)", lambda c: nf.mean(nf.stack([c.intp_off, c.intp_off])),
        lambda c, r: _eq(r.params["count"], torch.arange(3))),
    Row("weighted_mean", "weights summing to zero", lambda c: nf.weighted_mean(c.pop, torch.tensor([1.0, -1.0])), ValueError, "sum to zero"),
    Row("weighted_mean", "empty population", lambda c: nf.weighted_mean(c.empty, torch.zeros(0)), ValueError, "empty population"),
    Row("weighted_mean", "NaN weight (propagates)", lambda c: nf.weighted_mean(c.pop, torch.tensor([NAN, 1.0])),
        lambda c, r: bool(r.tensors[0].isnan().all())),
    Row("weighted_mean", "weights on meta", lambda c: nf.weighted_mean(c.pop, torch.zeros(2, device="meta")), ValueError, "meta device"),
    # -- optimisers -----------------------------------------------------------------
    Row("optim.sgd", "lr < 0", lambda c: optim.sgd(-1), ValueError, "lr: expected a value in"),
    Row("optim.sgd", "lr NaN", lambda c: optim.sgd(NAN), ValueError, "got nan"),
    Row("optim.sgd", "lr a str", lambda c: optim.sgd("a"), TypeError, "expected a number"),
    Row("optim.sgd", "lr a 2-d tensor", lambda c: optim.sgd(torch.ones(2, 2)), ValueError, r"\[N\] real tensor"),
    Row("optim.sgd", "momentum 1", lambda c: optim.sgd(0.1, momentum=1.0), ValueError, "momentum"),
    Row("optim.sgd", "nesterov without momentum", lambda c: optim.sgd(0.1, nesterov=True), ValueError, "nesterov"),
    Row("sgd.init", "None", lambda c: optim.sgd(0.1).init(None), TypeError, "expected a Particle"),
    Row("sgd.init", "operational int parameter", lambda c: optim.sgd(0.1).init(c.intp), TypeError, "floating parameters"),
    Row("sgd.update", "state None", lambda c: optim.sgd(0.1, momentum=0.9).update(c.p, None), TypeError, "SGDState"),
    Row("sgd.update", "grads of another species", lambda c: optim.sgd(0.1, momentum=0.9).update(c.q, optim.sgd(0.1, momentum=0.9).init(c.p)), SME, "species"),
    Row("sgd.update", "state of another population size", lambda c: optim.sgd(0.1, momentum=0.9).update(c.pop3, optim.sgd(0.1, momentum=0.9).init(c.pop)),
        nf.PopulationSizeError, "differ"),
    Row("sgd.update", "[N] lr of the wrong size", lambda c: optim.sgd(torch.ones(3)).update(c.pop, optim.sgd(torch.ones(3)).init(c.pop)),
        nf.PopulationSizeError, r"\(2,\)"),
    Row("sgd.update", "weight_decay without params", lambda c: optim.sgd(0.1, weight_decay=0.1).update(c.p, optim.sgd(0.1).init(c.p)), ValueError, "needs params"),
    Row("optim.adam", "b1 = 1", lambda c: optim.adam(0.1, b1=1.0), ValueError, "b1"),
    Row("adam.update", "state None", lambda c: optim.adam(0.1).update(c.p, None), TypeError, "AdamState"),
    Row("adam.update", "an SGDState", lambda c: optim.adam(0.1).update(c.p, optim.SGDState(None)), TypeError, "AdamState"),
    Row("adam.init", "operational int parameter", lambda c: optim.adam(0.1).init(c.intp), TypeError, "floating parameters"),
    Row("adam.update", "non-operational int parameter (kept)", lambda c: optim.apply_updates(c.intp_off, optim.adam(0.1).update(
        c.intp_off.map(lambda t, cfg: torch.ones_like(t)), optim.adam(0.1).init(c.intp_off), c.intp_off)[0]),
        lambda c, r: _eq(r.params["count"], torch.arange(3)) and bool(torch.allclose(r.params["0.weight"], c.p.params["0.weight"] - 0.1))),
    Row("adam.update", "meta device", lambda c: optim.adam(0.1).update(c.meta, optim.adam(0.1).init(c.meta))[0],
        lambda c, r: r.tensors[0].device.type == "meta"),
    Row("optim.clipup", "lr < 0", lambda c: optim.clipup(-1), ValueError, "clipup: lr: expected a value in"),
    Row("optim.clipup", "max_speed 0", lambda c: optim.clipup(0.1, max_speed=0.0), ValueError, "max_speed expects a value > 0"),
    Row("optim.clipup", "momentum 1", lambda c: optim.clipup(0.1, momentum=1.0), ValueError, "momentum"),
    Row("optim.clipup", "lr a str", lambda c: optim.clipup("a"), TypeError, "expected a number"),
    Row("optim.clipup", "update with an SGD state", lambda c: optim.clipup(0.1).update(c.p, optim.sgd(0.1).init(c.p)),
        TypeError, "expected the ClipUpState made by init"),
    Row("optim.clipup", "a zero gradient (no push, no NaN)", lambda c: optim.clipup(0.1).update(
            c.p.map(lambda t, cfg: torch.zeros_like(t)), optim.clipup(0.1).init(c.p))[0],
        lambda c, r: all(bool((t == 0).all()) for t in r.tensors)),
    Row("optim.apply_updates", "None", lambda c: optim.apply_updates(c.p, None), TypeError, "two Particles"),
    Row("optim.apply_updates", "other species", lambda c: optim.apply_updates(c.p, c.q), SME, "species"),
    # -- checkpoints ----------------------------------------------------------------
    Row("checkpoint.save", "meta tensors", lambda c: ck.save(c.tmp / "m.safetensors", c.meta), ValueError, "meta device"),
    Row("checkpoint.save", "an arbitrary object", lambda c: ck.save(c.tmp / "o.safetensors", {"a": object()}), TypeError, "expected a Particle, tensor"),
    Row("checkpoint.save", "complex128 tensor", lambda c: ck.save(c.tmp / "c.safetensors", torch.zeros(1, dtype=torch.complex128)), TypeError, "dtype"),
    Row("checkpoint.save", "NaN/inf (saved bit-exact)", lambda c: (ck.save(c.tmp / "n.safetensors", torch.tensor([NAN, INF, -INF])),
                                                               ck.load(c.tmp / "n.safetensors", like=torch.zeros(3)))[1],
        lambda c, r: _eq(r, torch.tensor([NAN, INF, -INF]))),
    Row("checkpoint.save", "non-contiguous and zero-size", lambda c: (ck.save(c.tmp / "z.safetensors", (c.noncontig, torch.zeros(0, 3))),
                                                                    ck.load(c.tmp / "z.safetensors", like=(c.p.species, torch.zeros(0, 3))))[1],
        lambda c, r: _eq(r[0].tensors[0], c.p.tensors[0]) and r[1].shape == (0, 3)),
    Row("checkpoint.load", "not a file written by save", lambda c: (c.tmp.joinpath("x").write_bytes(b"junk" * 9), ck.load(c.tmp / "x", like=c.p)),
        ck.CheckpointError, "not a checkpoint"),
    Row("checkpoint.load", "like of another architecture", lambda c: (ck.save(c.tmp / "p.safetensors", c.p), ck.load(c.tmp / "p.safetensors", like=nn.Linear(3, 4))),
        ck.CheckpointMismatchError, "parameter 0 is '0.weight' in the file, 'weight' in the species"),
    Row("checkpoint.load", "like an arbitrary object", lambda c: (ck.save(c.tmp / "q.safetensors", 1), ck.load(c.tmp / "q.safetensors", like=object())),
        TypeError, "`like`"),
]


@pytest.mark.parametrize("row", ROWS, ids=[f"{r.function}: {r.case}" for r in ROWS])
def test_bad_input(row: Row, tmp_path) -> None:
    ctx = Ctx()
    ctx.tmp = tmp_path
    snap = Snapshot(*ctx.inputs())
    if isinstance(row.expect, type) and issubclass(row.expect, BaseException):
        with pytest.raises(row.expect, match=row.match) as info:
            row.call(ctx)
        assert not isinstance(info.value, (AttributeError, AssertionError))
    else:
        result = row.call(ctx)
        assert row.expect(ctx, result), f"{row.function} ({row.case}): unexpected result {result!r}"
    assert snap.unchanged(), f"{row.function} ({row.case}) modified an input"


def test_the_table_covers_every_public_function() -> None:
    functions = {n for n in nf.__all__ if callable(getattr(nf, n)) and not isinstance(getattr(nf, n), type)}
    functions |= {f"optim.{n}" for n in optim.__all__ if not isinstance(getattr(optim, n), type)}
    functions |= {"checkpoint.save", "checkpoint.load", "Particle()", "ParamConfig", "sgd.init", "sgd.update",
                  "adam.init", "adam.update", "Particle.map", "Particle.zip_with", "Particle.randn", "Particle.rand"}
    functions |= {f"Species.{m}" for m in ("add_param", "add_module", "add_buffer", "remove", "set_none", "with_config")}
    missing = sorted(functions - {r.function for r in ROWS})
    assert not missing, f"public functions without a bad-input row: {missing}"


def readme_table() -> str:
    """The bad-input page's table (docs/reference/bad-input.md), from ROWS (``python -m tests.fn.test_bad_input``)."""
    lines = ["| function | bad input | result |", "| --- | --- | --- |"]
    for r in ROWS:
        if isinstance(r.expect, type):
            result = f"`{r.expect.__name__}`" + (f" ({r.match.replace('|', '/')})" if r.match else "")
            result = result.replace("\\", "")
        else:
            result = "no error; result checked against plain torch"
        lines.append(f"| `{r.function}` | {r.case} | {result} |")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    print(readme_table())
    print(len(ROWS), "rows", file=__import__("sys").stderr)
