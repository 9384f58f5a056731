"""The d256 x 4-layer stdlib recipe that the measured experiments are built on.

A Llama-style model (4096-piece tokenizer, d_model 256, 4 layers, tied embeddings) on
the interpreter's standard library source, 750 AdamW steps of 16 x 256 tokens at a
cosine lr of 3e-3. It was the quickstart's recipe until the quickstart moved to a
smaller, longer-trained model with Muon (experiments/quickstart.py starts from this
config and changes model, optimizer and length); the post-training chain, distillation,
scaling and MoE experiments keep it so their recorded figures stay reproducible. Not an
experiment itself (the leading underscore keeps it out of `jaxlm train NAME`).
"""

from jaxlm.config import Config, DataConfig, MeshConfig, ModelConfig, OptimConfig, TrainConfig


def get_config() -> Config:
    return Config(
        name="stdlib_lm",
        model=ModelConfig(
            vocab_size=4096,
            d_model=256,
            n_layers=4,
            n_heads=4,
            n_kv_heads=4,
            max_seq_len=256,
            tie_embeddings=True,
        ),
        data=DataConfig(
            tokenizer_vocab_size=4096,
            tokenizer_max_chars=4_000_000,
            seq_len=256,
            batch_size=16,
            eval_max_docs=60,
        ),
        optim=OptimConfig(lr=3e-3, warmup_steps=50, schedule="cosine", min_lr_ratio=0.1),
        mesh=MeshConfig(data=-1),
        train=TrainConfig(
            steps=750,
            eval_every=250,
            log_every=10,
            generate_prompt='def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
            generate_tokens=48,
        ),
    )
