r"""Write a jaxlm SentencePiece tokenizer in the files transformers' tokenizer loaders read.

What transformers 5 does with a bare tokenizer.model (LlamaTokenizer) is not what
jaxlm does: it converts the model with a Metaspace pre-tokenizer that prepends "▁" to
the text (SentencePiece's add_dummy_prefix, which jaxlm turns off), so every text's
first token differs. jaxlm therefore writes a tokenizer.json that reproduces its
SentencePiece settings exactly, built with the `tokenizers` library:

- normalizer: spaces become "▁", nothing else (jaxlm trains with identity
  normalisation, no dummy prefix, extra whitespace kept);
- model: BPE over jaxlm's pieces with byte fallback; the merges are every split of a
  piece into two pieces of the vocabulary, ranked by the merged piece's
  SentencePiece score, which is the order SentencePiece's BPE applies them in;
- the chat markers and user symbols are added special tokens (SentencePiece's
  user-defined symbols also match in raw text); <pad>, <s>, </s>, <unk> too;
- post-processor: BOS before a text, as jaxlm starts every document and prompt;
- decoder: "▁" back to spaces, byte pieces fused back into UTF-8.

tokenizer_config.json names TokenizersBackend (transformers' class for a plain
tokenizer.json, which it loads without rebuilding anything) and carries a Jinja chat
template that renders jaxlm's ChatML layout, so `apply_chat_template(messages,
tokenize=True)` gives the ids of jaxlm.data.chat.encode_chat_prompt. jaxlm encodes a
turn's "role\n" header apart from its content, while transformers encodes the
rendered text; a pre-tokenizer rule splits a text segment after a leading
"system\n", "user\n", "assistant\n" or "tool\n" header, so the two agree even where
the vocabulary has a piece spanning the newline (such as "\n#").

Known differences, documented rather than hidden: (1) that same rule applies to plain
text that starts (or follows a special token) with such a header line; (2) message
content that spells a special token ("<|im_end|>") is kept as text by jaxlm
(encode_literal) but matched as the special token by transformers, as every
transformers chat template is; (3) a literal U+2581 in the input, which jaxlm
encodes as three byte pieces, reads as a space to the normaliser. tokenizer.model is
written too, for SentencePiece users.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from jaxlm.data.tokenizer import CHAT_MARKERS, Tokenizer

CHAT_ROLES = ("system", "user", "assistant", "tool")
SPACE = "\u2581"


def chat_template_jinja(tokenizer: Tokenizer) -> str:
    """Jinja rendering jaxlm's chat layout: BOS, one turn per message, optional header."""
    template = tokenizer.chat_template
    start, end = template.im_start, template.im_end
    roles = ", ".join(repr(r) for r in CHAT_ROLES)
    return (
        "{{ bos_token }}"
        "{% for message in messages %}"
        f"{{% if message['role'] not in [{roles}] %}}"
        "{{ raise_exception('unknown role: ' + message['role']) }}{% endif %}"
        f"{{{{ '{start}' + message['role'] + '\\n' }}}}"
        # The assistant's words and end of turn are what SFT trains on: marked, so
        # transformers' return_assistant_tokens_mask and TRL's assistant_only_loss see them.
        "{% if message['role'] == 'assistant' %}{% generation %}"
        f"{{{{ message['content'] + '{end}' }}}}"
        "{% endgeneration %}"
        f"{{% else %}}{{{{ message['content'] + '{end}' }}}}{{% endif %}}"
        "{{ '\\n' }}"
        "{% endfor %}"
        f"{{% if add_generation_prompt %}}{{{{ '{start}assistant\\n' }}}}{{% endif %}}"
    )


def tokenizer_json(tokenizer: Tokenizer) -> str:
    """The serialized `tokenizers` pipeline that encodes exactly as `tokenizer` does."""
    # Heavy and needed only to export a tokenizer: loaded here, not with jaxlm.hf.
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
    from tokenizers import Tokenizer as FastTokenizer
    from tokenizers.processors import TemplateProcessing

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(tokenizer.model_proto)
    kinds = sentencepiece_model_pb2.ModelProto.SentencePiece
    vocab = {piece.piece: i for i, piece in enumerate(proto.pieces)}
    mergeable = {
        piece.piece: (-piece.score, i)
        for i, piece in enumerate(proto.pieces)
        if piece.type == kinds.NORMAL and len(piece.piece) > 1
    }
    merges = []
    for piece, rank in mergeable.items():
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                merges.append((rank, vocab[left], (left, right)))
    merges = [pair for _, _, pair in sorted(merges)]
    fast = FastTokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True)
    )
    fast.normalizer = normalizers.Replace(" ", SPACE)
    header = "|".join(CHAT_ROLES)
    fast.pre_tokenizer = pre_tokenizers.Split(Regex(rf"\A(?:{header})\n"), behavior="isolated")
    fast.decoder = decoders.Sequence(
        [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    specials = ["<pad>", "<s>", "</s>", "<unk>", *CHAT_MARKERS, *tokenizer.user_symbols]
    fast.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    fast.post_processor = TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tokenizer.bos_id)]
    )
    return fast.to_str(pretty=True)


def write_tokenizer_files(tokenizer: Tokenizer, out: Path) -> list[Path]:
    """tokenizer.model, tokenizer.json, tokenizer_config.json, special_tokens_map.json."""
    out = Path(out)
    shutil.copyfile(tokenizer.path, out / "tokenizer.model")
    (out / "tokenizer.json").write_text(tokenizer_json(tokenizer) + "\n", encoding="utf-8")
    special = {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "additional_special_tokens": [*CHAT_MARKERS, *tokenizer.user_symbols],
    }
    config = {
        "tokenizer_class": "TokenizersBackend",
        **special,
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1_000_000_000,
        "chat_template": chat_template_jinja(tokenizer),
    }
    files = {
        "tokenizer_config.json": config,
        "special_tokens_map.json": special,
    }
    for name, data in files.items():
        text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
        (out / name).write_text(text, encoding="utf-8")
    return [out / name for name in ("tokenizer.model", "tokenizer.json", *files)]
