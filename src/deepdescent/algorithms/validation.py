"""Hyperparameter checks: every error names the argument, the value and what is valid."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

import torch


def _as_float(name: str, value: Any) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.dim() != 0:
            raise ValueError(f"{name} must be a float or a 0-dim tensor, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):  # numpy scalars and Fractions are Real
        raise ValueError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    return float(value)


def non_negative(name: str, value: Any) -> None:
    """A finite value ≥ 0 (learning rates, weight decay)."""
    v = _as_float(name, value)
    if not math.isfinite(v) or v < 0.0:
        raise ValueError(f"invalid {name}={value!r}: must be finite and >= 0")


def positive(name: str, value: Any) -> None:
    """A finite value > 0 (δ, the stabilising constants)."""
    v = _as_float(name, value)
    if not math.isfinite(v) or v <= 0.0:
        raise ValueError(f"invalid {name}={value!r}: must be finite and > 0")


def unit_interval(name: str, value: Any) -> None:
    """A decay rate or momentum in [0, 1)."""
    v = _as_float(name, value)
    if not 0.0 <= v < 1.0:
        raise ValueError(f"invalid {name}={value!r}: must be in [0, 1)")


def positive_int(name: str, value: Any) -> None:
    """A count or period ≥ 1 (every how many steps)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"invalid {name}={value!r}: must be an integer >= 1")


def choice(name: str, value: Any, valid: Iterable[Any]) -> None:
    valid = tuple(valid)
    if value not in valid:
        raise ValueError(f"invalid {name}={value!r}: must be one of {', '.join(map(repr, valid))}")


def flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"invalid {name}={value!r}: must be True or False")


def betas(name: str, value: Any) -> None:
    """A pair (ρ₁, ρ₂) of decay rates, each in [0, 1)."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"invalid {name}={value!r}: must be a pair (rho1, rho2), each in [0, 1)")
    unit_interval(f"{name}[0]", value[0])
    unit_interval(f"{name}[1]", value[1])


def convention(name: str, value: Any) -> None:
    """Where the velocity keeps ε: "book" (v ← αv − εg) or "torch" (b ← αb + g, θ ← θ − εb)."""
    choice(name, value, ("book", "torch"))
