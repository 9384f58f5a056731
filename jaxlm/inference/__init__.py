"""Inference: load a trained model, generate with a KV cache, sample.

    loading.py       an export or a workdir -> (config, graphdef, params, tokenizer)
    quantize.py      weight-only int8 (per-channel scales) at load: --quantize int8
    kv_cache.py      the fixed-size key/value cache (float, bfloat16 or int8) and the
                     cached forward pass
    sampling.py      logits -> next token: temperature, top-k, top-p, min-p, penalties
    decode.py        prefill + incremental decode for a batch of prompts (Generator)
    rollout.py       RL rollouts: one jitted sampling program with the policy's log-probs
    streaming.py     token ids -> text as it becomes printable (whole characters only)
    sft_records.py   prompts + generated answers -> SFT conversation records and the
                     settings sidecar (`jaxlm generate --sft-out`: black-box distillation)
    think.py         show or hide <think>...</think> reasoning, streamed or not
    chat_session.py  a multi-turn conversation over a Generator
    terminal.py      `jaxlm chat`'s line editing, history file and Ctrl-C handling
    cli_options.py   the options `jaxlm generate` and `jaxlm chat` share

May import: the root modules, models, data (tokenizer, chat template) and
checkpointing (to read params). Not training: the training loop uses the Generator
for its end-of-run sample, so inference sits beside it, not above it.

The import rule is enforced by tests/test_layering.py (ALLOWED there).

The public API, `from jaxlm.inference import load_model, Generator, SamplingConfig`,
is resolved on first use (PEP 562): `jaxlm --help` imports cli_options from this
package while building its parser, and must not load JAX for it.
"""

from __future__ import annotations

import importlib

# name -> the module of this package that defines it
PUBLIC = {
    "load_model": "loading",
    "LoadedModel": "loading",
    "Generator": "decode",
    "SamplingConfig": "sampling",
}
__all__ = sorted(PUBLIC)


def __getattr__(name: str):
    if name not in PUBLIC:
        raise AttributeError(f"module 'jaxlm.inference' has no attribute {name!r}")
    return getattr(importlib.import_module(f"jaxlm.inference.{PUBLIC[name]}"), name)
