"""Reference log-probs computed once, before preference training (preference.reference=precomputed).

DPO and IPO compare the policy with a frozen reference on every pair. Running the
reference inside each step costs one more forward pass per step (and, without LoRA,
a second copy of the weights in device memory). Precomputed, the reference scores
every training pair once, here, and the pipeline attaches `ref_logps` [B, 2] to each
batch (jaxlm.data.preference); the step then runs the policy alone, and no
reference weights are kept.

The table maps each pair's "file:line" to its [chosen, rejected] summed log-probs.
It is written to `<workdir>/reference_logps.npz` (plain arrays, loaded without
pickle) together with the fingerprint of the data it scored (lines and sampled
content digest per file, jaxlm.data.content_digest); a resumed run reuses it, and
refuses it if the data changed. A table from before content digests is checked on
its line counts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxlm.data import posttrain_inputs
from jaxlm.data.preference import WHERE_KEY as WHERE
from jaxlm.errors import InputError
from jaxlm.sharding import BATCH_AXES, host_batch_to_global
from jaxlm.training.hosts import allgather_max
from jaxlm.training.preference_steps import make_reference_logps
from jaxlm.training.steps import jit_scoring_step

FILE = "reference_logps.npz"


def load_table(path: Path, fingerprint: dict[str, Any]) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        saved = json.loads(str(data["fingerprint"]))
        if "content_per_file" not in saved:  # an older table: lines per file alone
            fingerprint = fingerprint["lines_per_file"]
        if saved != fingerprint:
            raise InputError(
                f"{path}: computed for other data (its files' lines or content differ from "
                "those of data.sources and data.eval_sources now); delete it to recompute"
            )
        return dict(zip(data["where"].tolist(), data["logps"], strict=True))


def save_table(path: Path, table: dict[str, np.ndarray], fingerprint: dict[str, Any]) -> None:
    where = sorted(table)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(
        tmp,
        where=np.asarray(where, dtype=str),
        logps=np.stack([table[w] for w in where]).astype(np.float32),
        fingerprint=np.asarray(json.dumps(fingerprint, sort_keys=True)),
    )
    os.replace(tmp, path)  # atomic: a crash never leaves half a table


def reference_table(
    cfg, tokenizer, workdir: Path, state, graphdef, views, mesh, batch_size: int, log
) -> dict[str, np.ndarray]:
    """The table for this run: loaded from the workdir, or computed now from `state`.

    Runs before any checkpoint is restored, so `state` is the starting model (the
    reference). Scores every line of data.sources and data.eval_sources, so training
    and held-out pairs alike carry `ref_logps`.
    """
    path = Path(workdir) / FILE
    fingerprint = {
        "lines_per_file": posttrain_inputs.lines_per_file(cfg, with_eval=True),
        "content_per_file": posttrain_inputs.jsonl_content(cfg, with_eval=True),
    }
    if path.is_file():
        log(f"reference log-probs from {path}")
        return load_table(path, fingerprint)

    frozen = state.frozen if state.frozen is not None else state.params
    score = jit_scoring_step(make_reference_logps(graphdef, views), mesh)
    where = (jax.process_index(), jax.process_count())
    batches = []
    for specs, key in (
        (cfg.data.sources, "data.sources"),
        (cfg.data.eval_sources, "data.eval_sources"),
    ):
        if specs:
            batches += posttrain_inputs.all_pairs(cfg, tokenizer, specs, key, *where, batch_size)
    count = allgather_max(len(batches))  # every process runs the program equally often
    filler = posttrain_inputs.empty_pairs(
        batch_size, cfg.data.seq_len, tokenizer.pad_id, think_loss_weight=cfg.data.think_loss_weight
    )
    batches += [{**filler, WHERE: []}] * (count - len(batches))

    table: dict[str, np.ndarray] = {}
    with jax.set_mesh(mesh):
        for batch in batches:
            wheres = batch.pop(WHERE)
            logps = score(state.params, frozen, host_batch_to_global(batch, mesh))
            if jax.process_count() > 1:  # this process's rows, in its own order
                logps = multihost_utils.global_array_to_host_local_array(
                    logps, mesh, jax.sharding.PartitionSpec(BATCH_AXES)
                )
            for w, row in zip(wheres, np.asarray(logps)[: len(wheres)], strict=True):
                table[w] = row
    table = gather_tables(table)
    if jax.process_index() == 0:
        save_table(path, table, fingerprint)
    log(f"reference log-probs of {len(table)} pairs computed -> {path}")
    return table


def gather_tables(mine: dict[str, Any]) -> dict[str, np.ndarray]:
    """Every process's table, merged (each process scored a disjoint share)."""
    if jax.process_count() == 1:
        return mine
    text = np.frombuffer(
        json.dumps({k: [float(x) for x in v] for k, v in mine.items()}).encode(), np.uint8
    )
    lengths = np.asarray(multihost_utils.process_allgather(np.int32(text.size)))
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[: text.size] = text
    rows = np.asarray(multihost_utils.process_allgather(padded))
    merged: dict[str, np.ndarray] = {}
    for i, n in enumerate(lengths.tolist()):
        for k, v in json.loads(bytes(rows[i, :n]).decode()).items():
            merged[k] = np.asarray(v, np.float32)
    return merged
