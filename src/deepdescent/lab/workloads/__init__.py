"""The built-in workloads: models people train, each written against the public
:class:`~deepdescent.lab.workload.Workload` protocol (the examples to copy), each at a ``cpu``
size that races in minutes on two cores and a ``full`` size for ``--device cuda``. They race in
``deepdescent bench --suite workloads``; one alone as ``--problem resnet_mnist`` (or
``resnet_mnist:size=full``)."""

from __future__ import annotations

from types import ModuleType

from deepdescent.lab.workloads import recurrent, resnet, transformer

#: name → its module: ``workload(size)`` returns the Workload ("cpu" or "full"); DESCRIPTION and
#: CHALLENGE say what it is without loading its data.
BUILTIN: dict[str, ModuleType] = {"resnet_mnist": resnet, "char_transformer": transformer, "lstm_rows": recurrent}
SIZES = ("cpu", "full")
