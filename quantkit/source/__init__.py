"""Stage 1, the source: a model id or folder -> `SourceModel` (config, geometry, tensor
inventory from the safetensors headers, tokenizer bundle), downloading only the files needed.

Returns descriptions, never weights: reading tensors is left to the backends and the
evaluation. Pickled checkpoints are converted to safetensors here, only on request."""
