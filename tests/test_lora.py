"""LoRA adapters (jaxlm/models/lora.py, jaxlm/training/adapters.py) on the `tiny` preset, rank 5.

Rank 5 differs from every tiny dimension (D=48, N=4, K=2, H=12, F=88, L=3), so a
swapped adapter axis cannot hide. What a user relies on:

  - fresh adapters (B = 0) leave the model exactly the base model, bit for bit;
  - a merged export (W + alpha/r A B) computes what the adapted model computes;
  - only the adapters get gradients and optimizer moments; the base never changes;
  - the reference view (adapters off) is the base model bit for bit, even after the
    adapters trained;
  - an unknown lora_targets name is a ConfigError that names it;
  - a plain pretrained params directory becomes the base (train.init_from);
  - the LoRA state shards on a (2, 2, 2) mesh and computes the same logits there.
"""

import dataclasses

import jax
import numpy as np
import pytest
from flax import nnx
from helpers.batches import packed_batch

from jaxlm.checkpointing.params_io import save_params
from jaxlm.config import Config, ConfigError, DataConfig, OptimConfig, TrainConfig
from jaxlm.models import build_model, lora
from jaxlm.models.params import (
    abstract_lora,
    abstract_model,
    count_lora,
    init_adapters,
    init_params,
)
from jaxlm.presets import get_preset
from jaxlm.sharding import host_batch_to_global, make_mesh
from jaxlm.training.adapters import (
    create_lora_train_state,
    initial_lora_state,
    lora_from_base,
    lora_views,
)
from jaxlm.training.optim import learning_rate_schedule, make_optimizer
from jaxlm.training.state import sharding_summary, train_state_shardings
from jaxlm.training.steps import forward, jit_train_step, loss_sums, make_lm_step

CFG = dataclasses.replace(get_preset("tiny"), lora_rank=5)
PLAIN = lora.plain_config(CFG)
DATA = DataConfig(tokenizer_vocab_size=CFG.vocab_size, seq_len=16)
OPTIM = OptimConfig(lr=1e-2, warmup_steps=1)
TOTAL_STEPS = 10
TRAIN_STEPS = 3
KEY = jax.random.key(0)
TARGETS = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")

# On (data=2, fsdp=2, tensor=2): A takes W's input axes, B W's output axes, the rank
# axis is never split (tiny's kv_heads=2 divide tensor=2, so wk/wv's B is split too).
GOLDEN_ADAPTER_SPECS_222 = {
    "layers/wq_lora_a": "P(None, 'fsdp', None)",
    "layers/wq_lora_b": "P(None, None, 'tensor', None)",
    "layers/wk_lora_a": "P(None, 'fsdp', None)",
    "layers/wk_lora_b": "P(None, None, 'tensor', None)",
    "layers/wv_lora_a": "P(None, 'fsdp', None)",
    "layers/wv_lora_b": "P(None, None, 'tensor', None)",
    "layers/wo_lora_a": "P(None, 'tensor', None, None)",
    "layers/wo_lora_b": "P(None, None, 'fsdp')",
    "layers/w_gate_lora_a": "P(None, 'fsdp', None)",
    "layers/w_gate_lora_b": "P(None, None, 'tensor')",
    "layers/w_up_lora_a": "P(None, 'fsdp', None)",
    "layers/w_up_lora_b": "P(None, None, 'tensor')",
    "layers/w_down_lora_a": "P(None, 'tensor', None)",
    "layers/w_down_lora_b": "P(None, None, 'fsdp')",
}

GRAPHDEF, _, _ = abstract_lora(CFG)
PLAIN_GRAPHDEF, _ = abstract_model(PLAIN)
BATCH = packed_batch(CFG.vocab_size, batch_size=8, seq_len=16, seed=0)
logits_fn = jax.jit(forward, static_argnums=0)


def flat(state: nnx.State) -> dict[str, np.ndarray]:
    return {
        "/".join(map(str, path)): np.asarray(var.get_value())
        for path, var in nnx.to_flat_state(state)
    }


def flat_shapes(state: nnx.State) -> dict[str, tuple]:
    return {"/".join(map(str, p)): v.shape for p, v in nnx.to_flat_state(state)}


def flat_arrays(state: nnx.State) -> dict[str, jax.Array]:
    return {"/".join(map(str, p)): v.get_value() for p, v in nnx.to_flat_state(state)}


def assert_states_equal(a: nnx.State, b: nnx.State) -> None:
    fa, fb = flat(a), flat(b)
    assert fa.keys() == fb.keys()
    for name in fa:
        np.testing.assert_array_equal(fa[name], fb[name], err_msg=name)


def one_device_mesh():
    return make_mesh((1, 1, 1), jax.devices()[:1])


@pytest.fixture(scope="module")
def fresh():
    """(adapters, base) of the LoRA model from KEY, and the plain model's params."""

    def init(key):
        _, adapters, base = lora.split_lora(build_model(CFG, nnx.Rngs(params=key)))
        return adapters, base, init_params(PLAIN, key)

    return jax.jit(init)(KEY)  # one compile instead of many small eager ops


@pytest.fixture(scope="module")
def trained():
    """A LoRA TrainState after TRAIN_STEPS real train steps, and the initial one."""
    mesh = one_device_mesh()
    optimizer = make_optimizer(OPTIM, TOTAL_STEPS)
    state, shardings = create_lora_train_state(CFG, optimizer, mesh, KEY)
    initial = jax.device_get(state)  # the step donates `state`
    step_fn = make_lm_step(
        GRAPHDEF, optimizer, learning_rate_schedule(OPTIM, TOTAL_STEPS), views=lora_views()
    )
    step = jit_train_step(step_fn, shardings, mesh)
    losses = []
    with jax.set_mesh(mesh):
        for _ in range(TRAIN_STEPS):
            state, metrics = step(state, host_batch_to_global(BATCH, mesh))
            losses.append(float(metrics["loss"]))
    return {"initial": initial, "state": jax.device_get(state), "losses": losses}


# ------------------------------------------------------------------- variables


def test_adapters_are_their_own_variable_type(fresh):
    """nnx.Param filters never pick up adapters, and a Param-only split fails loudly."""
    adapters, _, plain = fresh
    model = nnx.eval_shape(lambda: build_model(CFG, nnx.Rngs(0)))
    names = {f"layers/{t}_lora_{ab}" for t in TARGETS for ab in "ab"}
    assert set(flat(adapters)) == names
    assert set(flat_shapes(nnx.state(model, nnx.Param))) == set(flat(plain))
    assert set(flat_shapes(lora.adapters_only(nnx.state(model)))) == names
    with pytest.raises(ValueError, match="Non-exhaustive"):
        nnx.split(model, nnx.Param)
    # A [L, *in, r] is random with fan-in std, B [L, r, *out] zero, in the param dtype.
    a, b = flat(adapters)["layers/wo_lora_a"], flat(adapters)["layers/wo_lora_b"]
    assert a.shape == (3, 4, 12, 5) and b.shape == (3, 5, 48)
    assert a.dtype == b.dtype == np.float32
    assert abs(a.std() * np.sqrt(4 * 12) - 1) < 0.15
    assert not b.any()


def test_only_listed_targets_get_adapters():
    cfg = dataclasses.replace(CFG, lora_targets=" wq , w_down,wq")
    _, adapters, _ = abstract_lora(cfg)
    assert set(flat_shapes(adapters)) == {
        "layers/wq_lora_a",
        "layers/wq_lora_b",
        "layers/w_down_lora_a",
        "layers/w_down_lora_b",
    }


def test_unknown_targets_are_config_errors_naming_them():
    bad = dataclasses.replace(CFG, lora_targets="wq,w_in,wk,attn_out")
    with pytest.raises(ConfigError, match=r"w_in, attn_out.*valid: wq, wk"):
        lora.lora_targets(bad)
    with pytest.raises(ConfigError, match="w_in, attn_out"):
        nnx.eval_shape(lambda: build_model(bad, nnx.Rngs(0)))
    with pytest.raises(ConfigError, match="at least one"):
        lora.lora_targets(dataclasses.replace(CFG, lora_targets=" , "))
    assert lora.lora_targets(CFG) == TARGETS


# --------------------------------------------------------------------- numerics


def test_zero_adapters_are_the_base_model_bitwise(fresh):
    adapters, base, plain = fresh
    assert_states_equal(base, plain)  # same key, same base: adapters draw keys last
    lora_logits = logits_fn(GRAPHDEF, (adapters, base), BATCH)
    plain_logits = logits_fn(PLAIN_GRAPHDEF, plain, BATCH)
    np.testing.assert_array_equal(np.asarray(lora_logits), np.asarray(plain_logits))


def test_merged_export_gives_the_adapted_logits(trained):
    """x (W + s A B) and x W + s (x A) B differ only by float rounding (the products
    are summed in another order), so the logits agree to float32 noise: 1e-5 where the
    adapters moved the logits by more than 1e-2."""
    state = trained["state"]
    adapted = np.asarray(logits_fn(GRAPHDEF, (state.params, state.frozen), BATCH))
    merged = lora.merge_lora(CFG, state.params, state.frozen)
    assert set(flat(merged)) == set(flat(state.frozen))
    exported = np.asarray(logits_fn(PLAIN_GRAPHDEF, merged, BATCH))
    base = np.asarray(logits_fn(PLAIN_GRAPHDEF, state.frozen, BATCH))
    assert np.max(np.abs(adapted - base)) > 1e-2  # the adapters do something
    np.testing.assert_allclose(exported, adapted, rtol=1e-5, atol=1e-5)
    # Merging fresh adapters (B = 0) changes nothing.
    initial = trained["initial"]
    assert_states_equal(lora.merge_lora(CFG, initial.params, initial.frozen), initial.frozen)


def test_gradients_are_for_adapters_only(fresh, trained):
    """d loss / d adapters: with B = 0, dA is exactly 0 (it flows through B) and every
    dB is not; once B has trained, every factor gets a gradient."""

    def loss(adapters, base):
        sums = loss_sums(GRAPHDEF, (adapters, base), BATCH)
        return sums.nll / sums.num_tokens

    grad_fn = jax.jit(jax.grad(loss))
    adapters, base, _ = fresh
    grads = flat(grad_fn(adapters, base))
    assert grads.keys() == flat(adapters).keys()
    for name, g in grads.items():
        assert (np.abs(g).max() == 0) == name.endswith("_lora_a"), name
    state = trained["state"]
    for name, g in flat(grad_fn(state.params, state.frozen)).items():
        assert np.abs(g).max() > 0, name


def test_training_moves_adapters_and_never_the_base(trained):
    initial, state = trained["initial"], trained["state"]
    assert int(state.step) == TRAIN_STEPS
    assert all(np.isfinite(trained["losses"]))
    assert trained["losses"][-1] < trained["losses"][0]
    assert_states_equal(state.frozen, initial.frozen)
    moved = flat(state.params)
    for name, before in flat(initial.params).items():
        assert not np.array_equal(moved[name], before), name
    # Adam's moments exist for the adapters alone: two per adapter element, no more.
    n_adapters, n_base = count_lora(CFG)
    moment_sizes = [x.size for x in jax.tree.leaves(state.opt_state) if x.ndim > 0]
    assert sum(moment_sizes) == 2 * n_adapters
    assert len(moment_sizes) == 2 * len(flat(state.params))
    # r * (prod(I) + prod(O)) per layer and target: wq, wo 48+48; wk, wv 48+24; MLP 48+88.
    assert n_adapters == 3 * 5 * (2 * 96 + 2 * 72 + 3 * 136) < n_base / 8


def test_reference_view_is_the_base_model_after_training(trained):
    state = trained["state"]
    views = lora_views()
    reference = logits_fn(GRAPHDEF, views.reference(state.params, state.frozen), BATCH)
    base = logits_fn(PLAIN_GRAPHDEF, state.frozen, BATCH)
    np.testing.assert_array_equal(np.asarray(reference), np.asarray(base))
    policy = logits_fn(GRAPHDEF, views.policy(state.params, state.frozen), BATCH)
    assert not np.allclose(np.asarray(policy), np.asarray(base), atol=1e-3)


# ---------------------------------------------------------------- loading a base


# Slow: ~15 s; the base-equality tests here (zero adapters are the base bitwise, training
# never moves the base) run by default
@pytest.mark.slow
def test_plain_pretrained_params_become_the_base(tmp_path):
    """train.init_from: a plain params directory loads as the frozen base, unchanged;
    the adapters are fresh (A as from the key, B zero)."""
    pretrained = init_params(PLAIN, jax.random.key(7))
    save_params(tmp_path / "pretrained", pretrained, Config(model=PLAIN, data=DATA))
    cfg = Config(
        model=CFG,
        data=DATA,
        train=TrainConfig(init_from=str(tmp_path / "pretrained")),
    )
    mesh = one_device_mesh()
    optimizer = make_optimizer(OPTIM, TOTAL_STEPS)
    logs = []
    state, shardings, graphdef, views = initial_lora_state(
        cfg, optimizer, mesh, KEY, log=logs.append
    )
    assert_states_equal(state.frozen, pretrained)
    assert_states_equal(state.params, init_adapters(CFG, KEY))
    assert jax.tree.structure(shardings.frozen) == jax.tree.structure(state.frozen)
    assert any("LoRA rank 5" in line for line in logs), logs
    # The reference view of this state is the pretrained model.
    reference = logits_fn(graphdef, views.reference(state.params, state.frozen), BATCH)
    plain = logits_fn(PLAIN_GRAPHDEF, pretrained, BATCH)
    np.testing.assert_array_equal(np.asarray(reference), np.asarray(plain))


def test_a_base_of_another_shape_is_refused():
    other = init_params(dataclasses.replace(PLAIN, d_ff=96), KEY)
    with pytest.raises(ConfigError, match="layers/w_down"):
        lora_from_base(CFG, other, KEY)


# --------------------------------------------------------------------- sharding


@pytest.mark.slow  # ~18 s; test_sharding.py checks the golden param shardings by default
def test_lora_state_shards_on_2x2x2_and_computes_the_same_logits(trained):
    mesh = make_mesh((2, 2, 2), jax.devices()[:8])
    optimizer = make_optimizer(OPTIM, TOTAL_STEPS)
    state, shardings = create_lora_train_state(CFG, optimizer, mesh, KEY)

    assert sharding_summary(shardings.params) == GOLDEN_ADAPTER_SPECS_222
    plain_specs = sharding_summary(train_state_shardings(PLAIN, optimizer, mesh).params)
    assert sharding_summary(shardings.frozen) == plain_specs
    for name, array in flat_arrays(state.params).items():
        assert str(array.sharding.spec) == GOLDEN_ADAPTER_SPECS_222[name], name
    assert len({d for a in jax.tree.leaves(state) for d in a.sharding.device_set}) == 8
    # Initialised in place, bit for bit what one device makes.
    initial = trained["initial"]
    assert_states_equal(jax.device_get(state.params), initial.params)
    assert_states_equal(jax.device_get(state.frozen), initial.frozen)

    # The trained adapters (B != 0), laid out on the mesh, give one device's logits.
    one = trained["state"]
    params = jax.device_put(one.params, shardings.params)
    frozen = jax.device_put(one.frozen, shardings.frozen)
    with jax.set_mesh(mesh):
        sharded = logits_fn(GRAPHDEF, (params, frozen), host_batch_to_global(BATCH, mesh))
    single = logits_fn(GRAPHDEF, (one.params, one.frozen), BATCH)
    np.testing.assert_allclose(np.asarray(sharded), np.asarray(single), rtol=1e-5, atol=1e-5)


def test_optimizer_on_adapters_has_no_base_sized_leaf(fresh):
    """The optimizer never sees the base: initialised on the adapters State alone, its
    moments have the adapters' shapes and none of the base's."""
    adapters, base, _ = fresh
    opt_state = jax.eval_shape(make_optimizer(OPTIM, TOTAL_STEPS).init, adapters)
    base_shapes = {v.shape for v in jax.tree.leaves(base)}
    adapter_shapes = {v.shape for v in jax.tree.leaves(adapters)}
    leaf_shapes = {x.shape for x in jax.tree.leaves(opt_state) if len(x.shape)}
    assert leaf_shapes == adapter_shapes
    assert not leaf_shapes & base_shapes
