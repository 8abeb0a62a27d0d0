"""Corpora and tokens, bottom up: document.py (a Document, read in blocks as UTF-8 text), readers.py
(where documents come from: the bundled corpora, and files by format), corpus.py (collecting,
splitting and hashing a corpus), tokenizer.py (byte-level BPE), cache.py (prepare_data: the token
cache), batches.py (training and validation windows) and mixture.py (a mixture of corpora: its
tokenizer's text and its training windows, by weight)."""
