"""The Checkpointer on its own, in-process and fast.

A TrainState of the tiny preset (with AdamW moments) is saved on an 8-way data mesh;
the tests read it back bitwise, onto other meshes, with files damaged in the ways a
crash or a bad disk damages them, and into a model of another shape.
"""

import dataclasses
import re
import shutil

import jax
import numpy as np
import pytest
from helpers.checkpoint_damage import swap_state_with, truncate_largest_chunk

from jaxlm.checkpointing.integrity import device_fingerprints, host_fingerprints
from jaxlm.checkpointing.manager import (
    Checkpointer,
    CorruptCheckpointError,
    NoRestorableCheckpointError,
    abstract_like,
)
from jaxlm.checkpointing.shapes import CheckpointMismatchError
from jaxlm.config import Config, OptimConfig
from jaxlm.errors import InputError
from jaxlm.models.params import abstract_model
from jaxlm.presets import get_preset
from jaxlm.sharding import make_mesh
from jaxlm.training.optim import make_optimizer
from jaxlm.training.state import create_train_state, train_state_shardings

TINY = get_preset("tiny")
OPTIM = make_optimizer(OptimConfig(), 10)
DATA = {"iterator": {"index": 17, "blob": b"\x00\xffraw"}, "counts": {"documents": 3}}


def make_state(mesh, seed=0):
    state, _ = create_train_state(TINY, OPTIM, mesh, jax.random.key(seed))
    # Non-zero moments and a non-zero step, so every leaf carries information.
    bump = lambda x: x + np.asarray(0.25 if x.dtype == np.float32 else 3, x.dtype)
    return state.replace(
        step=state.step + 5,
        opt_state=jax.tree.map(bump, state.opt_state),
        loss_ema=state.loss_ema + 3.5,
    )


def on_mesh(host_state, mesh):
    """A host state placed with the shardings `mesh` gives (no init to compile)."""
    return jax.device_put(host_state, train_state_shardings(TINY, OPTIM, mesh))


def target_on(mesh, like, cfg=TINY):
    """The restore target: `like`'s shapes with the shardings `mesh` gives the state."""
    return abstract_like(train_state_shardings(cfg, OPTIM, mesh), jax.eval_shape(lambda s: s, like))


def host(tree):
    return jax.tree.map(np.asarray, tree)


def assert_bitwise(a, b):
    for x, y in zip(jax.tree.leaves(host(a)), jax.tree.leaves(host(b)), strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(x.reshape(-1).view(np.uint8), y.reshape(-1).view(np.uint8))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Steps 2 and 4 (different states) saved from an 8-way data mesh."""
    directory = tmp_path_factory.mktemp("ckpt") / "checkpoints"
    mesh = make_mesh((8, 1, 1))
    first = make_state(mesh, seed=1)
    second = first.replace(
        step=first.step + 2,
        params=jax.tree.map(lambda x: x * 1.5, first.params),
        opt_state=jax.tree.map(lambda x: x + 1, first.opt_state),
    )
    states = {2: first, 4: second}
    checkpointer = Checkpointer(directory)
    for step, state in states.items():
        checkpointer.save(step, state, {**DATA, "at": step}, Config().to_json())
    checkpointer.wait()
    checkpointer.close()
    return directory, {step: host(s) for step, s in states.items()}


@pytest.fixture
def copy(saved, tmp_path):
    directory, states = saved
    dest = tmp_path / "checkpoints"
    shutil.copytree(directory, dest)
    return dest, states


def swap(step_dir, states):
    """Readable but wrong: step 2's arrays under step 4 (only the checksums can tell)."""
    swap_state_with(step_dir, step_dir.parent / "2")


def truncate(step_dir, states):
    return truncate_largest_chunk(step_dir)


def test_round_trip_is_bitwise_with_data_and_config(copy):
    directory, states = copy
    mesh = make_mesh((8, 1, 1))
    restored = Checkpointer(directory).restore(4, target_on(mesh, states[4]))
    assert restored.verified and restored.step == 4
    assert_bitwise(restored.state, states[4])
    assert int(restored.state.step) == int(states[4].step)
    # Bytes survive the JSON round trip as latin-1 text (from_jsonable undoes it).
    assert restored.data["iterator"]["index"] == 17 and restored.data["at"] == 4
    assert restored.config == Config().to_dict()


def test_another_process_count_is_refused_naming_both(tmp_path, monkeypatch):
    """Two processes' data positions do not fit one process."""
    import jaxlm.checkpointing.manager as checkpoint_module

    two = lambda mine: {"process_0": mine, "process_1": {**mine, "at": "other shard"}}
    monkeypatch.setattr(checkpoint_module, "_every_process", two)
    mesh = make_mesh((8, 1, 1))
    state = make_state(mesh)
    checkpointer = Checkpointer(tmp_path / "ckpt")
    checkpointer.save(1, state, DATA, Config().to_json())
    checkpointer.wait()
    with pytest.raises(InputError, match=r"/ckpt/1: saved by 2 process\(es\), this run has 1\."):
        checkpointer.restore(1, target_on(mesh, state))
    # Params alone (partial restore, no data item) still load: init_from's way.
    params = checkpointer.restore(1, {"params": target_on(mesh, state).params}, partial=True)
    assert_bitwise(params.state["params"], state.params)
    checkpointer.close()


def test_restore_onto_another_mesh_reshards_with_equal_values(copy):
    directory, states = copy
    mesh = make_mesh((1, 4, 2))
    target = target_on(mesh, states[4])
    restored = Checkpointer(directory).restore(4, target)
    assert_bitwise(restored.state, states[4])
    wq = restored.state.params["layers"]["wq"][...]
    assert wq.sharding == target.params["layers"]["wq"].get_value().sharding
    assert wq.sharding.spec != jax.sharding.PartitionSpec()  # really split, not replicated
    # ... and onto fewer devices than it was saved from.
    small = make_mesh((1, 2, 2), jax.devices()[:4])
    restored = Checkpointer(directory).restore(4, target_on(small, states[4]))
    assert_bitwise(restored.state, states[4])
    assert len(restored.state.params["embed"][...].sharding.device_set) == 4


def test_retention_keeps_the_last_k_and_every_m_th(saved, tmp_path):
    state = on_mesh(saved[1][2], make_mesh((8, 1, 1)))
    checkpointer = Checkpointer(tmp_path / "c", keep=2, keep_every=3)
    for step in range(1, 8):
        checkpointer.save(step, state, DATA, Config().to_json())
        if step == 4:  # 1, 2 are gone once 4 is finished; 3 stays for good
            checkpointer.wait()
            assert checkpointer.all_steps() == [3, 4]
    checkpointer.wait()
    assert checkpointer.all_steps() == [3, 6, 7]
    assert sorted(int(p.name) for p in (tmp_path / "c").iterdir()) == [3, 6, 7]
    checkpointer.close()


@pytest.mark.parametrize("damage", [swap, truncate])
def test_damaged_latest_step_falls_back_with_a_warning(copy, damage):
    directory, states = copy
    damage(directory / "4", states)
    warnings = []
    checkpointer = Checkpointer(directory, warn=warnings.append)
    restored = checkpointer.restore_latest_good(target_on(make_mesh((8, 1, 1)), states[4]))
    assert restored.step == 2
    assert_bitwise(restored.state, states[2])
    assert restored.data["at"] == 2
    first = warnings[0]
    assert f"{directory / '4'} is unusable" in first
    expected = (
        "checksum mismatch in step, params/embed"
        if damage is swap
        else "OUT_OF_RANGE: Error reading"
    )
    assert expected in first, first
    # Set aside, so the resumed run can write step 4 again; kept for inspection.
    assert checkpointer.all_steps() == [2]
    assert (directory / "4.corrupt").is_dir() and not (directory / "4").exists()
    assert "moved to" in warnings[-1]


def test_damaged_json_items_are_detected(copy):
    directory, states = copy
    config_file = directory / "4" / "config" / "metadata"
    text = config_file.read_text()
    # Still valid JSON, but not what was saved: only the checksum can tell.
    config_file.write_text(text.replace('"steps": 1000', '"steps": 1001'))
    assert '"steps": 1001' in config_file.read_text()
    with pytest.raises(CorruptCheckpointError, match="config item does not match its checksum"):
        Checkpointer(directory).restore(4, target_on(make_mesh((8, 1, 1)), states[4]))


def test_nothing_restorable_names_every_step_and_reason(copy):
    directory, states = copy
    swap(directory / "4", states)
    metadata = directory / "2" / "data" / "metadata"
    metadata.write_text(metadata.read_text()[:20])
    checkpointer = Checkpointer(directory, warn=lambda _: None)
    with pytest.raises(NoRestorableCheckpointError) as info:
        checkpointer.restore_latest_good(target_on(make_mesh((8, 1, 1)), states[4]))
    message = str(info.value)
    assert re.search(
        r"step 4: checksum mismatch in step, params/embed, .* and \d+ more .*; "
        r"step 2: JSONDecodeError",
        message,
    ), message
    assert "Refusing to start over" in message
    # Nothing is moved when nothing could be restored: the user decides.
    assert checkpointer.all_steps() == [2, 4]


def test_no_checkpoint_at_all_is_not_an_error(saved, tmp_path):
    target = target_on(make_mesh((8, 1, 1)), saved[1][4])
    assert Checkpointer(tmp_path / "none").restore_latest_good(target) is None


def test_other_model_shape_is_refused_naming_parameter_and_shapes(copy):
    directory, states = copy
    wider = dataclasses.replace(TINY, n_kv_heads=4)  # wk/wv get 4 kv heads instead of 2
    params = abstract_model(wider)[1]
    like = jax.eval_shape(lambda s: s, states[4])
    like = like.replace(params=params, opt_state=jax.eval_shape(OPTIM.init, params))
    target = target_on(make_mesh((8, 1, 1)), like, wider)
    with pytest.raises(CheckpointMismatchError) as info:
        Checkpointer(directory).restore_latest_good(target)
    message = str(info.value)
    assert f"{directory / '4'} does not fit this model" in message
    assert "params/layers/wk: checkpoint (3, 48, 2, 12) vs model (3, 48, 4, 12)" in message
    assert "opt_state/1/0/mu/layers/wv: checkpoint (3, 48, 2, 12)" in message


def test_fingerprints_agree_on_host_and_device_and_see_one_element(copy):
    _, states = copy
    state = states[4]
    on_device = device_fingerprints(jax.device_put(state))
    assert on_device == host_fingerprints(state)
    sharded = on_mesh(state, make_mesh((1, 4, 2)))
    assert sharded.params["layers"]["wq"][...].sharding.spec != jax.sharding.PartitionSpec()
    assert device_fingerprints(sharded) == on_device  # the sharding does not matter
    wq = np.array(state.params["layers"]["wq"][...])
    before = host_fingerprints(wq)
    wq[1, 2, 1, 3] = np.nextafter(wq[1, 2, 1, 3], np.float32(1))  # one ulp
    assert host_fingerprints(wq) != before
    swapped = np.array(state.params["layers"]["wq"][...])
    swapped[0, 0, 0, [0, 1]] = swapped[0, 0, 0, [1, 0]]
    assert host_fingerprints(swapped) != before


def test_a_failed_async_save_raises_and_deletes_nothing(saved, tmp_path, monkeypatch):
    """A5/A6: the error surfaces (at the next wait or save), the last good step stays."""
    from orbax.checkpoint._src.path import atomicity

    state = on_mesh(saved[1][2], make_mesh((8, 1, 1)))
    checkpointer = Checkpointer(tmp_path / "c", keep=1)
    checkpointer.save(1, state, DATA, Config().to_json())
    checkpointer.wait()

    async def disk_full(*_, **__):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", disk_full)
    checkpointer.save(2, state, DATA, Config().to_json())  # returns: the write is async
    with pytest.raises(OSError, match="No space left on device"):
        checkpointer.wait()
    monkeypatch.undo()
    assert (tmp_path / "c" / "1").is_dir() and not (tmp_path / "c" / "2").exists()
    reopened = Checkpointer(tmp_path / "c")  # what a restarted run sees
    assert reopened.all_steps() == [1]
    reopened.save(2, state, DATA, Config().to_json())  # the leftover is gone by then
    reopened.wait()
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["1", "2"]
