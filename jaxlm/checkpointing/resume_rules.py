"""May a run resume from a checkpoint written with another config?

By default, no: every field that differs from the checkpoint's config is named and the
resume is refused, because the result would not be a continuation of the same run.
`train.allow_config_change` lists dotted keys that may differ anyway, e.g.

    --set train.steps=20000 --set train.allow_config_change=train.steps,optim.lr

Anything not listed is still refused. Some differences never count:
  - train.allow_config_change itself (it only says what else may change), and the
    other overrides, which only say what a run may accept (data.allow_changed_data,
    train.allow_tokenizer_change);
  - data.tokenizer: a path, often relative to the directory the run was started in,
    so its text says nothing; the tokenizer is compared by content with the
    workdir's own copy instead (jaxlm.data.run_inputs.ensure_tokenizer), and with
    the checkpoint's tokenizer sha256 (check_fingerprint);
  - a key the checkpoint's config does not have at all (written before the field
    existed) whose new value is the field's default: the old code behaved as the
    default does;
  - operational keys (OPERATIONAL, and mesh.*): how the run is watched, logged,
    saved and laid out on devices, never what it computes. They are accepted and
    logged. A new mesh shape restores the arrays resharded and computes the same
    function, but float reductions run in another order: losses agree to rounding,
    not bitwise;
  - model.scan_layers (LAYER_LOOP): scanned or unrolled layers read the same stacked
    weights and compute the same function; the losses agree bitwise on one device
    and to rounding on a sharded mesh (tests/test_golden_losses.py). Its default,
    "auto", picks by backend, so a run started before it existed, or moved between
    a CPU and an accelerator, resumes.
"""

from __future__ import annotations

import difflib
from typing import Any

from jaxlm.config import Config, ConfigError, all_keys, config_differences
from jaxlm.errors import InputError

_SELF = "train.allow_config_change"
# Keys whose text never counts as a difference (module docstring).
_NOT_COMPARED = frozenset(
    {_SELF, "data.allow_changed_data", "train.allow_tokenizer_change", "data.tokenizer"}
)
_ABSENT = "'<absent>'"  # how config_differences shows a key missing on one side
OPERATIONAL = frozenset(
    f"train.{key}"
    for key in (
        "eval_every",
        "eval_at_start",
        "log_every",
        "progress_bar",
        "peak_flops",
        "checkpoint_every",
        "keep_checkpoints",
        "keep_every",
        "generate_prompt",
        "generate_tokens",
        "step_timeout_s",
        "first_step_timeout_s",
    )
)
LAYER_LOOP = "model.scan_layers"


def allowed_changes(cfg: Config) -> set[str]:
    """The keys of `train.allow_config_change`, each checked to be a real config key."""
    keys = {k.strip() for k in cfg.train.allow_config_change.split(",") if k.strip()}
    valid = all_keys()
    for key in sorted(keys):
        if key not in valid:
            close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"{_SELF}: unknown config key '{key}'{hint}")
    return keys


def _defaults() -> dict[str, Any]:
    flat: dict[str, Any] = {}

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                flat[f"{prefix}{key}"] = value

    walk(Config().to_dict(), "")
    return flat


def check_resume_config(saved: dict[str, Any], cfg: Config, where: str) -> list[str]:
    """Refuse (InputError) unless every difference is allowed; returns the allowed ones.

    Each difference reads `key: old -> new`, as config_differences writes it.
    """
    allowed = allowed_changes(cfg)
    defaults = _defaults()
    refused, accepted = [], []
    for change in config_differences(saved, cfg.to_dict()):
        key, _, values = change.partition(": ")
        old, _, new = values.partition(" -> ")
        if key in _NOT_COMPARED:
            continue
        if old == _ABSENT and key in defaults and new == repr(defaults[key]):
            continue
        operational = key in OPERATIONAL or key == LAYER_LOOP or key.startswith("mesh.")
        (accepted if key in allowed or operational else refused).append(change)
    if refused:
        raise InputError(
            f"{where}: this run's config differs from the checkpoint's ("
            + "; ".join(refused)
            + "); resuming would not continue the same run. Use a new --workdir, or list "
            f"the keys that may change in {_SELF}"
        )
    return accepted
