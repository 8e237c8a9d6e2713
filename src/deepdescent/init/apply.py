"""Initialize every layer of any model with the schemes of §8.4, and say what was done."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from deepdescent.init import bias as _bias
from deepdescent.init import schemes

WEIGHT_SCHEMES = ("uniform", "normalized", "orthogonal", "sparse", "random_walk")
_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_RNN_GATES = {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1, nn.LSTMCell: 4, nn.GRUCell: 3, nn.RNNCell: 1}


@dataclass
class InitReport:
    """``treated``: parameter name → what was done; ``untreated``: parameters left as they were."""

    treated: dict[str, str] = field(default_factory=dict)
    untreated: list[str] = field(default_factory=list)


def _weight(w: Tensor, scheme: str | Callable, generator, *, nonlinearity: str, sparse_k: int,
            transposed: bool = False, gates: int = 1) -> str:
    if callable(scheme):
        scheme(w, generator)
        return getattr(scheme, "__name__", "custom")
    if scheme == "uniform":
        schemes.uniform_(w, generator=generator, transposed=transposed, gates=gates)
    elif scheme == "normalized":
        schemes.normalized_(w, generator=generator, transposed=transposed, gates=gates, gain=schemes.gain(nonlinearity))
    elif scheme == "orthogonal":
        schemes.orthogonal_(w, gain=schemes.gain(nonlinearity), generator=generator, gates=gates)
    elif scheme == "sparse":
        schemes.sparse_(w, min(sparse_k, w[0].numel()), generator=generator)
    else:
        schemes.random_walk_(w, "relu" if nonlinearity == "relu" else "linear", generator=generator)
    return scheme


def apply(
    model: nn.Module,
    weights: str | Callable[[Tensor, torch.Generator | None], None] = "normalized",
    biases: str | float = "zeros",
    *,
    generator: torch.Generator | None = None,
    nonlinearity: str = "tanh",
    sparse_k: int = 15,
    lstm_forget_bias: float | None = 1.0,
) -> InitReport:
    """Initialize every Linear, ConvNd, ConvTransposeNd, RNN/LSTM/GRU (each gate block on its own)
    and normalization layer of ``model``, reproducibly from ``generator``.

    Args:
        weights: one of ``uniform`` (U(±1/√m)), ``normalized`` (eq. 8.23, its bound times the gain of
            ``nonlinearity``: exactly the book's formula for ``nonlinearity="linear"``; without the
            tanh gain 5/3 the variance of a deep tanh network decays like 1/depth), ``orthogonal``
            (gain for ``nonlinearity``), ``sparse`` (exactly ``sparse_k`` incoming weights per unit, or all
            when a unit has fewer inputs), ``random_walk``; or a callable ``f(weight, generator)``.
        biases: ``zeros``, ``relu`` (0.1, §8.4), or a number.
        lstm_forget_bias: forget-gate bias of LSTMs (1.0, Jozefowicz et al. 2015); None leaves the
            LSTM biases as ``biases`` says.
    Normalization layers get scale 1 and shift 0. Any other parameter (embeddings, custom
    modules' tensors) is left as it was and listed in ``InitReport.untreated``.
    """
    if not callable(weights) and weights not in WEIGHT_SCHEMES:
        raise ValueError(f"unknown weights={weights!r}; valid: {', '.join(WEIGHT_SCHEMES)} or a callable")
    if isinstance(biases, str) and biases not in ("zeros", "relu"):
        raise ValueError(f"unknown biases={biases!r}; valid: 'zeros', 'relu' or a number")
    bias_value = 0.0 if biases == "zeros" else 0.1 if biases == "relu" else float(biases)
    schemes.gain(nonlinearity)  # validates the name
    report = InitReport()
    kw = dict(nonlinearity=nonlinearity, sparse_k=sparse_k)
    with torch.no_grad():
        for mod_name, module in model.named_modules():
            prefix = f"{mod_name}." if mod_name else ""
            own = dict(module.named_parameters(recurse=False))
            if not own:
                continue
            gates = next((g for t, g in _RNN_GATES.items() if isinstance(module, t)), None)
            for name, p in own.items():
                full = prefix + name
                if isinstance(module, _NORMS):
                    p.fill_(1.0 if name == "weight" else 0.0)
                    report.treated[full] = "ones" if name == "weight" else "zeros"
                elif gates is not None and name.startswith("weight"):
                    report.treated[full] = _weight(p, weights, generator, gates=gates, **kw)
                elif name == "weight" and isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
                    report.treated[full] = _weight(p, weights, generator, transposed=isinstance(module, _CONV_T), **kw)
                elif name.startswith("bias") and isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)) or \
                        gates is not None and name.startswith("bias"):
                    p.fill_(bias_value)
                    report.treated[full] = f"constant {bias_value:g}"
                else:
                    report.untreated.append(full)
            if gates == 4 and lstm_forget_bias is not None and any(n.startswith("bias") for n in own):
                _bias.lstm_forget_bias_(module, lstm_forget_bias)
                for n in own:
                    if n.startswith("bias"):
                        report.treated[prefix + n] += f", forget gate {lstm_forget_bias:g}"
    return report
