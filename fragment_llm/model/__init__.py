"""The GPT (one definition of its shape and layout), sampling from it and scoring it (loss, bits per byte)."""
