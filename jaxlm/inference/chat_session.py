"""A conversation with a chat model: history, prompt layout, context budget, streaming.

The prompt is built by jaxlm.data.chat.encode_chat_prompt, the same token layout SFT
trained on (the chat template stored with the tokenizer), and a reply ends at the
template's end-of-turn token. When the history no longer fits model.max_seq_len
with room for a reply, the oldest exchanges are dropped (the system message stays)
and `dropped` counts them, so the user is told rather than silently truncated.
"""

from __future__ import annotations

from collections.abc import Callable

from jaxlm.data.chat import Message, encode_chat_prompt
from jaxlm.errors import InputError
from jaxlm.inference.decode import Generator
from jaxlm.inference.sampling import SamplingConfig
from jaxlm.inference.streaming import TextStream, complete_text


class ChatSession:
    def __init__(
        self,
        generator: Generator,
        tokenizer,
        *,
        system: str = "",
        sampling: SamplingConfig = SamplingConfig(),  # noqa: B008 (frozen, immutable)
        max_new_tokens: int = 256,
        seed: int = 0,
    ):
        self.generator, self.tokenizer = generator, tokenizer
        self.system = [Message("system", system)] if system else []
        self.sampling, self.max_new_tokens, self.seed = sampling, max_new_tokens, seed
        self.history: list[Message] = []
        self.dropped = 0  # messages dropped from the front to fit the context
        self.turns = 0
        self.last_prompt: list[int] = []  # the token ids of the latest prompt

    def reset(self) -> None:
        self.history, self.dropped = [], 0

    def _prompt(self) -> list[int]:
        budget = self.generator.cfg.max_seq_len - self.max_new_tokens
        while True:
            ids = encode_chat_prompt(self.system + self.history, self.tokenizer)
            if len(ids) <= budget:
                self.last_prompt = ids
                return ids
            if len(self.history) <= 1:
                raise InputError(
                    f"the message is {len(ids)} tokens with the system prompt; at most "
                    f"{budget} fit (model.max_seq_len={self.generator.cfg.max_seq_len} "
                    f"minus {self.max_new_tokens} for the reply)"
                )
            # Drop the oldest exchange (user message and the reply to it).
            cut = 2 if len(self.history) > 2 else 1
            self.history, self.dropped = self.history[cut:], self.dropped + cut

    def reply(
        self,
        user_text: str,
        on_text: Callable[[str], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> str:
        """The model's answer to `user_text`, streamed through `on_text` as it comes.

        When `should_stop()` turns True (Ctrl-C) the answer ends at that token; what was
        shown stays in the history, as the user saw it.
        """
        self.history.append(Message("user", user_text))
        try:
            prompt = self._prompt()
        except InputError:
            self.history.pop()
            raise
        stream = TextStream(self.tokenizer)

        def on_tokens(step, tokens, emitted):
            if emitted[0] and on_text is not None:
                on_text(stream.push(tokens[0]))

        out = self.generator.generate(
            [prompt],
            max_new_tokens=self.max_new_tokens,
            sampling=self.sampling,
            # The end of a turn: <|im_end|> for jaxlm's ChatML; an imported model's
            # eos and generation_config.json's eos_token_id list (<|eot_id|>, ...).
            stop_ids=list(self.tokenizer.stop_ids),  # eos comes first in both kinds
            seed=self.seed + self.turns,
            on_tokens=on_tokens,
            should_stop=should_stop,
        )
        if on_text is not None:
            on_text(stream.finish())
        text = complete_text(self.tokenizer, out.tokens[0])
        self.history.append(Message("assistant", text))
        self.turns += 1
        return text
