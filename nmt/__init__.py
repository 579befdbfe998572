"""nmt: compact LSTM neural machine translation (SentencePiece, BiLSTM encoder, attentional LSTM decoder)."""

import os

# oneDNN (torch's CPU kernels) caches a compiled primitive per input shape, 1024 of them by default. Length-bucketed
# batches have hundreds of shapes, and under bf16 each cached LSTM primitive keeps megabytes: training's memory
# grew by about 4 MB a step, past 4.5 GB in half an hour, and slowed it. 16 bounds it (measured: ~1.1 GB flat).
# Read by oneDNN when it first needs the cache, so setting it here, before any kernel runs, is enough.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16")

__version__ = "0.1.0"
