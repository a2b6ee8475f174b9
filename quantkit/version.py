"""The version of quantkit: one home, read by the package, the manifest, the GGUF writer and
the CLI."""

__version__ = "0.1.0"
