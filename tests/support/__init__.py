"""Code the tests share: fixture wrappers, the CLI runner, a fake Hub, GGUF comparison and
corruption helpers. Used through tests/conftest.py's fixtures and plain imports."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]  # the checkout: tests/support/ is two down
