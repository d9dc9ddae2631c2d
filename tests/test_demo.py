"""The flagship demo: PBT against independent training, outputs, flags (runs the real command).

Its run time is a figure for the README (about 12 s here), not an assertion: speed claims live in bench/.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

FIGURES = ("member", "val_ce", "val_acc", "test_ce", "test_acc", "median_test_acc", "lr", "weight_decay",
           "early_stopped", "train_seconds")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    proc = subprocess.run(
        [sys.executable, "-m", "nytorch_fn.demo", "--out", str(out), "--no-progress"],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return proc, out


def test_demo_pbt_beats_independent_training(demo_run):
    proc, out = demo_run
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["population"] == 64 and summary["steps"] == 600 and summary["seed"] == 0
    pbt, independent = summary["pbt"], summary["independent"]
    # the claim the demo makes: on held-out data, by accuracy and by cross-entropy, and early-stopped too
    assert pbt["test_acc"] >= independent["test_acc"] + 0.02, (pbt, independent)
    assert pbt["test_ce"] < independent["test_ce"], (pbt, independent)
    assert pbt["early_stopped"]["test_acc"] > independent["early_stopped"]["test_acc"], (pbt, independent)
    # PBT's schedule: the chosen member ends with a smaller learning rate than the best fixed draw
    assert pbt["lr"] < independent["lr"]


def test_demo_prints_both_methods_side_by_side_and_writes_a_png(demo_run):
    proc, out = demo_run
    lines = proc.stdout.splitlines()
    head = next(line for line in lines if line.split() == ["PBT", "independent"])
    rows = lines[lines.index(head) + 2:]
    acc = next(r for r in rows if r.startswith("held-out test accuracy"))
    summary = json.loads((out / "summary.json").read_text())
    assert acc.split()[-2:] == [f"{summary['pbt']['test_acc']:.3f}", f"{summary['independent']['test_acc']:.3f}"]
    assert any(r.startswith("early-stopped") for r in rows)
    png = (out / "accuracy.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_a_short_run_writes_both_methods_figures(tmp_path):
    from nytorch_fn.demo import main

    summary = main(["--population", "4", "--steps", "23", "--every", "5", "--seed", "3", "--out", str(tmp_path),
                    "--no-progress"])
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert summary["population"] == 4 and summary["steps"] == 23 and summary["seed"] == 3
    for method in ("pbt", "independent"):
        assert set(FIGURES) <= set(summary[method]), method
        assert 0 <= summary[method]["test_acc"] <= 1 and summary[method]["test_ce"] > 0
        assert 0 <= summary[method]["member"] < 4
        assert 0 <= summary[method]["early_stopped"]["generation"] < 5  # 23 steps in generations of 5: 5, 10, ..., 23
    assert (tmp_path / "accuracy.png").exists()


def test_compare_legacy_times_the_loop_of_modules(tmp_path, capsys):
    from nytorch_fn.demo import main

    summary = main(["--population", "3", "--steps", "12", "--every", "4", "--out", str(tmp_path), "--no-progress",
                    "--compare-legacy"])
    assert summary["legacy_loop_ms_per_step"] > 0 and summary["nytorch_fn_ms_per_step"] > 0
    # speedup is rounded to 2 decimals, the times to 3: allow that rounding, not more
    assert summary["speedup"] == pytest.approx(summary["legacy_loop_ms_per_step"] / summary["nytorch_fn_ms_per_step"],
                                               rel=0.01, abs=0.006)
    assert "nytorch loop of modules" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [["--population", "1"], ["--steps", "0"], ["--every", "0"], ["--fraction", "0.7"], ["--label-noise", "1.0"],
     ["--lr-range", "0,1"], ["--wd-range", "0.1,0.01"], ["--train-size", "1500", "--val-size", "500"]],
)
def test_demo_refuses_bad_flags(argv, capsys):
    from nytorch_fn.demo import main

    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "expects" in capsys.readouterr().err


def test_label_noise_touches_only_the_training_labels():
    from sklearn.datasets import load_digits as sk_load_digits

    from nytorch_fn.demo import load_digits

    clean = load_digits(5, train_size=300, val_size=200, label_noise=0.0)
    noisy = load_digits(5, train_size=300, val_size=200, label_noise=0.5)
    for k in ("x_train", "x_val", "y_val", "x_test", "y_test"):
        assert torch.equal(clean[k], noisy[k]), k
    changed = clean["y_train"] != noisy["y_train"]
    assert not changed[~noisy["flipped"]].any()  # only redrawn labels differ
    assert 0.3 < float(changed.float().mean()) < 0.6  # about 0.5 * 9/10 of them change class
    # the clean labels are the digits' own: each row's label is the target of an identical image
    digits = sk_load_digits()
    images = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    targets = torch.tensor(digits.target)
    for i in range(0, 300, 37):
        match = (images == clean["x_train"][i]).all(1)
        assert (targets[match] == clean["y_train"][i]).all()
    with pytest.raises(ValueError, match="label_noise"):
        load_digits(0, label_noise=1.0)


def test_exploited_members_take_their_donors_adam_state():
    import nytorch_fn as nf
    from nytorch_fn.algorithms import PBT, LocalCollective
    from nytorch_fn.demo import Trainer, evaluate, load_digits, make_net

    data = load_digits(0, train_size=100, val_size=100)
    g = torch.Generator().manual_seed(0)
    pop = nf.init_population(make_net(8), 8, generator=g)
    trainer = Trainer(data, n=8, rows=range(8), batch_size=4, every=3, steps=6, seed=1)
    pbt = PBT(hyperparams={"lr": (1e-3, 1e-1, "log"), "weight_decay": (1e-5, 1e-2, "log")}, train=trainer,
              maximize=False)
    state = pbt.init(pop, generator=g)
    trained, state = pbt.ask(state, generator=g)
    before = trainer.opt_state
    state = pbt.tell(state, trained, evaluate(trained, data["x_val"], data["y_val"])[0], generator=g)
    trainer.follow(state.source, LocalCollective(8))
    moved = [i for i in range(8) if int(state.source[i]) != i]
    assert len(moved) == 2  # a quarter of 8
    for i in range(8):
        j = int(state.source[i])
        for mine, donor in zip(trainer.opt_state.mu.tensors, before.mu.tensors):
            assert torch.equal(mine[i], donor[j])
        for mine, donor in zip(trainer.opt_state.nu.tensors, before.nu.tensors):
            assert torch.equal(mine[i], donor[j])
        for mine, donor in zip(state.population.tensors, trained.tensors):
            assert torch.equal(mine[i], donor[j])


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_demo_under_torchrun_equals_the_single_process_run(tmp_path):
    common = ["--population", "6", "--steps", "40", "--every", "10", "--seed", "2", "--no-progress"]
    single = tmp_path / "single"
    sharded = tmp_path / "sharded"
    one = subprocess.run(
        [sys.executable, "-m", "nytorch_fn.demo", "--out", str(single), *common],
        check=False, capture_output=True, text=True, timeout=300,
    )
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run(
        [
            sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2",
            "--master-addr=127.0.0.1", f"--master-port={_free_port()}",
            "-m", "nytorch_fn.demo", "--out", str(sharded), *common,
        ],
        check=False, capture_output=True, text=True, timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    a = json.loads((single / "summary.json").read_text())
    b = json.loads((sharded / "summary.json").read_text())
    for method in ("pbt", "independent"):
        for key in ("member", "val_ce", "val_acc", "test_ce", "test_acc", "median_test_acc", "lr", "weight_decay",
                    "early_stopped"):
            assert a[method][key] == b[method][key], (method, key)
    assert two.stdout.count("digits: ") == 1  # only rank 0 reports
