"""`jaxlm serve`: an OpenAI-compatible HTTP server with continuous batching.

    jaxlm serve exports/quickstart                       # http://127.0.0.1:8000/v1
    jaxlm serve runs/sft --port 8001 --slots 16 --api-key "$KEY"
    jaxlm serve exports/qwen --quantize int8 --kv-cache-dtype int8 --served-model-name qwen

MODEL is an export, a training workdir (its newest good checkpoint) or an imported
Hugging Face model (`jaxlm convert --from-hf`'s output). Endpoints: GET /v1/models,
POST /v1/completions and /v1/chat/completions (OpenAI's request and response shapes,
streaming as server-sent events), GET /health. Any OpenAI client works:

    openai.OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")

Requests share one decode batch of --slots rows of --context positions
(jaxlm.serving.engine); newcomers are prefilled between decode steps. With a fixed
`seed`, a request's output does not depend on what else is running.

Safe by default: binds 127.0.0.1 (--host 0.0.0.0 to expose it; then set --api-key,
or JAXLM_API_KEY); request body, max_tokens, n, prompts per request and sequences in
flight are limited (the flags below); malformed requests get a 4xx with OpenAI's error
body; SIGTERM (or Ctrl-C) stops accepting connections, lets the requests in flight
finish (up to --drain-timeout seconds), then exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
from pathlib import Path

from jaxlm.errors import InputError

HELP = "serve a model over an OpenAI-compatible HTTP API (continuous batching, streaming)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from jaxlm.inference.cli_options import add_model_arguments

    add_model_arguments(parser)
    net = parser.add_argument_group("network")
    net.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    net.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    net.add_argument(
        "--api-key",
        default=os.environ.get("JAXLM_API_KEY"),
        help="require 'Authorization: Bearer KEY' on /v1 (default: $JAXLM_API_KEY, or none)",
    )
    net.add_argument(
        "--served-model-name", default=None, help="the name clients use (default: MODEL's name)"
    )
    batch = parser.add_argument_group("batching and limits")
    batch.add_argument("--slots", type=int, default=8, help="rows of the decode batch")
    batch.add_argument(
        "--context", type=int, default=None, help="tokens per row (default: model.max_seq_len)"
    )
    batch.add_argument(
        "--max-tokens", type=int, default=None, help="most new tokens per choice (default: context)"
    )
    batch.add_argument("--max-n", type=int, default=8, help="most choices per prompt")
    batch.add_argument("--max-prompts", type=int, default=64, help="most prompts per request")
    batch.add_argument(
        "--max-in-flight",
        type=int,
        default=256,
        help="most sequences running or waiting, over all requests (more: 429)",
    )
    batch.add_argument("--max-request-bytes", type=int, default=1 << 20)
    batch.add_argument(
        "--prefills-per-step",
        type=int,
        default=4,
        help="newcomers prefilled between two decode steps",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        help="on SIGTERM, seconds to let requests in flight finish",
    )
    parser.add_argument("--access-log", action="store_true", help="log every request")


def _check(args: argparse.Namespace) -> None:
    positive = ["slots", "max_n", "max_prompts", "max_in_flight", "max_request_bytes"]
    for name in [*positive, "prefills_per_step"]:
        if getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} {getattr(args, name)} must be >= 1")
    if not 0 <= args.port < 65536:
        raise InputError(f"--port {args.port} must be in [0, 65535]")


def run(args: argparse.Namespace) -> int:
    _check(args)
    # uvicorn is the ASGI server; imported here so `jaxlm --help` stays light.
    import uvicorn

    from jaxlm.inference.cli_options import load_model_from_args
    from jaxlm.inference.kv_cache import init_cache
    from jaxlm.serving.app import ServeOptions, Service, build_app
    from jaxlm.serving.engine import Engine
    from jaxlm.serving.protocol import Limits
    from jaxlm.serving.slot_steps import SlotSteps

    model, mesh = load_model_from_args(args)
    cfg = model.cfg.model
    context = args.context or cfg.max_seq_len
    if not 1 < context <= cfg.max_seq_len:
        raise InputError(
            f"--context {context} must be in [2, model.max_seq_len={cfg.max_seq_len}] "
            "(a longer context needs --set model.max_seq_len=... with model.rope_scaling)"
        )
    max_tokens = args.max_tokens or context
    if not 1 <= max_tokens <= context:
        raise InputError(f"--max-tokens {max_tokens} must be in [1, --context {context}]")
    name = args.served_model_name or Path(args.model).absolute().name
    limits = Limits(
        context=context,
        max_tokens=max_tokens,
        max_n=args.max_n,
        max_prompts=args.max_prompts,
        vocab_size=cfg.vocab_size,
    )
    steps = SlotSteps(
        cfg,
        model.graphdef,
        model.params,
        slots=args.slots,
        context=context,
        mesh=mesh,
        new_cache=functools.partial(init_cache, dtype=args.kv_cache_dtype),
        token_limit=model.tokenizer.vocab_size,
    )
    engine = Engine(steps, prefills_per_step=args.prefills_per_step)
    print(f"jaxlm serve: {model.source} as {name!r}; compiling ...", file=sys.stderr, flush=True)
    engine.start()
    options = ServeOptions(
        name=name,
        limits=limits,
        api_key=args.api_key or None,
        max_in_flight=args.max_in_flight,
        max_body_bytes=args.max_request_bytes,
    )
    app = build_app(Service(engine, model.tokenizer, options))
    if args.host not in ("127.0.0.1", "localhost", "::1") and not options.api_key:
        print(
            f"warning: serving on {args.host} without an API key: anyone who can reach "
            "this port can use the model (set --api-key or JAXLM_API_KEY)",
            file=sys.stderr,
        )
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level="info" if args.access_log else "warning",
        access_log=args.access_log,
        timeout_graceful_shutdown=args.drain_timeout,
    )
    server = announcing_server(config, slots=args.slots, context=context)
    try:
        server.run()  # returns after SIGTERM/SIGINT, once requests in flight are done
    finally:
        engine.stop()
    if not server.started:
        raise InputError(f"could not listen on {args.host}:{args.port} (see the error above)")
    counts = dict(engine.counts)
    print(f"jaxlm serve: stopped after {counts.get('tokens', 0)} tokens", file=sys.stderr)
    return 0


def announcing_server(config, *, slots: int, context: int):
    """A uvicorn server that prints the address it bound (the real port for --port 0)."""
    # uvicorn is the ASGI server; imported here so `jaxlm --help` stays light.
    import uvicorn

    class AnnouncingServer(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            # uvicorn re-raises a captured SIGTERM once it has drained, so the process
            # would die by the signal before the engine stops and the summary prints.
            # The drain is the clean end here: forget the signal, exit 0 from `run`.
            with super().capture_signals():
                yield
                self._captured_signals.clear()

        async def startup(self, sockets=None):
            await super().startup(sockets)
            for server in getattr(self, "servers", []):
                for sock in server.sockets:
                    host, port = sock.getsockname()[:2]
                    print(
                        f"jaxlm serve: listening on http://{host}:{port} "
                        f"({slots} slots x {context} tokens)",
                        file=sys.stderr,
                        flush=True,
                    )

    return AnnouncingServer(config)
