"""nmt: compact LSTM neural machine translation (SentencePiece, BiLSTM encoder, attentional LSTM decoder)."""

import os

# oneDNN (torch's CPU kernels) caches a compiled primitive per input shape, 1024 of them by default. Length-bucketed
# batches have hundreds of shapes, and under bf16 the cached primitives kept growing training's memory, about
# 4 MB a step, past 4.5 GB in half an hour. A smaller cache bounds memory but recompiles more: 16 kept 1.1 GB but
# trained about 20% slower than 1024; 256 is between (1.7 GB after 200 steps).
# oneDNN reads this when it first needs the cache, so setting it here, before any kernel runs, is enough.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "256")

__version__ = "0.1.0"
