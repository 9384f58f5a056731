"""LoRA: low-rank adapters on the stacked projection weights of `Layers`.

With `model.lora_rank = r > 0`, every projection W named in `model.lora_targets`
gets two adapter factors, stored beside it in `Layers` with the same leading layers
axis:

    A  [L, *I, r]   normal, std 1 / sqrt(prod(I)) (fan-in: x @ A has unit-scale
                    entries for unit-scale inputs, so B's first gradients are neither
                    vanishing nor huge)
    B  [L, r, *O]   zeros: a fresh adapter leaves the model's output unchanged

where I and O are W's input and output dimensions (wq [L, D, N, H]: I = (D,),
O = (N, H); wo [L, N, H, D]: I = (N, H), O = (D,)). Keeping I and O as separate axes
(instead of flattening them to prod(I), prod(O)) lets A carry W's logical axes on its
input side and B on its output side, so the adapters shard like their weight and the
branch below needs no resharding. `merge_lora` (export) and a flat [in, r] view are
reshapes away.

The model computes W's projection plus the adapter branch, unmerged:

    y = x @ W + (alpha / r) * ((x @ A) @ B)

rather than x @ (W + (alpha / r) * A @ B). Both are exactly x @ W when B = 0 (x @ 0 is
0 and y + 0 is y, bit for bit), but only the unmerged form is cheap to train:

  - memory: autodiff through `lax.scan` stacks each layer's residuals. A merged
    weight W' is the residual of x @ W', so training without full remat keeps a copy
    of every targeted weight; the unmerged branch keeps only x @ A, [B, T, r].
  - compute: the adapters' gradients through a merged weight need dW' = x^T dy, the
    2*B*T*I*O FLOPs full fine-tuning spends and LoRA exists to avoid. Unmerged, dA and
    dB cost 2*B*T*r*(I + O) each, and the forward adds 2*B*T*r*(I + O) per projection,
    a fraction r * (I + O) / (I * O) of its matmul (under 1% for r = 16, D = 4096).

Measured (XLA:CPU, grad of the loss; D=512, L=8, F=1536, r=16, B*T=1024): merged
in the block, +99 MiB of temporaries (the targeted weights are 104 MiB) and 24.1
GFLOP, as much as full fine-tuning (24.3); unmerged, 17.8 GFLOP.

The adapter variables are `LoRAParam`, a sibling of `nnx.Param` rather than a
subclass: nnx type filters match with isinstance, so a subclass would also be taken
by every `nnx.Param` filter (count_params, abstract_model) and the base and adapters
could not be told apart by type. As siblings, `nnx.split(model, LoRAParam,
nnx.Param)` gives (graphdef, adapters, base), and code that splits a LoRA model with
`nnx.Param` alone fails loudly ("non-exhaustive filters") instead of silently
training or saving the wrong tree.

Training: TrainState.params = the adapters (all the optimizer sees), TrainState.frozen
= the base params, whose tree is exactly the plain (lora_rank = 0) model's params, so a
pretrained params directory loads into it unchanged. `lora_views()` gives the policy
(adapters + base) and the reference (zeroed adapters + base: the base model, without a
second copy of its weights).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxlm.config import ConfigError, ModelConfig
from jaxlm.training.param_views import ParamViews, States

if TYPE_CHECKING:  # training types, imported lazily below: models/ stays below train_state
    import optax
    from jax.sharding import Mesh

    from jaxlm.config import Config
    from jaxlm.training.state import TrainState

# Projection weights that can carry adapters -> how many of their dimensions after the
# layers axis are inputs (the rest are outputs).
TARGET_INPUT_DIMS: dict[str, int] = {
    "wq": 1,
    "wk": 1,
    "wv": 1,
    "wo": 2,
    "w_gate": 1,
    "w_up": 1,
    "w_down": 1,
}
_A, _B = "_lora_a", "_lora_b"  # attribute suffixes in Layers: wq_lora_a, wq_lora_b
_RANK = "r"  # the rank's einsum letter; model letters are upper case


class LoRAParam(nnx.Variable):
    """A LoRA adapter factor: trained, unlike the frozen base `nnx.Param`s."""


# ----------------------------------------------------------------------- config


def lora_targets(cfg: ModelConfig) -> tuple[str, ...]:
    """The validated target names of `cfg.lora_targets`, in order, without repeats.

    Raises ConfigError naming every unknown target, or when a positive rank has no
    target at all.
    """
    if cfg.lora_rank < 0:
        raise ConfigError(f"model.lora_rank={cfg.lora_rank} must be >= 0")
    names = [n.strip() for n in cfg.lora_targets.split(",") if n.strip()]
    unknown = [n for n in names if n not in TARGET_INPUT_DIMS]
    if unknown:
        raise ConfigError(
            f"model.lora_targets: unknown target(s) {', '.join(unknown)}; "
            f"valid: {', '.join(TARGET_INPUT_DIMS)}"
        )
    if cfg.lora_rank > 0 and not names:
        raise ConfigError("model.lora_rank > 0 needs at least one model.lora_targets name")
    return tuple(dict.fromkeys(names))


def lora_scale(cfg: ModelConfig) -> float:
    """alpha / r: the adapter branch's multiplier (keeps lr meaningful across ranks)."""
    return cfg.lora_alpha / cfg.lora_rank


def plain_config(cfg: ModelConfig) -> ModelConfig:
    """The same model without adapters: the shape of the base params and of merges."""
    return dataclasses.replace(cfg, lora_rank=0)


# ---------------------------------------------------------------- declaration


def add_adapters(layers: nnx.Module, cfg: ModelConfig, rngs: nnx.Rngs) -> None:
    """Declare A and B (module docstring) beside each target weight of `layers`.

    Called after every base weight is drawn, so a LoRA model initialised from a key
    has exactly the plain model of that key as its base.
    """
    r = cfg.lora_rank
    for name in lora_targets(cfg):
        weight = getattr(layers, name)
        axes = weight.get_metadata()["logical_axes"]
        n_in = TARGET_INPUT_DIMS[name]
        L = weight.shape[0]
        in_shape, out_shape = weight.shape[1 : 1 + n_in], weight.shape[1 + n_in :]
        in_axes, out_axes = axes[1 : 1 + n_in], axes[1 + n_in :]
        std = 1.0 / math.sqrt(math.prod(in_shape))
        a = std * jax.random.normal(rngs.params(), (L, *in_shape, r), dtype=jnp.float32)
        b = jnp.zeros((L, r, *out_shape), jnp.float32)
        setattr(
            layers,
            name + _A,
            LoRAParam(a.astype(weight.dtype), logical_axes=("layers", *in_axes, None)),
        )
        setattr(
            layers,
            name + _B,
            LoRAParam(b.astype(weight.dtype), logical_axes=("layers", None, *out_axes)),
        )


# ---------------------------------------------------------------- forward math


def _branch_specs(spec: str) -> tuple[str, str]:
    """Einsum specs of x @ A and (x @ A) @ B for a projection spec like "BTD,DNH->BTNH".

    W's letters are its input letters (contracted: absent from the output) followed by
    its output letters, which is how every target is laid out.
    """
    inputs, out = spec.split("->")
    x, w = inputs.split(",")
    w_in = "".join(c for c in w if c not in out)
    w_out = w[len(w_in) :]
    assert w == w_in + w_out, spec
    x_rest = "".join(c for c in x if c not in w_in)
    return (
        f"{x},{w_in}{_RANK}->{x_rest}{_RANK}",
        f"{x_rest}{_RANK},{_RANK}{w_out}->{out}",
    )


def project(spec: str, x: jax.Array, w: dict[str, jax.Array], name: str, scale: float):
    """`einsum(spec, x, w[name])`, plus the adapter branch when `w` has adapters for it.

    `w` holds one layer's weights in the compute dtype. The branch is added last, so
    with B = 0 the result is the plain projection bit for bit.
    """
    y = jnp.einsum(spec, x, w[name])
    if name + _A not in w:
        return y
    spec_a, spec_b = _branch_specs(spec)
    xa = scale * jnp.einsum(spec_a, x, w[name + _A])  # scaled here: r wide, not O wide
    return y + jnp.einsum(spec_b, xa, w[name + _B])


def swiglu(x_BTD: jax.Array, w: dict[str, jax.Array], scale: float) -> jax.Array:
    """jaxlm.models.layers.swiglu with adapter branches on its three projections.

    The same ops in the same order (tokens flattened to M = B * T) so that zero
    adapters reproduce it bit for bit; tests/test_lora.py checks that.
    """
    x_MD = x_BTD.reshape(-1, x_BTD.shape[-1])
    gate_MF = project("MD,DF->MF", x_MD, w, "w_gate", scale)
    up_MF = project("MD,DF->MF", x_MD, w, "w_up", scale)
    out_MD = project("MF,FD->MD", jax.nn.silu(gate_MF) * up_MF, w, "w_down", scale)
    return out_MD.reshape(*x_BTD.shape[:-1], out_MD.shape[-1])


# -------------------------------------------------------------- states and views


def split_lora(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """(graphdef, adapters, base) of a LoRA model; `nnx.merge(graphdef, adapters, base)`."""
    return nnx.split(model, LoRAParam, nnx.Param)


def abstract_lora(cfg: ModelConfig) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """`split_lora` of the LoRA model's shapes, without allocating anything."""
    from jaxlm.models.transformer import Transformer  # transformer imports this module

    _check_rank(cfg)
    return split_lora(nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))))


def _check_rank(cfg: ModelConfig) -> None:
    if cfg.lora_rank <= 0:
        raise ConfigError(f"a LoRA model needs model.lora_rank > 0, got {cfg.lora_rank}")


def _policy(params: Any, frozen: Any) -> States:
    return (params, frozen)


def _reference(params: Any, frozen: Any) -> States:
    # A and B both zero: the branch adds exact zeros, so this is the base model. Only
    # the (small) adapters are copied as zeros, never the base.
    return (jax.tree.map(jnp.zeros_like, params), frozen)


def lora_views() -> ParamViews:
    """Policy = adapters + base; reference = the base alone (adapters switched off)."""
    return ParamViews(policy=_policy, reference=_reference)


def adapters_only(state: nnx.State) -> nnx.State:
    """The LoRAParam entries of a model State (e.g. `nnx.state(model)`), to save alone."""
    return nnx.filter_state(state, LoRAParam)


def _is_variable(x: Any) -> bool:
    return isinstance(x, nnx.Variable)


def merge_lora(cfg: ModelConfig, adapters: nnx.State, base: nnx.State) -> nnx.State:
    """Params of `plain_config(cfg)` with each W replaced by W + (alpha / r) A @ B.

    For export: the merged model needs no LoRA code. Pure jnp, so it can be jitted
    (with the base's shardings) for a model too large for one device. The sum is formed
    in float32 and cast back to W's dtype.
    """
    scale = lora_scale(cfg)
    layers = adapters["layers"]
    merged = {}
    for name in lora_targets(cfg):
        a, b = layers[name + _A].get_value(), layers[name + _B].get_value()
        w = base["layers"][name]
        n_in = TARGET_INPUT_DIMS[name]
        letters = "ABCDEFGH"[: w.ndim - 1]  # W's dims after the layers axis
        w_in, w_out = letters[:n_in], letters[n_in:]
        delta = jnp.einsum(
            f"L{w_in}{_RANK},L{_RANK}{w_out}->L{letters}",
            a.astype(jnp.float32),
            b.astype(jnp.float32),
            precision=jax.lax.Precision.HIGHEST,
        )
        value = w.get_value()
        merged[name] = (value.astype(jnp.float32) + scale * delta).astype(value.dtype)

    def replace(path, var):
        keys = tuple(getattr(p, "key", p) for p in path)
        if len(keys) == 2 and keys[0] == "layers" and keys[1] in merged:
            return var.replace(merged[keys[1]])
        return var

    return jax.tree_util.tree_map_with_path(replace, base, is_leaf=_is_variable)


# ------------------------------------------------------------------ initialising


def init_adapters(
    cfg: ModelConfig, key: jax.Array, *, shardings: nnx.State | None = None
) -> nnx.State:
    """Fresh adapters (A random, B zero), as a LoRA model built from `key` has them.

    Jitted so that the base weights the constructor also draws are dead code and never
    allocated; `shardings` places the adapters directly.
    """
    from jaxlm.models.transformer import Transformer

    _check_rank(cfg)

    def init(key: jax.Array) -> nnx.State:
        return split_lora(Transformer(cfg, rngs=nnx.Rngs(params=key)))[1]

    return jax.jit(init, out_shardings=shardings)(key)


def _structure(state: nnx.State) -> dict[str, tuple[tuple[int, ...], Any]]:
    return {
        "/".join(map(str, path)): (tuple(var.shape), var.dtype)
        for path, var in nnx.to_flat_state(state)
    }


def check_base(cfg: ModelConfig, base: nnx.State) -> None:
    """Raise ConfigError unless `base` has the paths, shapes and dtypes of cfg's base."""
    _, _, expected = abstract_lora(cfg)
    want, got = _structure(expected), _structure(base)
    if want != got:
        diffs = sorted(
            f"{k}: expected {want.get(k)}, got {got.get(k)}"
            for k in want.keys() | got.keys()
            if want.get(k) != got.get(k)
        )
        raise ConfigError("base params do not fit the LoRA model's base: " + "; ".join(diffs[:5]))


def lora_from_base(
    cfg: ModelConfig, base: nnx.State, key: jax.Array, *, shardings: nnx.State | None = None
) -> tuple[nnx.State, nnx.State]:
    """(adapters, base) for a plain pretrained params State: fresh adapters from `key`.

    `base` is used as it is (the plain model's params are exactly the LoRA model's
    base tree); it must match cfg's shapes and dtypes (e.g. load it with
    `plain_config(cfg)`, which casts on load).
    """
    check_base(cfg, base)
    return init_adapters(cfg, key, shardings=shardings), base


# ------------------------------------------------------------ the training state
# These build a TrainState, a training concept: jaxlm.training.run_state calls them. Their
# imports are local so that models/ does not depend on training modules at import.


def lora_state_shardings(
    cfg: ModelConfig, optimizer: optax.GradientTransformation, mesh: Mesh
) -> TrainState:
    """Shardings of a LoRA TrainState: params = adapters, frozen = base, moments follow
    the adapters; all from the logical axes each variable was declared with."""
    from jaxlm.sharding import replicated
    from jaxlm.training.state import TrainState, opt_state_shardings, param_shardings

    _, adapters, base = abstract_lora(cfg)
    adapter_shardings = param_shardings(adapters, mesh)
    abstract_opt = jax.eval_shape(optimizer.init, adapters)
    return TrainState(
        step=replicated(mesh),
        params=adapter_shardings,
        opt_state=opt_state_shardings(abstract_opt, adapter_shardings, mesh),
        loss_ema=replicated(mesh),
        frozen=param_shardings(base, mesh),
    )


def create_lora_train_state(
    cfg: ModelConfig,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    key: jax.Array,
    *,
    base: nnx.State | None = None,
) -> tuple[TrainState, TrainState]:
    """A sharded LoRA TrainState and its shardings.

    Adapters come from `key`; the base is `base` (e.g. pretrained params, placed on the
    frozen shardings here) or, without it, the plain model of `key`. Nothing is built
    whole on one device: each part is jitted straight into its shardings.
    """
    from jaxlm.models.transformer import Transformer
    from jaxlm.training.state import TrainState

    shardings = lora_state_shardings(cfg, optimizer, mesh)

    def init(key: jax.Array) -> tuple[TrainState, nnx.State]:
        _, adapters, random_base = split_lora(Transformer(cfg, rngs=nnx.Rngs(params=key)))
        zero = jnp.zeros((), jnp.float32)
        state = TrainState(jnp.zeros((), jnp.int32), adapters, optimizer.init(adapters), zero)
        return state, random_base

    state_shardings = shardings.replace(frozen=None)
    with jax.set_mesh(mesh):
        if base is None:
            state, base = jax.jit(init, out_shardings=(state_shardings, shardings.frozen))(key)
        else:
            check_base(cfg, base)
            # The random base is returned by nothing, so XLA never computes it.
            state = jax.jit(lambda k: init(k)[0], out_shardings=state_shardings)(key)
            base = jax.device_put(base, shardings.frozen)
    return state.replace(frozen=base), shardings


def count_lora(cfg: ModelConfig) -> tuple[int, int]:
    """(adapter parameters, base parameters), from shapes alone."""
    _, adapters, base = abstract_lora(cfg)
    size = lambda s: sum(math.prod(x.shape) for x in jax.tree.leaves(s))
    return size(adapters), size(base)


def initial_lora_state(
    cfg: Config,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    key: jax.Array,
    *,
    log: Callable[[str], None],
) -> tuple[TrainState, TrainState, nnx.GraphDef, ParamViews]:
    """(state, shardings, graphdef, views) of a LoRA run, for jaxlm.training.run_state.

    `train.init_from` names the base: plain params (a params directory or a plain
    run's workdir), loaded straight into the frozen shardings. Without it the base is
    the random plain model of `key` (useful for tests only; logged as a warning).
    """
    model = cfg.model
    graphdef, _, _ = abstract_lora(model)
    base = None
    if cfg.train.init_from:
        from jaxlm.checkpointing.params_io import load_init_params

        frozen_shardings = lora_state_shardings(model, optimizer, mesh).frozen
        base, source = load_init_params(
            cfg.train.init_from, plain_config(model), shardings=frozen_shardings
        )
        log(f"LoRA base params from {source}")
    else:
        log("warning: LoRA without train.init_from: the frozen base is a random model")
    state, shardings = create_lora_train_state(model, optimizer, mesh, key, base=base)
    n_adapters, n_base = count_lora(model)
    log(
        f"LoRA rank {model.lora_rank} on {','.join(lora_targets(model))}: "
        f"{n_adapters:,} trained params ({100 * n_adapters / n_base:.2f}% of the "
        f"{n_base:,} frozen base params)"
    )
    return state, shardings, graphdef, lora_views()
