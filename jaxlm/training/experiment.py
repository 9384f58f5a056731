"""Experiments: modules with a docstring and `get_config()`, found by name or path.

`jaxlm train EXPERIMENT`, `jaxlm config`, `jaxlm sweep`, `jaxlm data inspect` and
`python -m experiments.NAME` all load an experiment and resolve its config here:
`get_config()` then the `--set key=value` overrides, in order.
"""

from __future__ import annotations

import difflib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from jaxlm.config import Config, ConfigError, apply_overrides


def load_experiment(name: str) -> ModuleType:
    """Import an experiment by name (./experiments/NAME.py) or by file path."""
    path = Path(name)
    if path.suffix != ".py":
        path = Path.cwd() / "experiments" / f"{name}.py"
    if not path.is_file():
        available = sorted(p.stem for p in (Path.cwd() / "experiments").glob("[!_]*.py"))
        close = difflib.get_close_matches(name, available, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(
            f"no experiment '{name}' (looked for {path}); available: {available}{hint}"
        )
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


def resolve_config(module: ModuleType, overrides: list[str], name: str) -> Config:
    """The experiment's `get_config()` with `--set` overrides applied, last one winning."""
    cfg = module.get_config()
    if not isinstance(cfg, Config):
        raise ConfigError(f"{module.__file__}: get_config() must return jaxlm.config.Config")
    return apply_overrides(cfg, overrides)
