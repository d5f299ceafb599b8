"""The kinds of value a run spec holds, each one annotated type with its real range.

Every numeric field of every config is one of these, so a rule is written once and holds everywhere:

- :data:`Count` (a whole number >= 1) and :data:`Steps` (>= 0: counts where none is meaningful, such as
  adaptation steps before evaluation or "no validation"), both strict integers: ``true``, ``5.0`` and
  ``"5"`` are refused rather than read as 1 or 5, and both at most :data:`MAX_COUNT`;
- :data:`Seed`: a strict integer in [0, 2**32 - 1], the range that every consumer of a seed takes
  (``numpy.random.RandomState`` refuses the rest, ``torch.manual_seed`` overflows above 2**64, and
  fixed task ``i`` of a set is seeded ``seed * 1_000_003 + i``, which stays below 2**64);
- :data:`Positive` (finite and > 0: learning rates, step sizes, clip norms), :data:`NonNegative` (finite and
  >= 0: regularisation coefficients, tolerances, slopes) and :data:`Finite` (any finite number), all strict
  floats (an integer is taken, ``true`` and text are not), without NaN or infinity, and :data:`Bounded`
  (magnitude at most 10**6: data ranges);
- :data:`Width`: the size of a layer, a :data:`Count`; the whole network is bounded by
  :data:`MAX_ELEMENTS` parameters (checked by the run spec, which knows the input shape).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StrictInt

MAX_COUNT = 2**31 - 1
"""Largest count of any kind (steps, tasks, shots, widths...): the largest signed 32-bit integer."""
MAX_SEED = 2**32 - 1
"""Largest seed: ``numpy.random.RandomState`` takes seeds in [0, 2**32 - 1] only."""
MAX_ELEMENTS = 2**31
"""Most values one tensor of a run may hold (parameters of the network, one batch's inputs, one task's
widest activation): 8 GiB in float32, beyond what the machines metacli targets can hold and
differentiate."""
MAX_LAYERS = 1024
"""Most hidden layers of an MLP: plain ReLU stacks deeper than this do not train."""
MAX_THREADS = 1024
"""Most CPU threads a run may ask torch for (``threads``); a fixed bound, so a spec that validates on
one machine validates on every machine."""

Count = Annotated[StrictInt, Field(ge=1, le=MAX_COUNT)]
"""A number of things (tasks, steps, examples, rounds...): a whole number from 1 to :data:`MAX_COUNT`."""
Steps = Annotated[StrictInt, Field(ge=0, le=MAX_COUNT)]
"""A count that may be zero (adaptation steps at evaluation, "every 0 steps" = never)."""
Seed = Annotated[StrictInt, Field(ge=0, le=MAX_SEED)]
"""A random seed: a whole number from 0 to 2**32 - 1."""
Width = Count
"""Channels or units of a layer."""
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False, strict=True)]
"""A learning rate, step size or norm bound: a finite number > 0."""
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False, strict=True)]
"""A coefficient or tolerance that may be zero (off): a finite number >= 0."""
Finite = Annotated[float, Field(allow_inf_nan=False, strict=True)]
"""Any finite number."""
Bounded = Annotated[float, Field(ge=-1e6, le=1e6, allow_inf_nan=False, strict=True)]
"""A finite number of magnitude at most 10**6: data ranges, whose squares must stay finite in float32."""
