"""The README's Python snippets import what they show from the paths they show.

Every `from jaxlm... import ...` and `import jaxlm...` line in README.md's code (fenced
blocks and inline) is executed in a fresh interpreter.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
IMPORT = re.compile(r"^\s*(from jaxlm[\w.]* import [\w, ()]+|import jaxlm[\w.]*)", re.M)


def readme_imports() -> list[str]:
    text = README.read_text(encoding="utf-8").replace("`", "\n")
    return sorted({m.group(1).strip() for m in IMPORT.finditer(text)})


def test_readme_shows_the_public_inference_imports():
    assert "from jaxlm.inference import Generator, SamplingConfig, load_model" in readme_imports()


def test_every_import_the_readme_shows_works():
    imports = readme_imports()
    assert imports
    code = "\n".join(imports)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, f"{code}\n{done.stderr[-2000:]}"


def test_the_inference_package_does_not_load_jax_until_used():
    # `jaxlm --help` imports jaxlm.inference.cli_options to build its parser.
    code = (
        "import sys, jaxlm.inference, jaxlm.inference.cli_options\n"
        "assert 'jax' not in sys.modules, 'jax loaded'\n"
        "from jaxlm.inference import load_model\n"
        "assert 'jax' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
