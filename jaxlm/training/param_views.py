"""Which parameters a step trains, and which models it runs with them.

A TrainState holds `params` (what the optimizer updates) and `frozen` (parameters
that never change: LoRA's base weights, or DPO's reference model). A step does not
need to know which setup it is in: it asks a ParamViews for the parameter States
that make each model, and `steps.forward` merges them into the module.

    full fine-tuning     policy = (params,)            reference = (frozen,) or None
    LoRA                 policy = (adapters, base)     reference = (zero adapters, base)

Views are pure functions of (params, frozen), traced inside the jitted step, so a
reference built from the frozen base costs no second copy of the weights.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from flax import nnx

States = tuple[nnx.State, ...]


@dataclasses.dataclass(frozen=True)
class ParamViews:
    policy: Callable[[Any, Any], States]  # the model being trained
    reference: Callable[[Any, Any], States | None]  # the frozen reference, if any


def _full_reference(params: Any, frozen: Any) -> States | None:
    return None if frozen is None else (frozen,)


FULL = ParamViews(policy=lambda params, frozen: (params,), reference=_full_reference)
