"""What scripts/setup.sh installs is required by the tests: a missing or broken import of it
fails a test instead of skipping it, so a broken module cannot pass as a skip."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
OUR_PACKAGES = {"neo_async", "loadgen", "rust_cpuattn"}


def _requirement_name(requirement: str) -> str:
    return re.split(r"[\s<>=!~\[;]", requirement, maxsplit=1)[0].lower().replace("-", "_")


def installed_by_setup() -> set[str]:
    """Our packages, the project's dependencies and the extras that setup.sh installs."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = re.search(r"install '\.\[([\w,]+)\]'", (ROOT / "scripts" / "setup.sh").read_text())
    assert extras, "setup.sh no longer installs the package with extras"
    requirements = list(project["dependencies"])
    for extra in extras.group(1).split(","):
        requirements += project["optional-dependencies"][extra]
    return OUR_PACKAGES | {_requirement_name(r) for r in requirements}


def test_matplotlib_comes_with_the_plot_extra_that_setup_installs():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "matplotlib" in {_requirement_name(r) for r in project["optional-dependencies"]["plot"]}
    assert "matplotlib" in installed_by_setup()


def test_no_test_skips_on_an_import_that_setup_installs():
    required = installed_by_setup()
    skips = []
    for path in sorted(TESTS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            is_importorskip = isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "importorskip"
            if is_importorskip and node.args and isinstance(node.args[0], ast.Constant):
                module = str(node.args[0].value)
                if module.split(".")[0] in required:
                    skips.append(f"{path.name}:{node.lineno} importorskip({module!r})")
    assert skips == [], f"these must be plain imports: {skips}"
