"""Corpora, tokenizers and the memory-mapped token cache used for training and evaluation."""

from .corpora import SHAKESPEARE_VALIDATION_PLAYS, DataError, cache_dir, load_corpus, load_shakespeare
from .tokenizer import ByteTokenizer, Tokenizer, build_tokenizer, load_tokenizer
from .tokens import PackedSequences, TokenFile, sample_indices, tokenize_split

__all__ = [
    "SHAKESPEARE_VALIDATION_PLAYS", "DataError", "cache_dir", "load_corpus", "load_shakespeare",
    "ByteTokenizer", "Tokenizer", "build_tokenizer", "load_tokenizer",
    "PackedSequences", "TokenFile", "sample_indices", "tokenize_split",
]
