"""Tiny random transformers models of each Llama-family type, the reference for tests/test_hf_*.

Weights are drawn with torch.manual_seed at a larger scale than transformers' init
(std 0.2) and the norm scales and biases, which transformers initialises to 1 and 0,
are randomised too: a dropped bias, a norm applied in the wrong place or a transposed
head axis then moves the logits far beyond the 1e-4 tolerance, and greedy decoding
has clear winners instead of near-ties.

MOE_CASES are the mixtures of experts (Qwen3-MoE with and without renormalised top-k
weights, Mixtral), built by build_moe: their routers are drawn at twice that scale
again, so that each token's top-k probabilities are far from uniform (a wrong
renormalisation or a swapped expert moves the logits) with no near-ties at the k-th
place.
"""

import torch
import transformers

D, L, N, H, F = 64, 2, 4, 16, 96
VOCAB = 384  # also the vocabulary of the tiny jaxlm tokenizer the export tests train

# name -> (config class, model class, config overrides)
CASES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {"num_key_value_heads": N}),
    "llama3_rope": (
        "LlamaConfig",
        "LlamaForCausalLM",
        {
            "num_key_value_heads": 2,
            "rope_theta": 500.0,
            "rope_scaling": {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
        },
    ),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"num_key_value_heads": 2}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {"num_key_value_heads": 2}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"num_key_value_heads": 2}),
    "tied": (
        "LlamaConfig",
        "LlamaForCausalLM",
        {"num_key_value_heads": 2, "tie_word_embeddings": True},
    ),
    "gqa": ("Qwen3Config", "Qwen3ForCausalLM", {"num_key_value_heads": 1, "head_dim": 24}),
}


def build(case: str, seed: int = 0) -> transformers.PreTrainedModel:
    """A random fp32 model of `case` (CASES), in eval mode."""
    return build_model(*CASES[case], seed=seed)


def build_model(
    config_cls: str, model_cls: str, overrides: dict, seed: int = 0
) -> transformers.PreTrainedModel:
    """A random fp32 model of the named transformers classes with these config overrides."""
    kwargs = dict(
        vocab_size=VOCAB,
        hidden_size=D,
        intermediate_size=F,
        num_hidden_layers=L,
        num_attention_heads=N,
        head_dim=H,
        initializer_range=0.2,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    kwargs.update(overrides)
    torch.manual_seed(seed)
    config = getattr(transformers, config_cls)(**kwargs)
    model = getattr(transformers, model_cls)(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.normal_(1.0, 0.2)
            elif name.endswith("bias"):
                param.normal_(0.0, 0.3)
    return model.eval()


E, K, F_EXPERT = 8, 2, 32  # experts, experts per token, expert width
MOE_CASES = {
    "qwen3_moe": (
        "Qwen3MoeConfig",
        "Qwen3MoeForCausalLM",
        {
            "num_key_value_heads": 2,
            "num_experts": E,
            "num_experts_per_tok": K,
            "moe_intermediate_size": F_EXPERT,
            "norm_topk_prob": True,
        },
    ),
    # transformers' default for Qwen3-MoE (Qwen3-30B-A3B sets it true): the chosen
    # probabilities are not renormalised. Three per token and tied embeddings for variety.
    "qwen3_moe_unnormed": (
        "Qwen3MoeConfig",
        "Qwen3MoeForCausalLM",
        {
            "num_key_value_heads": 2,
            "num_experts": E,
            "num_experts_per_tok": 3,
            "moe_intermediate_size": F_EXPERT,
            "norm_topk_prob": False,
            "tie_word_embeddings": True,
        },
    ),
    # Dense and MoE layers in turn (decoder_sparse_step 2 of 4 layers: 1 and 3 route;
    # 0 and 2 are dense MLPs of intermediate_size).
    "qwen3_moe_sparse_step": (
        "Qwen3MoeConfig",
        "Qwen3MoeForCausalLM",
        {
            "num_key_value_heads": 2,
            "num_hidden_layers": 4,
            "decoder_sparse_step": 2,
            "num_experts": E,
            "num_experts_per_tok": K,
            "moe_intermediate_size": F_EXPERT,
            "norm_topk_prob": True,
        },
    ),
    "mixtral": (
        "MixtralConfig",
        "MixtralForCausalLM",
        {
            "num_key_value_heads": 2,
            "num_local_experts": E,
            "num_experts_per_tok": K,
            "intermediate_size": F_EXPERT,  # Mixtral's experts are intermediate_size wide
        },
    ),
}


def build_moe(case: str, seed: int = 0) -> transformers.PreTrainedModel:
    """A random fp32 mixture-of-experts model of `case` (MOE_CASES), in eval mode."""
    model = build_model(*MOE_CASES[case], seed=seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("mlp.gate.weight"):  # the router [E, D]
                param.mul_(2.0)
    return model
