"""torch.nn architectures beyond MLPs: TransformerEncoder, MultiheadAttention, LSTM/GRU, Embedding with
padding_idx, a ResNet-18-shaped conv net with BatchNorm, weight_norm and spectral_norm parametrisations.

Each test runs the checks that apply and asserts what does not work (with torch's own error), as the
table in docs/guides/architectures.md reports.
"""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.utils.parametrizations import spectral_norm, weight_norm

import nytorch_fn as nf
from tests.helpers import tensor_equal
from tests.models import _checks as c

FALLBACK = "performance drop because we have not yet implemented the batching rule"


@contextlib.contextmanager
def fastpath(enabled: bool):
    """``torch.backends.mha`` fast path (TransformerEncoderLayer, MultiheadAttention) on or off, restored
    after. Off, attention also runs on SDPA's math backend: CPU's flash kernel has no vmap batching rule
    (torch would loop over the members, with a warning)."""
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(enabled)
    try:
        if enabled:
            yield
        else:
            with sdpa_kernel(SDPBackend.MATH):
                yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


def squared(get=c.identity):
    return lambda out: get(out).square().mean()


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- attention ---------------------------------------------------------------


def encoder(seed: int = 0, *, nested: bool = False) -> nn.TransformerEncoder:
    torch.manual_seed(seed)
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=nested).eval()


def tokens(batch: int = 2, length: int = 5, width: int = 8):
    x = torch.randn(batch, length, width, generator=gen(1))
    pad = torch.zeros(batch, length, dtype=torch.bool)
    pad[1, 3:] = True
    return x, pad


def test_transformer_encoder_with_the_fast_path_off(tmp_path):
    x, pad = tokens()
    kwargs = {"src_key_padding_mask": pad}
    with fastpath(False):
        model = encoder()
        p = c.capture(model)
        c.apply_matches_module(p, model, (x,), kwargs)
        pop = c.population(p)
        c.vmap_matches_loop(pop, (x,), kwargs)
        c.vmap_grad_matches_autograd(pop, squared(), (x,), kwargs)
        c.merges_match_hand_computation(p, list(nf.unstack(pop)))
        c.checkpoint_round_trips(tmp_path, pop, lambda: encoder(1))
        c.nyto_wrapping_matches(encoder(), p, (x,), kwargs)


def test_transformer_encoder_with_the_fast_path_on_falls_back_to_a_loop_under_vmap():
    x, pad = tokens()
    with fastpath(True), torch.no_grad():
        model = encoder()
        p = nf.particle(model)
        c.apply_matches_module(p, model, (x,), {"src_key_padding_mask": pad})  # both take the fused kernel
        pop = c.population(p)
        # torch has no batching rule for the fused layer: vmap loops over the members (and says so)
        with pytest.warns(UserWarning, match=FALLBACK):
            batched = nf.vmap_apply(pop, x, src_key_padding_mask=pad)
    with fastpath(False):
        loop = torch.stack([nf.apply(q, x, src_key_padding_mask=pad) for q in nf.unstack(pop)])
    torch.testing.assert_close(batched, loop, rtol=1e-5, atol=1e-5)


def test_transformer_encoder_with_nested_tensors_fails_under_vmap():
    x, pad = tokens()
    with fastpath(True), torch.no_grad(), warnings.catch_warnings():
        # the nested-tensor path (enable_nested_tensor=True, the default) says its API is a prototype
        warnings.filterwarnings("ignore", message="The PyTorch API of nested tensors is in prototype")
        model = encoder(nested=True)
        p = nf.particle(model)
        keep = ~pad  # the nested path leaves padded positions at 0
        out = nf.apply(p, x, src_key_padding_mask=pad)
        torch.testing.assert_close(out[keep], model(x, src_key_padding_mask=pad)[keep])
        with pytest.raises(NotImplementedError, match="aten::stack' with arguments from the 'NestedTensorCPU'"):
            nf.vmap_apply(nf.stack([p, p * 2]), x, src_key_padding_mask=pad)


def mha(seed: int = 0) -> nn.MultiheadAttention:
    torch.manual_seed(seed)
    return nn.MultiheadAttention(8, 2, batch_first=True).eval()


def test_multihead_attention(tmp_path):
    x, pad = tokens()
    kwargs = {"key_padding_mask": pad}
    with fastpath(False):
        model = mha()
        p = c.capture(model)
        assert p.species.names == ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias")
        for get in (c.first, lambda out: out[1]):  # the output and the attention weights
            c.apply_matches_module(p, model, (x, x, x), kwargs, get)
        pop = c.population(p)
        c.vmap_matches_loop(pop, (x, x, x), kwargs, c.first)
        c.vmap_grad_matches_autograd(pop, squared(c.first), (x, x, x), kwargs)
        c.merges_match_hand_computation(p, list(nf.unstack(pop)))
        c.checkpoint_round_trips(tmp_path, pop, lambda: mha(1))
        c.nyto_wrapping_matches(mha(), p, (x, x, x), kwargs, c.first)
    with fastpath(True), torch.no_grad(), pytest.warns(UserWarning, match=FALLBACK):
        nf.vmap_apply(pop, x, x, x, key_padding_mask=pad)
    # need_weights=False returns (output, None): the None comes back as it is, beside the stacked outputs
    with fastpath(False):
        out, weights = nf.vmap_apply(pop, x, x, x, key_padding_mask=pad, need_weights=False)
        assert weights is None
        for i, member in enumerate(nf.unstack(pop)):
            torch.testing.assert_close(out[i], nf.apply(member, x, x, x, key_padding_mask=pad, need_weights=False)[0])


# -- recurrent ---------------------------------------------------------------


def rnn(cls, seed: int = 0) -> nn.RNNBase:
    torch.manual_seed(seed)
    return cls(4, 5, num_layers=2, batch_first=True).eval()


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
def test_lstm_and_gru(tmp_path, cls):
    x = torch.randn(2, 3, 4, generator=gen(2))
    model = rnn(cls)
    # filterwarnings=error: on CPU no "weights are not part of single contiguous chunk" warning is raised
    # by apply or by to_module (cuDNN's flattened weights exist on CUDA only)
    p = c.capture(model)
    c.apply_matches_module(p, model, (x,), None, c.first)
    rebuilt = nf.to_module(p).requires_grad_(False)
    assert torch.equal(rebuilt(x)[0], nf.apply(p, x)[0])
    pop = c.population(p)
    # torch.func has no batching rule for the fused RNN kernels: vmap_apply (and vmap(grad)) fail
    with pytest.raises(RuntimeError, match=f"Batching rule not implemented for aten::{cls.__name__.lower()}"):
        nf.vmap_apply(pop, x)
    # a population runs as a loop of apply; grad of one member matches autograd
    member = pop[1]
    grad = torch.func.grad(lambda q: nf.apply(q, x)[0].square().mean())(member)
    module = nf.to_module(member)
    named = dict(module.named_parameters())
    wanted = torch.autograd.grad(module(x)[0].square().mean(), [named[n] for n in p.species.names])
    for g, w in zip(grad.tensors, wanted):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
    c.merges_match_hand_computation(p, list(nf.unstack(pop)))
    c.checkpoint_round_trips(tmp_path, pop, lambda: rnn(cls, 1))
    c.nyto_wrapping_matches(rnn(cls), p, (x,), None, c.first)


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
def test_packed_sequences(cls):
    x = torch.randn(2, 3, 4, generator=gen(3))
    packed = nn.utils.rnn.pack_padded_sequence(x, torch.tensor([3, 2]), batch_first=True)
    model = rnn(cls)
    p = nf.particle(model)
    torch.testing.assert_close(nf.apply(p, packed)[0].data, model(packed)[0].data)
    # a shared PackedSequence reaches every member as it is; the RNN itself then fails under vmap for
    # want of a batching rule, as above
    with pytest.raises(RuntimeError, match=f"Batching rule not implemented for aten::{cls.__name__.lower()}.data"):
        nf.vmap_apply(nf.stack([p, p * 2]), packed)


# -- embeddings --------------------------------------------------------------


class Bag(nn.Module):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(11, 6, padding_idx=0)
        self.out = nn.Linear(6, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(self.embed(ids).mean(1))


def test_embedding_with_padding_idx(tmp_path):
    ids = torch.tensor([[3, 5, 0, 0], [1, 2, 7, 0]])
    model = Bag()
    p = c.capture(model)
    assert torch.equal(p.params["embed.weight"][0], torch.zeros(6))
    c.apply_matches_module(p, model, (ids,))
    pop = c.population(p)
    c.vmap_matches_loop(pop, (ids,))
    c.vmap_grad_matches_autograd(pop, squared(), (ids,))
    grads = torch.func.vmap(torch.func.grad(lambda q: nf.apply(q, ids).square().mean()))(pop)
    assert torch.equal(grads.params["embed.weight"][:, 0], torch.zeros(3, 6))  # no gradient for padding_idx
    assert grads.params["embed.weight"][:, 3].abs().sum() > 0
    c.merges_match_hand_computation(p, list(nf.unstack(pop)))
    c.checkpoint_round_trips(tmp_path, pop, lambda: Bag(1))
    c.nyto_wrapping_matches(Bag(), p, (ids,))


# -- a ResNet-18-shaped conv net ---------------------------------------------


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet18(nn.Module):
    """torchvision's resnet18 layout (7x7 stem, max-pool, 4 stages of 2 BasicBlocks, avg-pool, fc), 1/8 the width."""

    def __init__(self, seed: int = 0, width: int = 8, classes: int = 5) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, cin = [], width
        for i, cout in enumerate((width, 2 * width, 4 * width, 8 * width)):
            stages.append(nn.Sequential(BasicBlock(cin, cout, 1 if i == 0 else 2), BasicBlock(cout, cout, 1)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(torch.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def trained_resnet(seed: int = 0) -> ResNet18:
    """Running statistics that differ from a fresh module's (one training-mode pass), then eval mode."""
    model = ResNet18(seed)
    with torch.no_grad():
        model.train()(torch.randn(4, 3, 32, 32, generator=gen(seed + 10)))
    return model.eval()


def test_resnet18_shaped_conv_net_with_batchnorm(tmp_path):
    images = torch.randn(2, 3, 32, 32, generator=gen(4))
    model = trained_resnet()
    p = c.capture(model)
    assert len(p.species.names) == 62 and "layer2.0.downsample.1.running_mean" in p.species.buffer_names
    c.apply_matches_module(p, model, (images,))
    pop = c.population(p)
    c.vmap_matches_loop(pop, (images,))
    c.vmap_grad_matches_autograd(pop, squared(), (images,))
    c.merges_match_hand_computation(p, list(nf.unstack(pop)))
    c.checkpoint_round_trips(tmp_path, pop, lambda: ResNet18(1))
    c.nyto_wrapping_matches(trained_resnet(), p, (images,))


def test_resnet_training_mode_returns_running_statistics_and_never_writes_the_species():
    images = torch.randn(4, 3, 32, 32, generator=gen(5))
    model = trained_resnet()
    p = nf.particle(model)
    before = {n: b.clone() for n, b in p.species.buffers.items()}
    out, stats = nf.apply_with_buffers(p, None, (images,), training=True)
    reference = trained_resnet().train()
    want = reference(images)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    for name, buf in reference.named_buffers():
        torch.testing.assert_close(stats[name], buf, rtol=1e-5, atol=1e-6)
    assert all(tensor_equal(p.species.buffers[n], b) for n, b in before.items())
    pop = c.population(p)
    _, per_member = nf.vmap_apply_with(pop, (images,), training=True)
    for i, q in enumerate(nf.unstack(pop)):
        _, own = nf.apply_with_buffers(q, None, (images,), training=True)
        torch.testing.assert_close(per_member["bn1.running_mean"][i], own["bn1.running_mean"], rtol=1e-5, atol=1e-6)
    assert all(tensor_equal(p.species.buffers[n], b) for n, b in before.items())


# -- parametrisations --------------------------------------------------------


def normed(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(weight_norm(nn.Linear(4, 6)), nn.Tanh(), nn.Linear(6, 2))


def test_weight_norm_particles_hold_magnitude_and_direction(tmp_path):
    x = torch.randn(3, 4, generator=gen(6))
    model = normed()
    p = c.capture(model)
    # a particle holds the parametrisation's originals, not the computed weight
    assert p.species.names[:3] == ("0.bias", "0.parametrizations.weight.original0", "0.parametrizations.weight.original1")
    g, v = p.params["0.parametrizations.weight.original0"], p.params["0.parametrizations.weight.original1"]
    torch.testing.assert_close(g * v / v.norm(dim=1, keepdim=True), model[0].weight.detach())
    c.apply_matches_module(p, model, (x,))
    pop = c.population(p)
    with pytest.warns(UserWarning, match=FALLBACK + ".*_weight_norm"):  # correct, through torch's per-member loop
        c.vmap_matches_loop(pop, (x,))
    with pytest.warns(UserWarning, match=FALLBACK):
        c.vmap_grad_matches_autograd(pop, squared(), (x,))
    c.merges_match_hand_computation(p, list(nf.unstack(pop)))  # merges g and v, not the weight
    c.checkpoint_round_trips(tmp_path, pop, lambda: normed(1))
    c.nyto_wrapping_matches(normed(), p, (x,))


def spectral(seed: int = 0, *, training: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(spectral_norm(nn.Linear(4, 6)), nn.Tanh(), nn.Linear(6, 2))
    return model.train(training)


def test_spectral_norm_in_eval_mode(tmp_path):
    x = torch.randn(3, 4, generator=gen(7))
    model = spectral()
    p = c.capture(model)
    assert p.species.names[:2] == ("0.bias", "0.parametrizations.weight.original")
    assert p.species.buffer_names == ("0.parametrizations.weight.0._u", "0.parametrizations.weight.0._v")
    c.apply_matches_module(p, model, (x,))
    pop = c.population(p)
    c.vmap_matches_loop(pop, (x,))
    c.vmap_grad_matches_autograd(pop, squared(), (x,))
    c.merges_match_hand_computation(p, list(nf.unstack(pop)))
    c.checkpoint_round_trips(tmp_path, pop, lambda: spectral(1))
    c.nyto_wrapping_matches(spectral(), p, (x,))


def test_spectral_norm_in_training_mode_writes_its_buffers():
    x = torch.randn(3, 4, generator=gen(8))
    model = spectral(training=True)
    p = nf.particle(model)
    u = p.species.buffers["0.parametrizations.weight.0._u"].clone()
    c.apply_matches_module(p, model, (x,))  # one power iteration each, from the same u
    assert torch.equal(p.species.buffers["0.parametrizations.weight.0._u"], u)  # apply wrote a copy
    assert not torch.equal(model[0].parametrizations.weight[0]._u, u)  # the module wrote its own
    # the power iteration writes u and v in place (out=): torch.func cannot batch that
    with pytest.raises(RuntimeError, match="Batching rule not implemented for aten::div.out"):
        nf.vmap_apply(nf.stack([p, p * 2]), x)
