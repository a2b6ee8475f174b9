"""The MLX path: a Hugging Face folder -> an MLX folder (mlx-lm, LM Studio's MLX engine),
through mlx-lm's own loader, quantizer and writer; then the source's tokenizer and chat
template files copied over, byte for byte. mlx is imported only inside the build, so the
rest of quantkit works without the `mlx` extra."""
