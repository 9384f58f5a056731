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
# Buffers some checkpoints store that carry no weights (RoPE frequencies are recomputed).
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclasses.dataclass(frozen=True)
class TensorMapping:
    """One jaxlm parameter and the Hugging Face tensor(s) it is made of."""

    path: tuple[str, ...]  # in the params State, e.g. ("layers", "wq")
    hf_name: str  # with "{layer}" for stacked parameters
    hf_shape: tuple[int, ...]  # of one HF tensor
    to_jaxlm: Callable[[np.ndarray], np.ndarray]  # one HF tensor -> one layer's slice
    to_hf: Callable[[np.ndarray], np.ndarray]  # the inverse

    @property
    def stacked(self) -> bool:
        return "{layer}" in self.hf_name

    def hf_names(self, n_layers: int) -> list[str]:
        if not self.stacked:
            return [self.hf_name]
        return [self.hf_name.format(layer=i) for i in range(n_layers)]


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


def tensor_mappings(cfg: ModelConfig) -> list[TensorMapping]:
    """Every parameter of a (plain, non-LoRA) jaxlm model with `cfg`, in HF file order."""
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
    for name in ("gate", "up"):
        out.append(
            TensorMapping(
                ("layers", f"w_{name}"),
                mlp + f"{name}_proj.weight",
                (F, D),
                _transposed,
                _transposed,
            )
        )
    out.append(
        TensorMapping(
            ("layers", "w_down"), mlp + "down_proj.weight", (D, F), _transposed, _transposed
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
