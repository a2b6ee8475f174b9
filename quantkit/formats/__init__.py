"""Format facts, the bottom layer: what llama.cpp quant types are and what they cost per tensor,
which safetensors schemes exist and what they quantize and cost (schemes.py), how GGUF and
safetensors files are laid out and read, how a chat template renders (sandboxed).

Takes file paths and plain values; returns typed tables and parsed headers. Knows nothing about
sources, plans or artifacts: every stage above may import it, it imports only `quantkit.errors`."""
