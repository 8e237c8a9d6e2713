"""Initialization (§8.4): statistics, exact structure, determinism, depth behavior, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from deepdescent import init


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("shape,m,n", [((30, 20), 20, 30), ((8, 4, 3, 3), 36, 72), ((12, 5), 5, 12)])
def test_fans(shape, m, n):
    assert init.fans(torch.empty(shape)) == (m, n)


def test_fans_of_transposed_conv_and_rnn_gates():
    assert init.fans(nn.ConvTranspose2d(4, 6, 3).weight, transposed=True) == (4 * 9, 6 * 9)
    assert init.fans(nn.LSTM(10, 7).weight_ih_l0, gates=4) == (10, 7)
    assert init.fans(nn.GRU(10, 7).weight_hh_l0, gates=3) == (7, 7)


def test_uniform_variance_is_one_over_3m():
    w = init.uniform_(torch.empty(400, 250), generator=gen())
    assert w.var().item() == pytest.approx(1 / (3 * 250), rel=0.02)
    assert w.abs().max().item() <= 1 / math.sqrt(250)


def test_normalized_variance_is_two_over_m_plus_n():
    w = init.normalized_(torch.empty(300, 200), generator=gen())
    assert w.var().item() == pytest.approx(2 / 500, rel=0.02)
    assert w.abs().max().item() <= math.sqrt(6 / 500)


@pytest.mark.parametrize("shape", [(20, 20), (30, 10), (10, 30), (16, 3, 3, 3)])
def test_orthogonal_has_orthonormal_rows_or_columns_times_gain(shape):
    g = init.gain("tanh")
    w = init.orthogonal_(torch.empty(shape, dtype=torch.float64), gain=g, generator=gen()).reshape(shape[0], -1)
    rows, cols = w.shape
    prod = w @ w.T if rows <= cols else w.T @ w
    torch.testing.assert_close(prod, g**2 * torch.eye(min(rows, cols), dtype=torch.float64))


def test_orthogonal_per_gate_blocks():
    lstm = nn.LSTM(6, 5)
    init.apply(lstm, "orthogonal", nonlinearity="linear", generator=gen())
    for block in lstm.weight_hh_l0.detach().double().chunk(4):
        torch.testing.assert_close(block @ block.T, torch.eye(5, dtype=torch.float64), atol=1e-6, rtol=0)


@pytest.mark.parametrize("shape,k", [((50, 40), 15), ((8, 6, 3, 3), 15), ((5, 3), 3)])
def test_sparse_has_exactly_k_nonzero_incoming_weights_per_unit(shape, k):
    w = init.sparse_(torch.empty(shape), k, generator=gen())
    assert ((w.reshape(shape[0], -1) != 0).sum(1) == k).all()


def test_sparse_differs_from_torch_which_zeroes_columns():
    w = torch.empty(50, 40)
    torch.nn.init.sparse_(w, sparsity=0.5)
    assert not ((w != 0).sum(1) == 15).all()


def test_random_walk_gain_values():
    assert init.random_walk_gain(100, "linear") == pytest.approx(math.exp(1 / 200))
    assert init.random_walk_gain(100, "relu") == pytest.approx(math.sqrt(2) * math.exp(1.2 / 97.6))
    w = init.random_walk_(torch.empty(500, 400), "relu", generator=gen())
    assert w.std().item() == pytest.approx(init.random_walk_gain(400) / math.sqrt(400), rel=0.02)


def test_same_generator_same_weights():
    def build(seed):
        torch.manual_seed(123)  # the global RNG must not matter
        m = nn.Sequential(nn.Linear(5, 6), nn.Conv1d(2, 3, 2), nn.GRU(4, 3))
        init.apply(m, "orthogonal", generator=gen(seed))
        return [p.detach().clone() for p in m.parameters()]

    a, b, c = build(1), build(1), build(2)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def _activation_stds(scheme, depth=20, width=256):
    torch.manual_seed(0)
    layers = [nn.Linear(width, width) for _ in range(depth)]
    model = nn.Sequential(*[m for layer in layers for m in (layer, nn.Tanh())])
    init.apply(model, scheme, generator=gen(), nonlinearity="tanh")
    x = torch.randn(512, width)
    stds = []
    with torch.no_grad():
        for layer in layers:
            x = torch.tanh(layer(x))
            stds.append(x.std().item())
    return stds


@pytest.mark.parametrize("scheme", ["normalized", "orthogonal"])
def test_deep_tanh_network_keeps_activation_scale(scheme):
    variances = [s**2 for s in _activation_stds(scheme)]
    assert max(variances) / min(variances) < 2.0, variances


def test_uniform_one_over_sqrt_m_shrinks_activations_with_depth():
    variances = [s**2 for s in _activation_stds("uniform")]
    assert variances[-1] < variances[0] / 10, variances


def test_softmax_marginals_reproduce_class_frequencies():
    y = torch.tensor([0] * 50 + [1] * 30 + [2] * 15 + [3] * 5)
    c = init.class_marginals(y, 4)
    b = init.softmax_marginals_(torch.empty(4, dtype=torch.float64), c)
    torch.testing.assert_close(torch.softmax(b, 0), torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64),
                               atol=1e-6, rtol=0)


def test_reconstruction_bias_matches_data_mean():
    x = torch.rand(1000, 8) * torch.linspace(0.1, 0.9, 8)
    b = init.reconstruction_marginals_(torch.empty(8), x, "sigmoid")
    torch.testing.assert_close(torch.sigmoid(b), x.mean(0), atol=1e-6, rtol=0)
    b = init.reconstruction_marginals_(torch.empty(8), x, "linear")
    torch.testing.assert_close(b, x.mean(0))


def test_lstm_forget_gate_bias_is_one():
    lstm = nn.LSTM(3, 4)
    init.apply(lstm, generator=gen())
    total = (lstm.bias_ih_l0 + lstm.bias_hh_l0).detach()
    assert torch.equal(total, torch.tensor([0.0] * 4 + [1.0] * 4 + [0.0] * 8))


def test_relu_bias_and_variance_parameters():
    assert torch.equal(init.relu_bias_(torch.empty(3)), torch.full((3,), 0.1))
    assert torch.equal(init.variance_(torch.empty(2), 1.0), torch.ones(2))


def test_apply_reports_what_it_did_not_treat():
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 2), nn.LayerNorm(2))
    model.register_parameter("temperature", nn.Parameter(torch.ones(())))
    report = init.apply(model, "sparse", sparse_k=3)
    assert set(report.untreated) == {"0.weight", "temperature"}
    assert report.treated["1.weight"] == "sparse" and report.treated["2.weight"] == "ones"


def test_scale_by_data_reaches_target_std():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 50), nn.Tanh(), nn.Linear(50, 50), nn.Tanh(), nn.Linear(50, 5))
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                m.weight.mul_(0.01)  # far too small
    report = init.scale_by_data(model, torch.randn(256, 20), target_std=1.0, tol=0.02)
    assert [r.name for r in report] == ["0", "2", "4"]
    assert all(r.converged and abs(r.final_std - 1) <= 0.02 for r in report), report
    assert all(r.scale > 10 for r in report)


def test_from_model_copies_matching_and_reports_the_rest():
    src = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    dst = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 5))
    report = init.from_model(dst, src)
    assert report.copied == ["0.weight", "0.bias"]
    assert [m[0] for m in report.shape_mismatch] == ["2.weight", "2.bias"]
    assert torch.equal(dst[0].weight, src[0].weight)


@pytest.mark.parametrize("call,message", [
    (lambda: init.fans(torch.empty(5)), "at least 2 dimensions"),
    (lambda: init.uniform_(torch.empty(3)), "at least 2 dimensions"),
    (lambda: init.sparse_(torch.empty(4, 10), 11), r"k=11.*\[1, 10\]"),
    (lambda: init.sparse_(torch.empty(4, 10), 0), "k=0"),
    (lambda: init.gain("swish"), "nonlinearity='swish'"),
    (lambda: init.apply(nn.Linear(2, 2), "he"), "weights='he'"),
    (lambda: init.softmax_marginals_(torch.empty(3), torch.tensor([0.5, 0.5])), "2 entries"),
    (lambda: init.softmax_marginals_(torch.empty(2), torch.tensor([0.0, 1.0])), "probabilities"),
    (lambda: init.class_marginals(torch.tensor([0, 0, 2]), 3), r"classes \[1\] never occur"),
    (lambda: init.fans(torch.empty(10, 3), gates=4), "gates=4"),
])
def test_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()
