"""nmt: compact LSTM neural machine translation (SentencePiece, BiLSTM encoder, attentional LSTM decoder)."""

__version__ = "0.1.0"
