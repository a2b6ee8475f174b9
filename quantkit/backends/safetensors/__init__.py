"""The safetensors paths: BF16/FP16 folders from our streaming writer, FP8 and GPTQ W4A16 in
the compressed-tensors format through llmcompressor, and the classic GPTQ layout repacked
from it."""
