"""Grow a Hugging Face BPE tokenizer's vocabulary for new text, keeping every old id.

    base tokenizer.json (ids 0..V-1, merges ranked 0..M-1) + domain text
      -> a domain BPE trained on the text with the base's normaliser, pre-tokenizer
         and decoder (so its tokens are spelt as the base spells them)
      -> its tokens the base lacks: new single characters first, then its merges in
         the order it learnt them, each only once both parts are known
      -> appended as ids V.., their merges ranked after all of the base's

The added tokens (special or not) keep their ids, and so do all the files next to
tokenizer.json (tokenizer_config.json, the chat template, generation_config.json),
which are copied unchanged: a model trained with the base reads ids 0..V-1 as before
and needs only rows for the new ids (`jaxlm checkpoint grow-vocab`).

What stays the same, exactly. BPE applies the lowest-ranked applicable merge first
and every appended merge ranks after the base's, so an appended merge fires only
where no base merge applies.

- SentencePiece-style BPE with byte fallback (Llama-2, Mistral): a character the
  base lacks is spelt as byte tokens. With `pieces="new-chars"` (default) every
  added token holds a character the base lacks, and every merge that builds one has
  an added token as a part, so *a text made only of characters the base knows
  encodes to the same ids as before*. `pieces="all"` also adds merges of known
  characters; text containing them may encode differently (usually shorter).
- Byte-level BPE (Qwen, Llama-3, SmolLM): every byte is a base token, so there is
  no unknown character and a new merge can apply to any text whose base encoding
  holds its two parts side by side. Only `pieces="all"` is offered; text changes
  where the added merges occur.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as FastTokenizer
from tokenizers import pre_tokenizers, trainers

from jaxlm.data.hf_tokenizer import HFTokenizer, write_bundle_files
from jaxlm.data.tokenizer import capped_texts
from jaxlm.errors import InputError


@dataclasses.dataclass(frozen=True)
class HFExtension:
    tokenizer: HFTokenizer
    added: tuple[str, ...]  # tokens appended, in id order
    already_in_base: int
    only_known_chars: int  # left out by pieces="new-chars"
    unreachable: int  # merges whose parts never became tokens
    over_budget: int
    domain_vocab_size: int


def _merge_pair(merge: Any) -> tuple[str, str]:
    """A merge as tokenizers writes it: "a b" (older files) or ["a", "b"]."""
    if isinstance(merge, str):
        left, _, right = merge.partition(" ")
        return left, right
    return merge[0], merge[1]


def _domain_tokenizer(spec: dict, byte_level: bool, vocab_size: int, texts: Iterable[str]):
    """A BPE trained on `texts` through the base's normaliser and pre-tokenizer."""
    base_model = spec["model"]
    empty = {
        "type": "BPE",
        "dropout": None,
        "unk_token": None,
        "continuing_subword_prefix": base_model.get("continuing_subword_prefix"),
        "end_of_word_suffix": base_model.get("end_of_word_suffix"),
        "fuse_unk": False,
        "byte_fallback": False,
        "vocab": {},
        "merges": [],
    }
    domain_spec = {**spec, "model": empty, "added_tokens": [], "post_processor": None}
    domain = FastTokenizer.from_str(json.dumps(domain_spec))
    alphabet = pre_tokenizers.ByteLevel.alphabet() if byte_level else []
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=alphabet, show_progress=False
    )
    domain.train_from_iterator(texts, trainer)
    return json.loads(domain.to_str())["model"]


def extend_hf_tokenizer(
    base: HFTokenizer,
    texts: Iterable[str],
    out: Path | str,
    *,
    vocab_size: int,
    pieces: str = "new-chars",
    domain_vocab_size: int | None = None,
    max_chars: int = 20_000_000,
) -> HFExtension:
    """Writes the extended tokenizer's files to the directory `out`; returns it loaded."""
    out = Path(out)
    where = f"{base.path} (tokenizer.json)"
    spec = json.loads(base.files["tokenizer.json"])
    model = spec["model"]
    if model.get("type") != "BPE":
        raise InputError(
            f"{where}: extending a {model.get('type')} model is not supported (BPE only)"
        )
    byte_level = base.byte_kind == "byte_level"
    if pieces not in ("new-chars", "all"):
        raise InputError(f"--pieces must be new-chars or all, got {pieces!r}")
    if pieces == "new-chars" and byte_level:
        raise InputError(
            f"{where}: a byte-level BPE knows every byte, so no character is new to it; "
            "use --pieces all (text where the added merges occur then encodes differently)"
        )
    budget = vocab_size - base.vocab_size
    if budget <= 0:
        raise InputError(
            f"--vocab-size {vocab_size} must exceed the base tokenizer's {base.vocab_size} ids"
        )
    if out.exists() and any(out.iterdir()):
        raise InputError(f"{out} exists and is not empty; choose a new directory")
    vocab: dict[str, int] = dict(model["vocab"])
    domain = _domain_tokenizer(
        spec, byte_level, domain_vocab_size or 2 * budget + 512, capped_texts(texts, max_chars)
    )
    domain_vocab = sorted(domain["vocab"], key=domain["vocab"].get)
    merges = [_merge_pair(m) for m in domain["merges"]]
    # Characters the base has as tokens; the rest it spells as bytes (byte fallback).
    known_chars = {t for t in vocab if len(t) == 1}
    new_chars = [t for t in domain_vocab if len(t) == 1 and t not in vocab]
    if byte_level:
        new_chars = []  # the alphabet is the 256 bytes, all base tokens
    accepted: list[str] = []
    accepted_merges: list[tuple[str, str]] = []
    known = set(vocab)
    over_budget = already = only_known = unreachable = 0
    for char in new_chars:
        if len(accepted) < budget:
            accepted.append(char)
            known.add(char)
        else:
            over_budget += 1
    for left, right in merges:
        token = left + right
        if token in vocab:
            already += 1
        elif pieces == "new-chars" and set(token) <= known_chars:
            only_known += 1
        elif left not in known or right not in known:
            unreachable += 1
        elif token in known:
            continue  # two merges giving one token: the first one builds it
        elif len(accepted) >= budget:
            over_budget += 1
        else:
            accepted.append(token)
            accepted_merges.append((left, right))
            known.add(token)
    # `tokenizers` gives added tokens that the model's vocab lacks the ids after the
    # model's last one when it loads a file, whatever ids the file says: with new
    # ids after theirs they would move. In the model's vocab too, they keep them
    # (as in Llama-2's own tokenizer.json; BPE has no merge that builds them).
    for added in spec.get("added_tokens", []):
        vocab.setdefault(added["content"], added["id"])
    first = base.vocab_size
    for offset, token in enumerate(accepted):
        vocab[token] = first + offset
    as_strings = bool(model["merges"]) and isinstance(model["merges"][0], str)
    new_merges = [f"{a} {b}" if as_strings else [a, b] for a, b in accepted_merges]
    spec["model"] = {**model, "vocab": vocab, "merges": [*model["merges"], *new_merges]}
    files = dict(base.files)
    files["tokenizer.json"] = json.dumps(spec, ensure_ascii=False).encode("utf-8")
    out.mkdir(parents=True, exist_ok=True)
    write_bundle_files(files, out)
    return HFExtension(
        tokenizer=HFTokenizer.load(out),
        added=tuple(accepted),
        already_in_base=already,
        only_known_chars=only_known,
        unreachable=unreachable,
        over_budget=over_budget,
        domain_vocab_size=len(domain_vocab),
    )
