"""Stage 6, the evaluation: an artifact measured against its source. An evaluation corpus ->
token stream; engines that turn ids into logits (llama.cpp for GGUF, transformers for
folders); the KL arithmetic; the quality report; the quality gates per quant type.

Takes an artifact path and a source; returns a `QualityReport` and a `GateResult`. What to do
with a failed gate (quarantine, exit code) is left to the pipeline and the CLI."""
