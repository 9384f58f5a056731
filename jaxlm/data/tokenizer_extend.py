"""Grow a tokenizer's vocabulary for a new language or domain, keeping every old id.

    base model (V pieces) + domain text
      -> a "domain" SentencePiece model of the same type, trained on the new text
      -> its NORMAL pieces that the base lacks, in priority order, up to the budget
      -> appended after id V-1 with scores below every base score

Ids 0..V-1 keep their piece, score and type, so a checkpoint trained with the base
model stays valid for them; only the embedding and output matrices need V' - V new
rows (jaxlm.models.vocab_resize).

What stays the same, exactly. SentencePiece matches only pieces that occur in the
text (BPE merges a pair only into an existing piece; unigram's lattice holds only
pieces found in the text), so *a text in which no added piece occurs encodes to the
same ids as before*. With `pieces="new-chars"` (the default) every added piece holds
at least one character that is not a base piece, so any text made only of
characters the base knows - English and code for a base trained on them - keeps its
exact encoding. `pieces="all"` also adds pieces spelled with known characters (what
a new domain in the same script needs); text containing them may then encode
differently, usually shorter. (Unigram: the unknown-character penalty moves with the
lowest score, which shifts every segmentation of a text equally, so the argmax is
the same up to floating-point ties.)

Order and scores. BPE applies the best-scoring merge first, so added pieces get
scores below the base's lowest, one step apart, in the domain model's merge order:
a domain merge can happen only where no base merge applies, and every added merge's
two parts are base pieces or added before it. BPE lists single characters after all
merges with arbitrary ranks, so when the budget cannot take every candidate, new
characters are taken first (each saves 2-3 byte tokens wherever it occurs), then
merges in order. Unigram scores are log probabilities: the domain scores are shifted
down as a block, which keeps their differences, so the domain model's own choices
among its pieces survive.

Byte fallback: the 256 byte pieces are base pieces, so they keep their ids, and a
character still unknown after extension falls back to them as before.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

from sentencepiece import sentencepiece_model_pb2 as model_pb2

from jaxlm.data.tokenizer import Tokenizer, capped_texts, save_tokenizer, train_model_proto
from jaxlm.errors import InputError

PieceSelection = Literal["new-chars", "all"]
_NORMAL = model_pb2.ModelProto.SentencePiece.NORMAL
_SPACE_MARK = "\u2581"  # SentencePiece's spelling of " " inside pieces


@dataclasses.dataclass(frozen=True)
class ExtensionPlan:
    """Which domain pieces are appended, and why the others are not."""

    added: tuple[str, ...]
    already_in_base: int
    only_known_chars: int  # left out by pieces="new-chars"
    unreachable: int  # BPE merges whose parts are not pieces (see _reachable_merges)
    over_budget: int


@dataclasses.dataclass(frozen=True)
class Extension:
    tokenizer: Tokenizer
    plan: ExtensionPlan
    domain_vocab_size: int


def parse_model(model_proto: bytes) -> model_pb2.ModelProto:
    proto = model_pb2.ModelProto()
    proto.ParseFromString(model_proto)
    return proto


def base_characters(proto: model_pb2.ModelProto) -> frozenset[str]:
    """Characters the model has as single NORMAL pieces (others fall back to bytes)."""
    return frozenset(p.piece for p in proto.pieces if p.type == _NORMAL and len(p.piece) == 1)


def plan_extension(
    base: model_pb2.ModelProto,
    domain: model_pb2.ModelProto,
    *,
    budget: int,
    pieces: PieceSelection = "new-chars",
) -> ExtensionPlan:
    """The domain pieces to append (in id order), at most `budget` of them."""
    if pieces not in ("new-chars", "all"):
        raise ValueError(f"pieces must be 'new-chars' or 'all', got {pieces!r}")
    existing = {p.piece for p in base.pieces}
    known = base_characters(base)
    fresh = [p for p in domain.pieces if p.type == _NORMAL and p.piece not in existing]
    candidates = fresh
    if pieces == "new-chars":
        candidates = [p for p in fresh if not set(p.piece) <= known]
    unreachable = 0
    if base.trainer_spec.model_type == model_pb2.TrainerSpec.BPE:
        reachable = _reachable_merges([p.piece for p in candidates], existing)
        unreachable = len(candidates) - len(reachable)
        candidates = [p for p in candidates if p.piece in reachable]
        # Characters first when the budget has to choose (see the module docstring);
        # their BPE scores are never compared, so their position does not matter.
        chars = [p for p in candidates if len(p.piece) == 1]
        merges = [p for p in candidates if len(p.piece) > 1]
        chosen = {p.piece for p in (chars + merges)[:budget]}
    else:
        chosen = {p.piece for p in candidates[:budget]}  # unigram: already best first
    return ExtensionPlan(
        added=tuple(p.piece for p in candidates if p.piece in chosen),
        already_in_base=len(domain.pieces) - len(fresh) - _non_normal(domain),
        only_known_chars=len(fresh) - len(candidates) - unreachable,
        unreachable=unreachable,
        over_budget=len(candidates) - len(chosen),
    )


def _reachable_merges(candidates: Sequence[str], existing: set[str]) -> set[str]:
    """Candidates (in merge order) that BPE can build from two available parts.

    Every character is a symbol before merging, so single characters are always
    reachable. A merge is dropped when no split of it into two available pieces
    exists, e.g. because `pieces="new-chars"` left out the piece it was merged from:
    it could never be produced, and would only waste an id.
    """
    available = set(existing)
    reachable = set()
    for piece in candidates:
        splits = ((piece[:i], piece[i:]) for i in range(1, len(piece)))
        if len(piece) == 1 or any(
            (len(a) == 1 or a in available) and (len(b) == 1 or b in available) for a, b in splits
        ):
            available.add(piece)
            reachable.add(piece)
    return reachable


def _non_normal(proto: model_pb2.ModelProto) -> int:
    return sum(p.type != _NORMAL for p in proto.pieces)


def append_pieces(base_proto: bytes, domain_proto: bytes, added: Sequence[str]) -> bytes:
    """The base model with `added` (pieces of the domain model) appended, scored below it."""
    base, domain = parse_model(base_proto), parse_model(domain_proto)
    domain_score = {p.piece: p.score for p in domain.pieces}
    lowest = min((p.score for p in base.pieces if p.type == _NORMAL), default=0.0)
    if base.trainer_spec.model_type == model_pb2.TrainerSpec.BPE:
        scores = [lowest - 1.0 - rank for rank in range(len(added))]
    else:
        # Shift the block so its best piece sits one nat below the worst base piece.
        offset = lowest - 1.0 - max((domain_score[p] for p in added), default=0.0)
        scores = [domain_score[p] + offset for p in added]
    for piece, score in zip(added, scores, strict=True):
        new = base.pieces.add()
        new.piece, new.score, new.type = piece, score, _NORMAL
    base.trainer_spec.vocab_size = len(base.pieces)
    return base.SerializeToString()


def added_pieces_in(text: str, added: Iterable[str]) -> list[str]:
    """Added pieces that occur in `text`; with none, its encoding is unchanged."""
    spelled = text.replace(" ", _SPACE_MARK)
    return [piece for piece in added if piece in spelled]


def extend_tokenizer(
    base: Tokenizer,
    texts: Iterable[str],
    model_prefix: Path | str,
    *,
    vocab_size: int,
    pieces: PieceSelection = "new-chars",
    domain_vocab_size: int | None = None,
    max_chars: int = 20_000_000,
    num_threads: int = 2,
    seed: int = 0,
) -> Extension:
    """Writes `<model_prefix>.model/.vocab/.json`: `base` plus up to `vocab_size - V` pieces.

    The domain model is trained with the base's type and special symbols, with
    `domain_vocab_size` pieces at most (default: the fixed pieces, the text's
    alphabet and twice the budget, since many domain pieces exist in the base).
    """
    budget = vocab_size - base.vocab_size
    if budget <= 0:
        raise InputError(
            f"--vocab-size {vocab_size} must exceed the base vocabulary of {base.path} "
            f"({base.vocab_size} pieces)"
        )
    base_proto = parse_model(base.model_proto)
    model_type = {model_pb2.TrainerSpec.BPE: "bpe", model_pb2.TrainerSpec.UNIGRAM: "unigram"}.get(
        base_proto.trainer_spec.model_type
    )
    if model_type is None:
        raise InputError(f"{base.path}: only BPE and unigram models can be extended")
    # Held in memory (at most max_chars) to size the domain model: SentencePiece
    # refuses a vocabulary smaller than the text's alphabet.
    texts = list(capped_texts(texts, max_chars))
    alphabet = set().union(*map(set, texts))
    domain_vocab_size = domain_vocab_size or _non_normal(base_proto) + len(alphabet) + 2 * budget
    domain_proto = train_model_proto(
        texts,
        vocab_size=domain_vocab_size,
        model_type=model_type,
        max_chars=max_chars,
        num_threads=num_threads,
        seed=seed,
        user_symbols=base.user_symbols,
        hard_vocab_limit=False,  # a small domain corpus gives fewer pieces, not an error
        where=f"{model_prefix}.model (domain model)",
    )
    domain = parse_model(domain_proto)
    plan = plan_extension(base_proto, domain, budget=budget, pieces=pieces)
    extended_proto = append_pieces(base.model_proto, domain_proto, plan.added)
    provenance = {
        "model": str(base.path),
        "model_sha256": base.sha256,
        "vocab_size": base.vocab_size,
        "pieces": pieces,
    }
    check_extension(base.model_proto, extended_proto)  # before anything is written
    tokenizer = save_tokenizer(extended_proto, model_prefix, extended_from=provenance)
    return Extension(tokenizer, plan, len(domain.pieces))


def check_extension(base_proto: bytes, extended_proto: bytes) -> None:
    """Every base id keeps its piece, score and type; raises naming the first that does not."""
    old, new = parse_model(base_proto), parse_model(extended_proto)
    if len(new.pieces) < len(old.pieces):
        raise ValueError(f"the extension has {len(new.pieces)} pieces, the base {len(old.pieces)}")
    for index, (a, b) in enumerate(zip(old.pieces, new.pieces, strict=False)):
        if (a.piece, a.score, a.type) != (b.piece, b.score, b.type):
            raise ValueError(f"id {index} became {b.piece!r} ({b.score}), was {a.piece!r}")
