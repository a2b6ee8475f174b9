"""Stage 3, calibration: the built-in chat mix (prose, code, math, chat, <think> and tool
turns), JSONL files and Hub datasets -> records -> token sequences rendered with the model's
chat template (`CalibrationSet`).

Takes a tokenizer bundle and options; returns token ids. Which schemes need data, and how the
data is fed to a quantizer, is left to the backends."""
