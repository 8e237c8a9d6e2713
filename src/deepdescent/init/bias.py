"""Bias and scale initialization of §8.4."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def _check_probabilities(name: str, c: Tensor, size: int) -> Tensor:
    c = torch.as_tensor(c, dtype=torch.float64).flatten()
    if c.numel() != size:
        raise ValueError(f"{name} has {c.numel()} entries, the bias has {size}")
    if not torch.isfinite(c).all() or (c <= 0).any() or (c > 1).any():
        raise ValueError(f"{name} must hold probabilities in (0, 1]; got min {c.min().item()}, max {c.max().item()}")
    return c


def softmax_marginals_(bias: Tensor, marginals: Tensor) -> Tensor:
    """Set an output bias so that softmax(b) = c, the class marginals (b = log c − mean log c).

    With zero weights the network then predicts the marginal distribution of the classes.
    """
    c = _check_probabilities("marginals", marginals, bias.numel())
    if abs(c.sum().item() - 1.0) > 1e-6:
        raise ValueError(f"marginals must sum to 1 (a distribution over classes); they sum to {c.sum().item()}")
    b = c.log() - c.log().mean()
    with torch.no_grad():
        return bias.copy_(b.reshape(bias.shape).to(bias.dtype))


def class_marginals(targets: Tensor, num_classes: int) -> Tensor:
    """Empirical class frequencies of integer ``targets`` (each class must occur)."""
    counts = torch.bincount(targets.flatten().long(), minlength=num_classes).double()
    if (counts == 0).any():
        missing = (counts == 0).nonzero().flatten().tolist()
        raise ValueError(f"classes {missing} never occur in targets: their marginal is 0 and log 0 = −∞")
    return counts / counts.sum()


def reconstruction_marginals_(bias: Tensor, data: Tensor, output: str = "sigmoid") -> Tensor:
    """Set a reconstruction layer's bias to match the marginal mean of the data x (per feature):
    b = logit(mean x) for a sigmoid output (means clamped into [1e-6, 1 − 1e-6]), b = mean x for a
    linear output."""
    mean = data.reshape(-1, bias.numel()).double().mean(0)
    if output == "sigmoid":
        mean = mean.clamp(1e-6, 1 - 1e-6)
        value = torch.log(mean) - torch.log1p(-mean)
    elif output == "linear":
        value = mean
    else:
        raise ValueError(f"invalid output={output!r}: must be 'sigmoid' or 'linear'")
    with torch.no_grad():
        return bias.copy_(value.reshape(bias.shape).to(bias.dtype))


def relu_bias_(bias: Tensor, value: float = 0.1) -> Tensor:
    """ReLU hidden units: a small positive bias (0.1) so that most units start active (§8.4)."""
    with torch.no_grad():
        return bias.fill_(value)


def lstm_forget_bias_(lstm: nn.LSTM | nn.LSTMCell, value: float = 1.0) -> nn.Module:
    """Set the forget-gate bias of an LSTM to ``value`` (1: Jozefowicz et al. 2015), so the gate
    starts near 1. torch orders the gates (input, forget, cell, output) and adds ``bias_ih`` and
    ``bias_hh``: the forget block of ``bias_ih`` gets ``value``, that of ``bias_hh`` gets 0."""
    found = False
    with torch.no_grad():
        for name, p in lstm.named_parameters():
            if name.startswith("bias_ih") or name.startswith("bias_hh"):
                hidden = p.numel() // 4
                p[hidden:2 * hidden] = value if name.startswith("bias_ih") else 0.0
                found = True
    if not found:
        raise ValueError("this LSTM has no biases (bias=False): there is no forget-gate bias to set")
    return lstm


def variance_(param: Tensor, value: float | Tensor = 1.0) -> Tensor:
    """Variance or precision parameters: 1, or the marginal variance of the output (§8.4)."""
    with torch.no_grad():
        return param.copy_(torch.as_tensor(value, dtype=param.dtype).expand_as(param))
