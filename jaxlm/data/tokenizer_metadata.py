"""The `PREFIX.json` sidecar written next to every `PREFIX.model` that jaxlm trains.

It records what the SentencePiece model alone does not say, and pins it to the model
by hash:

    {
      "format": "jaxlm-tokenizer", "format_version": 1,
      "model_sha256": "<sha256 of PREFIX.model>",
      "model_type": "bpe", "vocab_size": 4096, "byte_fallback": true,
      "special_ids": {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3,
                      "<|im_start|>": 4, "<|im_end|>": 5},
      "user_symbols": {"<|tool|>": 6},
      "chat_template": {"name": "chatml", "im_start": "<|im_start|>", ...},
      "extended_from": null | {"model_sha256": ..., "vocab_size": ..., "model": ...}
    }

A sidecar whose hash does not match its model is refused (it describes some other
model, e.g. one overwritten by a later training run). A model without a sidecar
still loads, with the ChatML template.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from jaxlm.data.chat_template import CHATML, ChatTemplate, template_from_json
from jaxlm.errors import InputError

FORMAT = "jaxlm-tokenizer"
FORMAT_VERSION = 1


class SidecarError(InputError):
    """A sidecar that cannot be used with its model; the message names both files."""


@dataclasses.dataclass(frozen=True)
class TokenizerMetadata:
    model_sha256: str
    model_type: str
    vocab_size: int
    byte_fallback: bool
    special_ids: dict[str, int]
    user_symbols: dict[str, int]
    chat_template: ChatTemplate = CHATML
    # Where an extended vocabulary came from: its first `vocab_size` ids are that model's.
    extended_from: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        data = {"format": FORMAT, "format_version": FORMAT_VERSION}
        data.update(dataclasses.asdict(self))
        data["chat_template"] = self.chat_template.to_json()
        return data


def sidecar_path(model_path: Path) -> Path:
    """`PREFIX.json` for `PREFIX.model`."""
    return Path(model_path).with_suffix(".json")


def write_sidecar(model_path: Path, metadata: TokenizerMetadata) -> Path:
    path = sidecar_path(model_path)
    text = json.dumps(metadata.to_json(), indent=2, ensure_ascii=False) + "\n"
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)
    return path


def read_sidecar(model_path: Path, expected: TokenizerMetadata) -> TokenizerMetadata | None:
    """The sidecar of `model_path`, checked against what the model itself says.

    `expected` is the metadata derived from the model (hash, type, ids); the
    sidecar must agree with it field by field. Returns None when there is no sidecar.
    """
    path = sidecar_path(model_path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SidecarError(f"{path}: cannot read tokenizer sidecar: {error}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise SidecarError(f"{path}: not a jaxlm tokenizer sidecar (no 'format': '{FORMAT}')")
    if data.get("format_version") != FORMAT_VERSION:
        raise SidecarError(
            f"{path}: format_version {data.get('format_version')!r} is not supported "
            f"(this jaxlm reads {FORMAT_VERSION})"
        )
    if data.get("model_sha256") != expected.model_sha256:
        raise SidecarError(
            f"{path} describes a model with sha256 {data.get('model_sha256')}, but "
            f"{model_path} has sha256 {expected.model_sha256}; the model was replaced "
            f"after the sidecar was written (delete or regenerate {path.name})"
        )
    template = template_from_json(data.get("chat_template"), where=f"{path}: chat_template")
    for key in ("model_type", "vocab_size", "byte_fallback", "special_ids", "user_symbols"):
        if data.get(key) != getattr(expected, key):
            raise SidecarError(
                f"{path}: '{key}' is {data.get(key)!r} but {model_path} has "
                f"{getattr(expected, key)!r}"
            )
    extended_from = data.get("extended_from")
    if extended_from is not None and not isinstance(extended_from, dict):
        raise SidecarError(f"{path}: 'extended_from' must be an object or null")
    return dataclasses.replace(expected, chat_template=template, extended_from=extended_from)
