"""Which Hugging Face tensor is which jaxlm parameter, and how their layouts differ.

transformers stores a linear layer as torch does, [out, in], one tensor per layer;
jaxlm stores [in, out] with the heads split out and all layers stacked on a leading
axis (the `scan` layout):

    HF (layer i)                               jaxlm                         layout
    model.embed_tokens.weight      [V, D]      embed        [V, D]           same
    lm_head.weight                 [V, D]      unembed      [D, V]           transposed
    model.norm.weight              [D]         final_norm   [D]              same
    ...input_layernorm.weight      [D]         attn_norm    [L, D]           stacked
    ...post_attention_layernorm    [D]         mlp_norm     [L, D]           stacked
    ...self_attn.q_proj.weight     [N*H, D]    wq           [L, D, N, H]     T, heads split
    ...self_attn.k_proj.weight     [K*H, D]    wk           [L, D, K, H]     T, heads split
    ...self_attn.v_proj.weight     [K*H, D]    wv           [L, D, K, H]     T, heads split
    ...self_attn.o_proj.weight     [D, N*H]    wo           [L, N, H, D]     T, heads split
    ...self_attn.{q,k,v}_proj.bias [N*H]       bq, bk, bv   [L, N, H]        heads split
    ...self_attn.{q,k}_norm.weight [H]         q_norm, k_norm [L, H]         stacked
    ...mlp.gate_proj.weight        [F, D]      w_gate       [L, D, F]        transposed
    ...mlp.up_proj.weight          [F, D]      w_up         [L, D, F]        transposed
    ...mlp.down_proj.weight        [D, F]      w_down       [L, F, D]        transposed
    score.weight                   [1, D]      score        [D]              a row (score head)

A mixture-of-experts model (Qwen3-MoE, Mixtral) has no dense MLP; per layer, a router
and E experts, written by transformers' save_pretrained (5.x included, which fuses
the experts into 3-D tensors in memory but saves them per expert) as:

    HF (layer i, expert e; Qwen3-MoE / Mixtral)        jaxlm                    layout
    ...mlp.gate.weight / ...block_sparse_moe.gate.weight
                                         [E, D]        router    [L, D, E]      transposed
    ...mlp.experts.{e}.gate_proj.weight / ...experts.{e}.w1.weight
                                         [F, D]        moe_gate  [L, E, D, F]   T, stacked
    ...mlp.experts.{e}.up_proj.weight / ...experts.{e}.w3.weight
                                         [F, D]        moe_up    [L, E, D, F]   T, stacked
    ...mlp.experts.{e}.down_proj.weight / ...experts.{e}.w2.weight
                                         [D, F]        moe_down  [L, E, F, D]   T, stacked
    (none)                                             router_bias [L, E]       zeros

A Qwen3-MoE model with decoder_sparse_step k > 1 (jaxlm's model.moe_every) has both:
its experts stacked over the MoE layers only (layers k-1, 2k-1, ...), its dense MLP
over the others (TensorMapping.layers says which HF layer each stacked index is).

The import also reads the fused layout of transformers 5.x's modules, should a
checkpoint hold their state dict as is (both families: ...mlp.gate.weight,
...mlp.experts.gate_up_proj [E, 2F, D] with gate the first F rows, and
...mlp.experts.down_proj [E, D, F]); exports write the per-expert layout, which every
transformers version loads. router_bias, jaxlm's auxiliary-loss-free balancing bias,
has no transformers counterpart: it imports as zeros and exports only when zero
(ABSENT_ZEROS).

RoPE needs no permutation: jaxlm's apply_rope rotates the pairs (x[i], x[i + H/2])
("rotate half"), which is the layout of Hugging Face Llama-family checkpoints. (Meta's
original Llama release rotates interleaved pairs and is converted to this layout by
transformers' own script; jaxlm reads only the transformers layout.)

Each direction is written with numpy views only (transpose, reshape splitting an
axis), so applied to a memory-mapped tensor and then sliced, it reads just the slice.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from jaxlm.config import ModelConfig

LAYER = "model.layers.{layer}."
EXPERT = "{expert}"
# jaxlm parameters without a transformers tensor: zeros on import, zero-only on export.
ABSENT_ZEROS = (("layers", "router_bias"),)
# family -> (router, gate, up, down), after LAYER, of save_pretrained's per-expert layout.
EXPERT_NAMES = {
    "qwen3_moe": (
        "mlp.gate.weight",
        "mlp.experts.{expert}.gate_proj.weight",
        "mlp.experts.{expert}.up_proj.weight",
        "mlp.experts.{expert}.down_proj.weight",
    ),
    "mixtral": (
        "block_sparse_moe.gate.weight",
        "block_sparse_moe.experts.{expert}.w1.weight",
        "block_sparse_moe.experts.{expert}.w3.weight",
        "block_sparse_moe.experts.{expert}.w2.weight",
    ),
}
# transformers 5.x's in-memory names (either family): (router, gate_up, down).
FUSED_NAMES = ("mlp.gate.weight", "mlp.experts.gate_up_proj", "mlp.experts.down_proj")
# Buffers some checkpoints store that carry no weights (RoPE frequencies are recomputed).
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclasses.dataclass(frozen=True)
class TensorMapping:
    """One jaxlm parameter and the Hugging Face tensor(s) it is made of."""

    path: tuple[str, ...]  # in the params State, e.g. ("layers", "wq")
    hf_name: str  # with "{layer}" for stacked parameters, and "{expert}" per expert
    hf_shape: tuple[int, ...]  # of one HF tensor
    # One HF tensor -> one layer's slice (one expert's, with "{expert}"), and back.
    to_jaxlm: Callable[[np.ndarray], np.ndarray]
    to_hf: Callable[[np.ndarray], np.ndarray] | None  # None: import only (fused experts)
    experts: int = 0  # E when hf_name has "{expert}": axis 1 of the jaxlm parameter
    # The HF layer of each index of the stacked axis; None: layer i is index i. A mixed
    # model (moe_every > 1) stacks its experts over the MoE layers only, its dense MLP
    # over the others.
    layers: tuple[int, ...] | None = None

    @property
    def stacked(self) -> bool:
        return "{layer}" in self.hf_name

    @property
    def per_expert(self) -> bool:
        return EXPERT in self.hf_name

    def name(self, layer: int | None = None, expert: int | None = None) -> str:
        """The HF tensor of one layer (and expert) of the parameter."""
        if not self.stacked:
            return self.hf_name
        if not self.per_expert:
            return self.hf_name.format(layer=layer)
        return self.hf_name.format(layer=layer, expert=expert)

    def hf_layers(self, n_layers: int) -> tuple[int, ...]:
        """The HF layer of each index of the stacked axis."""
        return tuple(range(n_layers)) if self.layers is None else self.layers

    def hf_names(self, n_layers: int) -> list[str]:
        if not self.stacked:
            return [self.hf_name]
        experts = range(self.experts) if self.per_expert else [None]
        return [self.name(i, e) for i in self.hf_layers(n_layers) for e in experts]


def _same(x: np.ndarray) -> np.ndarray:
    return x


def _transposed(x: np.ndarray) -> np.ndarray:
    return x.T


def _split_out(*heads: int) -> tuple[Callable, Callable]:
    """[heads*H, D] (torch out x in) <-> [D, heads, H]."""
    return (lambda x: x.T.reshape(x.shape[1], *heads), lambda x: x.reshape(x.shape[0], -1).T)


def _split_in(*heads: int) -> tuple[Callable, Callable]:
    """[D, N*H] <-> [N, H, D]."""
    return (lambda x: x.T.reshape(*heads, x.shape[0]), lambda x: x.reshape(-1, x.shape[-1]).T)


def _split_bias(*heads: int) -> tuple[Callable, Callable]:
    """[heads*H] <-> [heads, H]."""
    return (lambda x: x.reshape(*heads), lambda x: x.reshape(-1))


def tensor_mappings(
    cfg: ModelConfig, family: str | None = None, *, fused: bool = False
) -> list[TensorMapping]:
    """Every parameter of a (plain, non-LoRA) jaxlm model with `cfg`, in HF file order
    (but ABSENT_ZEROS). A MoE model's expert tensors are named after `family` (EXPERT_NAMES),
    or with `fused` after transformers 5.x's fused modules (import only)."""
    D, V, F = cfg.d_model, cfg.vocab_size, cfg.resolved_d_ff
    N, K, H = cfg.n_heads, cfg.n_kv_heads, cfg.resolved_head_dim
    attn, mlp = LAYER + "self_attn.", LAYER + "mlp."
    out = [TensorMapping(("embed",), "model.embed_tokens.weight", (V, D), _same, _same)]
    out.append(
        TensorMapping(("layers", "attn_norm"), LAYER + "input_layernorm.weight", (D,), _same, _same)
    )
    out.append(
        TensorMapping(("layers", "wq"), attn + "q_proj.weight", (N * H, D), *_split_out(N, H))
    )
    out.append(
        TensorMapping(("layers", "wk"), attn + "k_proj.weight", (K * H, D), *_split_out(K, H))
    )
    out.append(
        TensorMapping(("layers", "wv"), attn + "v_proj.weight", (K * H, D), *_split_out(K, H))
    )
    if cfg.attention_bias:
        for name, heads in (("q", N), ("k", K), ("v", K)):
            out.append(
                TensorMapping(
                    ("layers", f"b{name}"),
                    attn + f"{name}_proj.bias",
                    (heads * H,),
                    *_split_bias(heads, H),
                )
            )
    if cfg.qk_norm:
        for name in ("q", "k"):
            out.append(
                TensorMapping(
                    ("layers", f"{name}_norm"), attn + f"{name}_norm.weight", (H,), _same, _same
                )
            )
    out.append(
        TensorMapping(("layers", "wo"), attn + "o_proj.weight", (D, N * H), *_split_in(N, H))
    )
    out.append(
        TensorMapping(
            ("layers", "mlp_norm"), LAYER + "post_attention_layernorm.weight", (D,), _same, _same
        )
    )
    dense_layers = None  # every layer
    if cfg.moe:
        experts = _expert_mappings(cfg, family, fused)
        if cfg.moe_every > 1:  # Qwen3-MoE's decoder_sparse_step: the others stay dense
            routed = tuple(cfg.moe_layers)
            experts = [dataclasses.replace(m, layers=routed) for m in experts]
            dense_layers = tuple(i for i in range(cfg.n_layers) if i not in routed)
        out += experts
    if not cfg.moe or dense_layers:
        shapes = {"gate": (F, D), "up": (F, D), "down": (D, F)}
        for name, shape in shapes.items():
            out.append(
                TensorMapping(
                    ("layers", f"w_{name}"),
                    mlp + f"{name}_proj.weight",
                    shape,
                    _transposed,
                    _transposed,
                    layers=dense_layers,
                )
            )
    out.append(TensorMapping(("final_norm",), "model.norm.weight", (D,), _same, _same))
    if not cfg.tie_embeddings:
        out.append(TensorMapping(("unembed",), "lm_head.weight", (V, D), _transposed, _transposed))
    if cfg.score_head:  # *ForSequenceClassification's Linear(D, num_labels=1), no bias
        out.append(
            TensorMapping(
                ("score",), "score.weight", (1, D), lambda x: x.reshape(D), lambda x: x[None, :]
            )
        )
    return out


def _expert_mappings(cfg: ModelConfig, family: str | None, fused: bool) -> list[TensorMapping]:
    """The router and routed experts of a MoE model (the module docstring's table)."""
    if cfg.moe_shared_experts:
        # Checked before (config_map.export_family); a programming error if reached.
        raise ValueError("transformers' Qwen3-MoE and Mixtral have no shared experts")
    D, E, F = cfg.d_model, cfg.moe_experts, cfg.resolved_moe_d_ff
    if fused:
        router, gate_up, down = (LAYER + name for name in FUSED_NAMES)
        return [
            TensorMapping(("layers", "router"), router, (E, D), _transposed, _transposed),
            # gate_up_proj [E, 2F, D]: torch's Linear rows, gate's F then up's F.
            TensorMapping(
                ("layers", "moe_gate"),
                gate_up,
                (E, 2 * F, D),
                lambda x: x[:, :F].transpose(0, 2, 1),
                None,
            ),
            TensorMapping(
                ("layers", "moe_up"),
                gate_up,
                (E, 2 * F, D),
                lambda x: x[:, F:].transpose(0, 2, 1),
                None,
            ),
            TensorMapping(
                ("layers", "moe_down"), down, (E, D, F), lambda x: x.transpose(0, 2, 1), None
            ),
        ]
    if family not in EXPERT_NAMES:
        raise ValueError(f"no expert tensor names for family {family!r}")
    router, gate, up, down = (LAYER + name for name in EXPERT_NAMES[family])
    return [
        TensorMapping(("layers", "router"), router, (E, D), _transposed, _transposed),
        TensorMapping(("layers", "moe_gate"), gate, (F, D), _transposed, _transposed, E),
        TensorMapping(("layers", "moe_up"), up, (F, D), _transposed, _transposed, E),
        TensorMapping(("layers", "moe_down"), down, (D, F), _transposed, _transposed, E),
    ]
