"""Legacy checkpoints: NytoModules keep working with state_dict / load_state_dict and torch.save."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

import nytorch as nyto

if not hasattr(nyto, "NytoModule"):  # the compat layer is built concurrently; skip until it lands
    pytest.skip("nytorch.NytoModule not available yet", allow_module_level=True)


class Net(nyto.NytoModule):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.bn = nn.BatchNorm1d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.fc(x))


def _expected_state(module: nn.Module) -> dict:
    """What plain torch puts in a state_dict for the same values."""
    plain = nn.Module()
    plain.fc = nn.Linear(3, 2)
    plain.bn = nn.BatchNorm1d(2)
    with torch.no_grad():
        for (_, dst), (_, src) in zip(plain.named_parameters(), module.named_parameters()):
            dst.copy_(src)
        for (_, dst), (_, src) in zip(plain.named_buffers(), module.named_buffers()):
            dst.copy_(src)
    return plain.state_dict()


def test_state_dict_round_trip_through_torch_save_keeps_particle_operations() -> None:
    torch.manual_seed(0)
    a = Net()
    b = a.clone()  # same species as a (a second constructor call would start a new species)
    c = a * 2 + 1
    sd = c.state_dict()
    expected = _expected_state(c)
    assert list(sd) == list(expected)
    assert all(torch.equal(sd[k], expected[k]) for k in sd)
    buf = io.BytesIO()
    torch.save(c.state_dict(), buf)
    buf.seek(0)
    loaded = torch.load(buf)  # weights_only by default: no code runs
    b.load_state_dict(loaded)
    assert torch.equal(b.fc.weight, c.fc.weight) and torch.equal(b.bn.running_var, c.bn.running_var)
    d = b + a  # still a particle of the same species after load_state_dict
    assert torch.allclose(d.fc.weight, a.fc.weight * 3 + 1)
    x = torch.randn(4, 3)
    b.eval(), c.eval()
    assert torch.equal(b(x), c(x))


def test_load_state_dict_refuses_a_wrong_shape_as_torch_does() -> None:
    net = Net()
    bad = {**net.state_dict(), "fc.weight": torch.zeros(5, 5)}
    with pytest.raises(RuntimeError, match="size mismatch for fc.weight"):
        net.load_state_dict(bad)


def test_whole_module_torch_save() -> None:
    net = Net()
    buf = io.BytesIO()
    torch.save(net, buf)
    buf.seek(0)
    again = torch.load(buf, weights_only=False)
    assert torch.equal(again.fc.weight, net.fc.weight)
