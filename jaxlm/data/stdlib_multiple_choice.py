"""A multiple-choice set from the standard library's held-out functions: no download.

For every documented function of the embedded corpus's validation files (the same
functions as `jaxlm data posttrain`'s sft_val / dpo_val, see jaxlm.data.stdlib_tasks)
one record for jaxlm.evaluation.multiple_choice:

    {"context": ..., "choices": [...], "answer": i, "id": qualname, "kinds": [...]}

Two styles, for the two kinds of model:

    chat        context = the SFT prompt ("Write the function ...", the same phrasing
                as sft_val) as a ChatML user turn plus the assistant header,
                `<|im_start|>user\\n{prompt}<|im_end|>\\n<|im_start|>assistant\\n`;
                choice = the whole function followed by `<|im_end|>`. For SFT / DPO
                models: `[BOS] + encode(context) + encode(choice)`, the harness's
                tokens, equal jaxlm.data.chat's encoding of the two-turn conversation
                token for token (tests/test_multiple_choice.py), so such a model is
                scored on exactly the layout it was trained on.
    completion  context = the function's head (decorators, `def` line, docstring) as
                plain code; choice = the body, starting at the newline after the
                docstring, followed by one blank line ("\\n\\n"). For base models.

The end marker (`<|im_end|>` or the blank line) makes every choice a whole answer: the
model is also scored on ending it there.

The choices are the real function and its corruptions (jaxlm.data.posttrain.
corruptions), 2 to 4 per record, in an order drawn from the function's name; `kinds[j]`
says what choice j is. Every wrong choice compiles and keeps the signature and
docstring: only the body tells them apart. The kinds suit a summed log-likelihood,
which favours short choices:

    swapped_body        the body of the function of the same split and kind (method or
                        not) whose re-indented body is closest in length to the real one
                        (does the body fit this docstring?)
    swapped_statements  two dependent adjacent statements swapped: the same text reordered
    flipped_operator    one comparison or and/or negated: almost the same length

`truncated` (the real function less its last statement) is left out: it is a prefix of
the real answer, shorter by a whole statement, and on experiments/posttrain_chain's
pretrained, SFT and DPO models (d256, 4 layers, chat style) the real function
outscored it for 0%, 1% and 10% of the 110 functions it applies to: a set with it
measures length, not code. A random donor body, as the preference pairs use, lost to
the real one about half the time for all three models (its length decides); against
the closest-length donor the real body wins 51%, 58% and 65% of the time.

Held out: only validation files of the corpus split (val_fraction must equal the one
pretraining used, 0.02 by default), and a function whose source also occurs in a
train file is dropped, so neither the pretraining run nor the post-training sets saw
any of these functions. Deterministic: the same Python version and seed give the same
bytes. `--split train` makes the same set from the train functions, to measure how
much of a score is memorisation; never report it as held out.
"""

from __future__ import annotations

import collections
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from jaxlm.data.atomic import refuse_overwrite
from jaxlm.data.chat import Message
from jaxlm.data.chat_template import CHATML
from jaxlm.data.corpus import Split
from jaxlm.data.posttrain.corruptions import (
    Donors,
    donor_pools,
    flipped_operator,
    swapped_statements,
)
from jaxlm.data.posttrain.functions import Function, FunctionLimits, compiles
from jaxlm.data.posttrain.output import write_jsonl
from jaxlm.data.posttrain.prompts import request, stable_int
from jaxlm.data.stdlib_tasks import DEFAULT_LIMITS, build_posttrain_sets
from jaxlm.errors import InputError

Style = Literal["chat", "completion"]
STYLES: tuple[str, ...] = ("chat", "completion")
COMPLETION_END = "\n\n"
_DONOR_TRIES = 20  # closest donors tried before giving up on swapped_body

__all__ = ["STYLES", "build_multiple_choice", "multiple_choice_record", "write_multiple_choice"]


def multiple_choice_record(
    function: Function, wrong: Sequence[tuple[str, str]], seed: int, style: Style
) -> dict[str, Any]:
    """The record of `function` with its (kind, wrong source) choices, shuffled by name."""
    if style not in STYLES:
        raise InputError(f"style: must be one of {STYLES}, got {style!r}")
    options = [("real", function.source), *wrong]
    order = sorted(
        range(len(options)),
        key=lambda i: stable_int(str(seed), "choice", function.qualname, str(i)),
    )
    options = [options[i] for i in order]
    if style == "chat":
        prompt = request(function, seed)
        context = CHATML.render([Message("user", prompt)], add_generation_prompt=True)
        choices = [source + CHATML.im_end for _, source in options]
    else:
        context = function.head
        for _, source in options:  # every corruption keeps the head (corruptions.py)
            if not source.startswith(context + "\n"):
                raise ValueError(f"{function.qualname}: a choice does not keep the head")
        choices = [source[len(context) :] + COMPLETION_END for _, source in options]
    return {
        "context": context,
        "choices": choices,
        "answer": [kind for kind, _ in options].index("real"),
        "id": function.qualname,
        "kinds": [kind for kind, _ in options],
    }


def matched_swapped_body(function: Function, donors: Donors, seed: int) -> str | None:
    """This head over the same-kind donor body closest in length to the real body.

    Donors at equal distance are ordered by a stable hash of both names; the first
    that differs from the real body and compiles is taken.
    """
    own = textwrap.dedent(function.body)
    candidates = []
    for donor in donors[function.is_method]:
        body = textwrap.dedent(donor.body)
        if donor.qualname == function.qualname or body == own:
            continue
        text = f"{function.head}\n{textwrap.indent(body, function.body_indent)}"
        tie = stable_int(str(seed), "donor", function.qualname, donor.qualname)
        candidates.append((abs(len(text) - len(function.source)), tie, text))
    for _, _, text in sorted(candidates)[:_DONOR_TRIES]:
        if compiles(text):
            return text
    return None


def wrong_choices(function: Function, donors: Donors, seed: int) -> list[tuple[str, str]]:
    """(kind, source) of the distinct corruptions of `function` used as wrong choices."""
    key = stable_int(str(seed), "corrupt", function.qualname) & 0xFFFFFFFF
    made = [
        ("swapped_body", matched_swapped_body(function, donors, seed)),
        ("swapped_statements", swapped_statements(function, donors, key)),
        ("flipped_operator", flipped_operator(function, donors, key)),
    ]
    wrong, seen = [], {function.source}
    for kind, text in made:
        if text is not None and text not in seen and compiles(text):
            seen.add(text)
            wrong.append((kind, text))
    return wrong


def build_multiple_choice(
    *,
    style: Style = "chat",
    seed: int = 0,
    split: Split = "validation",
    max_items: int | None = None,
    limits: FunctionLimits = DEFAULT_LIMITS,
    val_fraction: float = 0.02,
    max_files: int | None = None,
    sources: Mapping[Split, Sequence[Path]] | None = None,
    root: Path | None = None,
) -> list[dict[str, Any]]:
    """The records of one split, in the seeded order of jaxlm.data.stdlib_tasks.

    A function no corruption applies to is left out. `max_items` keeps the first that
    many (an unbiased sample); the other arguments are build_posttrain_sets'.
    """
    if max_items is not None and max_items < 0:
        raise InputError(f"max_items: must be >= 0 (or None for all), got {max_items}")
    tasks = build_posttrain_sets(
        seed=seed,
        max_sft=0,
        max_pairs=0,
        limits=limits,
        val_fraction=val_fraction,
        max_files=max_files,
        sources=sources,
        root=root,
    )[split]
    donors = donor_pools(tasks.functions)
    records = []
    for function in tasks.functions:
        if max_items is not None and len(records) >= max_items:
            break
        wrong = wrong_choices(function, donors, seed)
        if wrong:
            records.append(multiple_choice_record(function, wrong, seed, style))
    return records


def write_multiple_choice(out: Path | str, *, force: bool = False, **kwargs: Any) -> dict[str, Any]:
    """Writes build_multiple_choice(**kwargs) to `out` atomically; returns a summary.

    Refuses (InputError naming the path) to replace an existing file unless `force`.
    """
    out = Path(out)
    if not force:
        refuse_overwrite(out)
    records = build_multiple_choice(**kwargs)
    if not records:
        raise InputError(f"{out}: no function gave a multiple-choice item; nothing written")
    written = write_jsonl(out, records)
    kinds = collections.Counter(k for r in records for k in r["kinds"] if k != "real")
    sizes = collections.Counter(len(r["choices"]) for r in records)
    return {
        **written,
        "choices": dict(sorted(sizes.items())),
        "wrong_kinds": dict(sorted(kinds.items())),
        "chance_accuracy": sum(1 / len(r["choices"]) for r in records) / len(records),
    }
