"""Quickstart: a small Llama-style model on the Python standard library, on a laptop CPU.

Trains a SentencePiece tokenizer on the interpreter's own stdlib source, pretrains a
4-layer model for a few minutes, reports held-out bits per byte next to gzip -9 on
the same bytes, completes a code prompt greedily and plots the loss curve.

    python -m experiments.quickstart [--workdir runs/quickstart] [--set train.steps=100]
    jaxlm train quickstart
"""

from jaxlm.config import Config, DataConfig, MeshConfig, ModelConfig, OptimConfig, TrainConfig


def get_config() -> Config:
    return Config(
        name="quickstart",
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


if __name__ == "__main__":
    import sys

    from jaxlm.cli import run_experiment

    sys.exit(run_experiment(sys.modules[__name__]))
