"""Your own problem in the lab: a :class:`Workload` names a model, its data, its loss and its budget;
``deepdescent bench --problem package.module:name`` races the optimizers on it under the lab's
protocol (equal budgets in gradient-equivalents, a learning-rate grid per optimizer, seeds,
targets, resume, several processes on one storage).

``name`` is a :class:`Workload` or a function of no arguments that returns one (called once per
process: load the data there). A package can also register it under the entry-point group
``deepdescent.problems``::

    [project.entry-points."deepdescent.problems"]
    mine = "package.module:name"

The model is built by ``model()`` after ``torch.manual_seed(seed)``: a run's seed varies the
initialization and the minibatch order, never the data. Every member of a race optimizes the same
objective (as DeepOBS's test problems and AlgoPerf's workloads fix the data and vary the seed).
Models that ``torch.func`` can batch (no in-place buffer updates such as batch norm's running
statistics, no data-dependent control flow) race with all members stacked; others member by
member, which the log says.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

#: The entry-point group under which packages register workloads.
ENTRY_POINTS = "deepdescent.problems"


class WorkloadError(ValueError):
    """A workload that cannot race: the message names it, what is wrong and what is expected."""


@dataclass(frozen=True)
class Workload:
    """A model, its data and its loss, as the lab races them.

    Attributes:
        model: builds the model (an ``nn.Module`` with trainable parameters); the lab seeds torch
            first, so that the seed of a run varies its initialization.
        train: (inputs, targets), tensors with the same first dimension (the examples); or a
            ``torch.utils.data.DataLoader`` (any iterable of (inputs, targets) batches) or a map-style
            ``Dataset`` of (input, target) pairs, read once, whole, when the workload is checked: the
            lab draws its own minibatches (seeded, the same for every optimizer), never the loader's.
        loss: ``loss(output, targets)`` averaged over the batch, a scalar tensor.
        batch_size: examples per minibatch of the first-order methods (second-order methods and
            L-BFGS take the full batch, as on the built-in problems); None takes a DataLoader's.
        budget: compute every optimizer gets, in gradient-equivalents (epochs): one full-batch
            gradient is 1, a minibatch gradient ``batch_size / n``, a curvature-vector product 2.
        test: held-out (inputs, targets) for the test loss (and accuracy); None evaluates on
            the training data (said in the report).
        classification: the outputs are class scores: the report shows accuracy too.
        floor: the training loss's infimum where known (else 0): targets are set relative to it.
        description: one line for the report.
        challenge: the §8.2 challenge it shows, if one (free text; "" when not stated).
        eval_examples: training examples (the first ones) on which the training loss is recorded
            at each of the 21 points of a run; lower it where a forward pass is costly.
        measure_examples: the measurement batch (the first training examples) of the §8.2
            challenges on the instrumented run of each race (``deepdescent.lab.challenges``): a
            gradient, a curvature product and the noise scale at every point, twelve more
            products where the spectrum is taken.
        metric: the held-out metric, ``metric(outputs, targets)`` → a number (a scalar tensor or a
            float) over a batch, recorded at every point and judged by a held-out target as accuracy
            is for classifiers (e.g. perplexity, an F1 score, a mean absolute error); None: none
            beyond the held-out loss (and accuracy for classifiers).
        metric_name: how the report names it ("metric" when empty).
        lower_is_better: the metric improves downwards (an error); by default upwards (a score).
        stack: the members of a first-order race may train stacked under ``torch.func.vmap``
            (models it cannot batch race member by member anyway); False races them one at a
            time, where stacking is slower (measure it).
    """

    model: Callable[[], nn.Module]
    train: tuple[Tensor, Tensor] | Iterable
    loss: Callable[[Tensor, Tensor], Tensor]
    batch_size: int | None = None
    budget: float = 10.0
    test: tuple[Tensor, Tensor] | Iterable | None = None
    classification: bool = False
    floor: float = 0.0
    description: str = ""
    challenge: str = ""
    eval_examples: int = 1000
    measure_examples: int = 256
    metric: Callable[[Tensor, Tensor], Tensor | float] | None = None
    metric_name: str = ""
    lower_is_better: bool = False
    stack: bool = True


#: The largest budget a workload may ask for (gradient-equivalents): the built-in full suite's
#: longest problem takes 300.
BUDGET_MAX = 100_000


def _pair(name: str, field: str, value: object) -> tuple[Tensor, Tensor]:
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, Tensor) for v in value):
        x, y = value
        if x.dim() > 0 and y.dim() > 0 and len(x) == len(y) > 0:
            return x, y
        got = f"tensors of shapes {tuple(x.shape)} and {tuple(y.shape)}"
    elif isinstance(value, (tuple, list)):
        got = f"a {type(value).__name__} of {', '.join(type(v).__name__ for v in value) or 'nothing'}"
    else:
        got = type(value).__name__
    raise WorkloadError(f"problem {name!r}: {field} must be (inputs, targets), two tensors with the same first "
                        f"dimension (the examples), at least one example; got {got}")


def _number(name: str, field: str, value: object, valid: str, test: Callable[[float], bool]) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not test(float(value)):
        raise WorkloadError(f"problem {name!r}: {field}={value!r}; valid: {valid}")
    return float(value)


#: The most examples a DataLoader or Dataset is read into (the lab holds a workload's data in memory).
MATERIALIZED_MAX = 10_000_000


def _materialized(name: str, field: str, value: object) -> object:
    """A DataLoader or a map-style Dataset of (input, target) pairs as one (inputs, targets) pair
    of tensors, in the dataset's index order (the same in every process, whatever the loader's
    sampler); an iterable of (inputs, targets) batches (an IterableDataset's loader) in its own
    order; anything else as it is (the pair check names it)."""
    if value is None or isinstance(value, (tuple, list, Tensor)):
        return value
    dataset = getattr(value, "dataset", None)  # a DataLoader: its map-style dataset in index order, so that
    if hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__"):  # a shuffling sampler changes nothing
        value = dataset
    if isinstance(value, torch.utils.data.TensorDataset) and len(value.tensors) == 2:
        return value.tensors
    if hasattr(value, "__getitem__") and hasattr(value, "__len__"):  # a map-style Dataset
        if not 0 < len(value) <= MATERIALIZED_MAX:
            raise WorkloadError(f"problem {name!r}: {field} is a dataset of {len(value)} examples; valid: 1 to "
                                f"{MATERIALIZED_MAX:,}")
        pairs = [call(name, f"{field}[{i}]", lambda i=i: value[i]) for i in range(len(value))]
        batches = [(torch.as_tensor(x).unsqueeze(0), torch.as_tensor(y).unsqueeze(0)) for x, y in _pairs(name, field, pairs)]
    elif isinstance(value, Iterable):  # an iterable of batches (an IterableDataset's loader)
        def read() -> list[tuple[Tensor, Tensor]]:
            out, seen = [], 0
            for item in value:
                x, y = _pairs(name, field, [item])[0]
                out.append((torch.as_tensor(x), torch.as_tensor(y)))
                seen += len(out[-1][0])
                if seen > MATERIALIZED_MAX:  # stop reading: the lab holds the data in memory
                    raise WorkloadError(f"problem {name!r}: {field} yields more than {MATERIALIZED_MAX:,} examples")
            return out
        batches = call(name, f"iterating {field}", read)
    else:
        return value
    if not batches:
        raise WorkloadError(f"problem {name!r}: {field} yields no examples")
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


def _pairs(name: str, field: str, items: list) -> list:
    for item in items[:1]:
        if not (isinstance(item, (tuple, list)) and len(item) == 2):
            raise WorkloadError(f"problem {name!r}: {field} yields {type(item).__name__}; expected (inputs, targets) "
                                "pairs")
    return items


def check(name: str, w: object) -> Workload:
    """``w`` as a valid :class:`Workload` (a DataLoader or Dataset read into tensors), or a
    WorkloadError naming what is wrong. Builds the model once (seed 0) and evaluates the loss on
    two training examples."""
    if not isinstance(w, Workload):
        raise WorkloadError(f"problem {name!r} is {type(w).__name__}, not a deepdescent.lab.workload.Workload "
                            "(or a function of no arguments that returns one)")
    loader_batch = getattr(w.train, "batch_size", None)
    w = dataclasses.replace(w, train=_materialized(name, "train", w.train), test=_materialized(name, "test", w.test))
    if w.batch_size is None and isinstance(loader_batch, int):
        w = dataclasses.replace(w, batch_size=loader_batch)
    x, _ = _pair(name, "train", w.train)
    if w.test is not None:
        _pair(name, "test", w.test)
    if isinstance(w.batch_size, bool) or not isinstance(w.batch_size, int) or not 1 <= w.batch_size <= len(x):
        raise WorkloadError(f"problem {name!r}: batch_size={w.batch_size!r}; valid: an integer in "
                            f"[1, {len(x)}] (the training examples; None only with a DataLoader that has one)")
    for field in ("eval_examples", "measure_examples"):
        value = getattr(w, field)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise WorkloadError(f"problem {name!r}: {field}={value!r}; valid: an integer ≥ 1 (at most the training "
                                "examples are used)")
    _number(name, "budget", w.budget, f"a number of gradient-equivalents in (0, {BUDGET_MAX}]",
            lambda v: 0 < v <= BUDGET_MAX)
    _number(name, "floor", w.floor, "a finite number (the training loss's infimum, 0 if unknown)", math.isfinite)
    for field in ("stack", "lower_is_better"):
        if not isinstance(getattr(w, field), bool):
            raise WorkloadError(f"problem {name!r}: {field}={getattr(w, field)!r}; valid: True or False")
    if w.metric is not None and not callable(w.metric):
        raise WorkloadError(f"problem {name!r}: metric is {type(w.metric).__name__}, not callable (or None)")
    for field in ("model", "loss"):
        if not callable(getattr(w, field)):
            raise WorkloadError(f"problem {name!r}: {field} is {type(getattr(w, field)).__name__}, not callable")
    model = build_model(name, w, 0)
    value = evaluate_loss(name, w, model, w.train[0][:2], w.train[1][:2])
    if not math.isfinite(value):
        raise WorkloadError(f"problem {name!r}: the loss at initialization is {value} on two training examples; "
                            "expected a finite number")
    if w.metric is not None:
        evaluate_metric(name, w, model, w.train[0][:2], w.train[1][:2])
    return w


def evaluate_metric(name: str, w: Workload, model: nn.Module, x: Tensor, y: Tensor) -> float:
    """``w.metric(model(x), y)`` as a float, or a WorkloadError naming what it returned."""
    with torch.no_grad():
        out = call(name, "metric(model(inputs), targets)", lambda: w.metric(model(x), y))  # type: ignore[misc]
    if isinstance(out, Tensor) and out.numel() == 1:
        out = float(out)
    if isinstance(out, bool) or not isinstance(out, (int, float)):
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise WorkloadError(f"problem {name!r}: metric(model(inputs), targets) returned {got}; expected a number")
    return float(out)


def call(name: str, what: str, fn: Callable[[], object]) -> object:
    """``fn()``; what the user's code raises becomes one line naming the workload and the call."""
    try:
        return fn()
    except WorkloadError:  # already names the workload and what is wrong
        raise
    except Exception as err:  # noqa: BLE001 - the user's code: any failure is the workload's
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise WorkloadError(f"problem {name!r}: {what} raised {type(err).__name__}: {first}") from None


def build_model(name: str, w: Workload, seed: int) -> nn.Module:
    """``w.model()`` after ``torch.manual_seed(seed)``, checked: a module with trainable parameters."""
    torch.manual_seed(seed)
    model = call(name, "model()", w.model)
    if not isinstance(model, nn.Module):
        raise WorkloadError(f"problem {name!r}: model() returned {type(model).__name__}; expected a torch.nn.Module")
    if not any(p.requires_grad for p in model.parameters()):
        raise WorkloadError(f"problem {name!r}: the model has no trainable parameters (nothing to optimize)")
    return model


def evaluate_loss(name: str, w: Workload, model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        out = call(name, "loss(model(inputs), targets)", lambda: w.loss(model(x), y))
    if not isinstance(out, Tensor) or out.numel() != 1:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise WorkloadError(f"problem {name!r}: loss(model(inputs), targets) returned {shape}; expected a scalar "
                            "tensor (the batch's mean loss)")
    return float(out)


def fingerprint(w: Workload) -> str:
    """12 hex digits that change when a checked workload's data, initial model (seed 0),
    loss function or settings change: its stored results are kept apart from another version's."""
    h = hashlib.sha256()
    tensors = [*w.train, *(w.test or ())]
    torch.manual_seed(0)
    model = w.model()
    tensors += [p.detach() for p in model.parameters()]
    for t in tensors:
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    loss = getattr(w.loss, "__qualname__", type(w.loss).__qualname__)
    settings = (type(model).__qualname__, getattr(w.loss, "__module__", ""), loss, w.batch_size, float(w.budget),
                float(w.floor), w.classification, w.eval_examples, w.measure_examples, w.stack)
    h.update(repr(settings).encode())
    return h.hexdigest()[:12]
