"""Per-time-step gradients ∂L/∂h_t of recurrent models (§8.2.5, §10.7): exploding or vanishing
gradients at a glance.

``nn.RNN``/``nn.LSTM``/``nn.GRU`` run fused: their output tensor only receives the *direct*
gradient of each step, not the gradient that flows back through h_{t+1}, h_{t+2}, … So while
measuring, each such module is replaced (through a forward hook) by its unrolled equations, the
same parameters and the same values, with a zero "probe" added to every hidden state h_t. The
gradient of the loss with respect to the probe of step t is the total derivative ∂L/∂h_t.

Custom recurrent code marks its hidden states with :func:`mark_hidden` (identity when no
measurement is running).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.nn import functional as F

_MARKED: list[Tensor] | None = None  # probes of mark_hidden during a measurement


def mark_hidden(h: Tensor) -> Tensor:
    """Mark a hidden state of a custom recurrent loop: ``h = mark_hidden(h)`` at each step."""
    if _MARKED is None:
        return h
    probe = torch.zeros_like(h, requires_grad=True)
    _MARKED.append(probe)
    return h + probe


def _cell(module: nn.RNNBase, layer: int, x: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    w_ih, w_hh = getattr(module, f"weight_ih_l{layer}"), getattr(module, f"weight_hh_l{layer}")
    b_ih = getattr(module, f"bias_ih_l{layer}", None) if module.bias else None
    b_hh = getattr(module, f"bias_hh_l{layer}", None) if module.bias else None
    gi, gh = F.linear(x, w_ih, b_ih), F.linear(state[0], w_hh, b_hh)
    if isinstance(module, nn.LSTM):
        i, f, g, o = (gi + gh).chunk(4, dim=-1)
        c = torch.sigmoid(f) * state[1] + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c
    if isinstance(module, nn.GRU):
        ir, iz, in_ = gi.chunk(3, dim=-1)
        hr, hz, hn = gh.chunk(3, dim=-1)
        r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
        n = torch.tanh(in_ + r * hn)
        return ((1 - z) * n + z * state[0],)
    act = torch.tanh if module.nonlinearity == "tanh" else torch.relu
    return (act(gi + gh),)


def unrolled(module: nn.RNNBase, x: Tensor, hx: Tensor | tuple[Tensor, Tensor] | None, probes: list[Tensor]):
    """The module's forward pass, step by step, with a probe on the last layer's h_t."""
    if module.bidirectional or getattr(module, "proj_size", 0):
        raise NotImplementedError("per-step gradients of bidirectional or projected RNNs are not supported")
    batched = x.dim() == 3
    if not batched:
        x = x.unsqueeze(1 if not module.batch_first else 0)
    if module.batch_first:
        x = x.transpose(0, 1)
    steps, batch = x.shape[0], x.shape[1]
    zeros = x.new_zeros(module.num_layers, batch, module.hidden_size)
    lstm = isinstance(module, nn.LSTM)
    if hx is None:
        h0, c0 = zeros, (zeros if lstm else None)
    else:
        h0, c0 = (hx if lstm else (hx, None))
        if not batched:
            h0, c0 = h0.unsqueeze(1), (c0.unsqueeze(1) if c0 is not None else None)
    layer_input, finals_h, finals_c = x, [], []
    for layer in range(module.num_layers):
        state = (h0[layer], c0[layer]) if lstm else (h0[layer],)
        outs = []
        for t in range(steps):
            state = _cell(module, layer, layer_input[t], state)
            if layer == module.num_layers - 1:
                probe = torch.zeros_like(state[0], requires_grad=True)
                probes.append(probe)
                state = (state[0] + probe, *state[1:])
            outs.append(state[0])
        layer_input = torch.stack(outs)
        finals_h.append(state[0])
        if lstm:
            finals_c.append(state[1])
    out = layer_input.transpose(0, 1) if module.batch_first else layer_input
    h_n = torch.stack(finals_h)
    if not batched:
        out, h_n = out.squeeze(1 if not module.batch_first else 0), h_n.squeeze(1)
    if lstm:
        c_n = torch.stack(finals_c)
        return out, (h_n, c_n.squeeze(1) if not batched else c_n)
    return out, h_n


@contextlib.contextmanager
def probing(model: nn.Module) -> Iterator[list[list[Tensor]]]:
    """Inside the block, forward passes of ``model`` record probes: one list per recurrent module
    call (in call order), one probe per time step; the states marked with :func:`mark_hidden`
    form one more list, last (filled in when the block ends)."""
    global _MARKED
    recorded: list[list[Tensor]] = []
    handles = []

    def hook(module: nn.Module, args: tuple, kwargs: dict, output):
        probes: list[Tensor] = []
        recorded.append(probes)
        hx = args[1] if len(args) > 1 else kwargs.get("hx")
        return unrolled(module, args[0], hx, probes)  # type: ignore[arg-type]

    for m in model.modules():
        if isinstance(m, (nn.RNN, nn.LSTM, nn.GRU)):
            handles.append(m.register_forward_hook(hook, with_kwargs=True))
    marked: list[Tensor] = []
    previous, _MARKED = _MARKED, marked
    try:
        yield recorded
    finally:
        _MARKED = previous
        for h in handles:
            h.remove()
        if marked:
            recorded.append(marked)
