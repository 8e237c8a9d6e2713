"""Float64 transcriptions of the algorithm boxes of chapter 8, written from the book (and the
spec) independently of deepdescent: plain per-tensor arithmetic, no foreach, no shared code.

Each reference takes the parameters θ (a list of float64 tensors, updated in place), a gradient
oracle ``grad(points) -> list`` and its hyperparameters; ``lr`` is the learning rate for this step.
"""

from __future__ import annotations

import math

import torch


def _wd(g, theta, wd):
    return [gi + wd * ti for gi, ti in zip(g, theta)]


class Sgd:
    """Algorithms 8.1, 8.2, 8.3 (book velocity v ← αv − εg; θ ← θ + v)."""

    def __init__(self, theta, momentum=0.0, nesterov=False, weight_decay=0.0):
        self.alpha, self.nesterov, self.wd = momentum, nesterov, weight_decay
        self.v = [torch.zeros_like(t) for t in theta]

    def step(self, theta, grad, lr):
        if self.nesterov:
            interim = [t + self.alpha * v for t, v in zip(theta, self.v)]  # θ̃ ← θ + αv
            g = _wd(grad(interim), interim, self.wd)
        else:
            g = _wd(grad(theta), theta, self.wd)
        for i in range(len(theta)):
            if self.alpha == 0.0:
                theta[i] -= lr * g[i]
            else:
                self.v[i] = self.alpha * self.v[i] - lr * g[i]
                theta[i] += self.v[i]


class AdaGrad:
    """Algorithm 8.4."""

    def __init__(self, theta, eps=1e-7, weight_decay=0.0):
        self.delta, self.wd = eps, weight_decay
        self.r = [torch.zeros_like(t) for t in theta]

    def step(self, theta, grad, lr):
        g = _wd(grad(theta), theta, self.wd)
        for i in range(len(theta)):
            self.r[i] = self.r[i] + g[i] * g[i]
            theta[i] += -lr / (self.delta + self.r[i].sqrt()) * g[i]


class RmsProp:
    """Algorithm 8.5; with momentum (§8.5.4); Algorithm 8.6 (Nesterov, no δ)."""

    def __init__(self, theta, rho=0.9, eps=1e-6, momentum=0.0, nesterov=False, weight_decay=0.0):
        self.rho, self.delta, self.alpha, self.nesterov, self.wd = rho, eps, momentum, nesterov, weight_decay
        self.r = [torch.zeros_like(t) for t in theta]
        self.v = [torch.zeros_like(t) for t in theta]

    def step(self, theta, grad, lr):
        if self.nesterov:
            interim = [t + self.alpha * v for t, v in zip(theta, self.v)]
            g = _wd(grad(interim), interim, self.wd)
        else:
            g = _wd(grad(theta), theta, self.wd)
        for i in range(len(theta)):
            self.r[i] = self.rho * self.r[i] + (1 - self.rho) * g[i] * g[i]
            if self.nesterov:
                self.v[i] = self.alpha * self.v[i] - lr / self.r[i].sqrt() * g[i]
                theta[i] += self.v[i]
            elif self.alpha > 0:
                self.v[i] = self.alpha * self.v[i] - lr / (self.delta + self.r[i]).sqrt() * g[i]
                theta[i] += self.v[i]
            else:
                theta[i] += -lr / (self.delta + self.r[i]).sqrt() * g[i]


class Adam:
    """Algorithm 8.7."""

    def __init__(self, theta, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        (self.rho1, self.rho2), self.delta, self.wd = betas, eps, weight_decay
        self.s = [torch.zeros_like(t) for t in theta]
        self.r = [torch.zeros_like(t) for t in theta]
        self.t = 0

    def step(self, theta, grad, lr):
        g = _wd(grad(theta), theta, self.wd)
        self.t += 1
        for i in range(len(theta)):
            self.s[i] = self.rho1 * self.s[i] + (1 - self.rho1) * g[i]
            self.r[i] = self.rho2 * self.r[i] + (1 - self.rho2) * g[i] * g[i]
            s_hat = self.s[i] / (1 - self.rho1**self.t)
            r_hat = self.r[i] / (1 - self.rho2**self.t)
            theta[i] += -lr * s_hat / (r_hat.sqrt() + self.delta)


class AdaDelta:
    """Zeiler (2012), with the step scaled by lr."""

    def __init__(self, theta, rho=0.95, eps=1e-6, weight_decay=0.0):
        self.rho, self.eps, self.wd = rho, eps, weight_decay
        self.eg2 = [torch.zeros_like(t) for t in theta]
        self.edx2 = [torch.zeros_like(t) for t in theta]

    def step(self, theta, grad, lr):
        g = _wd(grad(theta), theta, self.wd)
        for i in range(len(theta)):
            self.eg2[i] = self.rho * self.eg2[i] + (1 - self.rho) * g[i] ** 2
            dx = -((self.edx2[i] + self.eps).sqrt() / (self.eg2[i] + self.eps).sqrt()) * g[i]
            self.edx2[i] = self.rho * self.edx2[i] + (1 - self.rho) * dx**2
            theta[i] += lr * dx


def linear_decay(k: int, lr0: float, tau: int, final_factor: float) -> float:
    """Eq. 8.14: ε_k = (1 − α)ε₀ + α ε_τ with α = k/τ, constant after τ."""
    alpha = min(k / tau, 1.0)
    return (1 - alpha) * lr0 + alpha * final_factor * lr0


assert math.isclose(linear_decay(5, 1.0, 10, 0.0), 0.5)
