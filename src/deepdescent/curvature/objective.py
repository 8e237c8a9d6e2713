"""A functional objective oracle on ``torch.func``: loss, gradient, Hessian-vector and
Gauss–Newton-vector products of ``loss_fn(model(inputs), targets)`` with respect to the
parameters, for any ``nn.Module`` (no layer whitelist)."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vjp


class ModelObjective:
    """J(θ) = loss_fn(model(inputs; θ), targets) as pure functions of the parameters θ.

    ``mode`` chooses BatchNorm/Dropout semantics explicitly: ``"train"`` (batch statistics; the
    running statistics of the model are *not* updated by the oracle's evaluations) or ``"eval"``
    (running statistics). Parameters are the model's trainable ones, as a dict name → tensor;
    vectors ``v`` are dicts of the same structure.

    HVPs are forward-over-reverse (``jvp`` of ``grad``): one forward-mode pass through the backward
    graph, about 2–3× the cost of a gradient. Gauss–Newton products are Jᵀ(∇²_z L)(J v) with J v
    by ``jvp`` and Jᵀ by ``vjp``; positive semi-definite for convex losses of z.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], inputs: Tensor,
                 targets: Tensor, *, mode: str = "train", seed: int | None = None) -> None:
        if mode not in ("train", "eval"):
            raise ValueError(f"invalid mode={mode!r}: must be 'train' or 'eval' (BatchNorm/Dropout semantics)")
        self.model, self.loss_fn, self.inputs, self.targets, self.mode = model, loss_fn, inputs, targets, mode
        #: train mode: every forward pass draws its dropout masks from this seed, so that J, ∇J and
        #: the products are of one function (else each product sees other masks: not symmetric)
        self.seed = seed
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        #: set when this objective's loss has no forward-mode second derivative (see hvp)
        self.reverse_only = False

    def params(self) -> dict[str, Tensor]:
        """The model's current trainable parameters (detached)."""
        named = dict(self.model.named_parameters())
        return {n: named[n].detach() for n in self.names}

    def _buffers(self) -> dict[str, Tensor]:
        # copies: a train-mode forward would otherwise update the running statistics
        return {n: b.clone() for n, b in self.model.named_buffers()}

    def output(self, params: dict[str, Tensor]) -> Tensor:
        was_training = self.model.training
        self.model.train(self.mode == "train")
        try:
            with self._masks():
                return functional_call(self.model, (params, self._buffers()), (self.inputs,))
        finally:
            self.model.train(was_training)

    @contextlib.contextmanager
    def _masks(self) -> Iterator[None]:
        """Train mode with a seed: the forward pass inside draws its dropout masks from the seed."""
        if self.seed is None or self.mode != "train":
            yield
            return
        with seeded(self.model, self.seed):
            yield

    def loss(self, params: dict[str, Tensor] | None = None) -> Tensor:
        return self.loss_fn(self.output(self.params() if params is None else params), self.targets)

    def gradient(self, params: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        return grad(self.loss)(self.params() if params is None else params)

    def hvp(self, v: dict[str, Tensor], params: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        """H v, forward-over-reverse."""
        p = self.params() if params is None else params
        return _second_derivative(self, self.loss, p, v)

    def hvp_operator(self, params: dict[str, Tensor] | None = None
                     ) -> tuple[Callable[[dict[str, Tensor]], dict[str, Tensor]], dict[str, Tensor], Tensor]:
        """(v ↦ H v, g, J) for many products at one θ: the gradient is taken once with its graph, and
        each product is one backward pass through that graph (the vector-Jacobian product of g
        with v, H being symmetric: reverse-over-reverse on the kept graph, as PyHessian) — no
        forward pass or re-trace per product. One forward pass, so in train mode every product sees
        the same dropout masks: one fixed symmetric operator."""
        named = dict(self.model.named_parameters())
        direct = params is None and next(self.model.buffers(), None) is None
        if direct:  # no buffers to protect: the model's own parameters, without functional_call's swaps
            p = {n: named[n] for n in self.names}
        else:
            p = {n: t.detach().requires_grad_(True) for n, t in (self.params() if params is None else params).items()}
        leaves = list(p.values())
        with torch.enable_grad():
            loss = self._direct_loss() if direct else self.loss(p)
            grads = torch.autograd.grad(loss, leaves, create_graph=True, allow_unused=True)
        grads = tuple(torch.zeros_like(t) if g is None else g for t, g in zip(leaves, grads))
        live = [i for i, g in enumerate(grads) if g.requires_grad]  # the rest: the loss is linear there

        def op(v: dict[str, Tensor]) -> dict[str, Tensor]:
            out = [torch.zeros_like(t) for t in leaves]
            if live:
                with torch.enable_grad():
                    products = torch.autograd.grad([grads[i] for i in live], leaves,
                                                   grad_outputs=[v[self.names[i]] for i in live],
                                                   retain_graph=True, allow_unused=True)
                out = [o if h is None else h for o, h in zip(out, products)]
            return dict(zip(self.names, out))

        def many(v: dict[str, Tensor]) -> dict[str, Tensor]:  # a leading batch dimension: one vmapped pass
            out = [torch.zeros((next(iter(v.values())).shape[0], *t.shape), dtype=t.dtype, device=t.device)
                   for t in leaves]
            if live:
                with torch.enable_grad():
                    products = torch.autograd.grad([grads[i] for i in live], leaves,
                                                   grad_outputs=[v[self.names[i]] for i in live],
                                                   retain_graph=True, allow_unused=True, is_grads_batched=True)
                out = [o if h is None else h for o, h in zip(out, products)]
            return dict(zip(self.names, out))
        op.many = many  # type: ignore[attr-defined]
        return op, {n: g.detach() for n, g in zip(p, grads)}, loss.detach()

    def _direct_loss(self) -> Tensor:
        was_training = self.model.training
        self.model.train(self.mode == "train")
        try:
            with self._masks():
                return self.loss_fn(self.model(self.inputs), self.targets)
        finally:
            self.model.train(was_training)

    def gnvp(self, v: dict[str, Tensor], params: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        """G v = Jᵀ (∇²_z L) J v (Gauss–Newton)."""
        p = self.params() if params is None else params
        z, jv = jvp(self.output, (p,), (v,))
        hjv = _second_derivative(self, lambda out: self.loss_fn(out, self.targets), z.detach(), jv)
        _, pullback = vjp(self.output, p)
        return pullback(hjv)[0]


def cuda_devices(model: nn.Module) -> list[int]:
    """The CUDA devices holding the model's parameters (whose random states a fork must keep)."""
    return sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})


@contextlib.contextmanager
def seeded(model: nn.Module, seed: int) -> Iterator[None]:
    """Inside: the random streams the model draws from (CPU, and the CUDA devices holding its
    parameters) restarted from ``seed``; after: as they were. ``torch.manual_seed`` would also seed
    every other backend: 80 µs a call, spent at every product of a measurement."""
    placed = {(p.device.type, p.device.index or 0) for p in model.parameters()}
    devices = sorted(i for kind, i in placed if kind == "cuda")
    elsewhere = {kind for kind, _ in placed} - {"cpu", "cuda"}
    with torch.random.fork_rng(devices=devices):
        if elsewhere:  # mps, xpu, …: their generators too, as torch.manual_seed does
            torch.manual_seed(seed)
        else:
            torch.default_generator.manual_seed(seed)
            for d in devices:
                torch.cuda.default_generators[d].manual_seed(seed)
        yield


def _second_derivative(owner: ModelObjective, f: Callable, x: Any, v: Any) -> Any:
    """∇²f(x) v: forward-over-reverse (``jvp`` of ``grad``), falling back to reverse-over-reverse
    (``vjp`` of ``grad``) for losses whose backward lacks forward-mode support — e.g.
    ``mse_loss`` in torch 2.13 ("ZeroTensors are immutable"). Same value, about 1.5× the cost."""
    if not owner.reverse_only:
        try:
            return jvp(grad(f), (x,), (v,))[1]
        except (RuntimeError, NotImplementedError) as err:
            owner.reverse_only = True
            warnings.warn(f"forward-over-reverse failed ({str(err).splitlines()[0][:80]}); using reverse-over-reverse "
                          "for this objective", RuntimeWarning, stacklevel=3)
    return vjp(grad(f), x)[1](v)[0]
