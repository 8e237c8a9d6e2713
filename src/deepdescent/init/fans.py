"""Fan-in m and fan-out n of a weight tensor (§8.4: "a fully connected layer with m inputs and n
outputs")."""

from __future__ import annotations

import math

from torch import Tensor


def fans(weight: Tensor | tuple[int, ...], *, transposed: bool = False, gates: int = 1) -> tuple[int, int]:
    """(m, n): inputs and outputs of one unit's weights.

    * Linear ``(out, in)``: m = in, n = out.
    * ConvNd ``(out, in/groups, *k)``: m = in/groups · ∏k, n = out · ∏k (torch's convention).
    * ConvTransposeNd ``(in, out/groups, *k)``: pass ``transposed=True``.
    * RNN/LSTM/GRU ``weight_ih``/``weight_hh`` ``(gates·hidden, in)``: pass ``gates`` (LSTM 4,
      GRU 3): each gate is its own matrix with n = hidden.
    """
    shape = tuple(weight.shape) if isinstance(weight, Tensor) else tuple(weight)
    if len(shape) < 2:
        raise ValueError(
            f"fans need a weight with at least 2 dimensions (outputs, inputs, ...); got shape {shape}. "
            "Biases and other 1-d parameters have no fan: use deepdescent.init.bias schemes"
        )
    if gates < 1 or shape[0] % gates:
        raise ValueError(f"invalid gates={gates}: must be >= 1 and divide the first dimension ({shape[0]})")
    receptive = math.prod(shape[2:])
    out_dim, in_dim = (shape[1], shape[0]) if transposed else (shape[0], shape[1])
    return in_dim * receptive, (out_dim // gates) * receptive
