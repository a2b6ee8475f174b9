"""Code the tests share: fixture wrappers, the CLI runner, a fake Hub, GGUF comparison and
corruption helpers. Used through tests/conftest.py's fixtures and plain imports."""
