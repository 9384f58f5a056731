"""Bad Hugging Face input is refused with an InputError naming the file and the key or
tensor; nothing is unpickled, and what jaxlm cannot compute exactly is never imported
approximately."""

import json
import struct

import numpy as np
import pytest
from helpers import hf_models

from jaxlm.cli import main
from jaxlm.config import ModelConfig
from jaxlm.errors import InputError
from jaxlm.hf.config_map import hf_config_from_model
from jaxlm.hf.import_hf import check_tensors, read_hf_config
from jaxlm.hf.safetensors_io import SafetensorsCheckpoint, SafetensorsFile


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    hf_models.build("qwen2").save_pretrained(root, safe_serialization=True)
    return root


def _copy(hf_dir, tmp_path):
    for f in hf_dir.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    return tmp_path


def _edit_config(directory, **changes):
    path = directory / "config.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _write_raw(path, header: dict, data: bytes):
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"mlp_bias": True}, "mlp_bias"),
        ({"quantization_config": {"bits": 4}}, "quantization_config"),
        ({"auto_map": {"AutoModel": "x.Y"}}, "auto_map"),
        ({"use_sliding_window": True}, "use_sliding_window"),
        ({"model_type": "gpt2"}, "model_type"),
        ({"rope_parameters": {"rope_type": "longrope", "factor": 4.0}}, "rope_type"),
        (
            {"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "partial_rotary_factor": 0.5}},
            "partial_rotary_factor",
        ),
        ({"rope_parameters": {"rope_type": "dynamic"}}, r"rope_parameters\.factor is missing"),
    ],
)
def test_unsupported_config_is_refused_naming_file_and_key(hf_dir, tmp_path, changes, named):
    directory = _copy(hf_dir, tmp_path)
    _edit_config(directory, **changes)
    with pytest.raises(InputError, match=named) as error:
        read_hf_config(directory)
    assert str(directory / "config.json") in str(error.value)


def test_mistral_sliding_window_clamps_max_seq_len(hf_dir, tmp_path):
    directory = _copy(hf_dir, tmp_path)
    _edit_config(directory, model_type="mistral", sliding_window=512, max_position_embeddings=4096)
    imported = read_hf_config(directory)
    assert imported.model.max_seq_len == 512 and "sliding_window=512" in imported.notes[0]


def test_missing_and_misshapen_tensors_are_named(hf_dir, tmp_path):
    imported = read_hf_config(hf_dir)
    checkpoint = SafetensorsCheckpoint(hf_dir)
    wider = imported.model.__class__(**{**imported.model.__dict__, "d_ff": 128})
    with pytest.raises(InputError, match=r"mlp.gate_proj.weight.*shape \[96, 64\].*\[128, 64\]"):
        check_tensors(checkpoint, wider)
    deeper = imported.model.__class__(**{**imported.model.__dict__, "n_layers": 3})
    with pytest.raises(InputError, match=r"no tensor 'model.layers.2"):
        check_tensors(checkpoint, deeper)
    no_bias = imported.model.__class__(**{**imported.model.__dict__, "attention_bias": False})
    with pytest.raises(InputError, match=r"self_attn.[qkv]_proj.bias' has no place"):
        check_tensors(checkpoint, no_bias)


def test_truncated_file_and_bad_offsets_are_named(hf_dir, tmp_path):
    data = (hf_dir / "model.safetensors").read_bytes()
    truncated = tmp_path / "model.safetensors"
    truncated.write_bytes(data[: len(data) - 100])
    with pytest.raises(
        InputError, match=r"model.safetensors: tensor '.*': data_offsets .* outside"
    ):
        SafetensorsFile(truncated)
    truncated.write_bytes(data[:20])
    with pytest.raises(InputError, match="header length"):
        SafetensorsFile(truncated)
    bad = tmp_path / "bad.safetensors"
    _write_raw(bad, {"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}}, bytes(16))
    with pytest.raises(InputError, match=r"'w': 12 bytes do not hold shape \[2, 2\]"):
        SafetensorsFile(bad)
    _write_raw(bad, {"w": {"dtype": "I64", "shape": [2], "data_offsets": [0, 16]}}, bytes(16))
    with pytest.raises(InputError, match=r"'w': unsupported dtype 'I64'"):
        SafetensorsFile(bad)
    bad.write_bytes(struct.pack("<Q", 5) + b"{nope")
    with pytest.raises(InputError, match="not valid JSON"):
        SafetensorsFile(bad)


def test_index_naming_a_file_outside_the_directory_is_refused(hf_dir, tmp_path):
    directory = _copy(hf_dir, tmp_path)
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"model.norm.weight": "../model.safetensors"}})
    )
    with pytest.raises(InputError, match="not a shard file name"):
        SafetensorsCheckpoint(directory)


def test_pickle_only_checkpoint_is_refused(hf_dir, tmp_path, capsys):
    (tmp_path / "config.json").write_bytes((hf_dir / "config.json").read_bytes())
    # Never opened: a pickle that would run code if it were.
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04cos\nsystem\n.")
    assert (
        main(["convert", "--from-hf", str(tmp_path), str(tmp_path / "out"), "--no-tokenizer"]) == 2
    )
    err = capsys.readouterr().err
    assert "pytorch_model.bin" in err and "safetensors only" in err


def test_directory_without_any_tokenizer_is_refused(hf_dir, tmp_path, capsys):
    # save_pretrained of the model alone wrote neither tokenizer.json nor tokenizer.model.
    assert main(["convert", "--from-hf", str(hf_dir), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{hf_dir}: no tokenizer" in err and "--no-tokenizer" in err


def test_export_refuses_rope_scalings_transformers_lacks():
    for method in ("ntk", "yarn"):
        model = ModelConfig(rope_scaling=method, rope_scaling_factor=2.0, rope_original_max_len=64)
        with pytest.raises(InputError, match=f"rope_scaling={method} has no exact"):
            hf_config_from_model(model, bos_id=1, eos_id=2, pad_id=0, dtype="float32")


def test_bfloat16_round_trip_of_the_reader(tmp_path):
    import ml_dtypes

    from jaxlm.hf.safetensors_io import PendingTensor, write_checkpoint

    value = np.arange(12, dtype=np.float32).reshape(3, 4).astype(ml_dtypes.bfloat16)
    tensor = PendingTensor("w", (3, 4), value.dtype, lambda: value)
    write_checkpoint(tmp_path, [tensor], max_shard_bytes=10**6)
    read = SafetensorsCheckpoint(tmp_path).tensor("w")
    assert read.dtype == value.dtype and np.array_equal(read, value)
