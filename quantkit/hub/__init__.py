"""Stage 8, publishing: `quantkit upload` of a checked artifact folder to the Hugging Face Hub,
with its model card, splitting oversize GGUFs, and proving afterwards that what the Hub holds
is what was written. Tokens and write access are checked before anything is sent."""
