"""Inference: load a trained model, generate with a KV cache, sample.

loading.py    an export or a workdir -> (config, graphdef, params, tokenizer)
kv_cache.py   the fixed-size key/value cache and the cached forward pass
sampling.py   logits -> next token: temperature, top-k, top-p, min-p, penalties
decode.py     prefill + incremental decode for a batch of prompts, streaming
"""
