"""The llama.cpp importance matrix: its file formats, computing one inside llama.cpp from the
calibration set, and `--imatrix auto|FILE|none` resolved and applied to a quantization."""
