"""nmt: compact LSTM neural machine translation (SentencePiece, BiLSTM encoder, attentional LSTM decoder).

`from nmt import Translator` is the Python API (see `nmt.translate`). Importing `nmt` loads nothing else and
changes nothing in the process: the Translator is imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Translator", "__version__"]

if TYPE_CHECKING:
    from nmt.translate import Translator


def __getattr__(name: str) -> Any:
    if name == "Translator":
        from nmt.translate import Translator

        return Translator
    raise AttributeError(f"module 'nmt' has no attribute {name!r}")
