"""LoRA adapters exported alone and applied to their base: generate, chat, eval and PEFT.

A LoRA run's workdir is built with the Checkpointer directly (a random `tiny` base,
saved as a params directory and named by train.init_from, and random nonzero
adapters on every projection), so no training is needed. From it:

- `jaxlm export --adapters-only` records the base's fingerprint; `jaxlm generate BASE
  --adapters DIR` (subprocess, from a folder outside the repository, greedy) prints
  exactly what `jaxlm generate MERGED` prints, and not what the base alone prints;
- `jaxlm eval` and `jaxlm chat` with --adapters equal the merged export's, and
  `--quantize int8` with them quantizes the merged model;
- a different base (another init, or the right one with one weight changed) and an
  adapters directory given as MODEL are refused with one-line errors;
- `jaxlm convert --to-peft` writes a directory that peft applies to the `--to-hf`
  export of the base, giving the merged model's logits.
"""

import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxlm import cli
from jaxlm.checkpointing.adapters_io import BASE_FILE, base_fingerprint
from jaxlm.checkpointing.manager import Checkpointer
from jaxlm.checkpointing.params_io import load_params, save_params
from jaxlm.config import Config, DataConfig, OptimConfig, TrainConfig
from jaxlm.data.tokenizer import train_tokenizer
from jaxlm.inference.loading import load_model
from jaxlm.models.params import init_params
from jaxlm.presets import get_preset
from jaxlm.sharding import make_mesh
from jaxlm.training.adapters import create_lora_train_state
from jaxlm.training.optim import make_optimizer

V = 384
MODEL = dataclasses.replace(get_preset("tiny"), vocab_size=V, max_seq_len=96)
TARGETS = "wq,wk,wv,wo,w_gate,w_up,w_down"
LORA = dataclasses.replace(MODEL, lora_rank=4, lora_alpha=8.0, lora_targets=TARGETS)
TEXT = (
    "你好，世界。今天天气很好，我们去公园散步吧。\n"
    "The quick brown fox jumps over the lazy dog 🎉👍.\n"
    "5加3等于几？答案是8。\n"
) * 30
PROMPTS = ["你好，世界", "The quick 🎉"]


def _conversations(path):
    records = [
        {
            "conversations": [
                {"role": "system", "content": "你是一个乐于助人的助手。"},
                {"role": "user", "content": "5加3等于几？"},
                {"role": "assistant", "content": "等于8。🎉"},
                {"role": "user", "content": "谢谢！"},
                {"role": "assistant", "content": "不客气 👍"},
            ]
        },
        {
            "conversations": [
                {"role": "user", "content": "The quick brown fox?"},
                {"role": "assistant", "content": "jumps over the lazy dog."},
            ]
        },
    ]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), "utf-8")
    return path


def _randomized(state, seed, std):
    """`state` with every leaf drawn from N(0, std^2) (numpy: no eager op per leaf)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: (std * rng.standard_normal(x.shape)).astype(x.dtype), state)


def _init(model, seed):
    """init_params as numpy, jitted: one compile instead of an eager op per weight."""
    return jax.tree.map(np.asarray, jax.jit(lambda k: init_params(model, k))(jax.random.key(seed)))


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """{name: directory}: base, other (another base), run (LoRA workdir), adapters, merged."""
    root = tmp_path_factory.mktemp("lora")
    tokenizer = train_tokenizer([TEXT], root / "tok", vocab_size=V).path
    data = DataConfig(tokenizer_vocab_size=V, seq_len=32)
    base = _init(MODEL, 3)
    save_params(root / "base", base, Config(model=MODEL, data=data), tokenizer=tokenizer)
    other = _init(MODEL, 4)
    save_params(root / "other", other, Config(model=MODEL, data=data), tokenizer=tokenizer)

    run = root / "run"
    run.mkdir()
    shutil.copyfile(tokenizer, run / "tokenizer.model")
    shutil.copyfile(tokenizer.with_suffix(".json"), run / "tokenizer.json")
    cfg = Config(model=LORA, data=data, train=TrainConfig(init_from=str(root / "base")))
    optimizer = make_optimizer(OptimConfig(), 10)
    mesh = make_mesh((1, 1, 1), jax.devices()[:1])
    state, _ = create_lora_train_state(LORA, optimizer, mesh, jax.random.key(5), base=base)
    # Trained adapters stand-in: B nonzero, so the adapters change the model.
    state = state.replace(params=_randomized(state.params, 6, 0.3))
    checkpointer = Checkpointer(run / "checkpoints")
    checkpointer.save(2, state, {"iterator": {}}, cfg.to_json())
    checkpointer.wait()
    checkpointer.close()
    assert cli.main(["export", str(run), str(root / "adapters"), "--adapters-only"]) == 0
    assert cli.main(["export", str(run), str(root / "merged")]) == 0
    names = ("base", "other", "run", "adapters", "merged")
    return {name: root / name for name in names} | {"root": root}


def _jaxlm(cwd, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX", "JAXLM_"))}
    env.update(JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, "-m", "jaxlm.cli", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _generated(cwd, name, model, *extra):
    """[(completion, new tokens)] of `jaxlm generate` on PROMPTS, run in a subprocess."""
    out = cwd / f"{name}.json"
    args = ["generate", model, *PROMPTS, "--max-new-tokens", "12", "--json", out, *extra]
    done = _jaxlm(cwd, *args)
    assert done.returncode == 0, done.stderr
    return [(r["completion"], r["new_tokens"]) for r in json.loads(out.read_text())["results"]]


def _generated_here(tmp_path, model, *extra):
    """The same, in this process (where only the comparison's other side matters)."""
    out = tmp_path / "here.json"
    args = ["generate", str(model), *PROMPTS, "--max-new-tokens", "12", "--json", str(out)]
    assert cli.main([*args, *map(str, extra)]) == 0
    return [(r["completion"], r["new_tokens"]) for r in json.loads(out.read_text())["results"]]


def test_generate_with_adapters_on_their_base_equals_the_merged_export(exports, tmp_path):
    record = json.loads((exports["adapters"] / BASE_FILE).read_text())
    base, _ = load_params(exports["base"])
    assert record["fingerprint"] == base_fingerprint(base)
    assert record["trained_from"] == str(exports["base"])

    with_adapters = _generated(tmp_path, "a", exports["base"], "--adapters", exports["adapters"])
    merged = _generated(tmp_path, "m", exports["merged"])
    assert with_adapters == merged
    # The adapters matter: the base alone continues the prompts otherwise.
    assert _generated_here(tmp_path, exports["base"]) != merged


def _eval_json(tmp_path, name, model, *extra):
    out = tmp_path / f"{name}.json"
    data = f"jsonl:{_conversations(tmp_path / 'chat.jsonl')}"
    args = ["eval", str(model), "--format", "chat", "--data", data, "--seq-len", "96"]
    assert cli.main([*args, "--json", str(out), *map(str, extra)]) == 0
    return [
        {k: v for k, v in source.items() if k != "seconds"}
        for source in json.loads(out.read_text())["sources"]
    ]


def test_eval_and_chat_with_adapters_equal_the_merged_export(
    exports, tmp_path, monkeypatch, capsys
):
    with_adapters = _eval_json(tmp_path, "a", exports["base"], "--adapters", exports["adapters"])
    merged = _eval_json(tmp_path, "m", exports["merged"])
    assert with_adapters[0]["tokens"] > 0 and with_adapters == merged
    assert _eval_json(tmp_path, "b", exports["base"])[0]["loss"] != merged[0]["loss"]

    capsys.readouterr()

    def chat(*args):
        monkeypatch.setattr("sys.stdin", io.StringIO("你好！🎉\n5加3等于几？\n/quit\n"))
        assert cli.main(["chat", *map(str, args), "--max-new-tokens", "8"]) == 0
        return capsys.readouterr().out

    assert chat(exports["base"], "--adapters", exports["adapters"]) == chat(exports["merged"])


def _error(capsys, *args) -> str:
    assert cli.main([*map(str, args)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jaxlm: error: "), lines
    return lines[0]


def test_int8_with_adapters_quantizes_the_merged_model(exports):
    """--quantize int8 --adapters: merged first, then quantized (jaxlm.inference.quantize),
    so it is the merged export's int8 model, bit for bit, and not the base's."""
    with_adapters = load_model(exports["base"], adapters=exports["adapters"], quantize="int8")
    merged = load_model(exports["merged"], quantize="int8")
    base = load_model(exports["base"], quantize="int8")
    assert with_adapters.params["layers"]["wq"].get_value().dtype == np.int8
    pairs = zip(jax.tree.leaves(with_adapters.params), jax.tree.leaves(merged.params), strict=True)
    for a, b in pairs:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    wq = base.params["layers"]["wq_scale"].get_value()
    assert not np.array_equal(wq, merged.params["layers"]["wq_scale"].get_value())


def test_adapters_on_another_base_are_refused_naming_their_base(exports, tmp_path, capsys):
    adapters = exports["adapters"]
    # Another init of the same shape: only the fingerprint tells.
    message = _error(capsys, "generate", exports["other"], "x", "--adapters", adapters)
    assert "fingerprint" in message and str(exports["base"]) in message
    # The right base with one weight nudged is another base too.
    base, cfg = load_params(exports["base"])
    base["final_norm"].set_value(base["final_norm"].get_value() + np.float32(1e-2))
    save_params(tmp_path / "nudged", base, cfg, tokenizer=exports["base"] / "tokenizer.model")
    message = _error(capsys, "eval", tmp_path / "nudged", "--adapters", adapters)
    assert "fingerprint" in message
    # Another shape is named by its keys.
    wide = dataclasses.replace(MODEL, d_ff=MODEL.resolved_d_ff * 2)
    save_params(
        tmp_path / "wide",
        _init(wide, 3),
        dataclasses.replace(cfg, model=wide),
        tokenizer=exports["base"] / "tokenizer.model",
    )
    message = _error(capsys, "chat", tmp_path / "wide", "--adapters", adapters)
    assert "model.d_ff" in message
    # The adapters as MODEL: the message says how to apply them.
    assert "--adapters" in _error(capsys, "generate", adapters, "x")
    # What is not an adapters-only export with its record says what to give instead.
    right = exports["base"]
    assert "--adapters-only" in _error(capsys, "generate", right, "x", "--adapters", exports["run"])
    message = _error(capsys, "generate", right, "x", "--adapters", exports["merged"])
    assert "not LoRA adapters" in message
    shutil.copytree(adapters, tmp_path / "old")
    (tmp_path / "old" / BASE_FILE).unlink()  # as exported before adapters recorded their base
    message = _error(capsys, "generate", right, "x", "--adapters", tmp_path / "old")
    assert "export the LoRA run again with --adapters-only" in message
    # A bfloat16 copy of the right base is the right base (fingerprints round to bf16).
    right, _ = load_params(exports["base"])
    rounded = jax.tree.map(lambda x: np.asarray(x).astype(jax.numpy.bfloat16), right)
    assert base_fingerprint(rounded) == base_fingerprint(right)
    assert base_fingerprint(jax.tree.map(jax.numpy.asarray, right)) == base_fingerprint(right)


def test_peft_applies_the_converted_adapters_to_the_hf_base_like_the_merged_model(
    exports, tmp_path
):
    """peft adds the branch unmerged, x W^T + s (x A^T) B^T, where jaxlm's merged model
    computes x (W + s A B), and torch and XLA sum in other orders: in float32 they differ
    by rounding only (measured 1e-5 on logits of magnitude 0.5 to 1.5), so 5e-5, while
    the adapters move the logits by more than 0.1. A wrong scale, transpose or name
    moves them by that much."""
    peft = pytest.importorskip("peft")  # the hf extra; torch loads only for this test
    import torch
    import transformers

    hf, adapters = tmp_path / "hf", tmp_path / "peft"
    assert cli.main(["convert", "--to-hf", str(exports["base"]), str(hf)]) == 0
    assert cli.main(["convert", "--to-peft", str(exports["adapters"]), str(adapters)]) == 0
    architectures = json.loads((hf / "config.json").read_text())["architectures"]
    assert architectures == ["LlamaForCausalLM"]  # tiny: GQA (4 query, 2 KV heads), untied
    config = json.loads((adapters / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8.0
    assert sorted(config["target_modules"]) == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )

    tokens = np.random.default_rng(0).integers(0, V, (2, 40))
    base = transformers.AutoModelForCausalLM.from_pretrained(hf).eval()
    with torch.no_grad():
        plain = base(torch.as_tensor(tokens)).logits.numpy()
        model = peft.PeftModel.from_pretrained(base, adapters).eval()
        theirs = model(torch.as_tensor(tokens)).logits.numpy()
    merged = load_model(exports["merged"])
    ours = np.asarray(merged.module()(jax.numpy.asarray(tokens, jax.numpy.int32)))
    assert np.abs(ours - plain).max() > 0.1  # the adapters move the logits
    np.testing.assert_allclose(theirs, ours, rtol=0, atol=5e-5)


EXPERIMENT = '''"""A tiny model on my own MiniMind-format files."""

from jaxlm.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig


def get_config() -> Config:
    return Config(
        name="mine",
        model=ModelConfig(
            vocab_size=384, d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, max_seq_len=128
        ),
        data=DataConfig(
            sources="jsonl:pretrain.jsonl",
            tokenizer="tok.model",
            tokenizer_vocab_size=384,
            seq_len=128,
            batch_size=4,
            eval_max_docs=16,
        ),
        optim=OptimConfig(lr=1e-2, warmup_steps=0),
        train=TrainConfig(steps=4, eval_every=0, progress_bar=False, generate_prompt=""),
    )
'''


# Slow: 70 s (200 s on a busy 2-core machine) of subprocesses. By default,
# test_generate_with_adapters_on_their_base_equals_the_merged_export checks the same
# equality on a checkpoint built in-process.
@pytest.mark.slow
def test_a_user_trains_lora_and_generates_with_the_adapters_on_the_base(tmp_path):
    """From an empty folder: tokenizer, pretrain, LoRA SFT, both exports, generate."""
    lines = TEXT.splitlines()
    (tmp_path / "pretrain.jsonl").write_text(
        "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in lines), "utf-8"
    )
    sft = _conversations(tmp_path / "sft.jsonl")
    sft.write_text(sft.read_text("utf-8") * 20, "utf-8")
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "mine.py").write_text(EXPERIMENT)

    def ok(*args):
        done = _jaxlm(tmp_path, *args)
        assert done.returncode == 0, (args, done.stdout[-2000:], done.stderr[-2000:])
        return done

    ok("tokenizer", "train", "jsonl:pretrain.jsonl", "--out", "tok", "--vocab-size", "384")
    ok("train", "mine", "--workdir", "runs/base")
    ok("export", "runs/base", "exports/base")
    lora = ["--set", "model.lora_rank=4", "--set", "model.lora_alpha=8"]
    chat = ["--set", "data.format=chat", "--set", "data.sources=jsonl:sft.jsonl"]
    chat += ["--set", "data.val_fraction=0.2"]
    init = ["--set", "train.init_from=exports/base", "--set", "optim.lr=0.05"]
    log = ok("train", "mine", "--workdir", "runs/lora", *lora, *chat, *init).stdout
    assert "LoRA rank 4 on wq,wk,wv,wo,w_gate,w_up,w_down" in log
    ok("export", "runs/lora", "exports/adapters", "--adapters-only")
    ok("export", "runs/lora", "exports/merged")

    with_adapters = _generated(tmp_path, "a", "exports/base", "--adapters", "exports/adapters")
    assert with_adapters == _generated(tmp_path, "m", "exports/merged")
    assert with_adapters != _generated(tmp_path, "b", "exports/base")
    # Adapters on another base: one line, naming the base they belong to.
    ok("train", "mine", "--workdir", "runs/other", "--set", "train.seed=7")
    done = _jaxlm(tmp_path, "generate", "runs/other", "x", "--adapters", "exports/adapters")
    errors = [x for x in done.stderr.splitlines() if x.startswith("jaxlm: error: ")]
    assert done.returncode == 2 and len(errors) == 1, done.stderr
    assert "fingerprint" in errors[0] and errors[0].endswith("their base: exports/base")
