"""Consumed-data counters: documents and pairs that reached a step, not read-ahead."""

from __future__ import annotations

import argparse
import inspect
import json

import numpy as np

from jaxlm.data.counters import DataTotals

BOS, EOS, PAD = 1, 2, 0


def test_a_document_counts_once_with_its_first_piece_and_padding_not_at_all():
    # Row 0: document A whole (BOS..EOS), then the first piece of document B.
    # Row 1: the second piece of B (no BOS), then padding.
    tokens = np.array([[BOS, 5, EOS, BOS, 6, 7], [8, EOS, PAD, PAD, PAD, PAD]])
    segment_ids = np.array([[1, 1, 1, 2, 2, 2], [1, 1, 0, 0, 0, 0]])
    positions = np.array([[0, 1, 2, 0, 1, 2], [0, 1, 0, 0, 0, 0]])
    totals = DataTotals({"documents": 7})
    batch = {"tokens": tokens, "segment_ids": segment_ids, "positions": positions}
    totals.count_consumed(batch, BOS)
    totals.count_consumed(batch, BOS)
    assert totals.as_dict() == {"consumed_documents": 4, "documents": 7}


def test_pairs_count_without_their_filler():
    segment_ids = np.zeros((3, 2, 4), np.int32)
    segment_ids[0, :, :3] = 1  # a pair
    segment_ids[1, :, :2] = 1  # another
    # row 2: an empty filler pair at the end of an eval set
    totals = DataTotals()
    totals.count_consumed({"segment_ids": segment_ids}, BOS)
    assert totals.as_dict() == {"consumed_pairs": 2}


def test_a_run_reports_what_it_consumed_behind_what_it_read(tmp_path):
    from test_train_loop import SMALL

    from jaxlm.config import Config, apply_overrides
    from jaxlm.training.loop import train

    # Short documents (the lines of a stdlib module), several to a 32-token row; the
    # packer reads data.packing_bins=64 rows ahead of the 8 a step trains on.
    lines = [x for x in inspect.getsource(argparse).splitlines() if len(x.strip()) > 20]
    data = tmp_path / "lines.jsonl"
    data.write_text("".join(json.dumps({"text": x.strip()}) + "\n" for x in lines))
    cfg = apply_overrides(Config(), [*SMALL, "train.steps=2", f"data.sources=jsonl:{data}"])
    train(cfg, tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    consumed, read = summary["data_consumed_documents"], summary["data_documents"]
    assert 16 <= consumed < read, (consumed, read)  # 16 rows, each starting a document
