"""The routed mixture-of-experts MLP (Mixtral, Qwen3-MoE, DeepSeek) as pure functions.

Routing. A router [D, E] gives every token E logits, computed in float32 (the top-k
choice and the softmax are sensitive to bf16 rounding). Scores are their softmax over
E, or their sigmoid (DeepSeek-V3). Each token goes to the K experts with the highest
score + bias, where the bias [E] is the auxiliary-loss-free balancing term (DeepSeek-V3
sec 2.1.2): it only steers the choice, never the mixing, so it is added under
stop_gradient and left out of the combine weights. The combine weights are the chosen
experts' own scores, renormalised to sum 1 with norm_topk. The token's output is
sum_k weight_k * expert_k(h), with each expert a SwiGLU, down(silu(h @ gate) * (h @ up)).

Three implementations, equal up to float summation order (tests/test_moe_layer.py):

    dense   every expert on every token, combined by an [M, E] matrix of the weights
            (zero where not chosen). O(E) compute: the obviously-correct reference,
            and fine for a handful of experts.
    ragged  dropless grouped matmul: the M*K (token, expert) assignments are sorted by
            expert, their token rows gathered, and jax.lax.ragged_dot multiplies each
            expert's contiguous group by that expert's weights; the rows are then
            weighted and put back by their token. O(K) compute where the backend has a
            real grouped matmul (TPU; GPU via XLA). On CPU, jax 0.10.2 lowers
            ragged_dot to a masked dense dot over all E groups (jax._src.lax.lax.
            _ragged_dot_general_impl), so there it does E times the rows' work, K
            times the dense reference's: correct, but slower.

    buckets the capacity variant as GShard and Switch compute it (needs
            capacity_factor > 0): each expert gets a fixed bucket of C slots, the kept
            assignments are scattered into an [E, C, D] buffer, one batched matmul per
            projection runs every bucket, and the results are gathered back. Compute
            is E * C rows, about capacity_factor * K rows per token: the active FLOPs
            times the capacity factor, on any backend, CPU included.

Padding (valid False) is routed like any token but takes no expert capacity, counts
in no statistic, and gets a zero output: only its residual stream carries on, and the
loss never reads it.

Capacity (capacity_factor > 0, either implementation): an expert takes at most
C = ceil(capacity_factor * M * K / E) assignments, first come first served in token
order; the rest are dropped (they add nothing; the token's other experts still count,
with their weights as they were) and counted. The ragged version then computes only
min(M*K, E*C) rows. capacity_factor 0 is dropless.

Sharding. Under jit with the batch sharded, every implementation gives the unsharded
result, but only the dense one splits its work by the batch: XLA cannot partition the
ragged version's sort over the whole batch, so every device computes every row.
`moe_mlp_sharded` (what the model uses on a mesh) runs the layer per batch shard
(shard_map) instead. There `buckets` is expert parallel: each device keeps E / n
experts and the token rows travel to them and back by two all-to-alls
(`_experts_exchanged`); the dropless implementations gather the experts' weights, as
FSDP does. Expert widths may split over a tensor axis.

Losses and statistics. `moe_mlp` returns SUMS, never means, so that micro-batches and
data shards add up exactly to the large batch (gradient accumulation equals one big
step); the caller divides:
    load [E]      valid assignments routed to each expert (before dropping): what the
                  bias update reads, and the balance to watch;
    dropped       valid assignments dropped by the capacity;
    tokens        valid tokens;
    balance_sum   the sequence-wise balance loss (DeepSeek-V3 eq. 17-19) summed over
                  the rows with valid tokens; per row, sum_i f_i * P_i with f_i the
                  fraction of the row's choices that went to i, times E/K (a count: no
                  gradient) and P_i the row's mean normalised score of i. It is 1 for a
                  uniform router and grows as the router concentrates. Per row rather
                  than per batch so that its sum over rows is additive;
    rows          rows with valid tokens: balance_sum's divisor;
    z_sum         sum over valid tokens of logsumexp(logits)^2, the router z-loss
                  (ST-MoE), which keeps the logits small so the float32 softmax and
                  the choice stay stable.
`update_router_bias` is the auxiliary-loss-free alternative to the balance loss, applied
to the bias outside the gradient after each step.

Dimension legend:
    B batch          T sequence         M = B * T tokens   D model width
    E experts        K experts per token (top-k; not the kv heads of transformer.py)
    F expert width   A = M * K assignments   C capacity per expert
    R rows the ragged matmuls compute (A dropless, min(A, E * C) with a capacity)
    expert parallel: n devices on the expert axis, L = E / n experts per device,
    S = n * C slots per local expert (every device's bucket for it)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name
from jax.sharding import AbstractMesh, Mesh
from jax.sharding import PartitionSpec as P

SCORES = ("softmax", "sigmoid")
IMPLS = ("ragged", "dense", "buckets")

# One layer's statistics: "load" [E]; "dropped", "tokens", "balance_sum", "rows",
# "z_sum" scalars; all float32 sums (see the module docstring). A plain dict, so that
# scan stacks it over layers and tree.map adds it over micro-batches.
MoeStats = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True, kw_only=True)
class MoeSettings:
    """What the MoE math needs from the model config (its `moe_*` fields)."""

    experts: int
    top_k: int
    score: Literal["softmax", "sigmoid"] = "softmax"
    norm_topk: bool = True
    capacity_factor: float = 0.0
    impl: Literal["ragged", "dense", "buckets"] = "ragged"

    def __post_init__(self):
        if not 1 <= self.top_k <= self.experts:
            raise ValueError(f"top_k={self.top_k} must be in [1, experts={self.experts}]")
        if self.score not in SCORES:
            raise ValueError(f"score={self.score!r} must be one of {SCORES}")
        if self.impl not in IMPLS:
            raise ValueError(f"impl={self.impl!r} must be one of {IMPLS}")
        if not self.capacity_factor >= 0:
            raise ValueError(f"capacity_factor={self.capacity_factor} must be >= 0")
        if self.impl == "buckets" and self.capacity_factor <= 0:
            raise ValueError("impl='buckets' needs a capacity_factor > 0 (the bucket size)")

    @classmethod
    def from_config(cls, cfg) -> MoeSettings:
        """From a ModelConfig's `moe_<field>` attributes (all of them must exist)."""
        return cls(**{f.name: getattr(cfg, "moe_" + f.name) for f in dataclasses.fields(cls)})

    def capacity(self, tokens: int) -> int:
        """C for `tokens` tokens; no expert can take more than `tokens` (one per token)."""
        c = math.ceil(self.capacity_factor * tokens * self.top_k / self.experts)
        return min(c, tokens)


class Routing(NamedTuple):
    """The router's decision for M tokens (all float32 but the indices)."""

    scores: jax.Array  # [M, E] softmax or sigmoid of the logits, no bias
    experts: jax.Array  # [M, K] int32 chosen experts, best first
    weights: jax.Array  # [M, K] combine weights: the chosen scores, renormalised or not


def router_logits(w: dict[str, jax.Array], h_MD: jax.Array) -> jax.Array:
    """h @ router in float32: [M, E]."""
    return jnp.dot(h_MD.astype(jnp.float32), w["router"].astype(jnp.float32))


def route(s: MoeSettings, logits_ME: jax.Array, bias_E: jax.Array) -> Routing:
    """Scores, the top-k experts of score + bias, and their combine weights.

    lax.top_k puts the lower index first among equal values, so ties (a fresh router,
    a zero bias against equal scores) always go to the lower expert.
    """
    logits_ME = logits_ME.astype(jnp.float32)
    if s.score == "softmax":
        scores_ME = jax.nn.softmax(logits_ME, axis=-1)
    else:
        scores_ME = jax.nn.sigmoid(logits_ME)
    # The bias chooses, nothing else: no gradient reaches it, and the choice itself is
    # discrete anyway, so stop_gradient on the whole selection key costs nothing.
    choice_ME = jax.lax.stop_gradient(scores_ME + bias_E.astype(jnp.float32))
    _, experts_MK = jax.lax.top_k(choice_ME, s.top_k)
    weights_MK = jnp.take_along_axis(scores_ME, experts_MK, axis=-1)
    if s.norm_topk:
        weights_MK = weights_MK / jnp.sum(weights_MK, axis=-1, keepdims=True)
    return Routing(scores_ME, experts_MK.astype(jnp.int32), weights_MK)


def _sort_by_expert(key_A: jax.Array) -> jax.Array:
    """The assignment order that groups equal keys, in assignment (= token) order within
    a group: a stable sort, which first come first served and the grouped matmuls rely
    on."""
    return jnp.argsort(key_A, stable=True).astype(jnp.int32)


def capacity_keep(
    experts_MK: jax.Array, valid_M: jax.Array, experts: int, capacity: int
) -> jax.Array:
    """Which assignments [M, K] fit in their expert's capacity, first come first served.

    An assignment's rank is the number of valid assignments to the same expert from
    earlier tokens (a token picks an expert at most once, so the order of its own K
    does not matter); it is kept when rank < capacity. Padding takes no place.
    """
    M, K = experts_MK.shape
    valid_A = jnp.repeat(valid_M, K)
    key_A = jnp.where(valid_A, experts_MK.reshape(-1), experts)  # padding: after all
    order_A = _sort_by_expert(key_A)
    sorted_key_A = key_A[order_A]
    counts = jnp.bincount(key_A, length=experts + 1)
    starts = jnp.cumsum(counts) - counts
    rank_sorted_A = jnp.arange(M * K) - starts[sorted_key_A]
    keep_sorted_A = (rank_sorted_A < capacity) & (sorted_key_A < experts)
    keep_A = jnp.zeros(M * K, bool).at[order_A].set(keep_sorted_A)
    return keep_A.reshape(M, K)


# The experts' matmul outputs are tagged with this name, so that remat="dots" keeps
# them as it keeps the dense MLP's (jaxlm.models.transformer): its base policy saves
# dots without batch dimensions only, which misses ragged_dot and the batched
# per-expert einsums, and the backward pass would recompute every expert.
SAVED_NAME = "moe_experts"


def _saved(x: jax.Array) -> jax.Array:
    return checkpoint_name(x, SAVED_NAME)


def _swiglu_dense(w: dict[str, jax.Array], x_MD: jax.Array) -> jax.Array:
    """Every expert on every token: [E, M, D]."""
    gate_EMF = _saved(jnp.einsum("MD,EDF->EMF", x_MD, w["moe_gate"]))
    up_EMF = _saved(jnp.einsum("MD,EDF->EMF", x_MD, w["moe_up"]))
    return _saved(jnp.einsum("EMF,EFD->EMD", jax.nn.silu(gate_EMF) * up_EMF, w["moe_down"]))


def _experts_dense(
    w: dict[str, jax.Array], x_MD: jax.Array, experts_MK, weights_MK, keep_MK
) -> jax.Array:
    """The reference: all experts' outputs mixed by an [M, E] matrix of the kept weights."""
    E = w["moe_gate"].shape[0]
    kept_MK = jnp.where(keep_MK, weights_MK, 0.0)
    combine_ME = jnp.einsum("MKE,MK->ME", jax.nn.one_hot(experts_MK, E), kept_MK)
    y_EMD = _swiglu_dense(w, x_MD)
    return jnp.einsum("EMD,ME->MD", y_EMD.astype(jnp.float32), combine_ME)


def _fill_buckets(x_MD: jax.Array, experts_MK, keep_MK, experts: int, capacity: int):
    """Scatter the kept assignments' token rows into [E, C, D] buckets; returns the
    buckets and each assignment's (expert, slot) for the way back.

    A kept assignment's slot is its rank among the kept assignments to its expert, in
    assignment order: exactly the first-come-first-served rank capacity_keep kept it
    by, so kept slots are < capacity and unique. Dropped assignments go to an extra
    slot C, cut off before the matmuls.
    """
    M, K = experts_MK.shape
    expert_A = experts_MK.reshape(-1)
    keep_A = keep_MK.reshape(-1)
    kept_AE = jax.nn.one_hot(expert_A, experts, dtype=jnp.int32) * keep_A[:, None]
    rank_A = jnp.take_along_axis(jnp.cumsum(kept_AE, axis=0), expert_A[:, None], axis=1)[:, 0]
    slot_A = jnp.where(keep_A, rank_A - 1, capacity)
    token_A = jnp.arange(M * K) // K
    buffer_ECD = jnp.zeros((experts, capacity + 1, x_MD.shape[1]), x_MD.dtype)
    buffer_ECD = buffer_ECD.at[expert_A, slot_A].add(x_MD[token_A])[:, :capacity]
    return buffer_ECD, expert_A, slot_A


def _swiglu_buckets(w: dict[str, jax.Array], x_ECD: jax.Array) -> jax.Array:
    """Every bucket through its own expert: one batched matmul per projection."""
    gate_ECF = _saved(jnp.einsum("ECD,EDF->ECF", x_ECD, w["moe_gate"]))
    up_ECF = _saved(jnp.einsum("ECD,EDF->ECF", x_ECD, w["moe_up"]))
    return _saved(jnp.einsum("ECF,EFD->ECD", jax.nn.silu(gate_ECF) * up_ECF, w["moe_down"]))


def _combine_buckets(y_ECD, expert_A, slot_A, weights_MK, keep_MK) -> jax.Array:
    """Each token's kept assignments read back from the buckets and mixed: [M, D] f32."""
    M, K = weights_MK.shape
    capacity = y_ECD.shape[1]
    y_AD = y_ECD[expert_A, jnp.minimum(slot_A, capacity - 1)]
    y_MKD = y_AD.reshape(M, K, -1).astype(jnp.float32)
    return jnp.einsum("MKD,MK->MD", y_MKD, jnp.where(keep_MK, weights_MK, 0.0))


def _experts_buckets(
    w: dict[str, jax.Array], x_MD: jax.Array, experts_MK, weights_MK, keep_MK, capacity: int
) -> jax.Array:
    """Fixed buckets of `capacity` slots per expert (see the module docstring)."""
    E = w["moe_gate"].shape[0]
    buffer_ECD, expert_A, slot_A = _fill_buckets(x_MD, experts_MK, keep_MK, E, capacity)
    y_ECD = _swiglu_buckets(w, buffer_ECD)
    return _combine_buckets(y_ECD, expert_A, slot_A, weights_MK, keep_MK)


def _experts_exchanged(
    w: dict[str, jax.Array],
    x_MD: jax.Array,
    experts_MK,
    weights_MK,
    keep_MK,
    capacity: int,
    experts: int,
    axis: str,
) -> jax.Array:
    """The buckets variant with the experts split over mesh axis `axis` (inside
    shard_map): expert parallelism with the token exchange as two all-to-alls.

    This device fills [E, C, D] buckets from its own tokens. Block j of E_l = E / n
    experts belongs to device j of the axis, so one all-to-all sends block j there and
    receives, from every device i, its tokens for this device's experts: [n * E_l, C, D].
    Those run through the local experts (`w` holds the E_l of this device) as one
    bucket of n * C slots per expert, and a second all-to-all returns each device its
    own rows. The exchanged volume is the buckets' (capacity_factor * K rows per
    token), whatever E is.
    """
    n = jax.lax.axis_size(axis)
    local = experts // n
    buffer_ECD, expert_A, slot_A = _fill_buckets(x_MD, experts_MK, keep_MK, experts, capacity)
    D = buffer_ECD.shape[-1]
    received = jax.lax.all_to_all(buffer_ECD, axis, 0, 0, tiled=True)  # [n*E_l, C, D]
    # Source-major blocks -> one bucket of n*C slots per local expert.
    x_LSD = received.reshape(n, local, capacity, D).transpose(1, 0, 2, 3)
    y_LSD = _swiglu_buckets(w, x_LSD.reshape(local, n * capacity, D))
    y_ECD = y_LSD.reshape(local, n, capacity, D).transpose(1, 0, 2, 3).reshape(experts, capacity, D)
    returned = jax.lax.all_to_all(y_ECD, axis, 0, 0, tiled=True)  # this device's rows
    return _combine_buckets(returned, expert_A, slot_A, weights_MK, keep_MK)


def _experts_ragged(
    w: dict[str, jax.Array], x_MD: jax.Array, experts_MK, weights_MK, keep_MK, rows: int
) -> jax.Array:
    """Grouped matmuls over the kept assignments sorted by expert (see the docstring).

    Dropped and padding assignments are sorted after every expert's group, past
    sum(group_sizes), and only the first `rows` sorted assignments are computed (all
    the kept ones fit). What ragged_dot writes in rows outside every group is not
    something to rely on across backends, so those rows are selected away on the way in
    (no gradient of theirs reaches the tokens) and on the way out.
    """
    E = w["moe_gate"].shape[0]
    M, K = experts_MK.shape
    keep_A = keep_MK.reshape(-1)
    key_A = jnp.where(keep_A, experts_MK.reshape(-1), E)
    order_A = _sort_by_expert(key_A)
    group_sizes_E = jnp.bincount(key_A, length=E + 1)[:E].astype(jnp.int32)
    in_group_R = jnp.arange(rows) < jnp.sum(group_sizes_E)

    token_R = order_A[:rows] // K
    x_RD = jnp.where(in_group_R[:, None], x_MD[token_R], 0)
    gate_RF = _saved(jax.lax.ragged_dot(x_RD, w["moe_gate"], group_sizes_E))
    up_RF = _saved(jax.lax.ragged_dot(x_RD, w["moe_up"], group_sizes_E))
    y_RD = jax.lax.ragged_dot(jax.nn.silu(gate_RF) * up_RF, w["moe_down"], group_sizes_E)
    y_RD = _saved(y_RD)
    y_RD = jnp.where(in_group_R[:, None], y_RD, 0)

    # Back to assignment order: a gather by each assignment's sorted position (its
    # transpose, the scatter-add, is only in the backward pass). Positions past `rows`
    # are dropped assignments: the fill gives them zero.
    position_A = jnp.zeros(M * K, jnp.int32).at[order_A].set(jnp.arange(M * K, dtype=jnp.int32))
    y_AD = jnp.take(y_RD, position_A, axis=0, mode="fill", fill_value=0)
    y_MKD = y_AD.reshape(M, K, -1).astype(jnp.float32)
    return jnp.einsum("MKD,MK->MD", y_MKD, jnp.where(keep_MK, weights_MK, 0.0))


def moe_stats(
    s: MoeSettings,
    logits_ME: jax.Array,
    routing: Routing,
    keep_MK: jax.Array,
    valid_BT: jax.Array,
) -> MoeStats:
    """The statistics and loss sums of one layer (see the module docstring)."""
    B, T = valid_BT.shape
    E, K = s.experts, s.top_k
    valid_BT = valid_BT.astype(bool)
    valid_M = valid_BT.reshape(-1)
    vf_M = valid_M.astype(jnp.float32)
    # chosen_MKE: one-hot of each assignment, zero for padding tokens.
    chosen_MKE = jax.nn.one_hot(routing.experts, E) * vf_M[:, None, None]
    dropped = jnp.sum(jnp.where(keep_MK, 0.0, vf_M[:, None]))

    # Sequence-wise balance loss, per row b over its T_b valid tokens.
    count_BE = jnp.sum(chosen_MKE, axis=1).reshape(B, T, E).sum(axis=1)
    tokens_B = jnp.sum(valid_BT, axis=1).astype(jnp.float32)
    has_B = tokens_B > 0
    per_token_B = jnp.where(has_B, 1.0 / jnp.maximum(tokens_B, 1.0), 0.0)
    # Normalised scores s': the softmax already sums to 1; sigmoid scores do not.
    norm_ME = routing.scores / jnp.sum(routing.scores, axis=-1, keepdims=True)
    mean_score_BE = (norm_ME * vf_M[:, None]).reshape(B, T, E).sum(axis=1)
    P_BE = mean_score_BE * per_token_B[:, None]
    f_BE = (E / K) * count_BE * per_token_B[:, None]  # counts: no gradient to stop
    balance_sum = jnp.sum(f_BE * P_BE)

    z_M = jax.nn.logsumexp(logits_ME.astype(jnp.float32), axis=-1)
    return {
        "load": jnp.sum(chosen_MKE, axis=(0, 1)),
        "dropped": dropped,
        "tokens": jnp.sum(vf_M),
        "balance_sum": balance_sum,
        "rows": jnp.sum(has_B.astype(jnp.float32)),
        "z_sum": jnp.sum(z_M * z_M * vf_M),
    }


MOE_WEIGHTS = ("router", "router_bias", "moe_gate", "moe_up", "moe_down")


def moe_mlp(
    s: MoeSettings, w: dict[str, jax.Array], h_BTD: jax.Array, valid_BT: jax.Array
) -> tuple[jax.Array, MoeStats]:
    """The routed experts' weighted sum for every token, and the layer's stats (sums).

    `w` holds one layer's weights in the compute dtype ("router", "moe_gate",
    "moe_up", "moe_down") and the float32 "router_bias". The K contributions are mixed
    in float32 and the result returned in h's dtype; padding tokens (valid False) get
    zero.
    """
    out_BTD, stats = _routed(s, w, h_BTD, valid_BT, expert_axis=None)
    return out_BTD.astype(h_BTD.dtype), stats


def _routed(
    s: MoeSettings,
    w: dict[str, jax.Array],
    h_BTD: jax.Array,
    valid_BT: jax.Array,
    expert_axis: str | None,
) -> tuple[jax.Array, MoeStats]:
    """moe_mlp's work on the tokens at hand, the output left in float32; with
    `expert_axis` (buckets inside shard_map), `w` holds this device's experts only and
    the buckets are exchanged over that axis."""
    B, T, D = h_BTD.shape
    M = B * T
    h_MD = h_BTD.reshape(M, D)
    valid_M = valid_BT.reshape(M).astype(bool)
    logits_ME = router_logits(w, h_MD)
    routing = route(s, logits_ME, w["router_bias"])

    if s.capacity_factor > 0:
        capacity = s.capacity(M)
        keep_MK = capacity_keep(routing.experts, valid_M, s.experts, capacity)
        rows = min(M * s.top_k, s.experts * capacity)
    else:
        keep_MK = jnp.broadcast_to(valid_M[:, None], routing.experts.shape)
        rows = M * s.top_k

    x_MD = h_MD.astype(w["moe_gate"].dtype)
    choice = (routing.experts, routing.weights, keep_MK)
    if expert_axis is not None:
        out_MD = _experts_exchanged(w, x_MD, *choice, s.capacity(M), s.experts, expert_axis)
    elif s.impl == "dense":
        out_MD = _experts_dense(w, x_MD, *choice)
    elif s.impl == "buckets":
        out_MD = _experts_buckets(w, x_MD, *choice, s.capacity(M))
    else:
        out_MD = _experts_ragged(w, x_MD, *choice, rows)
    stats = moe_stats(s, logits_ME, routing, keep_MK, valid_BT)
    return out_MD.reshape(B, T, D), stats


def moe_mlp_sharded(
    s: MoeSettings,
    w: dict[str, jax.Array],
    h_BTD: jax.Array,
    valid_BT: jax.Array,
    mesh: Mesh | AbstractMesh,
    batch_axes: tuple[str, ...],
    expert_axis: str | None = None,
    tensor_axis: str | None = None,
) -> tuple[jax.Array, MoeStats]:
    """`moe_mlp` on a device mesh, each device routing its own batch rows (shard_map).

    `batch_axes` split the rows (none: every device has the whole batch). The stats,
    being sums, add exactly over them. Why per shard: under plain jit with the batch
    sharded, XLA cannot split the ragged version's global sort: it gathers the routing,
    and every device computes every assignment's rows (measured on 8 CPU devices: 97%
    of the whole per device). Per shard, each device sorts and multiplies its own
    tokens. A capacity, if any, is then per shard (GShard's groups): C from the
    shard's own tokens.

    The experts' weights:
      - `tensor_axis` splits every expert's width F (Megatron-style): each device
        computes a partial output, summed over the axis.
      - `expert_axis` (one of `batch_axes`) splits the experts themselves, E / n per
        device, for `buckets`: the tokens travel to their experts and back by
        all-to-all (`_experts_exchanged`), and no device ever holds another's experts.
        That is expert parallelism. The dropless implementations get the experts
        whole instead (gathered, as FSDP gathers any weight): their per-expert row
        counts vary, and a fixed-size exchange would have to reserve every token for
        every expert.
    Dropless, the result is moe_mlp's on the whole batch up to summation order.
    """
    exchange = expert_axis if s.impl == "buckets" else None
    if exchange is not None and (exchange not in batch_axes or s.experts % mesh.shape[exchange]):
        raise ValueError(
            f"expert axis {exchange!r} must split the batch ({batch_axes}) and the "
            f"{s.experts} experts"
        )
    tp = tensor_axis
    specs = {
        "router": P(),
        "router_bias": P(),
        "moe_gate": P(exchange, None, tp),
        "moe_up": P(exchange, None, tp),
        "moe_down": P(exchange, tp, None),
    }

    def local(w, h_BTD, valid_BT):
        out_BTD, stats = _routed(s, w, h_BTD, valid_BT, exchange)
        if tp is not None:
            out_BTD = jax.lax.psum(out_BTD, tp)  # the partial sums over F's shards
        if batch_axes:
            stats = jax.tree.map(lambda x: jax.lax.psum(x, batch_axes), stats)
        return out_BTD.astype(h_BTD.dtype), stats

    rows = P(batch_axes) if batch_axes else P()
    w = {k: w[k] for k in MOE_WEIGHTS}
    return jax.shard_map(local, mesh=mesh, in_specs=(specs, rows, rows), out_specs=(rows, P()))(
        w, h_BTD, valid_BT
    )


def update_router_bias(bias_E: jax.Array, load_E: jax.Array, rate: float) -> jax.Array:
    """One auxiliary-loss-free balancing step (DeepSeek-V3 sec 2.1.2), outside the gradient.

    bias_i += rate * sign(mean(load) - load_i): an overloaded expert's bias goes down,
    an underloaded one's up, an exactly average one's stays. Over the last axis, so a
    stacked [L, E] bias with its [L, E] load works the same. float32 throughout: steps
    of ~1e-3 on a bias of order 1 would vanish in bf16.
    """
    load_E = jnp.asarray(load_E, jnp.float32)
    mean = jnp.mean(load_E, axis=-1, keepdims=True)
    return jnp.asarray(bias_E, jnp.float32) + rate * jnp.sign(mean - load_E)
