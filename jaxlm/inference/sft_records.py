"""Sequence-level distillation data: prompts + generated answers as chat SFT records.

`jaxlm generate MODEL --prompts-file P --sft-out OUT` (jaxlm.commands.generate) reads
prompts with `read_chat_prompts`, renders each as jaxlm.data.chat renders an SFT
conversation up to the assistant's answer (`encode_prompts`, i.e.
`encode_chat_prompt`: the same tokens SFT trains on, ChatML or the model's own Jinja
template), and writes one record per (prompt, sample) in MiniMind's SFT format:

    {"conversations": [{"role": "system", ...}, {"role": "user", ...},
                       {"role": "assistant", "content": COMPLETION}]}

Every prompt becomes a conversation, plain text included, because what is written is
a conversation for chat SFT:

    a line of a text file (any name but *.jsonl)   one user turn
    {"prompt": "..."}                               one user turn (other keys, e.g. an
                                                    RL set's "answer", are ignored)
    {"messages": [...]} / {"conversations": [...]}  those turns (system included), which
                                                    must not end with an assistant turn

The completion is the generated text as it is (reasoning between `<think>` and
`</think>` included: what the student learns is the teacher's whole answer;
data.think_loss_weight decides later whether the reasoning is trained). Bad input is
an InputError naming file:line: a bad line before the model is loaded, a prompt too
long for it (or one its template cannot render) once its tokenizer is known.

Next to OUT, `OUT.settings.json` (`settings_path`) records how the records were made
(model, tokenizer, sampling, seed, counts, the data's sha256), so a data set can be
traced to, and regenerated from, its teacher. Both files are written atomically
(jaxlm.data.atomic): a failed or interrupted run leaves the previous files, or none.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from jaxlm.data.atomic import atomic_text_writer
from jaxlm.data.chat import Message, encode_chat_prompt, parse_conversation
from jaxlm.errors import InputError
from jaxlm.inference.sampling import SamplingConfig

SETTINGS_SUFFIX = ".settings.json"


@dataclasses.dataclass(frozen=True)
class ChatPrompt:
    where: str  # file:line, for messages
    messages: tuple[Message, ...]  # the prompt's turns; the answer comes after the last


def prompt_messages(record: Any, where: str) -> list[Message]:
    """The turns of one jsonl prompt record (see the module docstring)."""
    if not isinstance(record, Mapping):
        raise InputError(f"{where}: a prompt record is a JSON object, got {type(record).__name__}")
    chat = "messages" in record or "conversations" in record
    if "prompt" in record and chat:
        raise InputError(f"{where}: give 'prompt' or 'messages', not both")
    if "prompt" in record:
        text = record["prompt"]
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"{where}: 'prompt' must be a non-empty string")
        return [Message("user", text)]
    if not chat:
        raise InputError(
            f"{where}: a prompt record needs 'prompt' (text) or 'messages' (a conversation); "
            f"it has {sorted(record)}"
        )
    messages = parse_conversation(record, where=where)  # its errors name `where`
    if messages[-1].role == "assistant":
        raise InputError(
            f"{where}: a chat prompt ends with a user turn (the model writes the assistant's "
            "answer), not an assistant one"
        )
    return messages


def read_chat_prompts(path: Path | str) -> list[ChatPrompt]:
    """Every prompt of a text file (one per non-empty line) or a .jsonl file, in order."""
    file = Path(path)
    if not file.is_file():
        raise InputError(f"--prompts-file: no such file: {file}")
    prompts = []
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{file}:{number}"
        if file.suffix != ".jsonl":  # a line is the user's message, as written
            prompts.append(ChatPrompt(where, (Message("user", line),)))
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise InputError(f"{where}: not valid JSON ({error.msg})") from None
        prompts.append(ChatPrompt(where, tuple(prompt_messages(record, where))))
    if not prompts:
        raise InputError(f"{file}: no prompts (the file has no non-empty line)")
    return prompts


def encode_prompts(prompts: Sequence[ChatPrompt], tokenizer, max_tokens: int) -> list[list[int]]:
    """Each prompt's token ids as SFT renders the conversation up to the answer."""
    encoded = []
    for prompt in prompts:
        try:
            ids = encode_chat_prompt(prompt.messages, tokenizer)
        except InputError as error:  # e.g. a message key ChatML cannot render
            raise InputError(f"{prompt.where}: {error}") from None
        if len(ids) > max_tokens:
            raise InputError(
                f"{prompt.where}: the prompt is {len(ids)} tokens; at most {max_tokens} fit "
                "(model.max_seq_len - --max-new-tokens)"
            )
        encoded.append(ids)
    return encoded


def conversation_record(messages: Sequence[Message], completion: str) -> dict[str, Any]:
    """MiniMind's SFT record: the prompt's turns, then the generated assistant turn."""
    turns = [{"role": m.role, "content": m.content, **m.extra} for m in messages]
    return {"conversations": [*turns, {"role": "assistant", "content": completion}]}


@dataclasses.dataclass
class SftCounts:
    """What a run made; nothing is left out without being counted."""

    records: int = 0  # lines written
    truncated: int = 0  # answers cut by --max-new-tokens (written or not)
    dropped: int = 0  # truncated answers left out (--drop-truncated)

    def keep(self, stopped: bool, *, drop_truncated: bool) -> bool:
        """Counts one answer; whether it goes into the file."""
        if not stopped:
            self.truncated += 1
            if drop_truncated:
                self.dropped += 1
                return False
        self.records += 1
        return True


class RecordWriter:
    """Writes records as jsonl lines and keeps the sha256 of what was written."""

    def __init__(self, file):
        self.file, self.digest = file, hashlib.sha256()

    def write(self, record: Mapping[str, Any]) -> None:
        # Non-ASCII stays readable (MiniMind's data is Chinese), as jaxlm writes jsonl.
        line = json.dumps(record, ensure_ascii=False) + "\n"
        self.digest.update(line.encode("utf-8"))
        self.file.write(line)


def settings_path(out: Path | str) -> Path:
    return Path(f"{out}{SETTINGS_SUFFIX}")


def check_output(out: Path | str, prompts_file: Path | str) -> None:
    """Refuses an output (or its settings file) that would replace the prompts file."""
    prompts = Path(prompts_file).resolve()
    for path in (Path(out), settings_path(out)):
        if path.resolve() == prompts:
            raise InputError(
                f"--sft-out {out}: {path} is the prompts file; write the records elsewhere"
            )


def jaxlm_version() -> str | None:
    try:
        return importlib.metadata.version("jaxlm")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return None


def sft_settings(
    *,
    model,
    overrides: Sequence[str],
    prompts_file: Path | str,
    prompts: int,
    samples_per_prompt: int,
    sampling: SamplingConfig,
    seed: int,
    max_new_tokens: int,
    batch_size: int,
    stop: Mapping[str, Any],
    drop_truncated: bool,
    counts: SftCounts,
    sha256: str,
) -> dict[str, Any]:
    """What OUT.settings.json holds: the teacher, how it sampled, and what came out.

    `model` is the jaxlm.inference.loading.LoadedModel; `batch_size` is recorded because
    a sampled row's random draws depend on the batch it is in (same prompts, settings,
    seed and batch size give the same records).
    """
    return {
        "format": "conversations",  # MiniMind SFT records, data.format=chat
        "model": model.source,  # with the adapters applied, if any
        "overrides": list(overrides),  # --set model.KEY=VALUE
        "tokenizer_sha256": getattr(model.tokenizer, "sha256", None),
        "jaxlm_version": jaxlm_version(),
        "prompts_file": str(Path(prompts_file).absolute()),
        "prompts": prompts,
        "samples_per_prompt": samples_per_prompt,
        **dataclasses.asdict(sampling),  # temperature, top_k, top_p, min_p, repetition_penalty
        "seed": seed,
        "max_new_tokens": max_new_tokens,
        "batch_size": batch_size,
        "stop": dict(stop),
        "drop_truncated": drop_truncated,
        **dataclasses.asdict(counts),  # records, truncated, dropped
        "sha256": sha256,  # of the records file as written
    }


def write_settings(out: Path | str, settings: Mapping[str, Any]) -> Path:
    """Writes `settings` to OUT.settings.json atomically; returns its path."""
    path = settings_path(out)
    with atomic_text_writer(path) as f:
        json.dump(dict(settings), f, ensure_ascii=False, indent=2)
        f.write("\n")
    return path
