"""A rank that dies or hangs makes the others fail with a clear error within the
timeout; a checkpoint written before the fault resumes the run exactly."""

from __future__ import annotations

import torch

from . import _scenarios as sc
from ._launch import launch
from ._worker import SIZES


def test_dead_rank_is_reported_and_the_checkpoint_resumes_the_run(tmp_path):
    died = launch("die", 2, tmp_path, timeout=60, stop_after=0)
    assert died.codes[1] == 3, died.describe()  # rank 1 died on purpose
    out = died.results[0]
    assert out is not None and "__error__" not in out, died.describe()
    assert "a peer rank died, hung or left the process group" in out["error"], out["error"]
    assert "resume from the last checkpoint" in out["error"]
    assert out["elapsed"] < 10.0  # gloo timeout 3 s; a reset connection is seen at once
    assert (tmp_path / "ckpt0.safetensors").exists() and (tmp_path / "ckpt1.safetensors").exists()
    for f in ("rank0.pt", "rank1.pt"):
        (tmp_path / f).unlink(missing_ok=True)

    resumed = launch("resume", 2, tmp_path, timeout=60).ok()

    # the uninterrupted single-process run: 5 generations of the same APSO
    a = sc.fault_algorithm()
    g = torch.Generator().manual_seed(3)
    st = a.init(sc.population(sc.template(), SIZES[2]), generator=g)
    for _ in range(5):
        st, _ = a.step(st, sc.losses, generator=g)
    offset = 0
    for out in resumed.results:  # each rank resumed from its own checkpoint of its own members
        assert out["generation"] == 5
        rows = len(out["pop"][0])
        assert all(torch.equal(x, y[offset:offset + rows]) for x, y in zip(out["pop"], st.population.tensors))
        assert all(torch.equal(x, y) for x, y in zip(out["best"], st.best.tensors))
        offset += rows
    assert offset == SIZES[2]


def test_hung_rank_times_out_with_a_clear_error(tmp_path):
    run = launch("hang", 2, tmp_path, timeout=40, stop_after=0)
    out = run.results[0]
    assert out is not None and "__error__" not in out, run.describe()
    assert "collective all_gather(fitness) failed" in out["error"], out["error"]
    assert "(timeout 3s)" in out["error"]
    assert 2.5 < out["elapsed"] < 10.0
    assert run.wall < 30.0  # the hung rank was stopped, nothing waited forever
