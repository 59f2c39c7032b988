"""Our tokenizers as ``transformers`` tokenizers (``AutoTokenizer`` loads them) and back.

* ``bytes``: a ``tokenizer.json`` whose byte-level BPE has the 256 byte symbols as its whole
  vocabulary (token id = byte value) and no merges, so it encodes and decodes exactly like
  :class:`~matmulfree.data.tokenizer.ByteTokenizer`. It has no end-of-text token; its pad token
  is byte 0 (padded positions are masked, so their id never reaches the model).
* ``bpe:N`` and ``hf:NAME``: their own ``tokenizer.json``; ``<|endoftext|>`` (or the tokenizer's
  end token) is the end and pad token.

The folder's ``tokenizer_config.json`` records our spec under ``matmulfree_tokenizer`` so that
:func:`from_hf_folder` restores the same tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import PreTrainedTokenizerFast

from ..data.corpora import DataError
from ..data.tokenizer import ByteTokenizer, HFTokenizer, Tokenizer

#: Key of ``tokenizer_config.json`` holding our tokenizer spec.
SPEC_KEY = "matmulfree_tokenizer"


def byte_level_tokenizer():
    """A ``tokenizers.Tokenizer`` equal to our byte tokenizer (ids are byte values)."""
    from tokenizers import Tokenizer as RawTokenizer
    from tokenizers import decoders, models, pre_tokenizers
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbol = bytes_to_unicode()
    tok = RawTokenizer(models.BPE(vocab={symbol[b]: b for b in range(256)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def to_hf_tokenizer(tokenizer: Tokenizer, max_length: int) -> PreTrainedTokenizerFast:
    """The ``transformers`` tokenizer for one of ours (``max_length``: the model's ``max_seq_len``)."""
    if isinstance(tokenizer, ByteTokenizer):
        from transformers.convert_slow_tokenizer import bytes_to_unicode

        return PreTrainedTokenizerFast(tokenizer_object=byte_level_tokenizer(), pad_token=bytes_to_unicode()[0],
                                       model_max_length=max_length, **{SPEC_KEY: tokenizer.spec})
    if isinstance(tokenizer, HFTokenizer):
        special = {}
        if tokenizer.eos_id is not None:
            eos = tokenizer.tok.id_to_token(tokenizer.eos_id)
            special = {"eos_token": eos, "pad_token": eos}
        return PreTrainedTokenizerFast(tokenizer_object=tokenizer.tok, model_max_length=max_length,
                                       **special, **{SPEC_KEY: tokenizer.spec})
    raise TypeError(f"no transformers form for tokenizer {type(tokenizer).__name__} ({tokenizer.spec})")


def from_hf_folder(directory: str | Path) -> Tokenizer:
    """Our tokenizer for a folder with ``tokenizer.json`` (+ ``tokenizer_config.json``).

    A folder written by :func:`to_hf_tokenizer` gives back the same spec; any other
    ``tokenizer.json`` becomes an ``hf:`` tokenizer. :class:`DataError` names a missing file.
    """
    directory = Path(directory)
    path = directory / "tokenizer.json"
    spec = None
    cfg = directory / "tokenizer_config.json"
    if cfg.is_file():
        try:
            spec = json.loads(cfg.read_text()).get(SPEC_KEY)
        except ValueError as e:
            raise DataError(f"{cfg}: not valid JSON ({e})") from None
    if spec == "bytes":
        return ByteTokenizer()
    if not path.is_file():
        raise DataError(f"{directory}: no tokenizer.json (export the model with 'matmulfree export hf')")
    from tokenizers import Tokenizer as RawTokenizer

    try:
        raw = RawTokenizer.from_file(str(path))
    except Exception as e:
        raise DataError(f"{path}: unreadable tokenizer ({str(e).splitlines()[0] if str(e) else e!r})") from None
    return HFTokenizer(spec or f"hf:{path.name}", raw)
