"""Serving: an OpenAI-compatible HTTP API over a continuous-batching engine (`jaxlm serve`).

    row_sampling.py  per-row temperature / top-p / seed sampling and log-probs
    slot_steps.py    the jitted programs: prefill one request, put it in a slot, decode all
    engine.py        the engine thread: requests join and leave the running batch
    protocol.py      OpenAI request bodies -> checked settings; the OpenAI error shape
    choice_text.py   one choice's text as tokens arrive: whole characters, stop sequences
    app.py           the Starlette app: /v1/completions, /v1/chat/completions, /v1/models,
                     /health; streaming as server-sent events

May import: the root modules, models, data (tokenizer, chat template) and inference
(the KV cache, loading, text streaming). Nothing imports serving but the `serve` command.
"""
