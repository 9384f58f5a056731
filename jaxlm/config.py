"""Typed, frozen run configuration and `--set a.b=value` overrides.

Every knob of a run lives in one of the dataclasses below, with its default here and
nowhere else. Overrides are parsed from strings, type checked against the field's
annotation, and an unknown key is an error that names the closest valid key, so a
typo never silently trains the wrong model. `Config.to_json()` is what a run writes
into its workdir; `config_from_dict` reads it back.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
import typing
from typing import Any, Literal

from jaxlm.errors import InputError
from jaxlm.source_spec import parse_sources

Dtype = Literal["float32", "bfloat16", "float16"]


class ConfigError(InputError):
    """A bad configuration value or key; the message names the key."""


# How a ModelConfig field relates to saved weights, as its field metadata under WEIGHTS.
# An unmarked field defines the weights (their shapes, or what they compute), so saved
# weights are refused by a model that differs there. jaxlm.models.params derives from
# these marks the keys that train.init_from and inference overrides may change.
WEIGHTS = "weights"
# Numerics, implementation or context length only: neither a weight's shape nor the
# param tree changes (dtypes are cast on load), so saved weights load under any value.
KEEPS_WEIGHTS = {WEIGHTS: "kept"}
# LoRA: adds adapters beside base weights it leaves unchanged. Plain saved weights load
# as a LoRA model's base (train.init_from); a model loaded for inference is plain.
ADDS_ADAPTERS = {WEIGHTS: "adapters"}
# A scalar head beside the LM (model.score_head): plain LM weights load as everything
# but the head (train.init_from), which starts fresh.
ADDS_HEAD = {WEIGHTS: "head"}


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Shape and numerics of a Llama-family decoder."""

    vocab_size: int = 4096
    d_model: int = 256
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 4
    head_dim: int = 0  # 0 means d_model // n_heads
    d_ff: int = 0  # 0 means the Llama rule: 8/3 * d_model rounded up to ffn_multiple_of
    ffn_multiple_of: int = 64
    max_seq_len: int = dataclasses.field(default=256, metadata=KEEPS_WEIGHTS)
    rope_theta: float = dataclasses.field(default=10_000.0, metadata=KEEPS_WEIGHTS)
    # RoPE scaling for context extension (jaxlm.models.rope): "linear" (position
    # interpolation), "ntk" (NTK-aware base change), "yarn" or "llama3" (Llama 3.1's
    # frequency-banded interpolation), by rope_scaling_factor (new context / original
    # context, >= 1). "yarn_hf" and "dynamic_ntk" are YaRN and dynamic NTK exactly as
    # transformers computes them (rope types "yarn", "dynamic"; jaxlm.models.rope_hf),
    # for imported checkpoints. rope_original_max_len is the context the model was
    # trained at before extension: every method but linear and ntk needs it (> 0; for
    # dynamic_ntk it is transformers' max_position_embeddings); 0 means not given.
    rope_scaling: Literal["none", "linear", "ntk", "yarn", "llama3", "yarn_hf", "dynamic_ntk"] = (
        dataclasses.field(default="none", metadata=KEEPS_WEIGHTS)
    )
    rope_scaling_factor: float = dataclasses.field(default=1.0, metadata=KEEPS_WEIGHTS)
    rope_original_max_len: int = dataclasses.field(default=0, metadata=KEEPS_WEIGHTS)
    # yarn and yarn_hf: extrapolate dims turning more often than beta_fast, interpolate
    # those turning less often than beta_slow.
    rope_yarn_beta_fast: float = dataclasses.field(default=32.0, metadata=KEEPS_WEIGHTS)
    rope_yarn_beta_slow: float = dataclasses.field(default=1.0, metadata=KEEPS_WEIGHTS)
    # yarn_hf only (transformers' rope_parameters of the same names): round the ramp's
    # edges to whole pairs; the factor cos and sin are multiplied by (0 = derive it:
    # mscale / mscale_all_dim ratio when both are non-zero, else 0.1 ln(s) + 1).
    rope_yarn_truncate: bool = dataclasses.field(default=True, metadata=KEEPS_WEIGHTS)
    rope_yarn_attention_factor: float = dataclasses.field(default=0.0, metadata=KEEPS_WEIGHTS)
    rope_yarn_mscale: float = dataclasses.field(default=0.0, metadata=KEEPS_WEIGHTS)
    rope_yarn_mscale_all_dim: float = dataclasses.field(default=0.0, metadata=KEEPS_WEIGHTS)
    # llama3: pairs whose wavelength is below original_max_len / high_freq_factor keep
    # their frequency, above original_max_len / low_freq_factor are interpolated.
    rope_llama3_low_freq_factor: float = dataclasses.field(default=1.0, metadata=KEEPS_WEIGHTS)
    rope_llama3_high_freq_factor: float = dataclasses.field(default=4.0, metadata=KEEPS_WEIGHTS)
    norm_eps: float = 1e-5
    qk_norm: bool = False
    # Biases on the q, k and v projections (Qwen2's attention; none on the output).
    attention_bias: bool = False
    tie_embeddings: bool = True
    # A scalar head after the final norm (`score` [D]; Transformer.scores): the reward
    # model's output, or an RL critic's value. The LM head stays, so such a model
    # starts from any LM's weights (train.init_from fills everything but `score`).
    score_head: bool = dataclasses.field(default=False, metadata=ADDS_HEAD)
    init_std: float = 0.02
    param_dtype: Dtype = dataclasses.field(default="float32", metadata=KEEPS_WEIGHTS)
    compute_dtype: Dtype = dataclasses.field(default="float32", metadata=KEEPS_WEIGHTS)
    attention_impl: Literal["xla", "cudnn", "blocked", "naive"] = dataclasses.field(
        default="xla", metadata=KEEPS_WEIGHTS
    )
    # How the layers run: True scans one layer body over the stacked weights (compile
    # time flat in depth), False unrolls them (no per-layer slice/update copies of the
    # activations: 4-7% faster steps on a 2-core Zen 4); "auto" unrolls on CPU up to
    # UNROLL_ON_CPU_UP_TO layers and scans elsewhere (jaxlm.models.transformer.
    # scans_layers). The weights are the same either way, and so is the function:
    # resuming may change it (jaxlm.checkpointing.resume_rules).
    scan_layers: bool | Literal["auto"] = dataclasses.field(default="auto", metadata=KEEPS_WEIGHTS)
    remat: Literal["none", "full", "dots"] = dataclasses.field(
        default="none", metadata=KEEPS_WEIGHTS
    )
    # LoRA (jaxlm.models.lora): rank > 0 adds low-rank adapters A [in, r] and B [r, out]
    # (B starts at zero) to the projections named in lora_targets; only they train,
    # the base weights stay frozen. The effective weight is W + (alpha / rank) A B.
    lora_rank: int = dataclasses.field(default=0, metadata=ADDS_ADAPTERS)
    lora_alpha: float = dataclasses.field(default=16.0, metadata=ADDS_ADAPTERS)
    lora_targets: str = dataclasses.field(
        default="wq,wk,wv,wo,w_gate,w_up,w_down", metadata=ADDS_ADAPTERS
    )
    # Mixture of experts (jaxlm.models.moe): moe_experts > 0 replaces the MLP of every
    # moe_every-th layer (layer i when (i + 1) % moe_every == 0, Qwen3-MoE's
    # decoder_sparse_step; 1: every layer; the others keep the dense MLP of width d_ff)
    # by moe_experts routed SwiGLU experts of width moe_d_ff (0: the dense d_ff), each
    # token sent to its moe_top_k best by a router (scores: softmax or sigmoid; the
    # chosen weights renormalised to sum 1 with moe_norm_topk), plus
    # moe_shared_experts always-on experts (DeepSeek; one dense MLP of that many
    # experts' width). moe_capacity_factor > 0 caps each expert at that factor times
    # its even share of the assignments and drops (counts) the overflow; 0 is
    # dropless. moe_impl "ragged" groups tokens by expert (jax.lax.ragged_dot),
    # "buckets" gives each expert a fixed bucket of its capacity (needs a capacity
    # factor; the cheapest on CPU), "dense" runs every expert on every token (the
    # reference). Losses, added to the
    # objective: moe_balance_weight x the sequence-wise load-balancing loss (1 when
    # uniform), moe_z_weight x the router z-loss; moe_bias_rate > 0 turns on the
    # auxiliary-loss-free balancing (a per-expert score bias moved by that step
    # against the observed load after each update).
    moe_experts: int = 0
    moe_every: int = 1
    moe_top_k: int = 2
    moe_d_ff: int = 0
    moe_shared_experts: int = 0
    moe_score: Literal["softmax", "sigmoid"] = "softmax"
    moe_norm_topk: bool = True
    moe_capacity_factor: float = dataclasses.field(default=0.0, metadata=KEEPS_WEIGHTS)
    moe_impl: Literal["ragged", "dense", "buckets"] = dataclasses.field(
        default="ragged", metadata=KEEPS_WEIGHTS
    )
    moe_balance_weight: float = dataclasses.field(default=0.01, metadata=KEEPS_WEIGHTS)
    moe_z_weight: float = dataclasses.field(default=0.001, metadata=KEEPS_WEIGHTS)
    moe_bias_rate: float = dataclasses.field(default=0.0, metadata=KEEPS_WEIGHTS)

    def __post_init__(self):
        _finite(self)
        _positive(self, "vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads")
        _positive(self, "max_seq_len", "ffn_multiple_of", "init_std")
        _non_negative(self, "head_dim", "d_ff", "norm_eps")
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(
                f"model.n_heads={self.n_heads} must be a multiple of "
                f"model.n_kv_heads={self.n_kv_heads} (grouped-query attention)"
            )
        if self.head_dim == 0 and self.d_model % self.n_heads:
            raise ConfigError(
                f"model.d_model={self.d_model} is not divisible by model.n_heads="
                f"{self.n_heads}; set model.head_dim explicitly"
            )
        if self.resolved_head_dim % 2:
            raise ConfigError(f"model.head_dim={self.resolved_head_dim} must be even for RoPE")
        if self.score_head and self.lora_rank > 0:
            raise ConfigError(
                "model.score_head with model.lora_rank > 0 is not supported: the score "
                "head would sit in the frozen base and never train (train it in full)"
            )
        _check_rope_scaling(self)
        _check_moe(self)
        if self.attention_impl == "cudnn":
            # cuDNN's fused attention kernels exist only for these; fail at config time,
            # not deep inside the first traced step.
            if self.compute_dtype == "float32":
                raise ConfigError(
                    "model.attention_impl=cudnn needs model.compute_dtype=bfloat16 or float16"
                )
            if self.resolved_head_dim % 8 or self.resolved_head_dim > 256:
                raise ConfigError(
                    f"model.attention_impl=cudnn needs a head dim that is a multiple of 8 and "
                    f"at most 256, got model.head_dim={self.resolved_head_dim}"
                )

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.d_model // self.n_heads

    @property
    def resolved_d_ff(self) -> int:
        if self.d_ff:
            return self.d_ff
        hidden = int(8 * self.d_model / 3)
        m = self.ffn_multiple_of
        return m * ((hidden + m - 1) // m)

    @property
    def moe(self) -> bool:
        return self.moe_experts > 0

    @property
    def resolved_moe_d_ff(self) -> int:
        return self.moe_d_ff or self.resolved_d_ff

    @property
    def moe_layers(self) -> list[int]:
        """The indices of the layers with routed experts (none for a dense model)."""
        if not self.moe:
            return []
        return [i for i in range(self.n_layers) if (i + 1) % self.moe_every == 0]


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig:
    """Where tokens come from and how they are packed.

    `sources` and `eval_sources` use the syntax of jaxlm.source_spec, e.g.
    "stdlib", "jsonl:data/*.jsonl@3,text:books/**/*.txt@1" or "tokens:shards/web".
    With `eval_sources` empty, a `val_fraction` of every source's documents (chosen by
    a stable hash) is held out for evaluation and never trained on.
    """

    sources: str = "stdlib"
    eval_sources: str = ""  # empty means the held-out split of `sources`
    # What a record is: "text" (pretraining documents), "chat" (conversations; SFT
    # trains only assistant tokens) or "preference" (chosen/rejected pairs: the run
    # optimises config.preference). chat and preference read jsonl: sources.
    format: Literal["text", "chat", "preference", "reward", "rl"] = "text"
    text_field: str = "text"  # jsonl key / parquet column holding the document
    tokenizer: str = ""  # path to a .model; empty means train one into the workdir
    # 0 means model.vocab_size (filled in by Config; see IMPLIED below)
    tokenizer_vocab_size: int = 0
    tokenizer_max_chars: int = 8_000_000
    val_fraction: float = 0.02
    seq_len: int = 0  # tokens per row; 0 means model.max_seq_len (filled in by Config)
    batch_size: int = 16  # global, across all processes
    packer: Literal["first_fit", "best_fit", "concat_then_split"] = "first_fit"
    packing_bins: int = 64  # rows first_fit / best_fit fill at once (more: less padding)
    shuffle_window: int = 16384  # training pieces shuffled in windows of this many
    seed: int = 0
    eval_max_docs: int = 0  # per eval source; 0 means every held-out document
    reader_threads: int = 1  # threads reading and tokenizing documents, per process
    workers: int = 0  # Grain worker processes running the pipeline; 0 = in-process
    # skip: count and report bad records; abort above 1% of n read + sqrt(0.01 n)
    # (n >= 100, or the whole source if smaller; jaxlm.data.jsonl.bad_line_allowance)
    on_bad_record: Literal["raise", "skip"] = "raise"
    # A resume whose data changed content but not document count (jaxlm.data.
    # content_digest: size + sampled blocks per file) is refused; true continues with a
    # logged warning, on the new data from the saved position.
    allow_changed_data: bool = False
    # Loss weight of `<think>…</think>` reasoning (tags included) in assistant turns of
    # chat and preference data: 1 trains it like the answer, 0 excludes it, between
    # down-weights it (jaxlm.data.think). Text data have no turns: unused there (a
    # chat run evaluated on text by `jaxlm eval` keeps its value).
    think_loss_weight: float = 1.0

    def __post_init__(self):
        _finite(self)
        _positive(self, "batch_size", "packing_bins", "tokenizer_max_chars", "shuffle_window")
        _non_negative(self, "eval_max_docs", "seq_len", "tokenizer_vocab_size")
        _non_negative(self, "think_loss_weight")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"data.val_fraction={self.val_fraction} must be in (0, 1)")
        if self.reader_threads < 0 or self.workers < 0:
            raise ConfigError("data.reader_threads and data.workers must be >= 0")
        for key in ("sources", "eval_sources"):
            text = getattr(self, key)
            if key == "eval_sources" and not text:
                continue
            try:
                specs = parse_sources(text, key=f"data.{key}")
            except InputError as e:
                raise ConfigError(str(e)) from None
            if not self.tokenizer and any(spec.kind == "tokens" for spec in specs):
                raise ConfigError(
                    f"data.{key}: pre-tokenized sources need data.tokenizer set to the "
                    "tokenizer they were made with"
                )


@dataclasses.dataclass(frozen=True, kw_only=True)
class OptimConfig:
    """The optimizer (AdamW, or Muon on the layer matrices), its schedule, clipping."""

    optimizer: Literal["adamw", "muon"] = "adamw"
    lr: float = 3e-3  # AdamW's (with muon: of embeddings, head, norms)
    schedule: Literal["cosine", "wsd", "constant"] = "cosine"
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # final lr = lr * min_lr_ratio
    decay_fraction: float = 0.2  # wsd: share of the run spent decaying
    weight_decay: float = 0.1
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    clip_norm: float = 1.0  # 0 disables clipping
    grad_accum: int = 1
    z_loss: float = 0.0
    # Skip (do not apply) a step whose loss exceeds spike_factor x its moving average,
    # after spike_warmup_steps updates; 0 turns it off.
    spike_factor: float = 0.0
    spike_warmup_steps: int = 100
    # Stop the run after this many skipped spikes in a row (the "spike" is the new
    # normal, lower the lr); 0 never stops.
    max_consecutive_spikes: int = 20
    # optimizer=muon: the layer matrices' lr (same schedule shape as lr) and momentum.
    muon_lr: float = 0.02
    muon_momentum: float = 0.95

    def __post_init__(self):
        _finite(self)
        _non_negative(self, "muon_lr")
        if not 0.0 <= self.muon_momentum < 1.0:
            raise ConfigError(f"optim.muon_momentum={self.muon_momentum} must be in [0, 1)")
        _positive(self, "grad_accum", "eps")
        # lr=0 stays allowed: a frozen run (throughput, data checks) is deliberate and
        # shows as a flat loss; a negative lr trains uphill and exits 0.
        _non_negative(self, "lr", "weight_decay", "clip_norm", "z_loss", "spike_warmup_steps")
        for name in ("b1", "b2"):  # b2 = 1 divides by zero in Adam's bias correction
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"optim.{name}={getattr(self, name)} must be in [0, 1)")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"optim.min_lr_ratio={self.min_lr_ratio} must be in [0, 1]")
        if self.spike_factor < 0 or self.max_consecutive_spikes < 0:
            raise ConfigError(
                f"optim.spike_factor={self.spike_factor} and optim.max_consecutive_spikes="
                f"{self.max_consecutive_spikes} must be >= 0 (0 = off)"
            )
        if self.warmup_steps < 0:
            raise ConfigError(f"optim.warmup_steps={self.warmup_steps} must be >= 0")
        if not 0.0 <= self.decay_fraction <= 1.0:
            raise ConfigError(f"optim.decay_fraction={self.decay_fraction} must be in [0, 1]")


@dataclasses.dataclass(frozen=True, kw_only=True)
class MeshConfig:
    """Device mesh shape; -1 on one axis takes the remaining devices."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1

    def __post_init__(self):
        sizes = (self.data, self.fsdp, self.tensor)
        if sum(s == -1 for s in sizes) > 1:
            raise ConfigError("at most one of mesh.data, mesh.fsdp, mesh.tensor may be -1")
        if any(s == 0 or s < -1 for s in sizes):
            raise ConfigError(f"mesh sizes must be positive or -1, got {sizes}")


DEFAULT_STEPS = 1000  # a run's length when neither train.steps nor train.epochs is set


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """The host loop: length, evaluation, logging.

    The run's length is `steps` optimizer steps or `epochs` passes over the packed
    training data, never both. With `epochs` the run counts the packed sequences
    (rows; pairs for preference data) of one pass over the training split before its
    first step and trains ceil(epochs * sequences / data.batch_size) steps
    (jaxlm.training.epochs); with neither set it trains DEFAULT_STEPS.
    """

    steps: int = 0  # 0: from `epochs`, or DEFAULT_STEPS when that is 0 too
    epochs: float = 0.0
    seed: int = 0
    eval_every: int = 250  # 0 disables periodic evaluation (a final one still runs)
    eval_at_start: bool = False  # also evaluate the starting model (a step-0 eval record)
    log_every: int = 10
    progress_bar: bool = True
    peak_flops: float = 0.0  # per device; 0 means look it up (or measure on CPU)
    checkpoint_every: int = 0  # 0 means only at the end
    # A params directory (jaxlm export, jaxlm checkpoint grow-vocab) or a training
    # workdir (params of its newest good checkpoint) to start from; fresh optimizer.
    init_from: str = ""
    # data.tokenizer must be the init_from model's tokenizer, by content; true accepts
    # another (vocabulary surgery: a grown embedding for an extended tokenizer).
    allow_tokenizer_change: bool = False
    keep_checkpoints: int = 3  # the newest K checkpoints are kept
    keep_every: int = 0  # also keep every checkpoint whose step is a multiple; 0 = off
    # Comma-separated dotted keys a resumed run may change, e.g. "train.steps,optim.lr";
    # any other difference from the checkpoint's config is refused.
    allow_config_change: str = ""
    generate_prompt: str = ""
    generate_tokens: int = 64
    # Watchdog (jaxlm.runtime.watchdog): exit with status 75 when a step takes longer than
    # this; 0 = off. The first step (compilation), evaluations and checkpoint saves
    # get first_step_timeout_s instead.
    step_timeout_s: float = 0.0
    first_step_timeout_s: float = 1800.0

    def __post_init__(self):
        _finite(self)
        _non_negative(self, "steps", "epochs")
        if self.steps and self.epochs:
            raise ConfigError(
                f"train.steps={self.steps} and train.epochs={self.epochs} are mutually "
                "exclusive: set one of them"
            )
        if not self.steps and not self.epochs:
            object.__setattr__(self, "steps", DEFAULT_STEPS)
        _positive(self, "log_every", "keep_checkpoints")
        _non_negative(self, "eval_every", "checkpoint_every", "peak_flops", "generate_tokens")
        if self.keep_every < 0:
            raise ConfigError(f"train.keep_every={self.keep_every} must be >= 0 (0 = off)")
        if self.step_timeout_s < 0:
            raise ConfigError(f"train.step_timeout_s={self.step_timeout_s} must be >= 0 (0 = off)")
        _positive(self, "first_step_timeout_s")


@dataclasses.dataclass(frozen=True, kw_only=True)
class PreferenceConfig:
    """Preference optimisation (data.format=preference); jaxlm.training.preference_losses.

    loss: "sigmoid" (DPO; with label_smoothing > 0 conservative DPO), "ipo", or
    "simpo" (reference-free, length-normalised log-probs, target margin simpo_gamma).
    nll_weight > 0 adds that times the chosen response's per-token NLL (RPO-style).
    reference: "model" runs the frozen reference in every step; "precomputed" scores
    the training pairs with it once before training and reads the log-probs back.
    """

    loss: Literal["sigmoid", "ipo", "simpo"] = "sigmoid"
    beta: float = 0.1
    label_smoothing: float = 0.0
    simpo_gamma: float = 0.5
    nll_weight: float = 0.0
    reference: Literal["model", "precomputed"] = "model"

    def __post_init__(self):
        _finite(self)
        if self.beta <= 0:
            raise ConfigError(f"preference.beta={self.beta} must be > 0")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ConfigError(
                f"preference.label_smoothing={self.label_smoothing} must be in [0, 0.5)"
            )
        if self.nll_weight < 0:
            raise ConfigError(f"preference.nll_weight={self.nll_weight} must be >= 0")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RewardConfig:
    """Reward-model training (data.format=reward, model.score_head=true);
    jaxlm.training.reward_model_steps. center_weight > 0 adds that times the squared
    sum of a pair's rewards (reward centering: keeps the rewards' offset near 0)."""

    center_weight: float = 0.0

    def __post_init__(self):
        _finite(self)
        _non_negative(self, "center_weight")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RLConfig:
    """Reinforcement learning on prompts (data.format=rl); jaxlm.training.tasks.rl.

    algorithm fixes what defines each method (jaxlm.training.rl_losses; ppo needs
    model.score_head=true, its critic's value head on the policy's trunk):
        grpo     advantages (r - group mean) / group std; per-response mean of tokens
        dr_grpo  advantages r - group mean; token sum / (responses x max_response_tokens)
        dapo     grpo's advantages; token mean over the batch; clip_high defaults to
                 0.28; groups whose rewards are all equal are dropped (dynamic
                 sampling, as a mask: the batch is not refilled); truncated responses
                 are masked out (overlong filtering)
        ppo      per-token advantages by GAE (gamma, lam) on rewards -kl_weight x the
                 log-ratio to the reference per token + the sequence reward at the
                 last token, whitened; token mean; + value_weight x the clipped value
                 loss of the critic (group_size may be 1)
    Each step samples group_size responses for each of data.batch_size prompts, scores
    them with `rewards` (jaxlm.training.rewards: "answer=1,format=0.2", built-ins or
    "module:function"), then makes `epochs` x `minibatches` updates on them with the
    sampler's log-probs as the old policy. kl_weight > 0 adds β · k3 KL to the frozen
    reference (the starting model; with LoRA the base, adapters off).
    Prompts get data.seq_len - max_response_tokens tokens at most.
    """

    algorithm: Literal["grpo", "dr_grpo", "dapo", "ppo"] = "grpo"
    group_size: int = 8
    max_response_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    epochs: int = 1
    minibatches: int = 1
    clip_low: float = 0.2
    clip_high: float = 0.0  # 0: clip_low (dapo: 0.28)
    kl_weight: float = 0.04
    rewards: str = "answer"
    overlong_buffer: int = 0  # the "overlong" reward's soft-penalty span; 0: a quarter
    # "auto": what the algorithm does (dapo on, the others off)
    dynamic_sampling: Literal["auto", "on", "off"] = "auto"
    mask_truncated: Literal["auto", "on", "off"] = "auto"
    eval_samples: int = 4  # pass@k on held-out prompts, k samples at the temperature
    # A reward model export (data.format=reward): the reward component "reward_model"
    # is its score of prompt + response (same tokenizer as the policy).
    reward_model: str = ""
    # PPO: GAE's discount and λ, the critic's loss weight and value clip range.
    gamma: float = 1.0
    lam: float = 0.95
    value_weight: float = 0.1
    value_clip: float = 0.2

    def __post_init__(self):
        _finite(self)
        _positive(self, "max_response_tokens", "epochs", "minibatches", "eval_samples")
        if self.group_size < 2 and self.algorithm != "ppo":
            raise ConfigError(
                f"rl.group_size={self.group_size} must be >= 2 (advantages compare the "
                "responses to one prompt)"
            )
        if self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ConfigError("rl.temperature, rl.top_k must be >= 0 and rl.top_p in (0, 1]")
        if not 0 <= self.clip_low < 1 or self.clip_high < 0:
            raise ConfigError(
                f"rl.clip_low={self.clip_low} must be in [0, 1) and rl.clip_high="
                f"{self.clip_high} >= 0"
            )
        _non_negative(self, "kl_weight", "overlong_buffer", "value_weight", "value_clip")
        if self.group_size < 1 or not 0 <= self.gamma <= 1 or not 0 <= self.lam <= 1:
            raise ConfigError("rl.group_size must be >= 1, rl.gamma and rl.lam in [0, 1]")

    @property
    def resolved_clip_high(self) -> float:
        if self.clip_high > 0:
            return self.clip_high
        return 0.28 if self.algorithm == "dapo" else self.clip_low

    @property
    def drops_equal_groups(self) -> bool:
        return _auto(self.dynamic_sampling, self.algorithm == "dapo")

    @property
    def masks_truncated(self) -> bool:
        return _auto(self.mask_truncated, self.algorithm == "dapo")

    @property
    def aggregation(self) -> str:
        return {"grpo": "sequence", "dr_grpo": "constant", "dapo": "token", "ppo": "token"}[
            self.algorithm
        ]

    @property
    def scales_by_std(self) -> bool:
        return self.algorithm != "dr_grpo"


@dataclasses.dataclass(frozen=True, kw_only=True)
class DistillConfig:
    """Knowledge distillation from a teacher (jaxlm.training.tasks.distill): set
    `teacher` on a data.format=text or chat run.

    teacher: an export or a training workdir (an imported Hugging Face model is an
    export) with the same vocabulary as the run's tokenizer. The step trains
        alpha · CE(targets) + (1 - alpha) · temperature² · D(teacher, student)
    on the tokens the loss mask selects, D = `loss` (jaxlm.training.distill_losses:
    forward_kl, reverse_kl, or jsd with `beta` in (0, 1)).
    top_k = 0: the teacher runs inside every step (online). top_k > 0: its top-k
    log-probs (+ the tail's mass) are computed once into `table` (a directory;
    default <workdir>/teacher_topk), which other students with the same data may share.
    on_policy (GKD's λ, chat data, online teacher only): the share of steps whose
    batch is the student's own responses to the data's prompts (sampled with
    `sample_temperature`, at most `max_response_tokens`), scored by the teacher.
    """

    teacher: str = ""
    loss: Literal["forward_kl", "reverse_kl", "jsd"] = "forward_kl"
    beta: float = 0.5
    temperature: float = 1.0
    alpha: float = 0.5
    top_k: int = 0
    table: str = ""
    on_policy: float = 0.0
    max_response_tokens: int = 64
    sample_temperature: float = 1.0

    def __post_init__(self):
        _finite(self)
        if self.temperature <= 0:
            raise ConfigError(f"distill.temperature={self.temperature} must be > 0")
        if not 0 <= self.alpha <= 1:
            raise ConfigError(f"distill.alpha={self.alpha} must be in [0, 1]")
        if self.loss == "jsd" and not 0 < self.beta < 1:
            raise ConfigError(
                f"distill.beta={self.beta} must be in (0, 1) for distill.loss=jsd (use "
                "forward_kl or reverse_kl for the end points)"
            )
        if not 0 <= self.on_policy <= 1:
            raise ConfigError(f"distill.on_policy={self.on_policy} must be in [0, 1]")
        _non_negative(self, "top_k", "sample_temperature")
        _positive(self, "max_response_tokens")
        if self.on_policy > 0 and self.top_k > 0:
            raise ConfigError(
                "distill.on_policy > 0 needs the teacher online (distill.top_k=0): the "
                "student's own samples cannot be in a precomputed table"
            )

    @property
    def enabled(self) -> bool:
        return self.teacher != ""


def _auto(choice: str, default: bool) -> bool:
    return default if choice == "auto" else choice == "on"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """A whole run."""

    name: str = "run"
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    preference: PreferenceConfig = dataclasses.field(default_factory=PreferenceConfig)
    reward: RewardConfig = dataclasses.field(default_factory=RewardConfig)
    rl: RLConfig = dataclasses.field(default_factory=RLConfig)
    distill: DistillConfig = dataclasses.field(default_factory=DistillConfig)

    def __post_init__(self):
        _check_name(self.name)
        _fill_implied(self)
        if self.data.seq_len > self.model.max_seq_len:
            raise ConfigError(
                f"data.seq_len={self.data.seq_len} exceeds model.max_seq_len="
                f"{self.model.max_seq_len}; leave data.seq_len unset (0) to train at the "
                "model's length, or raise model.max_seq_len"
            )
        # Trained only without data.tokenizer and train.init_from (whose model brings
        # its own tokenizer, jaxlm.data.run_inputs).
        trained = self.data.tokenizer == "" and self.train.init_from == ""
        if trained and self.data.tokenizer_vocab_size != self.model.vocab_size:
            raise ConfigError(
                f"data.tokenizer_vocab_size={self.data.tokenizer_vocab_size} must equal "
                f"model.vocab_size={self.model.vocab_size} when the tokenizer is trained"
            )
        if self.data.format == "rl" and self.rl.algorithm == "ppo" and not self.model.score_head:
            raise ConfigError(
                "rl.algorithm=ppo trains a critic as a value head on the policy: set "
                "model.score_head=true (it starts at zero from any LM's weights)"
            )
        if self.data.format == "rl" and self.rl.max_response_tokens >= self.data.seq_len:
            raise ConfigError(
                f"rl.max_response_tokens={self.rl.max_response_tokens} leaves no room for "
                f"the prompt in data.seq_len={self.data.seq_len}"
            )
        if self.distill.enabled and self.data.format not in ("text", "chat"):
            raise ConfigError(
                f"distill.teacher is set: distillation trains on data.format=text or chat, "
                f"not {self.data.format}"
            )
        if self.model.moe and (self.data.format not in ("text", "chat") or self.distill.enabled):
            # The routing losses and the balancing bias are wired into the next-token
            # step (jaxlm.training.moe_losses); elsewhere they would silently be off.
            raise ConfigError(
                "model.moe_experts > 0 trains with data.format=text or chat (pretraining, "
                f"SFT) so far, without distill.teacher; got data.format={self.data.format}"
                + (" with distill.teacher" if self.distill.enabled else "")
            )
        if self.distill.on_policy > 0 and self.data.format != "chat":
            raise ConfigError(
                "distill.on_policy > 0 samples responses to the data's prompts: it needs "
                "data.format=chat"
            )
        if self.data.batch_size % self.optim.grad_accum:
            raise ConfigError(
                f"data.batch_size={self.data.batch_size} must be divisible by "
                f"optim.grad_accum={self.optim.grad_accum}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


# Data keys whose 0 means "the model's": (data key, model key). Config fills them in, so
# every reader of a Config (and config.json) sees the concrete value, and remembers
# which it filled in: overrides of the model key then carry the data key along
# (`--set model.max_seq_len=512` also trains at 512 unless data.seq_len was set).
IMPLIED = (("seq_len", "max_seq_len"), ("tokenizer_vocab_size", "vocab_size"))


def _fill_implied(cfg: Config) -> None:
    filled = {
        key: getattr(cfg.model, source) for key, source in IMPLIED if not getattr(cfg.data, key)
    }
    if filled:  # frozen: set once, here, before anyone reads the config
        object.__setattr__(cfg, "data", dataclasses.replace(cfg.data, **filled))
    object.__setattr__(cfg, "_implied", frozenset(filled))


def config_differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """`key: old -> new` for every leaf that differs between two `to_dict()` trees."""
    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        # A section one side lacks (a run saved before it existed) differs leaf by leaf,
        # so a reader can accept absent leaves that hold their defaults.
        if isinstance(a, dict) and key not in new:
            b = {}
        if isinstance(b, dict) and key not in old:
            a = {}
        if isinstance(a, dict) and isinstance(b, dict):
            changes += config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            changes.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return changes


_ROPE_METHODS = ("none", "linear", "ntk", "yarn", "llama3", "yarn_hf", "dynamic_ntk")
# yarn_hf's own keys and their "not set" values: other methods never read them.
_YARN_HF_ONLY = {
    "rope_yarn_truncate": True,
    "rope_yarn_attention_factor": 0.0,
    "rope_yarn_mscale": 0.0,
    "rope_yarn_mscale_all_dim": 0.0,
}


def _check_rope_scaling(cfg: ModelConfig) -> None:
    method, factor = cfg.rope_scaling, cfg.rope_scaling_factor
    if method not in _ROPE_METHODS:
        listed = ", ".join(repr(m) for m in _ROPE_METHODS)
        raise ConfigError(f"model.rope_scaling={method!r} is not one of {listed}")
    if cfg.rope_theta <= 0:
        raise ConfigError(f"model.rope_theta={cfg.rope_theta} must be positive")
    if not factor >= 1.0:  # also refuses NaN
        raise ConfigError(
            f"model.rope_scaling_factor={factor} must be >= 1 (new context / original context)"
        )
    if method == "none" and factor != 1.0:
        raise ConfigError(
            f"model.rope_scaling_factor={factor} has no effect with model.rope_scaling=none; "
            "choose linear, ntk, yarn, llama3, yarn_hf or dynamic_ntk"
        )
    if cfg.rope_original_max_len < 0:
        raise ConfigError(
            f"model.rope_original_max_len={cfg.rope_original_max_len} must be >= 0 (0 = not given)"
        )
    if method in ("ntk", "dynamic_ntk") and cfg.resolved_head_dim < 4:
        raise ConfigError(
            f"model.rope_scaling={method} needs model.head_dim >= 4, got {cfg.resolved_head_dim}"
        )
    if method in ("llama3", "yarn", "yarn_hf", "dynamic_ntk") and cfg.rope_original_max_len <= 0:
        raise ConfigError(
            f"model.rope_scaling={method} needs model.rope_original_max_len > 0 (the context "
            "length the model was trained at before extension)"
        )
    low, high = cfg.rope_llama3_low_freq_factor, cfg.rope_llama3_high_freq_factor
    if method == "llama3" and not 0 < low < high:
        raise ConfigError(
            f"model.rope_llama3_low_freq_factor={low} and "
            f"model.rope_llama3_high_freq_factor={high} must "
            "satisfy 0 < low_freq_factor < high_freq_factor"
        )
    if method in ("yarn", "yarn_hf") and not 0 < cfg.rope_yarn_beta_slow < cfg.rope_yarn_beta_fast:
        raise ConfigError(
            f"model.rope_yarn_beta_slow={cfg.rope_yarn_beta_slow} and "
            f"model.rope_yarn_beta_fast={cfg.rope_yarn_beta_fast} must satisfy "
            "0 < beta_slow < beta_fast"
        )
    for key in ("rope_yarn_attention_factor", "rope_yarn_mscale", "rope_yarn_mscale_all_dim"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"model.{key}={getattr(cfg, key)} must be >= 0 (0 = not given)")
    if method != "yarn_hf":
        for key, unset in _YARN_HF_ONLY.items():
            if getattr(cfg, key) != unset:
                raise ConfigError(
                    f"model.{key}={getattr(cfg, key)} has no effect with "
                    f"model.rope_scaling={method}; only yarn_hf reads it"
                )


def _check_name(name: str) -> None:
    """A run's name is a directory name under runs/, never a path that leaves it."""
    if name in ("", ".", "..") or any(sep in name for sep in ("/", "\\", "\0")):
        raise ConfigError(
            f"name={name!r} must be a plain name (no path separators, not empty, '.' or "
            "'..'); the run is written to runs/<name>, choose another directory with --workdir"
        )


def _section(cfg) -> str:
    return {
        ModelConfig: "model",
        DataConfig: "data",
        OptimConfig: "optim",
        TrainConfig: "train",
        PreferenceConfig: "preference",
    }[type(cfg)]


def _finite(cfg) -> None:
    """No NaN or infinity in any float field: every comparison with NaN is False, so
    range checks alone would let it through to the first step."""
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{_section(cfg)}.{field.name}={value} must be a finite number")


def _check_moe(cfg: ModelConfig) -> None:
    _non_negative(cfg, "moe_experts", "moe_d_ff", "moe_shared_experts", "moe_capacity_factor")
    _non_negative(cfg, "moe_balance_weight", "moe_z_weight", "moe_bias_rate")
    if not cfg.moe_experts:
        return
    if cfg.moe_every < 1 or cfg.n_layers % cfg.moe_every:
        raise ConfigError(
            f"model.moe_every={cfg.moe_every} must be >= 1 and divide model.n_layers="
            f"{cfg.n_layers} (layers are scanned in groups of moe_every: moe_every - 1 dense, "
            "then one MoE)"
        )
    if cfg.moe_every > 1 and cfg.moe_shared_experts:
        raise ConfigError(
            "model.moe_shared_experts > 0 with model.moe_every > 1 is not supported yet "
            "(the shared experts and the dense layers' MLP would need separate weights)"
        )
    if not 1 <= cfg.moe_top_k <= cfg.moe_experts:
        raise ConfigError(
            f"model.moe_top_k={cfg.moe_top_k} must be in [1, model.moe_experts={cfg.moe_experts}]"
        )
    if cfg.moe_impl == "buckets" and cfg.moe_capacity_factor <= 0:
        raise ConfigError(
            "model.moe_impl=buckets gives each expert a fixed bucket: set "
            "model.moe_capacity_factor > 0 (e.g. 1.25), or use the dropless 'ragged'"
        )
    if cfg.moe_top_k == 1 and cfg.moe_norm_topk:
        raise ConfigError(
            "model.moe_top_k=1 with model.moe_norm_topk=true weights every token's expert "
            "by 1, so the router learns nothing from the loss; set model.moe_norm_topk="
            "false (Switch Transformer: the weight is the router's probability)"
        )
    if cfg.lora_rank:
        raise ConfigError(
            "model.lora_rank > 0 with model.moe_experts > 0 is not supported yet "
            "(LoRA targets the dense projections)"
        )


def _positive(cfg, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if value <= 0:
            raise ConfigError(f"{_section(cfg)}.{name}={value} must be positive")


def _non_negative(cfg, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if value < 0:
            raise ConfigError(f"{_section(cfg)}.{name}={value} must be >= 0")


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def all_keys(cls=Config, prefix: str = "") -> list[str]:
    """Every dotted key that `--set` accepts, e.g. 'optim.lr'."""
    keys = []
    for name, tp in _field_types(cls).items():
        if dataclasses.is_dataclass(tp):
            keys.extend(all_keys(tp, f"{prefix}{name}."))
        else:
            keys.append(f"{prefix}{name}")
    return keys


# Keys `--set` accepts besides the fields: model.preset starts the model section from a
# named preset (applied by jaxlm.training.experiment.resolve_config, which knows them).
EXTRA_KEYS = ("model.preset",)


def _unknown_key(key: str) -> ConfigError:
    if key in EXTRA_KEYS:
        return ConfigError(
            f"'{key}' is applied when an experiment's config is resolved "
            "(jaxlm.training.experiment.resolve_config, `jaxlm train --preset`), not here"
        )
    close = difflib.get_close_matches(key, [*all_keys(), *EXTRA_KEYS], n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigError(f"unknown config key '{key}'{hint}")


def parse_value(key: str, text: str, tp: Any) -> Any:
    """Parse `text` as a value of type `tp`, or raise naming `key`."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if text not in choices:
            raise ConfigError(f"{key}={text!r} is not one of {list(choices)}")
        return text
    if origin in (types.UnionType, typing.Union):
        return _first_member(key, text, tp, parse_value)
    if tp is bool:
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}={text!r} is not a boolean (true/false)")
    if tp is int:
        try:
            return int(text.replace("_", ""))
        except ValueError:
            raise ConfigError(f"{key}={text!r} is not an integer") from None
    if tp is float:
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(f"{key}={text!r} is not a number") from None
        if not math.isfinite(value):
            raise ConfigError(f"{key}={text!r} is not a finite number")
        return value
    if tp is str:
        return text
    raise ConfigError(f"{key}: cannot parse values of type {tp}")


def _first_member(key: str, value: Any, tp: Any, convert) -> Any:
    """`convert(key, value, member)` for the first member of the union `tp` that takes
    the value (e.g. `bool | Literal["auto"]`), in order; else one error listing all."""
    for member in typing.get_args(tp):
        try:
            return convert(key, value, member)
        except ConfigError:
            continue
    raise ConfigError(f"{key}={value!r} is not one of: {_describe(tp)}")


def _describe(tp: Any) -> str:
    """A union's members as a user reads them: `true/false, 'auto'`."""
    parts = []
    for member in typing.get_args(tp):
        if typing.get_origin(member) is Literal:
            parts += [repr(choice) for choice in typing.get_args(member)]
        else:
            parts.append("true/false" if member is bool else member.__name__)
    return ", ".join(parts)


def _check_type(key: str, value: Any, tp: Any) -> Any:
    """Type check a Python value (from JSON or code) against a field annotation."""
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        return _first_member(key, value, tp, _check_type)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}={value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool):
        if type(value) is not tp:
            raise ConfigError(f"{key}={value!r} should be {tp.__name__}")
        return value
    return value


def apply_overrides(cfg: Config, assignments: list[str]) -> Config:
    """Apply `key=value` strings (what `--set` collects), validating once at the end.

    Values are type checked one by one, but cross-field checks run on the final
    config, so `model.n_heads=2 model.n_kv_heads=1` works in either order.
    """
    data = cfg.to_dict()
    for key in getattr(cfg, "_implied", ()):  # still implied unless set below
        data["data"][key] = 0
    keys = set()
    for item in assignments:
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        _set_in_dict(data, key, value)
        keys.add(key)
    _one_length(data["train"], keys)
    return config_from_dict(data)


def _one_length(train: dict[str, Any], keys: set[str]) -> None:
    """An override of train.steps or train.epochs replaces the run's length: the other
    one (the experiment's choice, or the default) is cleared. Both given is an error."""
    if "train.steps" in keys and train["steps"] <= 0:
        raise ConfigError(
            f"train.steps={train['steps']} must be positive (or set train.epochs instead)"
        )
    if "train.steps" in keys and "train.epochs" not in keys:
        train["epochs"] = 0.0
    elif "train.epochs" in keys and "train.steps" not in keys:
        train["steps"] = 0


def _set_in_dict(data: dict[str, Any], key: str, text: str) -> None:
    cls, node, parts = Config, data, key.split(".")
    for i, part in enumerate(parts):
        types_ = _field_types(cls)
        if part not in types_:
            raise _unknown_key(key)
        tp = types_[part]
        here = ".".join(parts[: i + 1])
        if dataclasses.is_dataclass(tp):
            if i == len(parts) - 1:
                raise ConfigError(f"'{here}' is a section; set one of its keys, e.g. '{here}.…'")
            cls, node = tp, node[part]
        elif i != len(parts) - 1:
            raise _unknown_key(key)
        else:
            node[part] = parse_value(key, text, tp)


def config_from_dict(data: dict[str, Any], cls=Config, _prefix: str = "") -> Any:
    """Rebuild a config from `to_dict()` output, checking every key and type."""
    types_ = _field_types(cls)
    kwargs = {}
    for key, value in data.items():
        full = f"{_prefix}{key}"
        if key not in types_:
            raise _unknown_key(full)
        tp = types_[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{full} should be a mapping")
            kwargs[key] = config_from_dict(value, tp, f"{full}.")
        else:
            kwargs[key] = _check_type(full, value, tp)
    return cls(**kwargs)
