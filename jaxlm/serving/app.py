"""The HTTP side of `jaxlm serve`: OpenAI's /v1/completions, /v1/chat/completions and
/v1/models on Starlette, feeding the continuous-batching engine.

A request becomes one engine job per (prompt, choice). The handler runs on the event
loop and the engine on its own thread; each job's events cross over through
`loop.call_soon_threadsafe` into the request's queue. Text is assembled per choice
(choice_text.ChoiceText: whole characters, stop sequences), and either returned whole
or streamed as server-sent events in OpenAI's chunk shapes (`data: {...}` lines,
`data: [DONE]` last, a usage chunk before it when stream_options.include_usage).

A client that goes away (mid-stream or while waiting) has its jobs cancelled, which
frees their slots at the engine's next step. Choice i of a request with `seed` s draws
with seed s + i; without a seed, each choice gets a fresh random one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hmac
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from jaxlm.data.chat import encode_chat_prompt, parse_conversation
from jaxlm.data.packing import document_prefix
from jaxlm.errors import InputError
from jaxlm.serving import protocol
from jaxlm.serving.choice_text import ChoiceText
from jaxlm.serving.engine import Engine, Finished, Job, PromptScores, Token
from jaxlm.serving.protocol import ApiError, Limits, Settings

log = logging.getLogger("jaxlm.serve")


@dataclasses.dataclass
class ServeOptions:
    name: str  # the model name clients give
    limits: Limits
    api_key: str | None = None
    max_in_flight: int = 256  # running + waiting choices, over all requests
    max_body_bytes: int = 1 << 20


@dataclasses.dataclass(eq=False)
class Choice:
    index: int
    job: Job
    text: ChoiceText
    prompt_text: str = ""
    prompt_scores: PromptScores | None = None
    tokens: list[Token] = dataclasses.field(default_factory=list)
    finish_reason: str | None = None
    started: bool = False  # (streaming) the first chunk of this choice was sent


class Service:
    def __init__(self, engine: Engine, tokenizer, options: ServeOptions):
        self.engine, self.tokenizer, self.options = engine, tokenizer, options
        self.created = int(time.time())

    # -- request plumbing ----------------------------------------------------------------

    def authorize(self, request: Request) -> None:
        key = self.options.api_key
        if key is not None:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
                raise ApiError(
                    "invalid or missing API key (Authorization: Bearer KEY)",
                    status=401,
                    code="invalid_api_key",
                )

    async def read_json(self, request: Request) -> dict:
        self.authorize(request)
        limit = self.options.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ApiError(
                f"the request body is {declared} bytes; at most {limit} (--max-request-bytes)",
                status=413,
            )
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise ApiError(f"the request body exceeds {limit} bytes", status=413)
        return protocol.parse_json(bytes(body))

    def admit(self, jobs: int) -> None:
        busy = self.engine.in_flight()
        if busy + jobs > self.options.max_in_flight:
            raise ApiError(
                f"the server is busy: {busy} sequences in flight, this request adds {jobs}, "
                f"the limit is {self.options.max_in_flight} (--max-in-flight); retry later",
                status=429,
                code="server_busy",
                kind="rate_limit_error",
            )
        if self.engine.failed is not None:
            raise ApiError(self.engine.failed, status=503, kind="server_error")

    @functools.lru_cache(maxsize=65536)  # noqa: B019 (one Service per process)
    def token_text(self, token_id: int) -> str:
        data = self.tokenizer.piece_bytes(token_id)
        if not data:  # BOS, EOS and other control tokens add no text: show their piece
            return self.tokenizer.id_to_piece(token_id)
        return data.decode("utf-8", errors="replace")

    def jobs_for(
        self, prompts: list[list[int]], settings: Settings, stop_ids, queue
    ) -> list[Choice]:
        loop = asyncio.get_running_loop()
        choices = []
        for p, prompt in enumerate(prompts):
            for i in range(settings.n):
                index = p * settings.n + i

                def emit(event, index=index):
                    with contextlib.suppress(RuntimeError):  # the loop closed: nobody listens
                        loop.call_soon_threadsafe(queue.put_nowait, (index, event))

                seed = secrets.randbits(63) if settings.seed is None else settings.seed + i
                job = Job(
                    prompt=prompt,
                    max_tokens=settings.max_tokens,
                    temperature=settings.temperature,
                    top_p=settings.top_p,
                    seed=seed,
                    emit=emit,
                    stop_ids=frozenset(stop_ids),
                    top_n=settings.top_logprobs if settings.logprobs else 0,
                    prompt_logprobs=settings.echo and settings.logprobs,
                )
                choices.append(Choice(index, job, ChoiceText(self.tokenizer, settings.stop)))
        return choices

    # -- endpoints -----------------------------------------------------------------------

    async def models(self, request: Request) -> Response:
        self.authorize(request)
        return JSONResponse({"object": "list", "data": [self._model_card()]})

    async def model(self, request: Request) -> Response:
        self.authorize(request)
        if request.path_params["name"] != self.options.name:
            protocol.check_model({"model": request.path_params["name"]}, self.options.name)
        return JSONResponse(self._model_card())

    def _model_card(self) -> dict:
        return {
            "id": self.options.name,
            "object": "model",
            "created": self.created,
            "owned_by": "jaxlm",
            "max_model_len": self.options.limits.context,
        }

    async def health(self, request: Request) -> Response:
        load = self.engine.load()
        if self.engine.failed is not None:
            return JSONResponse({"status": "failed", "error": self.engine.failed}, 503)
        tokens = {k: self.engine.counts[k] for k in ("prefills", "prompt_tokens", "tokens")}
        return JSONResponse({"status": "ok", **load, **tokens})

    async def completions(self, request: Request) -> Response:
        data = await self.read_json(request)
        protocol.check_model(data, self.options.name)
        limits = self.options.limits
        settings = protocol.completion_settings(data, limits)
        prompts = protocol.completion_prompts(data, limits)
        ids = [
            [*document_prefix(self.tokenizer), *self.tokenizer.encode(p)]
            if isinstance(p, str)
            else p
            for p in prompts
        ]
        for prompt in ids:
            protocol.check_length(len(prompt), settings.max_tokens, limits, "prompt")
        texts = [p if isinstance(p, str) else self.tokenizer.decode(p) for p in prompts]
        return await self._respond(request, "completion", settings, ids, texts)

    async def chat(self, request: Request) -> Response:
        data = await self.read_json(request)
        protocol.check_model(data, self.options.name)
        limits = self.options.limits
        settings = protocol.chat_settings(data, limits)
        raw = protocol.chat_messages(data)
        try:
            messages = parse_conversation({"messages": raw}, where="request")
            prompt = encode_chat_prompt(messages, self.tokenizer)
        except InputError as error:
            raise ApiError(str(error), param="messages") from None
        if settings.max_tokens is None:  # as much as the context leaves, within the limit
            settings.max_tokens = max(1, min(limits.max_tokens, limits.context - len(prompt)))
        protocol.check_length(len(prompt), settings.max_tokens, limits, "messages")
        return await self._respond(request, "chat", settings, [prompt], [""])

    # -- running and answering -------------------------------------------------------------

    def _stop_ids(self) -> list[int]:
        # EOS and the chat template's end of turn, as `jaxlm generate` and `jaxlm chat`.
        return list(self.tokenizer.stop_ids)

    async def _respond(self, request, kind, settings, prompts, prompt_texts) -> Response:
        self.admit(len(prompts) * settings.n)
        queue: asyncio.Queue = asyncio.Queue()
        stop_ids = [] if settings.ignore_eos else self._stop_ids()
        choices = self.jobs_for(prompts, settings, stop_ids, queue)
        for choice in choices:
            choice.prompt_text = prompt_texts[choice.index // settings.n]
        answer = Answer(self, kind, settings, choices, sum(len(p) for p in prompts) * settings.n)
        # Submitted now, with no await since `admit`: concurrent requests cannot all pass
        # the in-flight check before any of them counts.
        for choice in choices:
            self.engine.submit(choice.job)
        if settings.stream:
            return StreamingResponse(
                answer.stream(request, queue),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        async for _ in answer.run(request, queue):
            pass
        return JSONResponse(answer.whole())


class Answer:
    """One request's choices as their events arrive, and the response built from them."""

    def __init__(self, service: Service, kind: str, settings: Settings, choices, prompt_tokens):
        self.service, self.kind, self.settings, self.choices = service, kind, settings, choices
        self.prompt_tokens = prompt_tokens
        prefix = "cmpl" if kind == "completion" else "chatcmpl"
        self.id = f"{prefix}-{secrets.token_hex(12)}"
        self.created = int(time.time())

    async def run(self, request: Request, queue: asyncio.Queue):
        """Yield (choice, text, token) per event of the (submitted) jobs until all have
        finished; cancel the rest when the client leaves or the caller stops."""
        engine = self.service.engine
        try:
            left = len(self.choices)
            while left:
                try:
                    index, event = await asyncio.wait_for(queue.get(), timeout=1.0)
                except TimeoutError:
                    if await request.is_disconnected():
                        return
                    continue
                choice = self.choices[index]
                if choice.finish_reason is not None:
                    continue  # after a stop sequence ended it early
                if isinstance(event, PromptScores):
                    choice.prompt_scores = event
                    yield choice, "", None
                elif isinstance(event, Token):
                    choice.tokens.append(event)
                    piece = "" if event.is_stop else choice.text.push(event.id)
                    if choice.text.stopped:
                        choice.finish_reason = "stop"
                        engine.cancel(choice.job)
                        left -= 1
                    yield choice, piece, event
                elif isinstance(event, Finished):
                    if event.reason == "error":
                        raise ApiError(event.error or "generation failed", status=500,
                                       kind="server_error")  # fmt: skip
                    choice.finish_reason = "length" if event.reason == "length" else "stop"
                    left -= 1
                    yield choice, choice.text.finish(), None
        finally:
            for choice in self.choices:
                if choice.finish_reason is None:
                    engine.cancel(choice.job)

    # -- whole responses -------------------------------------------------------------------

    def usage(self) -> dict:
        completion = sum(len(c.tokens) for c in self.choices)
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion,
        }

    def whole(self) -> dict:
        if self.kind == "completion":
            choices = [
                {
                    "index": c.index,
                    "text": (c.prompt_text if self.settings.echo else "") + c.text.text,
                    "logprobs": self.completion_logprobs(c, c.tokens, echo=self.settings.echo),
                    "finish_reason": c.finish_reason,
                }
                for c in self.choices
            ]
            obj = "text_completion"
        else:
            choices = [
                {
                    "index": c.index,
                    "message": {"role": "assistant", "content": c.text.text},
                    "logprobs": self.chat_logprobs(c.tokens),
                    "finish_reason": c.finish_reason,
                }
                for c in self.choices
            ]
            obj = "chat.completion"
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.service.options.name,
            "choices": choices,
            "usage": self.usage(),
        }

    def completion_logprobs(self, choice: Choice, tokens: list[Token], *, echo: bool):
        if not self.settings.logprobs:
            return None
        text_of, n = self.service.token_text, self.settings.top_logprobs
        entries: list[tuple[int, float | None, list]] = []
        if echo and choice.prompt_scores is not None:
            scores = choice.prompt_scores
            entries += zip(choice.job.prompt, scores.logprobs, scores.top, strict=True)
        entries += [(t.id, t.logprob, t.top) for t in tokens]
        offsets, offset = [], 0
        for token_id, _, _ in entries:
            offsets.append(offset)
            offset += len(text_of(token_id))
        return {
            "tokens": [text_of(i) for i, _, _ in entries],
            "token_logprobs": [lp for _, lp, _ in entries],
            "top_logprobs": [
                None if lp is None else {text_of(i): v for i, v in top[:n]}
                for _, lp, top in entries
            ],
            "text_offset": offsets,
        }

    def chat_logprobs(self, tokens: list[Token]):
        if not self.settings.logprobs:
            return None
        text_of, n = self.service.token_text, self.settings.top_logprobs

        def entry(token_id, logprob):
            text = text_of(token_id)
            return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

        return {
            "content": [
                {**entry(t.id, t.logprob), "top_logprobs": [entry(i, v) for i, v in t.top[:n]]}
                for t in tokens
                if not t.is_stop
            ]
        }

    # -- streams -----------------------------------------------------------------------------

    async def stream(self, request: Request, queue: asyncio.Queue) -> AsyncIterator[str]:
        obj = "text_completion" if self.kind == "completion" else "chat.completion.chunk"
        head = {"id": self.id, "object": obj, "created": self.created}
        head["model"] = self.service.options.name
        try:
            async for choice, piece, token in self.run(request, queue):
                chunk = self.chunk(choice, piece, token)
                if chunk is not None:
                    yield sse({**head, "choices": [chunk]})
            if self.settings.include_usage:
                yield sse({**head, "choices": [], "usage": self.usage()})
            yield "data: [DONE]\n\n"
        except ApiError as error:  # headers are sent: the error goes in the stream
            yield sse(error.body())

    def chunk(self, choice: Choice, piece: str, token: Token | None) -> dict | None:
        done = (choice.finish_reason is not None and token is None) or choice.text.stopped
        first = not choice.started
        choice.started = True
        if self.kind == "completion":
            text = piece
            logprobs = None
            if first and self.settings.echo:
                text = choice.prompt_text + piece
            if self.settings.logprobs:
                echo = first and self.settings.echo
                logprobs = self.completion_logprobs(choice, [token] if token else [], echo=echo)
            if not (text or token or done or first):
                return None
            return {
                "index": choice.index,
                "text": text,
                "logprobs": logprobs,
                "finish_reason": choice.finish_reason if done else None,
            }
        delta = {"role": "assistant", "content": piece} if first else {}
        if piece and not first:
            delta["content"] = piece
        logprobs = None
        if self.settings.logprobs and token is not None:
            logprobs = self.chat_logprobs([token])
        if not (delta or done or (logprobs and logprobs["content"])):
            return None
        return {
            "index": choice.index,
            "delta": delta,
            "logprobs": logprobs,
            "finish_reason": choice.finish_reason if done else None,
        }


def sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def api_error_response(request: Request, error: ApiError) -> Response:
    return JSONResponse(error.body(), status_code=error.status)


def http_error_response(request: Request, error: HTTPException) -> Response:
    kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
    message = f"{request.method} {request.url.path}: {error.detail}"
    return JSONResponse(
        ApiError(message, status=error.status_code, kind=kind).body(), status_code=error.status_code
    )


def server_error_response(request: Request, error: Exception) -> Response:
    log.exception("request %s %s failed", request.method, request.url.path)
    body = ApiError(
        f"internal server error: {type(error).__name__}", status=500, kind="server_error"
    ).body()
    return JSONResponse(body, status_code=500)


def build_app(service: Service) -> Starlette:
    routes = [
        Route("/health", service.health, methods=["GET"]),
        Route("/v1/models", service.models, methods=["GET"]),
        Route("/v1/models/{name:path}", service.model, methods=["GET"]),
        Route("/v1/completions", service.completions, methods=["POST"]),
        Route("/v1/chat/completions", service.chat, methods=["POST"]),
    ]
    handlers = {
        ApiError: api_error_response,
        HTTPException: http_error_response,
        Exception: server_error_response,
    }
    return Starlette(routes=routes, exception_handlers=handlers)
