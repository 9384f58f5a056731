"""Growing the vocabulary of params and checkpoints (`jaxlm checkpoint grow-vocab`).

A tiny model (the `tiny` preset, untied, and a tied variant) with a vocabulary
sized to a tokenizer trained here: after growth the old rows are bit-identical, the
logits over old ids are unchanged for text of old ids, and the new rows are the mean.
"""

import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxlm import cli
from jaxlm.checkpointing.manager import Checkpointer
from jaxlm.checkpointing.params_io import load_params
from jaxlm.config import Config, DataConfig, OptimConfig
from jaxlm.data.tokenizer import Tokenizer, train_tokenizer
from jaxlm.data.tokenizer_extend import extend_tokenizer
from jaxlm.errors import InputError
from jaxlm.models.params import abstract_model, init_params, param_shardings
from jaxlm.models.vocab_resize import grow_vocab
from jaxlm.presets import get_preset
from jaxlm.sharding import make_mesh
from jaxlm.training.optim import make_optimizer
from jaxlm.training.state import create_train_state

V, V_NEW = 320, 400
UNTIED = dataclasses.replace(get_preset("tiny"), vocab_size=V)
TIED = dataclasses.replace(UNTIED, tie_embeddings=True)
TOKENS = jnp.array([[1, 5, 77, 300, 2, 9, 319, 0], [4, 4, 8, 15, 16, 23, 42, 5]], jnp.int32)

ENGLISH = "The quick brown fox jumps over the lazy dog while the cat sleeps.\n" * 40
CHINESE = "我们用中文数据继续训练模型，词表扩展以后旧的编号不变。今天天气很好。\n" * 40


def logits(cfg, params, tokens=TOKENS):
    graphdef, _ = abstract_model(cfg)
    return np.asarray(nnx.merge(graphdef, params)(tokens))


def host(params):
    return jax.tree.map(np.asarray, params)


@pytest.mark.parametrize("cfg", [UNTIED, TIED], ids=["untied", "tied"])
def test_old_rows_are_kept_bitwise_and_new_rows_are_the_mean(cfg):
    params = init_params(cfg, jax.random.key(0))
    grown = grow_vocab(params, V_NEW, rng=jax.random.key(1))
    embed, new_embed = np.asarray(params["embed"][...]), np.asarray(grown["embed"][...])
    assert new_embed.shape == (V_NEW, cfg.d_model) and params["embed"].shape == (V, cfg.d_model)
    np.testing.assert_array_equal(new_embed[:V], embed)
    np.testing.assert_allclose(
        new_embed[V:], np.broadcast_to(embed.mean(0), (V_NEW - V, cfg.d_model)), rtol=1e-5
    )
    assert ("unembed" in grown) == (not cfg.tie_embeddings)
    if not cfg.tie_embeddings:
        unembed, new_unembed = np.asarray(params["unembed"][...]), np.asarray(grown["unembed"][...])
        assert new_unembed.shape == (cfg.d_model, V_NEW)
        np.testing.assert_array_equal(new_unembed[:, :V], unembed)
        np.testing.assert_allclose(
            new_unembed[:, V:], unembed.mean(1, keepdims=True).repeat(V_NEW - V, 1), rtol=1e-5
        )
    for name in ("embed", "unembed"):
        if name in grown:
            assert (
                grown[name].get_metadata()["logical_axes"]
                == params[name].get_metadata()["logical_axes"]
            )
    # Everything else is the same array.
    np.testing.assert_array_equal(grown["layers"]["wq"][...], params["layers"]["wq"][...])


@pytest.mark.parametrize("cfg", [UNTIED, TIED], ids=["untied", "tied"])
def test_logits_over_old_ids_are_unchanged_and_new_ones_score_the_mean(cfg):
    params = init_params(cfg, jax.random.key(0))
    grown = grow_vocab(params, V_NEW, rng=jax.random.key(1))
    before = logits(cfg, params)
    after = logits(dataclasses.replace(cfg, vocab_size=V_NEW), grown)
    assert after.shape == (*TOKENS.shape, V_NEW)
    np.testing.assert_allclose(after[..., :V], before, rtol=0, atol=1e-6)
    # A new output column is the mean of the old ones, so it scores the mean logit.
    mean_logit = before.mean(-1, keepdims=True)
    np.testing.assert_allclose(after[..., V:], np.broadcast_to(mean_logit, after[..., V:].shape),
                               atol=1e-5)  # fmt: skip


def test_noise_perturbs_only_new_rows_and_needs_an_rng():
    params = host(init_params(UNTIED, jax.random.key(0)))
    with pytest.raises(ValueError, match="rng"):
        grow_vocab(params, V_NEW, noise_std=0.01)
    grown = grow_vocab(params, V_NEW, rng=jax.random.key(3), noise_std=0.01)
    assert isinstance(grown["embed"][...], np.ndarray)  # host arrays stay on the host
    new_rows = grown["embed"][...][V:] - params["embed"][...].mean(0)
    assert 0.005 < new_rows.std() < 0.02 and len(np.unique(new_rows[:, 0])) == V_NEW - V
    np.testing.assert_array_equal(grown["embed"][...][:V], params["embed"][...])


def test_bfloat16_params_keep_their_dtype_with_a_float32_mean():
    cfg = dataclasses.replace(UNTIED, param_dtype="bfloat16")
    params = init_params(cfg, jax.random.key(0))
    grown = grow_vocab(params, V_NEW)
    assert grown["embed"][...].dtype == jnp.bfloat16
    mean = np.asarray(params["embed"][...], np.float32).mean(0).astype(jnp.bfloat16)
    np.testing.assert_array_equal(np.asarray(grown["embed"][...][V]), np.asarray(mean))


def test_shrinking_and_unknown_methods_are_refused():
    params = init_params(UNTIED, jax.random.key(0))
    with pytest.raises(ValueError, match="shrink"):
        grow_vocab(params, V - 1)
    with pytest.raises(ValueError, match="method"):
        grow_vocab(params, V_NEW, method="zeros")


def test_sharded_params_stay_sharded_by_their_logical_axes():
    mesh = make_mesh((1, 1, 4), jax.devices()[:4])
    state, _ = create_train_state(
        UNTIED, make_optimizer(OptimConfig(), 10), mesh, jax.random.key(0)
    )
    grown = grow_vocab(state.params, V_NEW)  # 400 rows split 4 ways on "tensor"
    expected = param_shardings(
        abstract_model(dataclasses.replace(UNTIED, vocab_size=V_NEW))[1], mesh
    )
    for name in ("embed", "unembed"):
        assert grown[name][...].sharding == expected[name].get_value()
        assert grown[name][...].sharding.spec == state.params[name][...].sharding.spec
    uneven = grow_vocab(state.params, V_NEW + 2)  # not divisible by 4: replicated, as at init
    assert uneven["embed"][...].sharding.spec == jax.sharding.PartitionSpec(None, None)


# ------------------------------------------------------------ checkpoint grow-vocab


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    root = tmp_path_factory.mktemp("tok")
    base = train_tokenizer([ENGLISH], root / "base", vocab_size=V)
    ext = extend_tokenizer(base, [CHINESE], root / "ext", vocab_size=V_NEW).tokenizer
    other = train_tokenizer([ENGLISH + CHINESE], root / "other", vocab_size=V_NEW)
    return base, ext, other


@pytest.fixture(scope="module")
def src_run(tokenizers, tmp_path_factory):
    """A training workdir: its tokenizer and one checkpoint (step 7) of the tiny model."""
    base, _, _ = tokenizers
    workdir = tmp_path_factory.mktemp("run")
    shutil.copyfile(base.path, workdir / "tokenizer.model")
    shutil.copyfile(base.path.with_suffix(".json"), workdir / "tokenizer.json")
    mesh = make_mesh((1, 1, 2), jax.devices()[:2])
    state, _ = create_train_state(
        UNTIED, make_optimizer(OptimConfig(), 10), mesh, jax.random.key(0)
    )
    cfg = Config(model=UNTIED, data=DataConfig(tokenizer_vocab_size=V, seq_len=32))
    checkpointer = Checkpointer(workdir / "checkpoints")
    checkpointer.save(7, state, {"epoch": 0}, cfg.to_json())
    checkpointer.wait()
    checkpointer.close()
    return workdir, host(state.params)


def grow(src, dst, *flags) -> int:
    return cli.main(["checkpoint", "grow-vocab", str(src), str(dst), *map(str, flags)])


def test_grow_vocab_round_trips_through_the_saved_params(src_run, tokenizers, tmp_path):
    workdir, params = src_run
    _, ext, _ = tokenizers
    dst = tmp_path / "grown"
    assert grow(workdir, dst, "--vocab-size", V_NEW, "--tokenizer", ext.path) == 0
    loaded, cfg = load_params(dst)
    assert cfg.model.vocab_size == V_NEW and cfg.data.tokenizer == str(dst / "tokenizer.model")
    copied = Tokenizer.load(cfg.data.tokenizer)
    assert copied.sha256 == ext.sha256 and copied.metadata.extended_from["vocab_size"] == V
    assert isinstance(loaded["embed"][...], np.ndarray)
    np.testing.assert_array_equal(loaded["embed"][...][:V], params["embed"][...])
    np.testing.assert_array_equal(loaded["unembed"][...][:, :V], params["unembed"][...])
    np.testing.assert_allclose(loaded["embed"][...][V:], np.broadcast_to(
        params["embed"][...].mean(0), (V_NEW - V, UNTIED.d_model)))  # fmt: skip
    np.testing.assert_array_equal(loaded["layers"]["w_up"][...], params["layers"]["w_up"][...])
    # Text of old ids: the same logits as the source checkpoint's params.
    text = jnp.asarray([ext.encode("The lazy dog sleeps.")], jnp.int32)
    assert int(text.max()) < V
    np.testing.assert_allclose(
        logits(cfg.model, loaded, text)[..., :V], logits(UNTIED, params, text), atol=1e-6
    )
    # Chinese now uses new ids, which the grown model can embed.
    assert max(ext.encode(CHINESE)) >= V
    assert json.loads((dst / "config.json").read_text())["model"]["vocab_size"] == V_NEW


def test_load_params_restores_straight_into_shardings(src_run, tmp_path):
    workdir, _ = src_run
    assert grow(workdir, tmp_path / "g", "--vocab-size", V_NEW) == 0
    mesh = make_mesh((1, 1, 4), jax.devices()[:4])
    _, cfg = load_params(tmp_path / "g")
    shardings = param_shardings(abstract_model(cfg.model)[1], mesh)
    params, _ = load_params(tmp_path / "g", shardings=shardings)
    assert params["embed"][...].sharding == shardings["embed"].get_value()
    # Without --tokenizer the config keeps naming the checkpoint's own tokenizer.
    assert cfg.data.tokenizer == str(workdir / "tokenizer.model")


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("other-tokenizer", "does not extend"),
        ("wrong-size", "has 400 pieces but --vocab-size is 500"),
        ("smaller", "must exceed the checkpoint's vocabulary"),
        ("missing-src", "nowhere"),
        ("dst-not-empty", "not empty"),
    ],
)
def test_grow_vocab_refusals_exit_2_naming_the_problem(
    case, needle, src_run, tokenizers, tmp_path, capsys
):
    workdir, _ = src_run
    _, ext, other = tokenizers
    dst = tmp_path / "dst"
    args = {
        "other-tokenizer": (workdir, dst, "--vocab-size", V_NEW, "--tokenizer", other.path),
        "wrong-size": (workdir, dst, "--vocab-size", 500, "--tokenizer", ext.path),
        "smaller": (workdir, dst, "--vocab-size", V),
        "missing-src": (tmp_path / "nowhere", dst, "--vocab-size", V_NEW),
        "dst-not-empty": (workdir, workdir, "--vocab-size", V_NEW),
    }[case]
    assert grow(*args) == 2
    assert needle in capsys.readouterr().err
    assert not (dst / "config.json").exists()


@pytest.mark.slow  # ~26 s; the growth itself is checked by the other tests here by default
def test_a_run_continues_from_grown_params(src_run, tokenizers, tmp_path):
    """`train.init_from`: step 0 starts from the grown params (lr 0 keeps them exactly)."""
    from jaxlm.checkpointing.params_io import restore_latest_params
    from jaxlm.config import apply_overrides
    from jaxlm.training.loop import train

    workdir, params = src_run
    _, ext, _ = tokenizers
    dst = tmp_path / "grown"
    assert grow(workdir, dst, "--vocab-size", V_NEW, "--tokenizer", ext.path) == 0
    _, grown_cfg = load_params(dst)
    overrides = [f"train.init_from={dst}", "train.steps=1", "train.progress_bar=false",
                 "optim.lr=0", "data.eval_max_docs=1", "data.batch_size=8",
                 "data.shuffle_window=64"]  # fmt: skip
    train(apply_overrides(grown_cfg, overrides), tmp_path / "continued")
    after, _, step = restore_latest_params(tmp_path / "continued")
    assert step == 1
    np.testing.assert_array_equal(after["embed"][...][:V], params["embed"][...])
    np.testing.assert_array_equal(after["layers"]["w_up"][...], params["layers"]["w_up"][...])

    mismatched = apply_overrides(grown_cfg, [*overrides, "model.d_ff=64"])
    with pytest.raises(InputError, match=r"do not fit this model \(model.d_ff: \d+ -> 64"):
        train(mismatched, tmp_path / "mismatched")
