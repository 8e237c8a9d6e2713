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
    """Algorithm 8.7; ``amsgrad``: r̂ from the running maximum of r (Reddi et al. 2018, as torch)."""

    def __init__(self, theta, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False):
        (self.rho1, self.rho2), self.delta, self.wd, self.amsgrad = betas, eps, weight_decay, amsgrad
        self.s = [torch.zeros_like(t) for t in theta]
        self.r = [torch.zeros_like(t) for t in theta]
        self.r_max = [torch.zeros_like(t) for t in theta]
        self.t = 0

    def step(self, theta, grad, lr):
        g = _wd(grad(theta), theta, self.wd)
        self.t += 1
        for i in range(len(theta)):
            self.s[i] = self.rho1 * self.s[i] + (1 - self.rho1) * g[i]
            self.r[i] = self.rho2 * self.r[i] + (1 - self.rho2) * g[i] * g[i]
            self.r_max[i] = torch.maximum(self.r_max[i], self.r[i])
            s_hat = self.s[i] / (1 - self.rho1**self.t)
            r_hat = (self.r_max[i] if self.amsgrad else self.r[i]) / (1 - self.rho2**self.t)
            theta[i] += -lr * s_hat / (r_hat.sqrt() + self.delta)


class AdamW(Adam):
    """Loshchilov & Hutter (2019), Algorithm 2: θ ← θ − ελθ, then Adam without λ in g."""

    def __init__(self, theta, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, amsgrad=False):
        super().__init__(theta, betas, eps, 0.0, amsgrad)
        self.decoupled = weight_decay

    def step(self, theta, grad, lr):
        g = grad(theta)  # at θ_t, before the decay
        for i in range(len(theta)):
            theta[i] -= lr * self.decoupled * theta[i]
        super().step(theta, lambda points: g, lr)


class Adamax:
    """Kingma & Ba (2014) §7.1, with torch's δ added to |g|: u ← max(ρ₂u, |g| + δ)."""

    def __init__(self, theta, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        (self.rho1, self.rho2), self.delta, self.wd = betas, eps, weight_decay
        self.s = [torch.zeros_like(t) for t in theta]
        self.u = [torch.zeros_like(t) for t in theta]
        self.t = 0

    def step(self, theta, grad, lr):
        g = _wd(grad(theta), theta, self.wd)
        self.t += 1
        for i in range(len(theta)):
            self.s[i] = self.rho1 * self.s[i] + (1 - self.rho1) * g[i]
            self.u[i] = torch.maximum(self.rho2 * self.u[i], g[i].abs() + self.delta)
            theta[i] -= lr / (1 - self.rho1**self.t) * self.s[i] / self.u[i]


class RAdam:
    """Liu et al. (2020), Algorithm 2 (δ added to √r, as torch)."""

    def __init__(self, theta, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        (self.rho1, self.rho2), self.delta, self.wd = betas, eps, weight_decay
        self.s = [torch.zeros_like(t) for t in theta]
        self.r = [torch.zeros_like(t) for t in theta]
        self.t = 0

    def step(self, theta, grad, lr):
        g = _wd(grad(theta), theta, self.wd)
        self.t += 1
        t, b1, b2 = self.t, self.rho1, self.rho2
        rho_inf = 2 / (1 - b2) - 1
        rho_t = rho_inf - 2 * t * b2**t / (1 - b2**t)
        for i in range(len(theta)):
            self.s[i] = b1 * self.s[i] + (1 - b1) * g[i]
            self.r[i] = b2 * self.r[i] + (1 - b2) * g[i] * g[i]
            s_hat = self.s[i] / (1 - b1**t)
            if rho_t > 5:
                rect = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
                ell = math.sqrt(1 - b2**t) / (self.r[i].sqrt() + self.delta)
                theta[i] -= lr * rect * s_hat * ell
            else:
                theta[i] -= lr * s_hat


class NAdam:
    """Dozat (2016) with torch.optim.NAdam's schedule μₜ = ρ₁(1 − ½·0.96^(tψ))."""

    def __init__(self, theta, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, momentum_decay=4e-3):
        (self.rho1, self.rho2), self.delta, self.wd, self.psi = betas, eps, weight_decay, momentum_decay
        self.s = [torch.zeros_like(t) for t in theta]
        self.r = [torch.zeros_like(t) for t in theta]
        self.t, self.mu_product = 0, 1.0

    def step(self, theta, grad, lr):
        g = _wd(grad(theta), theta, self.wd)
        self.t += 1
        t, b1, b2 = self.t, self.rho1, self.rho2
        mu = b1 * (1 - 0.5 * 0.96 ** (t * self.psi))
        mu_next = b1 * (1 - 0.5 * 0.96 ** ((t + 1) * self.psi))
        self.mu_product *= mu
        for i in range(len(theta)):
            self.s[i] = b1 * self.s[i] + (1 - b1) * g[i]
            self.r[i] = b2 * self.r[i] + (1 - b2) * g[i] * g[i]
            denom = (self.r[i] / (1 - b2**t)).sqrt() + self.delta
            theta[i] -= lr * (1 - mu) / (1 - self.mu_product) * g[i] / denom
            theta[i] -= lr * mu_next / (1 - self.mu_product * mu_next) * self.s[i] / denom


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


#: The reference of every registered algorithm, by its name (a test checks none is missing).
REFERENCES = {"SGD": Sgd, "AdaGrad": AdaGrad, "RMSProp": RmsProp, "Adam": Adam, "AdaDelta": AdaDelta,
              "AdamW": AdamW, "Adamax": Adamax, "RAdam": RAdam, "NAdam": NAdam}


def linear_decay(k: int, lr0: float, tau: int, final_factor: float) -> float:
    """Eq. 8.14: ε_k = (1 − α)ε₀ + α ε_τ with α = k/τ, constant after τ."""
    alpha = min(k / tau, 1.0)
    return (1 - alpha) * lr0 + alpha * final_factor * lr0


assert math.isclose(linear_decay(5, 1.0, 10, 0.0), 0.5)
