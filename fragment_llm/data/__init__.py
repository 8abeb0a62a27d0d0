"""Corpora and tokens: reading a corpus, splitting it, the tokenizer, the token cache and the batches."""
