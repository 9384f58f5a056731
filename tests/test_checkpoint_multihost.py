"""Two processes save and restore one checkpoint together.

Each process's data-iterator position is its own (it reads its own shard of the
data); Orbax writes JSON items from the primary process only, so the Checkpointer
gathers them first. Both processes restore their own position, and the state,
resharded onto another mesh, equals what was saved.
"""

from pathlib import Path

import pytest
from test_multihost import launch

WORKER = Path(__file__).parent / "helpers" / "multihost_checkpoint.py"


@pytest.mark.slow  # two JAX processes: ~10 s
@pytest.mark.timeout(300)
def test_two_processes_save_and_restore_their_own_data_positions(tmp_path):
    directory = tmp_path / "checkpoints"
    results = launch(2, tmp_path, worker=WORKER, args=[str(directory)])
    for i, result in enumerate(results):
        assert result["step"] == 3 and result["verified"] and result["same"]
        assert result["data"] == {"iterator": {"index": 100 + i, "shard": f"host-{i}"}}
