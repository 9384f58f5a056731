"""optim.optimizer=muon: Muon on each layer's projection matrices, AdamW on the rest.

The stacked update is checked slice by slice against optax's own 2-D Muon applied to
the matrix a layer really multiplies by (wq [L, D, N, H] is the [D, N*H] matrix per
layer; wo [L, N, H, D] the [N*H, D] one), so the axis bookkeeping cannot be wrong in a
way both sides share. Also: what stays on AdamW, sharding of the moments on a mesh,
learning on the tiny model, and a bitwise resume.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from optax.contrib import MuonDimensionNumbers

from jaxlm import cli
from jaxlm.checkpointing.params_io import restore_params
from jaxlm.config import OptimConfig
from jaxlm.models.params import abstract_model
from jaxlm.presets import get_preset
from jaxlm.sharding import make_mesh
from jaxlm.training.optim import make_optimizer, muon_dimensions
from jaxlm.training.state import create_train_state
from tests.helpers.runs import TINY, make_tokenizer

MUON = OptimConfig(
    optimizer="muon", lr=1e-3, muon_lr=0.05, warmup_steps=0, schedule="constant", clip_norm=0.0
)


def by_name(tree) -> dict[str, nnx.Variable]:
    return {"/".join(map(str, p)): v for p, v in nnx.to_flat_state(tree)}


def dims_by_name(cfg) -> dict[str, MuonDimensionNumbers | None]:
    _, params = abstract_model(cfg)
    return {"/".join(map(str, p)): muon_dimensions(p[-1], v) for p, v in nnx.to_flat_state(params)}


def test_layer_matrices_go_to_muon_and_the_rest_stays_on_adamw():
    dims = dims_by_name(get_preset("tiny"))
    assert dims["layers/wq"] == MuonDimensionNumbers(reduction_axis=1, output_axis=(2, 3))
    assert dims["layers/wo"] == MuonDimensionNumbers(reduction_axis=(1, 2), output_axis=3)
    assert dims["layers/w_gate"] == MuonDimensionNumbers(reduction_axis=1, output_axis=(2,))
    assert dims["layers/w_down"] == MuonDimensionNumbers(reduction_axis=(1,), output_axis=2)
    for name in ("embed", "unembed", "final_norm", "layers/attn_norm", "layers/mlp_norm"):
        assert dims[name] is None, name
    # Routed experts: "layers" and "experts" are both batch axes; the router stays AdamW.
    moe = dims_by_name(dataclasses.replace(get_preset("tiny"), moe_experts=4))
    assert moe["layers/moe_gate"] == MuonDimensionNumbers(reduction_axis=2, output_axis=(3,))
    assert moe["layers/moe_down"] == MuonDimensionNumbers(reduction_axis=(2,), output_axis=3)
    assert moe["layers/router"] is None


def test_each_layer_slice_gets_optax_2d_muon():
    cfg = get_preset("tiny")
    _, abstract = abstract_model(cfg)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda a: jnp.asarray(rng.standard_normal(a.shape), a.dtype), abstract)
    variables = by_name(params)

    def normal(a):
        return jnp.asarray(rng.standard_normal(a.shape), a.dtype)

    grads = [jax.tree.map(normal, abstract), jax.tree.map(normal, abstract)]
    tx = make_optimizer(MUON, 10)
    state = tx.init(params)
    for g in grads:  # two steps: momentum and Nesterov carry over
        updates, state = tx.update(g, state, params)
    got = {k: v.get_value() for k, v in by_name(updates).items()}
    flat_params = {k: v.get_value() for k, v in variables.items()}
    flat_grads = [{k: v.get_value() for k, v in by_name(g).items()} for g in grads]
    for name in ("layers/wq", "layers/wk", "layers/wo", "layers/w_gate", "layers/w_down"):
        dims = muon_dimensions(name.split("/")[-1], variables[name])
        red = dims.reduction_axis
        red = (red,) if isinstance(red, int) else red
        w = flat_params[name]
        for layer in range(w.shape[0]):

            def as_matrix(x, layer=layer, red=red):
                """[inputs, outputs]: jaxlm's layouts put the input axes first."""
                x = np.asarray(x[layer])
                return jnp.asarray(x.reshape(int(np.prod([x.shape[a - 1] for a in red])), -1))

            ref = optax.contrib.muon(0.05, weight_decay=MUON.weight_decay, beta=MUON.muon_momentum)
            m = {"w": as_matrix(w)}
            ref_state = ref.init(m)
            for g in flat_grads:
                ref_update, ref_state = ref.update({"w": as_matrix(g[name])}, ref_state, m)
            np.testing.assert_allclose(
                as_matrix(got[name]), ref_update["w"], rtol=2e-5, atol=1e-7, err_msg=name
            )


def test_moments_are_sharded_like_their_params():
    cfg = get_preset("tiny")
    mesh = make_mesh((2, 2, 2), jax.devices()[:8])
    _, shardings = create_train_state(cfg, make_optimizer(MUON, 10), mesh, jax.random.key(0))
    wq = by_name(shardings.params)["layers/wq"].get_value().spec
    embed = by_name(shardings.params)["embed"].get_value().spec
    specs = {
        jax.tree_util.keystr(path): s.spec
        for path, s in jax.tree_util.tree_flatten_with_path(shardings.opt_state)[0]
    }
    muon_mu = [s for p, s in specs.items() if "'muon'" in p and "'wq'" in p]
    adam_embed = [s for p, s in specs.items() if "'adamw'" in p and "'embed'" in p]
    assert muon_mu == [wq] and len(adam_embed) == 2 and set(adam_embed) == {embed}, specs
    assert any(s != jax.sharding.PartitionSpec() for s in muon_mu)


def test_muon_run_learns_and_resumes_bitwise(tmp_path):
    tokenizer = make_tokenizer(tmp_path)
    sets = [*TINY, f"data.tokenizer={tokenizer}", "optim.optimizer=muon", "optim.muon_lr=0.05"]
    sets += ["optim.schedule=constant", "optim.warmup_steps=0", "train.checkpoint_every=3"]

    def run(workdir, steps, *more):
        argv = ["train", "quickstart", "--workdir", str(workdir)]
        for item in [*sets, f"train.steps={steps}", *more]:
            argv += ["--set", item]
        assert cli.main(argv) == 0

    run(tmp_path / "straight", 6)
    run(tmp_path / "resumed", 3)
    run(tmp_path / "resumed", 6, "train.allow_config_change=train.steps")
    logged = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").open()]
    losses = [r["loss"] for r in logged if r["split"] == "train"]
    assert losses[-1] < losses[0] - 0.3, losses
    straight, _, _ = restore_params(tmp_path / "straight")
    resumed, _, step = restore_params(tmp_path / "resumed")
    assert step == 6
    for (path, a), (_, b) in zip(
        nnx.to_flat_state(straight), nnx.to_flat_state(resumed), strict=True
    ):
        np.testing.assert_array_equal(a.get_value(), b.get_value(), err_msg=str(path))
