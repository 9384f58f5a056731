"""Issue 17 items 3-5: damage that used to load silently, or was mistaken for a mismatch.

- A step whose `checksum/` item is gone is damage when the step was written with
  one (its Orbax step metadata lists the item): fall back, never restore it unverified.
  Steps written before jaxlm recorded checksums still restore, with a warning.
- A step whose `state/_METADATA` is gone is damage (fall back), not "does not fit".
- Params directories (`jaxlm export`, `convert --from-hf`, `save_params`) carry
  checksums too; every load verifies them, also when the arrays are cast on load,
  and refuses damage in one line naming the directory and the arrays.

Damage is made deterministic as in tests/helpers/checkpoint_damage.py: another save's
intact arrays under this one's name (reads back without error, only checksums tell),
or a truncated file (a read error).
"""

import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from helpers.checkpoint_damage import truncate_largest_chunk

from jaxlm import cli
from jaxlm.checkpointing.manager import Checkpointer, NoRestorableCheckpointError
from jaxlm.checkpointing.params_io import load_init_params, load_params, save_params
from jaxlm.config import Config, DataConfig
from jaxlm.data.tokenizer import train_tokenizer
from jaxlm.errors import InputError
from jaxlm.inference.loading import load_model
from jaxlm.models.params import init_params
from jaxlm.presets import get_preset

V = 320
MODEL = dataclasses.replace(get_preset("tiny"), vocab_size=V)
CONFIG = Config(model=MODEL, data=DataConfig(tokenizer_vocab_size=V, seq_len=32))
TEXT = "The quick brown fox jumps over the lazy dog while the cat sleeps.\n" * 40


# ------------------------------------------------------------------ training checkpoints


def small_state(scale: float) -> dict:
    return {
        "params": {"w": jnp.arange(24.0).reshape(4, 6) * scale, "b": jnp.full((6,), scale)},
        "step": jnp.int32(int(scale)),
    }


TARGET = jax.eval_shape(lambda: small_state(1.0))


def host(tree):
    return jax.tree.map(np.asarray, tree)


@pytest.fixture
def two_steps(tmp_path):
    """Steps 2 and 4 (different values) with checksums, as jaxlm writes them today."""
    directory = tmp_path / "checkpoints"
    checkpointer = Checkpointer(directory)
    for step in (2, 4):
        checkpointer.save(step, small_state(step), {"at": step}, CONFIG.to_json())
    checkpointer.wait()
    checkpointer.close()
    return directory


def restore_latest(directory):
    warnings = []
    checkpointer = Checkpointer(directory, warn=warnings.append)
    try:
        return checkpointer.restore_latest_good(TARGET), warnings
    finally:
        checkpointer.close()


def assert_fell_back_to_2(directory, restored, warnings, reason):
    assert restored.step == 2 and restored.verified and restored.data["at"] == 2
    for a, b in zip(
        jax.tree.leaves(restored.state), jax.tree.leaves(host(small_state(2))), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    assert f"{directory / '4'} is unusable ({reason}" in warnings[0], warnings
    assert (directory / "4.corrupt").is_dir() and not (directory / "4").exists()


def test_a_step_missing_its_checksum_item_falls_back(two_steps):
    """Item 3: today step 4 is restored "without verification", so damaged arrays load."""
    shutil.rmtree(two_steps / "4" / "checksum")
    restored, warnings = restore_latest(two_steps)
    assert_fell_back_to_2(two_steps, restored, warnings, "the checksum item is missing")


def test_a_step_missing_checksum_and_step_metadata_falls_back(two_steps):
    """Without Orbax's step metadata nothing shows the step predates checksums."""
    shutil.rmtree(two_steps / "4" / "checksum")
    (two_steps / "4" / "_CHECKPOINT_METADATA").unlink()
    restored, warnings = restore_latest(two_steps)
    assert_fell_back_to_2(two_steps, restored, warnings, "the checksum item is missing")


def test_the_only_step_missing_its_checksum_is_not_restored(two_steps):
    shutil.rmtree(two_steps / "2")
    shutil.rmtree(two_steps / "4" / "checksum")
    with pytest.raises(NoRestorableCheckpointError, match="step 4: the checksum item is missing"):
        restore_latest(two_steps)
    assert (two_steps / "4").is_dir()  # nothing restorable: nothing moved


def test_a_step_written_before_checksums_still_restores_with_a_warning(tmp_path):
    """The layout jaxlm wrote before checksums existed (three items, StandardSave)."""
    directory = tmp_path / "checkpoints"
    manager = ocp.CheckpointManager(directory, item_names=("state", "data", "config"))
    manager.save(
        3,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(small_state(3)),
            data=ocp.args.JsonSave({"process_0": {"at": 3}}),
            config=ocp.args.JsonSave(CONFIG.to_dict()),
        ),
    )
    manager.wait_until_finished()
    manager.close()
    restored, warnings = restore_latest(directory)
    assert restored.step == 3 and not restored.verified and restored.data == {"at": 3}
    assert warnings == [
        f"checkpoint {directory / '3'} has no checksums (written before jaxlm recorded "
        "them): restored without verification"
    ]


def test_a_step_missing_its_state_metadata_falls_back(two_steps):
    """Item 5: today every parameter is "not in the checkpoint" and the run exits."""
    (two_steps / "4" / "state" / "_METADATA").unlink()
    restored, warnings = restore_latest(two_steps)
    assert_fell_back_to_2(
        two_steps, restored, warnings, "the state item's metadata (state/_METADATA) is missing"
    )


# ---------------------------------------------------------------------- params directories


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Params directories of two different random models (fp32) and of each as bf16."""
    root = tmp_path_factory.mktemp("params")
    tokenizer = train_tokenizer([TEXT], root / "tok", vocab_size=V).path
    made = {}
    for seed in (1, 2):
        params = jax.tree.map(np.asarray, init_params(MODEL, jax.random.key(seed)))
        made[seed] = params
        save_params(root / f"fp32-{seed}", params, CONFIG, tokenizer=tokenizer)
        bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
        save_params(root / f"bf16-{seed}", bf16, CONFIG, tokenizer=tokenizer)
    return root, made


def damaged_copy(exports, tmp_path, name="fp32"):
    """A copy of export 1 whose params/ are export 2's: readable, but not what was saved."""
    root, _ = exports
    copy = tmp_path / f"{name}-damaged"
    shutil.copytree(root / f"{name}-1", copy)
    shutil.rmtree(copy / "params")
    shutil.copytree(root / f"{name}-2" / "params", copy / "params")
    return copy


def test_intact_params_directories_load_verified(exports, capsys):
    root, made = exports
    loaded, _ = load_params(root / "fp32-1")
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(made[1]), strict=True):
        np.testing.assert_array_equal(a, b)
    loaded, _ = load_params(root / "bf16-1")  # cast to the fp32 model's dtype
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(made[1]), strict=True):
        assert a.dtype == np.float32
        np.testing.assert_array_equal(a, b.astype(jnp.bfloat16).astype(np.float32))
    assert capsys.readouterr().err == ""  # verified: no warning


@pytest.mark.parametrize("name", ["fp32", "bf16"])
def test_changed_params_are_refused_naming_directory_and_arrays(exports, tmp_path, name):
    """Item 4: today they load silently (bf16: also the leaves cast to fp32 on load)."""
    copy = damaged_copy(exports, tmp_path, name)
    with pytest.raises(InputError) as info:
        load_params(copy)
    message = str(info.value)
    assert message.startswith(f"{copy}: damaged params directory: checksum mismatch in embed")
    assert "layers/w_down" in message and "\n" not in message


def test_four_flipped_bytes_in_params_are_refused(exports, tmp_path):
    """The issue's case: today `w_down` loads off by 0.14 without a word. Where the
    flip lands decides whether Orbax fails to read or reads other values; refused
    either way."""
    root, _ = exports
    copy = tmp_path / "flipped"
    shutil.copytree(root / "fp32-1", copy)
    files = [p for p in (copy / "params").rglob("*") if p.is_file() and p.parent.name == "d"]
    largest = max(files, key=lambda p: p.stat().st_size)
    data = bytearray(largest.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4] = bytes(b ^ 0xFF for b in data[middle : middle + 4])
    largest.write_bytes(bytes(data))
    with pytest.raises(InputError, match=rf"^{copy}: damaged params directory: "):
        load_params(copy)


def test_truncated_params_are_refused_in_one_line(exports, tmp_path):
    root, _ = exports
    copy = tmp_path / "truncated"
    shutil.copytree(root / "fp32-1", copy)
    truncate_largest_chunk(copy, "params")
    with pytest.raises(InputError, match=rf"^{copy}: damaged params directory: .*Error"):
        load_params(copy)


def test_a_missing_checksum_file_is_damage(exports, tmp_path):
    root, _ = exports
    copy = tmp_path / "no-checksum"
    shutil.copytree(root / "fp32-1", copy)
    (copy / "checksum.json").unlink()
    with pytest.raises(InputError, match=rf"^{copy}: damaged params directory: checksum.json"):
        load_params(copy)


def test_a_changed_config_is_damage(exports, tmp_path):
    root, _ = exports
    copy = tmp_path / "config-changed"
    shutil.copytree(root / "fp32-1", copy)
    config = json.loads((copy / "config.json").read_text())
    config["train"]["steps"] += 1  # still a valid config, but not the one saved
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match=r"config.json does not match its checksum"):
        load_params(copy)


def test_a_params_directory_written_before_checksums_loads_with_a_warning(
    exports, tmp_path, capsys
):
    """The layout save_params wrote before: params/ and config.json, no marker."""
    _, made = exports
    old = tmp_path / "old"
    ocp.PyTreeCheckpointer().save(old / "params", made[1])
    (old / "config.json").write_text(CONFIG.to_json() + "\n")
    loaded, _ = load_params(old)
    np.testing.assert_array_equal(loaded["embed"][...], made[1]["embed"][...])
    err = capsys.readouterr().err
    assert err == (
        f"jaxlm: warning: {old} has no checksums (written before jaxlm recorded them): "
        "loaded without verification\n"
    )


def test_init_from_and_inference_refuse_changed_params(exports, tmp_path, capsys):
    """The same check on the `train.init_from`, generate/chat/eval and convert paths."""
    copy = damaged_copy(exports, tmp_path, "bf16")
    needle = f"{copy}: damaged params directory: checksum mismatch in embed"
    with pytest.raises(InputError, match=needle):
        load_init_params(copy, MODEL)
    with pytest.raises(InputError, match=needle):
        load_model(copy)
    assert cli.main(["generate", str(copy), "The quick", "--max-new-tokens", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"jaxlm: error: {needle}") and err.count("\n") == 1, err
    hf_out = tmp_path / "hf"
    assert cli.main(["convert", str(copy), str(hf_out), "--to-hf"]) == 2
    assert needle in capsys.readouterr().err
    assert not (hf_out / "config.json").exists()
