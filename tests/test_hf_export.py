"""`jaxlm convert --to-hf`, and back: what transformers loads is the jaxlm model.

A random jaxlm model (every weight, norm scale and bias drawn, not left at 1 or 0)
with a tiny trained multilingual tokenizer is exported for each architecture jaxlm
chooses (Llama with llama3 RoPE and tied embeddings, Qwen2 with q/k/v biases, Qwen3
with QK-norm and biases) and checked:

- `AutoModelForCausalLM.from_pretrained` loads it (no custom code) with the expected
  architecture, and its fp32 logits equal jaxlm's within 1e-4;
- importing the export again (`--from-hf`) gives bitwise the same params and config;
- with a small --max-shard-size the weights are split into shards with an index,
  and an import onto a (2, 2, 2) mesh puts every array in its training sharding;
- `AutoTokenizer.from_pretrained` encodes a multilingual sample (and decodes it)
  exactly as jaxlm's tokenizer does, and `apply_chat_template(..., tokenize=True)`
  equals jaxlm's chat prompt encoding.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from jaxlm.checkpointing.params_io import load_params, save_params
from jaxlm.cli import main
from jaxlm.config import Config, DataConfig, ModelConfig
from jaxlm.data.chat import Message, encode_chat_prompt
from jaxlm.data.tokenizer import Tokenizer, train_tokenizer
from jaxlm.hf.import_hf import import_params
from jaxlm.hf.safetensors_io import INDEX_FILE
from jaxlm.models.params import abstract_model, init_params, param_shardings
from jaxlm.sharding import make_mesh

VOCAB = 384
SAMPLE = (
    "Hello world!  The quick brown fox.\n"
    "Größe, Übermut und Äpfel: schön süß.\n"
    "你好，世界。今天天气很好。\n"
    "こんにちは、世界。カタカナとひらがな。\n"
    "Привет, мир! Как дела?\n"
    "Emoji: 🎉👍🏽 ✨\n"
    "def f(x):\n\treturn  x  +  1\n\n"
    "    four leading spaces\n"
    "# a comment\n#  another\n"
)
CASES = {
    "llama3_tied": dict(
        tie_embeddings=True,
        rope_scaling="llama3",
        rope_scaling_factor=4.0,
        rope_original_max_len=16,
        rope_theta=500.0,
    ),
    "qwen2_bias": dict(tie_embeddings=False, attention_bias=True),
    "qwen3_norm_bias": dict(tie_embeddings=False, qk_norm=True, attention_bias=True),
}
ARCHITECTURE = {
    "llama3_tied": "LlamaForCausalLM",
    "qwen2_bias": "Qwen2ForCausalLM",
    "qwen3_norm_bias": "Qwen3ForCausalLM",
}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    return train_tokenizer([SAMPLE * 30], root / "tok", vocab_size=VOCAB)


def _random_params(cfg: ModelConfig) -> nnx.State:
    params = init_params(cfg, jax.random.key(0))
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    drawn = [
        (1.0 if leaf.ndim <= 2 and leaf.shape[-1] in (cfg.d_model, 16) else 0.0)
        + 0.2 * jax.random.normal(k, leaf.shape, leaf.dtype)
        for k, leaf in zip(keys, leaves, strict=True)
    ]
    return jax.tree.unflatten(treedef, [np.asarray(x) for x in drawn])


@pytest.fixture(scope="module")
def export_case(tmp_path_factory, tokenizer):
    """case -> (case, root, Config, params), each case exported once per module."""
    done = {}

    def export(case):
        if case not in done:
            done[case] = _export(case, tmp_path_factory.mktemp(case), tokenizer)
        return done[case]

    return export


def _export(case, root, tokenizer):
    model = ModelConfig(
        vocab_size=VOCAB, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=96, **CASES[case]
    )
    cfg = Config(model=model, data=DataConfig(tokenizer=str(tokenizer.path), seq_len=64))
    params = _random_params(model)
    save_params(root / "jaxlm", params, cfg, tokenizer=tokenizer.path)
    shard = ["--max-shard-size", "40KB"] if case == "qwen2_bias" else []
    assert main(["convert", "--to-hf", str(root / "jaxlm"), str(root / "hf"), *shard]) == 0
    return case, root, cfg, params


@pytest.fixture(params=list(CASES))
def exported(request, export_case):
    return export_case(request.param)


def _logits(cfg, params, tokens):
    graphdef, _ = abstract_model(cfg.model)
    return np.asarray(jax.jit(lambda p, t: nnx.merge(graphdef, p)(t))(params, jnp.asarray(tokens)))


def test_transformers_loads_the_export_and_computes_the_same_logits(exported):
    case, root, cfg, params = exported
    hf_config = json.loads((root / "hf" / "config.json").read_text())
    assert hf_config["architectures"] == [ARCHITECTURE[case]]
    reference = transformers.AutoModelForCausalLM.from_pretrained(root / "hf").eval()
    assert type(reference).__name__ == ARCHITECTURE[case]
    tokens = np.random.default_rng(0).integers(0, VOCAB, (2, 40)).astype(np.int32)
    with torch.no_grad():
        theirs = reference(torch.as_tensor(tokens, dtype=torch.long)).logits.numpy()
    ours = _logits(cfg, params, tokens)
    assert np.abs(theirs).max() > 1.0
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4, err_msg=case)


def test_export_then_import_is_the_identity(exported):
    case, root, cfg, params = exported
    assert main(["convert", "--from-hf", str(root / "hf"), str(root / "back")]) == 0
    assert (root / "back" / "checksum.json").is_file()  # an import is verified like an export
    back, back_cfg = load_params(root / "back")
    assert back_cfg.model == cfg.model, case
    assert jax.tree.structure(back) == jax.tree.structure(params)
    for ours, theirs in zip(jax.tree.leaves(params), jax.tree.leaves(back), strict=True):
        assert ours.dtype == theirs.dtype and np.array_equal(ours, theirs), case
    # The tokenizer came back too, byte for byte.
    assert (root / "back" / "tokenizer.model").read_bytes() == (
        root / "jaxlm" / "tokenizer.model"
    ).read_bytes()


def test_sharded_safetensors_and_sharded_mesh_import(export_case):
    _, root, cfg, params = export_case("qwen2_bias")  # exported with --max-shard-size 40KB
    index = json.loads((root / "hf" / INDEX_FILE).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 3 and all((root / "hf" / s).is_file() for s in shards)
    assert not (root / "hf" / "model.safetensors").exists()
    mesh = make_mesh((2, 2, 2))
    imported = import_params(root / "hf", cfg.model, mesh)
    expected = param_shardings(abstract_model(cfg.model)[1], mesh)
    flat_expected = dict(nnx.to_flat_state(expected))
    for path, var in nnx.to_flat_state(imported):
        array = var.get_value()
        assert array.sharding == flat_expected[path].get_value(), path
        want = flat_expected[path].get_value().shard_shape(array.shape)
        assert {s.data.shape for s in array.addressable_shards} == {want}, path
    leaves = zip(jax.tree.leaves(params), jax.tree.leaves(imported), strict=True)
    assert all(np.array_equal(a, np.asarray(b)) for a, b in leaves)
    # The (2, 2, 2) mesh really splits: wq's embed axis over fsdp, heads over tensor.
    wq = imported["layers"]["wq"].get_value()
    assert wq.addressable_shards[0].data.shape == (2, 32, 2, 16)


MULTILINGUAL = [
    "Hello world, this is English.",
    "  leading spaces and trailing   ",
    "Größe über alles: Äpfel, Öl, Übung, ß.",
    "中文测试：你好，世界！",
    "日本語のテキスト、カタカナ。",
    "Русский текст: привет, мир.",
    "emoji 🎉👍🏽🧪 mixed",
    "code:\n\tdef f(x):\n\t\treturn  x   +  1\n\n    indented\r\n",
    "digits 1234567890 and symbols <>&%$#@!",
]


def test_exported_tokenizer_encodes_exactly_as_jaxlm(export_case, tokenizer):
    _, root, _, _ = export_case("llama3_tied")  # the tokenizer files are the same for all
    theirs = transformers.AutoTokenizer.from_pretrained(root / "hf")
    for text in [*MULTILINGUAL, "\n".join(MULTILINGUAL)]:
        ids = tokenizer.encode(text)
        assert theirs.encode(text, add_special_tokens=False) == ids, text
        # BOS first, as jaxlm starts documents and prompts.
        assert theirs(text)["input_ids"] == [tokenizer.bos_id, *ids], text
        assert theirs.decode(ids) == text
    assert theirs.bos_token_id == 1 and theirs.eos_token_id == 2 and theirs.pad_token_id == 0


def test_exported_chat_template_matches_jaxlm_chat_encoding(export_case, tokenizer):
    _, root, _, _ = export_case("llama3_tied")  # the tokenizer files are the same for all
    theirs = transformers.AutoTokenizer.from_pretrained(root / "hf")
    # A piece that spans a newline and what follows it: a content starting with the
    # rest of it would merge with the role header's newline if encoded as one text.
    spanning = [
        p
        for p in map(tokenizer.piece, range(tokenizer.vocab_size))
        if p.startswith("\n") and p[1:2] not in ("", "\n")
    ]
    assert spanning, "the test tokenizer should have a piece like '\\n#'"
    messages = [
        {"role": "system", "content": "Sei kurz. 你好"},
        {"role": "user", "content": spanning[0][1:] + " a comment?\nПривет 🎉"},
        {"role": "assistant", "content": "  two spaces, then\ttab"},
        {"role": "user", "content": "# and again"},
    ]
    ours = encode_chat_prompt([Message(m["role"], m["content"]) for m in messages], tokenizer)
    rendered = theirs.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    ids = rendered["input_ids"] if hasattr(rendered, "keys") else rendered
    assert list(ids) == list(ours)
    assert isinstance(Tokenizer.load(root / "jaxlm" / "tokenizer.model"), Tokenizer)
