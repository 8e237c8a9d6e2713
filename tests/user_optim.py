"""A user's own optimizer, for the tests that race it by import path and by entry point: sign
descent (θ ← θ − ε·sign(g)), written the way any torch.optim subclass is."""

from __future__ import annotations

import torch


class SignSGD(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 0.01, momentum: float = 0.0) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad.sign(), alpha=-group["lr"])
        return loss


class ClosureOnly(torch.optim.Optimizer):
    """Needs a closure, like torch.optim.LBFGS: a gradient step at a fixed rate per closure call."""

    def __init__(self, params, lr: float = 0.05) -> None:
        super().__init__(params, dict(lr=lr))

    @torch.no_grad()
    def step(self, closure):
        with torch.enable_grad():
            loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-group["lr"])
        return loss


class WithModes(SignSGD):
    """Like Schedule-Free: ``train()`` before steps, ``eval()`` before the model is evaluated; a
    step in eval mode is a user error (it raises here)."""

    log: list[str] = []

    def __init__(self, params, lr: float = 0.01) -> None:
        super().__init__(params, lr=lr)
        self.mode = "eval"

    def train(self) -> None:
        self.mode = "train"
        WithModes.log.append("train")

    def eval(self) -> None:
        self.mode = "eval"
        WithModes.log.append("eval")

    def step(self, closure=None):
        assert self.mode == "train", "step() in eval mode"
        return super().step(closure)


class KilledOnce(SignSGD):
    """Sign descent whose first step, in the first process that takes it, kills that process
    (kill -9: a worker the out-of-memory killer took); the file named by DEEPDESCENT_TEST_KILLED
    records it. ``Raises`` fails at construction (a foreign optimizer with a bug)."""

    @torch.no_grad()
    def step(self, closure=None):
        import os
        import signal

        marker = os.environ["DEEPDESCENT_TEST_KILLED"]
        if not os.path.exists(marker):
            with open(marker, "w") as f:
                f.write(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return super().step(closure)


class Raises(SignSGD):
    def __init__(self, params, lr: float = 0.01) -> None:
        raise RuntimeError("this optimizer is broken")
