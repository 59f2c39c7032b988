"""Converters from other projects' checkpoint formats into our model directories.

:mod:`.hgrn_bit` reads the released MMfreeLM checkpoints (``model_type: "hgrn_bit"``).
"""

from .hgrn_bit import ConversionError, config_from_release, convert_hgrn_bit, map_release_tensors, read_release

__all__ = ["ConversionError", "config_from_release", "convert_hgrn_bit", "map_release_tensors", "read_release"]
