"""One process of the multi-process data check (run by tests/test_multihost_data.py).

Usage: python multihost_data.py COORDINATOR NUM_PROCESSES PROCESS_ID CONFIG_JSON OUT_JSON

Builds the run's training stream and evaluation batches exactly as jaxlm.training.loop does
(run_inputs, with the cross-process max over batch counts) and writes which documents
this process saw: every document's text starts with "doc NNN:".
"""

import json
import os
import re
import sys
from pathlib import Path

os.environ["JAX_PLATFORMS"] = "cpu"

import jax
import numpy as np

from jaxlm.config import config_from_dict
from jaxlm.data import run_inputs
from jaxlm.data.tokenizer import Tokenizer
from jaxlm.runtime import distributed
from jaxlm.training.hosts import allgather_max

DOC_ID = re.compile(r"doc (\d+):")


def documents_in(batches, tokenizer) -> list[int]:
    """Ids of the documents whose first piece (position 0) is in `batches`."""
    ids = []
    for batch in batches:
        for tokens, segments, positions in zip(
            batch["tokens"], batch["segment_ids"], batch["positions"], strict=True
        ):
            for seg in np.unique(segments[segments != 0]):
                where = segments == seg
                if positions[where][0] == 0:
                    ids += [int(m) for m in DOC_ID.findall(tokenizer.decode(tokens[where][:8]))]
    return ids


def main():
    coordinator, num, index, config_path, out = sys.argv[1:6]
    distributed.maybe_initialize(coordinator, int(num), int(index))
    cfg = config_from_dict(json.loads(Path(config_path).read_text()))
    tokenizer = Tokenizer.load(Path(cfg.data.tokenizer))
    pid, count = jax.process_index(), jax.process_count()
    evals = run_inputs.eval_batches(cfg, tokenizer, pid, count, allgather_max)
    stream = iter(run_inputs.train_stream(cfg, tokenizer, pid, count))
    train = [next(stream) for _ in range(3)]
    real_eval = sum(1 for b in evals if (b["segment_ids"] != 0).any())
    Path(out).write_text(
        json.dumps(
            {
                "eval_batches": len(evals),
                "eval_batches_with_data": real_eval,
                "eval_documents": documents_in(evals, tokenizer),
                "train_documents": documents_in(train, tokenizer),
            }
        )
    )


if __name__ == "__main__":
    main()
