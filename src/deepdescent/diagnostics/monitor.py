"""The Monitor: runs instruments on a schedule within an overhead budget, writes to sinks."""

from __future__ import annotations

import contextlib
import logging
import math
import statistics
import time
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from deepdescent.curvature.objective import seeded
from deepdescent.diagnostics import instruments as inst
from deepdescent.diagnostics.sinks import JSONLSink, Sink

#: the cheap tier's share of the budget: enough for ~100 measurements of loss and gradient norms in
#: 3,000 steps of a small model; the rest goes to the instruments that make extra passes
CHEAP_SHARE = 0.15
_log = logging.getLogger("deepdescent.diagnostics")


class Monitor:
    """Attach to any training loop; call :meth:`step` after ``backward()`` and before
    ``optimizer.step()``::

        monitor = Monitor(model, loss_fn, optimizer, log="runs/diag.jsonl")
        for x, y in loader:
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            monitor.step(x, y, loss)
            opt.step()
        monitor.close()

    Args:
        model, loss_fn: any ``nn.Module`` and ``loss_fn(output, target)`` averaging over the batch.
        optimizer: any optimizer (its lr is the ε of the ill-conditioning ratio); optional.
        instruments: instrument instances (default: cheap, ill-conditioning, curvature, noise).
        every: override cadences by instrument name, e.g. ``{"curvature": 50}``.
        budget: the largest slowdown the Monitor may cause, as a fraction (0.10 = 10%): 15% of it
            for the cheap tier, the rest (less its bookkeeping) for the expensive instruments, each
            aimed at 80% (the rest covers what it cannot time). An expensive instrument that is due
            but does not fit waits and retries every step; they take turns (the one measured least
            first). Step 0 measures each once, charged like any other measurement (the schedule
            then waits until the budget has caught up); torch.func's one-time start-up in a
            process (seconds: it imports torch._dynamo) is not charged (``warmup_seconds``).
        mode: ``"train"`` or ``"eval"``: BatchNorm/Dropout semantics of the extra passes the
            instruments make (they never change running statistics).
        log: a JSONL path (shortcut for a :class:`JSONLSink`); sinks: more sinks.
        eval_batch: ``(inputs, targets)`` for the landscape instruments (default: the first batch).
        measure_examples: the expensive instruments' batch of their own: the first this many
            examples of the first batch, the same at every measurement (their values comparable
            over time, and a measurement's cost bounded whatever the minibatch); None: each
            measurement on that step's minibatch.
        seed: measurement t draws its dropout masks from seed + t (the same masks in all its
            passes); the training loop's random stream is left as it was.

    A quantity that cannot be computed for the model warns once, saying why, and is dropped; the
    others go on. ``overhead`` is what the loop pays (see the property); ``measured`` and
    ``postponed`` count measurements and steps waited per instrument, also in the log.
    """

    def __init__(self, model: nn.Module, loss_fn: Any, optimizer: torch.optim.Optimizer | None = None, *,
                 instruments: Sequence[inst.Instrument] | None = None, every: dict[str, int] | None = None,
                 budget: float = 0.10, mode: str = "train", log: str | None = None, sinks: Iterable[Sink] = (),
                 eval_batch: tuple[Tensor, Tensor] | None = None, seed: int = 0,
                 measure_examples: int | None = None) -> None:
        if measure_examples is not None and (isinstance(measure_examples, bool) or not isinstance(measure_examples, int)
                                             or measure_examples < 1):
            raise ValueError(f"invalid measure_examples={measure_examples!r}: an integer ≥ 1, or None (each step's "
                             "minibatch)")
        self.measure_examples = measure_examples
        if not 0 < budget:
            raise ValueError(f"invalid budget={budget!r}: a fraction > 0 (0.10 allows a 10% slowdown)")
        if mode not in ("train", "eval"):
            raise ValueError(f"invalid mode={mode!r}: must be 'train' or 'eval'")
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self.instruments = list(instruments) if instruments is not None else [cls() for cls in inst.DEFAULT]
        self.every = {i.name: i.every for i in self.instruments} | dict(every or {})
        unknown = set(every or {}) - {i.name for i in self.instruments}
        if unknown:
            raise ValueError(f"every= names unknown instruments {sorted(unknown)}; active: {sorted(self.every)}")
        self.budget, self.mode, self.seed = budget, mode, seed
        self.sinks: list[Sink] = list(sinks) + ([JSONLSink(log)] if log else [])
        self.state: dict[str, Any] = {"initial_params": self._snapshot()}
        if eval_batch is not None:
            self.state["eval_batch"] = eval_batch
        self.disabled: dict[str, str] = {}
        self.cost: dict[str, float] = {}
        self.spent = {"cheap": 0.0, "expensive": 0.0}  # seconds inside measurements, per tier
        self.measured = {i.name: 0 for i in self.instruments}
        self._waited = {i.name: 0 for i in self.instruments}  # steps spent waiting, by finished waits
        self._pending: dict[str, int] = {}  # expensive instrument → the step it fell due
        self._next_look = 0  # the first step at which something may be due (steps before return at once)
        self._typical = 0.0
        self.steps = 0
        self.train_seconds = 0.0
        self.monitor_seconds = 0.0
        self._clean: list[float] = []  # the user's step times not right after a measurement (a sample)
        self._after = 0  # user's steps that followed a measurement
        self._after_seconds = 0.0
        self._measured_last = False
        self.warmup_seconds = 0.0  # torch.func's one-time start-up, if this Monitor paid it (step 0)
        self._at_start: dict[str, int] = {}  # measurements at step 0
        self._start = time.perf_counter()
        self._last_return: float | None = None

    def _snapshot(self) -> list[Tensor]:
        return [p.detach().clone() for p in self.model.parameters() if p.requires_grad]

    def _keep_previous(self) -> None:
        """θ_t for the next step's update size, copied into buffers kept from last time (one op)."""
        params = [p.detach() for p in self.model.parameters() if p.requires_grad]
        kept = self.state.get("previous_params")
        if kept is None or [k.shape for k in kept] != [p.shape for p in params]:
            self.state["previous_params"] = [p.clone() for p in params]
        else:
            torch._foreach_copy_(kept, params)

    @property
    def overhead(self) -> float:
        """What the Monitor costs the training loop, as a fraction of the loop without it: its own
        time plus the slowdown of the user's steps right after a measurement (caches it evicted),
        over the plain loop's time estimated from the other steps. torch.func's one-time start-up
        (``warmup_seconds``, paid by the first Monitor of a process) is not included."""
        plain = self._plain_seconds()
        return self._caused_seconds() / plain if plain else 0.0

    @property
    def postponed(self) -> dict[str, int]:
        """Steps each instrument has waited for its turn or for budget, so far."""
        return {n: w + (self.steps - self._pending[n] if n in self._pending else 0) for n, w in self._waited.items()}

    def _typical_step(self) -> float:
        """The median of the user's steps not right after a measurement (refreshed now and then);
        before there is one, the mean of those after one (an overestimate, for a step or two)."""
        if not self._clean:
            return self._after_seconds / self._after if self._after else 0.0
        if not self._typical or self.steps % 64 == 0:
            self._typical = statistics.median(self._clean)
        return self._typical

    def _plain_seconds(self) -> float:
        return self.train_seconds - self._after_seconds + self._after * self._typical_step()

    def _caused_seconds(self) -> float:
        return self.monitor_seconds + max(0.0, self._after_seconds - self._after * self._typical_step())

    def _allowance(self, tier: str) -> float:
        """Seconds a tier may have spent so far: the cheap tier its share of the budget, the
        expensive ones the rest less the bookkeeping (what the Monitor costs outside measurements);
        80% of each, the rest for what it cannot time."""
        plain = self._plain_seconds()
        if tier == "cheap":
            return 0.8 * CHEAP_SHARE * self.budget * plain
        bookkeeping = self._caused_seconds() - self.spent["cheap"] - self.spent["expensive"]
        return 0.8 * ((1 - CHEAP_SHARE) * self.budget * plain - max(bookkeeping, 0.0))

    def _estimate(self, instrument: inst.Instrument) -> float:
        """Its last measured cost; before its first charged run, its gradient count × the typical
        step (a training step is about one gradient evaluation)."""
        if instrument.name in self.cost:
            return self.cost[instrument.name]
        return instrument.gradients * self._typical_step()

    def _choose(self) -> list[inst.Instrument]:
        """What runs at this step: the cheap tier on its cadence within its allowance; expensive
        instruments fall due on their cadence and wait (retrying every step) for their turn: the one
        measured least so far (then the one waiting longest) goes first, and none jumps ahead of it
        while it does not fit the allowance — so cheaper ones cannot take every slot."""
        active = [i for i in self.instruments if i.name not in self.disabled]
        for i in active:
            if i.tier != "cheap" and self.steps % self.every[i.name] == 0 and i.name not in self._pending:
                self._pending[i.name] = self.steps
        chosen = [i for i in active if i.tier == "cheap" and self.steps % self.every[i.name] == 0
                  and self.steps > 0 and self.spent["cheap"] + self._estimate(i) <= self._allowance("cheap")]
        if self.steps == 0:  # every one once at the start, whatever it costs: the schedule catches up
            return chosen + [i for i in active if i.tier != "cheap"]
        planned, allowance = self.spent["expensive"], self._allowance("expensive")
        for name in sorted(self._pending, key=self._turn):
            instrument = next(i for i in active if i.name == name)
            if planned + self._estimate(instrument) > allowance:
                break
            planned += self._estimate(instrument)
            chosen.append(instrument)
        return chosen

    def _turn(self, name: str) -> tuple[int, int]:
        """Whose turn first: the instrument measured least, then the one waiting longest."""
        return self.measured[name], self._pending[name]

    def _plan_next_look(self, active: list[inst.Instrument]) -> None:
        """The next step worth a look: the cadence step at which a cheap instrument will fit its
        allowance (and the step before it, for the update size's snapshot), an expensive one's
        cadence step, or when the allowance may have grown enough for the next in turn — so that
        the steps between cost next to nothing."""
        s = self.steps
        looks = []
        for i in active:
            e = self.every[i.name]
            if i.tier == "cheap":
                wait = self._steps_to_afford("cheap", i)
                nxt = -(-(s + wait) // e) * e  # the first cadence step (from this one) it can afford
                looks += [nxt - 1, nxt] if nxt - 1 >= s else [nxt]
            else:
                looks.append(-(-s // e) * e)
        if self._pending:
            name = min(self._pending, key=self._turn)
            looks.append(s + max(1, self._steps_to_afford("expensive", next(i for i in active if i.name == name))))
        self._next_look = min(looks, default=s + 1_000_000)

    def _steps_to_afford(self, tier: str, instrument: inst.Instrument) -> int:
        """Plain steps until the tier's allowance covers the instrument's estimated cost (0: now;
        at most 1000, after which the plan is looked at again)."""
        deficit = self.spent[tier] + self._estimate(instrument) - self._allowance(tier)
        share = CHEAP_SHARE if tier == "cheap" else 1 - CHEAP_SHARE
        growth = 0.8 * share * self.budget * self._typical_step()  # allowance gained per plain step
        if deficit <= 0:
            return 0
        return 1000 if growth <= 0 else min(1000, math.ceil(deficit / growth))

    def step(self, inputs: Tensor, targets: Tensor, loss: Tensor | float | None = None) -> list[dict[str, Any]]:
        """Measure what is due at this step; returns the records written."""
        now = time.perf_counter()
        self._account_user_step(now)
        if self.steps < self._next_look:  # the common step: nothing can be due, return at once
            self._finish(now, measured=False)
            return []
        due = self._choose()
        snapshot = any(i.tier == "cheap" and i.name not in self.disabled and (self.steps + 1) % self.every[i.name] == 0
                       and self._steps_to_afford("cheap", i) <= 1 for i in self.instruments)  # θ_t for step t + 1
        if not due and not snapshot:
            self._finish(now, measured=False)
            return []
        if self.steps == 0:
            self.warmup_seconds = _warm_up_torch_func()
            now += self.warmup_seconds
        if self.measure_examples is not None:  # the instruments' own batch, fixed at the first step
            kept = self.state.setdefault("measure_batch", (inputs[:self.measure_examples].detach().clone(),
                                                           targets[:self.measure_examples].detach().clone()))
            inputs, targets = kept
        ctx = inst.StepContext(self.model, self.loss_fn, inputs, targets,
                               None if loss is None else float(loss.detach() if isinstance(loss, Tensor) else loss),
                               self.optimizer, self.steps, self.mode, self.state, seed=self.seed + self.steps)
        records = [r for r in (self._measure(i, ctx) for i in due) if r is not None]
        if self.steps == 0:
            self._at_start = dict(self.measured)
        if snapshot:
            t0 = time.perf_counter()
            self._keep_previous()
            self.state["previous_step"] = self.steps
            self.spent["cheap"] += time.perf_counter() - t0  # it serves the cheap tier's update size
        if records and self.steps % 100 == 0:
            records.append(self._overhead_record())
        for record in records:
            for sink in self.sinks:
                sink.write(record)
        self._finish(now, measured=bool(due))
        return records

    def _measure(self, instrument: inst.Instrument, ctx: inst.StepContext) -> dict[str, Any] | None:
        since = self._pending.pop(instrument.name, self.steps)
        self._waited[instrument.name] += self.steps - since
        t0 = time.perf_counter()
        try:
            # a random state of its own for what makes extra passes (its objective reseeds it before
            # every forward pass: the same dropout masks in each); the user's stream stays as it was
            with seeded(self.model, ctx.seed) if instrument.tier != "cheap" else contextlib.nullcontext():
                values = instrument.measure(ctx)
        except Exception as err:  # noqa: BLE001 - one failing quantity must not stop the others
            self.disabled[instrument.name] = f"{type(err).__name__}: {err}"
            warnings.warn(f"Monitor: {instrument.name} cannot be computed for this model and is dropped "
                          f"({type(err).__name__}: {err})", RuntimeWarning, stacklevel=3)
            return None
        seconds = time.perf_counter() - t0
        self.cost[instrument.name] = seconds
        self.spent["cheap" if instrument.tier == "cheap" else "expensive"] += seconds
        self.measured[instrument.name] += 1
        return {"step": self.steps, "instrument": instrument.name, "time": t0 - self._start,
                "seconds": seconds, "values": values}

    def _account_user_step(self, now: float) -> None:
        if self._last_return is None:
            return
        seconds = now - self._last_return
        self.train_seconds += seconds
        if self._measured_last:
            self._after += 1
            self._after_seconds += seconds
        elif len(self._clean) < 512:
            self._clean.append(seconds)
        else:  # a rolling sample of the recent clean steps
            self._clean[self.steps % 512] = seconds

    def _finish(self, entered: float, *, measured: bool) -> None:
        self.steps += 1
        if self.steps > self._next_look:
            self._plan_next_look([i for i in self.instruments if i.name not in self.disabled])
        self._measured_last = measured
        self._last_return = time.perf_counter()
        self.monitor_seconds += self._last_return - entered

    def _overhead_record(self) -> dict[str, Any]:
        return {"step": self.steps, "instrument": "monitor", "time": time.perf_counter() - self._start, "seconds": 0.0,
                "values": {"train_seconds": self.train_seconds, "monitor_seconds": self.monitor_seconds,
                           "overhead": self.overhead, "warmup_seconds": self.warmup_seconds,
                           "spent": dict(self.spent), "measured": dict(self.measured),
                           "postponed": self.postponed, "waiting": dict(self._pending),
                           "disabled": dict(self.disabled)}}

    def affordable(self) -> dict[str, dict[str, float]]:
        """Per expensive instrument measured: its last measurement's cost in step-equivalents
        (seconds over the typical training step's) and how many measurements the budget buys over
        the steps run so far, had it the expensive allowance alone (0.8 × 85% of ``budget``)."""
        step = self._typical_step()
        if step <= 0:
            return {}
        allowance = 0.8 * (1 - CHEAP_SHARE) * self.budget * self.steps  # step-equivalents
        out = {}
        for i in self.instruments:
            if i.tier != "cheap" and i.name in self.cost:
                cost = self.cost[i.name] / step
                out[i.name] = {"step_equivalents": cost, "measurements": allowance / cost if cost > 0 else math.inf}
        return out

    def close(self) -> dict[str, dict[str, float]]:
        """Write the final overhead record, warn about every enabled instrument that never
        measured after step 0 although it fell due (and how long it waited), say (log
        ``deepdescent.diagnostics``, INFO) what one measurement costs and how many the budget buys
        (:meth:`affordable`, returned), and close the sinks."""
        waited = self.postponed
        never = [n for n, k in self.measured.items()
                 if k == self._at_start.get(n, 0) and n not in self.disabled and waited[n] > 0]
        # (one that never fell due in a run shorter than its cadence is not worth a warning)
        if never:
            why = ", ".join(f"{n} (waited {waited[n]} steps{', still waiting' if n in self._pending else ''})"
                            for n in never)
            warnings.warn(f"Monitor: over {self.steps} steps these instruments never measured after step 0: {why}; "
                          f"raise budget= or lengthen their cadence with every=", RuntimeWarning, stacklevel=2)
        afford = self.affordable()
        if afford:
            _log.info("Monitor: over %d steps at budget %g, one measurement costs (in training steps) and the budget "
                      "buys: %s", self.steps, self.budget, "; ".join(
                          f"{n} {a['step_equivalents']:.3g} steps, {a['measurements']:.0f} measurements"
                          for n, a in afford.items()))
        record = self._overhead_record()
        record["values"]["affordable"] = afford
        for sink in self.sinks:
            sink.write(record)
            sink.close()
        return afford


_TORCH_FUNC_STARTED = False


def _warm_up_torch_func() -> float:
    """Seconds taken by torch.func's first transform in this process (it imports torch._dynamo
    and builds caches: 1–12 s), paid here on a 2×2 tensor so that no measurement is charged for
    it; 0 once done."""
    global _TORCH_FUNC_STARTED
    if _TORCH_FUNC_STARTED:
        return 0.0
    t0 = time.perf_counter()
    torch.func.vmap(torch.func.grad(lambda x: (x * x).sum()))(torch.ones(2, 2))
    _TORCH_FUNC_STARTED = True
    return time.perf_counter() - t0
