"""The user's request for a function, and the jsonl records built around it.

A request gives the signature and the docstring and asks for the function; several
phrasings are used so that a model does not learn one sentence, chosen by a stable
hash of the function's name. The assistant's answer is the bare source (no Markdown
fence), so "does the answer parse" is a direct check.

Records (extra keys are ignored by jaxlm.data.chat and jaxlm.data.preference):

    SFT         {"conversations": [user, assistant], "id": qualname}
    preference  {"chosen": [user, assistant], "rejected": [user, assistant],
                 "id": qualname, "corruption": kind}
"""

from __future__ import annotations

import hashlib
from typing import Any

from jaxlm.data.posttrain.functions import Function

Record = dict[str, Any]

TEMPLATES = (
    "Write the Python function `{name}`{where}.\n\n"
    "Signature:\n```python\n{signature}\n```\n\nDocstring:\n{docstring}",
    #
    "Implement this {kind} from the `{module}` module of the Python standard library.\n\n"
    "```python\n{signature}\n```\n\nWhat it does:\n{docstring}",
    #
    "{docstring}\n\n"
    "Write a Python {kind} with the signature below that does what the text above says."
    "\n\n```python\n{signature}\n```",
    #
    "Complete the code: give the full definition of `{qualified}`, docstring included."
    "\n\n```python\n{signature}\n```\n\nIts docstring:\n{docstring}",
)


def stable_int(*parts: str) -> int:
    """A 64-bit integer from strings, equal on every machine and every run.

    (Python's hash() of a str is salted per process, so it cannot choose anything
    that must be reproducible.)
    """
    digest = hashlib.sha256("\x00".join(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big")


def request(function: Function, seed: int) -> str:
    """The user's turn for `function`, in the phrasing its name hashes to."""
    template = TEMPLATES[stable_int(str(seed), "template", function.qualname) % len(TEMPLATES)]
    if function.class_name:
        where = f" (a method of class `{function.class_name}` in module `{function.module}`)"
        qualified = f"{function.module}.{function.class_name}.{function.name}"
    else:
        where = f" (module `{function.module}`)"
        qualified = f"{function.module}.{function.name}"
    return template.format(
        name=function.name,
        where=where,
        kind="method" if function.is_method else "function",
        module=function.module,
        qualified=qualified,
        signature=function.signature,
        docstring=function.docstring,
    )


def conversation(prompt: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


def sft_record(function: Function, seed: int) -> Record:
    """MiniMind's SFT format: the request, answered with the real source."""
    return {
        "conversations": conversation(request(function, seed), function.source),
        "id": function.qualname,
    }


def preference_record(function: Function, seed: int, kind: str, rejected: str) -> Record:
    """MiniMind's DPO format: two whole conversations that share the request."""
    prompt = request(function, seed)
    return {
        "chosen": conversation(prompt, function.source),
        "rejected": conversation(prompt, rejected),
        "id": function.qualname,
        "corruption": kind,
    }
