"""Full-size recipe: a Llama-3.2-1B-shaped model on a corpus you point at, on a pod or GPU host.

Not for a laptop. Pre-tokenize the corpus once (`jaxlm data tokenize`, after training
a tokenizer on it with `jaxlm tokenizer train`), copy shards and tokenizer to storage
every host can read, then start the same command on every host:

    jaxlm tokenizer train 'jsonl:/data/fineweb-edu/*.jsonl' --out /data/tok/fwe32k \\
        --vocab-size 32768
    jaxlm data tokenize 'jsonl:/data/fineweb-edu/*.jsonl' --out /data/fwe-tokens \\
        --tokenizer /data/tok/fwe32k.model
    # on every host (TPU VM: JAXLM_DISTRIBUTED=1; elsewhere JAXLM_COORDINATOR=...):
    jaxlm train llama_1b --workdir /shared/runs/llama_1b \\
        --set data.sources=tokens:/data/fwe-tokens --set data.tokenizer=/data/tok/fwe32k.model

Model: the `1b` preset's shape (d 2048, 16 layers, 32 query / 8 KV heads, d_ff 8192,
tied) with a 32,768-piece SentencePiece vocabulary instead of Llama 3's 128,256 (a
tokenizer trained on your corpus): 1.04B parameters, 0.97B of them outside the
embedding. 2048-token rows, 256 rows per step = 524,288 tokens per step, 40,000 steps =
21B tokens (about 20 tokens per parameter, the Chinchilla ratio), AdamW 3e-4 with
2,000 warmup steps and cosine decay to 10%.

Mesh: FSDP over every device (`mesh.fsdp=-1`): parameters, gradients and Adam moments
are split over the whole slice, so a 1B model trains on chips of 16 GB. On a v5e-64
or 8 x H100 that is the whole mesh; for more chips than the batch has rows per chip,
mix in data parallelism (`--set mesh.data=4 --set mesh.fsdp=-1`: FSDP inside each
group of chips, replicas across groups), and on GPUs with fast NVLink add tensor
parallelism for larger models (`--set mesh.tensor=8`). bfloat16 compute with float32
parameters and optimizer state; cuDNN attention on GPUs (`--set
model.attention_impl=cudnn`; the default "xla" is right for TPUs); remat of
everything but the matmuls (`dots`) to fit 2048-token rows.

Checkpoints every 1,000 steps (async; the newest 3 kept plus every 10,000th), eval
every 2,000 steps on the held-out 2% of documents (first 500 of them). Preemption
(SIGTERM) saves and exits; rerunning the same command resumes, data position included.
"""

import dataclasses

from jaxlm.config import Config, DataConfig, MeshConfig, OptimConfig, TrainConfig
from jaxlm.presets import get_preset


def get_config() -> Config:
    model = dataclasses.replace(
        get_preset("1b"),
        vocab_size=32768,
        max_seq_len=2048,
        compute_dtype="bfloat16",
        remat="dots",
    )
    return Config(
        name="llama_1b",
        model=model,
        data=DataConfig(
            # Set both on the command line: where your shards and tokenizer are.
            sources="stdlib",
            tokenizer="",
            tokenizer_vocab_size=32768,
            seq_len=2048,
            batch_size=256,
            eval_max_docs=500,
            reader_threads=8,
        ),
        optim=OptimConfig(
            lr=3e-4, warmup_steps=2000, schedule="cosine", min_lr_ratio=0.1, weight_decay=0.1
        ),
        mesh=MeshConfig(data=1, fsdp=-1, tensor=1),
        train=TrainConfig(
            steps=40_000,
            eval_every=2000,
            log_every=10,
            checkpoint_every=1000,
            keep_checkpoints=3,
            keep_every=10_000,
            progress_bar=False,
        ),
    )


if __name__ == "__main__":
    import sys

    from jaxlm.cli import run_experiment

    sys.exit(run_experiment(sys.modules[__name__]))
