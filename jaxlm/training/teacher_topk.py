"""A teacher's top-k log-probs computed once, for offline distillation (distill.top_k > 0).

Running a large teacher inside every step of every student is the expensive part of
distillation. Offline, the teacher reads the run's training rows once, before
training, and stores for every position its top-k token ids and their log-probs at
distill.temperature, plus the log of the remaining (tail) mass
(jaxlm.training.distill_losses states the loss over these k + 1 outcomes). Students
then train without the teacher in memory.

On disk (`distill.table`, default <workdir>/teacher_topk), plain .npy files, loaded
memory-mapped and without pickle:

    manifest.json              what the table was computed from (below); written last,
                               so a table without it is incomplete and recomputed
    p<proc>-<n>.keys.npy       [rows] the rows' content keys (S64: hex sha256 digests)
    p<proc>-<n>.ids.npy        [rows, T, K] uint16 (or int32 for vocabularies > 65536)
    p<proc>-<n>.logps.npy      [rows, T, K + 1] float32

Rows are found by *content*: the key is a hash of the packed row itself (tokens,
positions, segment ids, targets, loss mask), so a student finds its rows whatever its
batch size, process count or position in the stream, and a row the teacher never
read is an error, never a silent wrong target. The manifest holds the teacher's
source, a checksum of its params, its config, the data fingerprint of the run that
computed it, data.seq_len, data.seed, k, the temperature and the number of rows; a
student with other data, seed, k or temperature, or needing more rows than the table
has, is refused up front with what differs.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from jaxlm.errors import InputError
from jaxlm.sharding import BATCH_AXES, batch_sharding, host_batch_to_global
from jaxlm.training.distill_losses import teacher_topk
from jaxlm.training.hosts import barrier
from jaxlm.training.steps import forward

MANIFEST = "manifest.json"
# The row's arrays that determine what the teacher sees and what the loss reads.
KEYED = ("tokens", "positions", "segment_ids", "targets", "loss_mask")
# Rows per shard file: small enough to write as the precompute goes, large enough
# that a table is not thousands of files.
SHARD_ROWS = 1024


def row_keys(batch: dict[str, np.ndarray]) -> list[bytes]:
    """Each row's content key: sha256 over its KEYED arrays (shape and dtype included)."""
    rows = len(batch["tokens"])
    keys = []
    for r in range(rows):
        h = hashlib.sha256()
        for name in KEYED:
            a = np.ascontiguousarray(batch[name][r])
            h.update(f"{name}{a.dtype.str}{a.shape}".encode())
            h.update(a.tobytes())
        keys.append(h.hexdigest().encode())
    return keys


def params_checksum(params) -> str:
    """A short digest of the teacher's params (per-leaf sums and sums of squares):
    changes when its weights do, without bringing the weights to one host."""

    def moments(leaves):
        return jnp.stack(
            [
                jnp.stack(
                    [jnp.sum(x, dtype=jnp.float32), jnp.sum(jnp.square(x.astype(jnp.float32)))]
                )
                for x in leaves
            ]
        )

    sums = jax.jit(moments)(jax.tree.leaves(params))
    values = np.asarray(sums.addressable_data(0), np.float64)  # replicated: a full copy
    return hashlib.sha256(np.round(values, 4).tobytes()).hexdigest()[:16]


class TopKTable:
    """A computed table: looks rows up by content and attaches the teacher's top-k."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.manifest = json.loads((self.directory / MANIFEST).read_text(encoding="utf-8"))
        self._index: dict[bytes, tuple[int, int]] | None = None
        self._shards: list[tuple[np.ndarray, np.ndarray]] = []

    def __getstate__(self):  # Grain may copy the map function: not the memory maps
        return {"directory": self.directory, "manifest": self.manifest}

    def __setstate__(self, state):
        self.__init__(state["directory"])

    def _load(self) -> None:
        index: dict[bytes, tuple[int, int]] = {}
        for shard, name in enumerate(self.manifest["shards"]):
            keys = np.load(self.directory / f"{name}.keys.npy", allow_pickle=False)
            ids = np.load(self.directory / f"{name}.ids.npy", mmap_mode="r", allow_pickle=False)
            logps = np.load(self.directory / f"{name}.logps.npy", mmap_mode="r", allow_pickle=False)
            self._shards.append((ids, logps))
            for row, key in enumerate(keys.tolist()):
                index[key] = (shard, row)
        self._index = index

    def attach(self, batch: dict[str, Any]) -> dict[str, Any]:
        """`batch` with `teacher_ids` [B, T, K] int32 and `teacher_logps` [B, T, K+1]."""
        if self._index is None:
            self._load()
        k, T = self.manifest["top_k"], batch["tokens"].shape[1]
        ids = np.zeros((len(batch["tokens"]), T, k), np.int32)
        logps = np.zeros((len(batch["tokens"]), T, k + 1), np.float32)
        for r, key in enumerate(row_keys(batch)):
            if not np.any(batch["loss_mask"][r]):
                continue  # nothing of this row is trained: any teacher values do
            found = self._index.get(key)
            if found is None:
                raise InputError(
                    f"{self.directory}: a training row is not in the teacher's table (it "
                    f"holds the first {self.manifest['rows']} rows of the stream it was "
                    "computed for); delete the table to recompute it for this run"
                )
            shard_ids, shard_logps = self._shards[found[0]]
            ids[r] = shard_ids[found[1]]
            logps[r] = shard_logps[found[1]]
        return {**batch, "teacher_ids": ids, "teacher_logps": logps}


def check_manifest(table: TopKTable, want: dict[str, Any], rows_needed: int) -> None:
    saved = table.manifest
    differs = [
        f"{key}: table {saved.get(key)!r}, run {value!r}"
        for key, value in want.items()
        if saved.get(key) != value
    ]
    if differs:
        raise InputError(
            f"{table.directory}: the teacher table was computed for another setup ("
            + "; ".join(differs)
            + "); delete it (or set distill.table elsewhere) to recompute"
        )
    if saved["rows"] < rows_needed:
        raise InputError(
            f"{table.directory}: the teacher table holds {saved['rows']} rows; this run "
            f"trains on {rows_needed} (train steps x data.batch_size); delete it to recompute"
        )


def compute_table(
    directory: Path,
    *,
    batches,
    num_batches: int,
    teacher,
    mesh,
    top_k: int,
    temperature: float,
    manifest: dict[str, Any],
    log,
) -> TopKTable:
    """Run the teacher over `num_batches` of this process's training batches and write
    the table (each process its own shards; process 0 the manifest, after all)."""
    directory.mkdir(parents=True, exist_ok=True)
    me = jax.process_index()
    for stale in directory.glob(f"p{me}-*.npy"):  # an interrupted earlier attempt
        stale.unlink()
    vocab = teacher.cfg.model.vocab_size
    ids_dtype = np.uint16 if vocab <= np.iinfo(np.uint16).max + 1 else np.int32

    def score(params, batch):
        logits = forward(teacher.graphdef, params, batch)
        return teacher_topk(logits, top_k, temperature)

    scorer = jax.jit(score, out_shardings=(batch_sharding(mesh), batch_sharding(mesh)))
    pending: dict[str, list] = {"keys": [], "ids": [], "logps": []}
    names: list[str] = []
    rows = 0

    def flush():
        if not pending["keys"]:
            return
        name = f"p{me}-{len(names):05d}"
        for part, dtype in (("keys", "S64"), ("ids", ids_dtype), ("logps", np.float32)):
            tmp = directory / f"{name}.{part}.tmp.npy"
            np.save(tmp, np.concatenate(pending[part]).astype(dtype), allow_pickle=False)
            os.replace(tmp, directory / f"{name}.{part}.npy")
        names.append(name)
        for part in pending.values():
            part.clear()

    with jax.set_mesh(mesh):
        for _ in range(num_batches):
            host = {k: v for k, v in next(batches).items() if k in KEYED}
            ids, logps = scorer(teacher.params, host_batch_to_global(host, mesh))
            if jax.process_count() > 1:  # this process's rows
                spec = jax.sharding.PartitionSpec(BATCH_AXES)
                ids, logps = multihost_utils.global_array_to_host_local_array(
                    (ids, logps), mesh, spec
                )
            pending["keys"].append(np.asarray(row_keys(host), dtype="S64"))
            pending["ids"].append(np.asarray(ids))
            pending["logps"].append(np.asarray(logps))
            rows += len(host["tokens"])
            if sum(len(k) for k in pending["keys"]) >= SHARD_ROWS:
                flush()
        flush()
    shards = _gather_names(names)
    total = _sum_over_processes(rows)
    barrier("teacher_topk_written")
    if me == 0:
        text = json.dumps({**manifest, "rows": total, "shards": shards}, indent=1, sort_keys=True)
        tmp = directory / (MANIFEST + ".tmp")
        tmp.write_text(text + "\n", encoding="utf-8")
        os.replace(tmp, directory / MANIFEST)
    barrier("teacher_topk_manifest")
    log(f"teacher top-{top_k} of {total} rows computed -> {directory}")
    return TopKTable(directory)


def _sum_over_processes(n: int) -> int:
    if jax.process_count() == 1:
        return n
    return int(np.sum(multihost_utils.process_allgather(np.int64(n))))


def _gather_names(names: list[str]) -> list[str]:
    """Every process's shard names (each wrote its own)."""
    if jax.process_count() == 1:
        return names
    text = np.frombuffer(json.dumps(names).encode(), np.uint8)
    lengths = np.asarray(multihost_utils.process_allgather(np.int32(text.size)))
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[: text.size] = text
    gathered = np.asarray(multihost_utils.process_allgather(padded))
    out: list[str] = []
    for i, n in enumerate(lengths.tolist()):
        out += json.loads(bytes(gathered[i, :n]).decode())
    return out
