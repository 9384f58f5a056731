"""Experiments: modules with a docstring and `get_config()`, found by name or path.

`jaxlm train [EXPERIMENT]`, `jaxlm config`, `jaxlm sweep`, `jaxlm data inspect` and
`python -m experiments.NAME` all load an experiment and resolve its config here:
`get_config()` (or the defaults of jaxlm.config, without an experiment), then a
`model.preset=NAME` override (the named preset's model shape, jaxlm.presets), then
the model shape of `train.init_from` for every key not chosen
(jaxlm.training.init_from_shape), or else model.vocab_size from a given
data.tokenizer unless set, then the `--set key=value` overrides in order.

An experiment NAME is looked up, in this order, in every directory of
$JAXLM_EXPERIMENTS (separated by the OS path separator), in ./experiments, and in the
experiments shipped with jaxlm (the `experiments` package beside `jaxlm`, installed
with it); a path ending in .py is loaded as it is.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

from jaxlm.config import Config, ConfigError, ModelConfig, apply_overrides
from jaxlm.data.tokenizer_files import load_tokenizer
from jaxlm.presets import get_preset
from jaxlm.training.init_from_shape import (
    inherited_overrides,
    model_overrides,
    saved_model,
    shape_keys,
)

SEARCH_PATH_VARIABLE = "JAXLM_EXPERIMENTS"
PRESET_KEY = "model.preset"


def search_path() -> list[tuple[Path, str]]:
    """(directory, why it is searched) in lookup order, without repeats."""
    places = [
        (Path(d), f"${SEARCH_PATH_VARIABLE}")
        for d in os.environ.get(SEARCH_PATH_VARIABLE, "").split(os.pathsep)
        if d
    ]
    places.append((Path.cwd() / "experiments", "the working directory"))
    places.append((shipped_experiments(), "shipped with jaxlm"))
    seen, unique = set(), []
    for directory, why in places:
        key = directory.resolve()
        if key not in seen:
            seen.add(key)
            unique.append((directory, why))
    return unique


def shipped_experiments() -> Path:
    """The `experiments` package installed beside `jaxlm` (site-packages, or the
    source tree of an editable install)."""
    return Path(__file__).resolve().parents[2] / "experiments"  # beside jaxlm/


def available_experiments() -> dict[str, Path]:
    """{name: file} of every experiment on the search path (the first one wins)."""
    found: dict[str, Path] = {}
    for directory, _ in search_path():
        for path in sorted(directory.glob("[!_]*.py")):
            found.setdefault(path.stem, path)
    return found


def find_experiment(name: str) -> Path:
    """The file of experiment `name` (a name on the search path, or a .py path)."""
    path = Path(name)
    if path.suffix == ".py":
        if not path.is_file():
            raise ConfigError(f"no experiment file {path.absolute()}")
        return path
    for directory, _ in search_path():
        if (directory / f"{name}.py").is_file():
            return directory / f"{name}.py"
    available = sorted(available_experiments())
    close = difflib.get_close_matches(name, available, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    looked = ", ".join(f"{d} ({why}{'' if d.is_dir() else ', absent'})" for d, why in search_path())
    raise ConfigError(
        f"no experiment '{name}': looked for {name}.py in {looked}; available: "
        f"{available}{hint} (or train without one: `jaxlm train --data SOURCES ...`)"
    )


def load_experiment(name: str) -> ModuleType:
    """Import an experiment by name (see search_path) or by file path."""
    path = find_experiment(name)
    _make_siblings_importable(path)
    spec = importlib.util.spec_from_file_location(f"experiments.{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path}: an experiment must define get_config()")
    return module


def _make_siblings_importable(path: Path) -> None:
    """Experiments import each other (`from experiments.quickstart import ...`): put the
    directory that holds the experiments package on sys.path, as `python -m` would from
    the project root; the `jaxlm` console script does not add the working directory."""
    package = path.resolve().parent
    if (package / "__init__.py").is_file():
        root = str(package.parent)
        if root not in sys.path:
            sys.path.insert(0, root)


def resolve_config(module: ModuleType | None, overrides: list[str], name: str) -> Config:
    """The experiment's `get_config()` (the defaults with `name` when `module` is None)
    with the overrides applied as the module docstring says, last one winning."""
    if module is None:
        base = Config(name=name)
    else:
        base = module.get_config()
        if not isinstance(base, Config):
            raise ConfigError(f"{module.__file__}: get_config() must return jaxlm.config.Config")
    preset, rest = _split_preset(overrides)
    first = model_overrides(get_preset(preset)) if preset else []
    cfg = apply_overrides(base, first + rest)
    chosen = _chosen_model_keys(module, base.model, preset, rest)
    saved = saved_model(cfg.train.init_from) if cfg.train.init_from else None
    if saved is not None:
        taken = inherited_overrides(cfg.model, saved, chosen, cfg.train.init_from)
    else:
        taken = _tokenizer_vocab(cfg, chosen)
    return apply_overrides(base, first + taken + rest) if taken else cfg


def _tokenizer_vocab(cfg: Config, chosen: dict[str, str]) -> list[str]:
    """`model.vocab_size=N` for a given data.tokenizer of N pieces, unless the size was
    set by --set or the experiment (a preset's size is its own tokenizer's: replaced).
    A set size smaller than the tokenizer is refused: its ids would not fit."""
    path = Path(cfg.data.tokenizer)
    if not cfg.data.tokenizer or not path.exists():
        return []  # none, or not here (yet): the run says what is missing
    pieces = load_tokenizer(path).vocab_size
    where = chosen.get("vocab_size", "")
    if where and not where.startswith("--preset"):
        if cfg.model.vocab_size < pieces:
            raise ConfigError(
                f"model.vocab_size={cfg.model.vocab_size} (from {where}) is smaller than the "
                f"{pieces} pieces of data.tokenizer {path}; leave model.vocab_size unset to "
                "take the tokenizer's"
            )
        return []
    return [f"model.vocab_size={pieces}"] if pieces != cfg.model.vocab_size else []


def _split_preset(overrides: list[str]) -> tuple[str, list[str]]:
    """(the last model.preset given or "", the other overrides)."""
    preset, rest = "", []
    for item in overrides:
        key, sep, value = item.partition("=")
        if sep and key.strip() == PRESET_KEY:
            preset = value.strip()
        else:
            rest.append(item)
    return preset, rest


def _chosen_model_keys(
    module: ModuleType | None, model: ModelConfig, preset: str, rest: list[str]
) -> dict[str, str]:
    """{model key: where the user chose it} among the shape keys."""
    chosen: dict[str, str] = {}
    if module is not None:
        default = ModelConfig()
        for key in shape_keys():
            if getattr(model, key) != getattr(default, key):
                chosen[key] = f"the experiment {module.__file__}"
    if preset:
        chosen.update(dict.fromkeys(shape_keys(), f"--preset {preset}"))
    for item in rest:
        key = item.partition("=")[0].strip()
        if key.startswith("model.") and key.removeprefix("model.") in shape_keys():
            chosen[key.removeprefix("model.")] = "--set"
    return chosen


__all__ = [
    "available_experiments",
    "find_experiment",
    "load_experiment",
    "resolve_config",
    "search_path",
]
