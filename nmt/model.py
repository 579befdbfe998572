"""The encoder–decoder: built from a `ModelConfig` alone, so a model file rebuilds it."""

from __future__ import annotations

import torch
from torch import nn

from nmt.batch import Batch
from nmt.config import ModelConfig
from nmt.errors import NMTError
from nmt.fastpath import PRECISIONS
from nmt.loss import token_loss_sum
from nmt.decoder import Decoder, DecoderState
from nmt.encoder import Encoder
from nmt.tokenizer import PAD


class Seq2Seq(nn.Module):
    def __init__(self, cfg: ModelConfig, output_ids: torch.Tensor | None = None, init: bool = True):
        """`output_ids` (cfg.out_vocab_size,): the pieces the output layer covers, sorted, PAD, UNK, BOS and EOS
        first (see `nmt.train.output_pieces`); left out, they are to be loaded with the weights. `init` False skips the
        initialisation, for weights about to be loaded (70 ms of a translation's start-up)."""
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg.src_vocab_size, cfg.emb_size, cfg.enc_hidden, cfg.enc_layers, cfg.dropout, cfg.emb_dropout)
        self.decoder = Decoder(
            cfg.tgt_vocab_size, cfg.emb_size, cfg.dec_hidden, cfg.dec_layers, self.encoder.output_size,
            cfg.attention, cfg.input_feeding, cfg.dropout, cfg.emb_dropout, cfg.tie_embeddings, cfg.out_vocab_size,
        )
        if output_ids is not None:
            if self.decoder.output_ids is None or output_ids.shape != self.decoder.output_ids.shape:
                raise ValueError(f"output_ids: {tuple(output_ids.shape)} pieces for an output layer of {cfg.out_vocab_size}")
            self.decoder.output_ids.copy_(output_ids)
        if init:
            self.reset_parameters()

    @property
    def output_ids(self) -> torch.Tensor | None:
        """(V_out,) the piece id of each column of `step`'s log-probabilities; None when column j is piece j."""
        return self.decoder.output_ids

    def reset_parameters(self) -> None:
        for name, p in self.named_parameters():
            if "embed" in name:
                nn.init.normal_(p, std=self.cfg.emb_size ** -0.5)
            elif "rnn" in name and "bias" in name:
                # Forget-gate bias 1 (gates are ordered i, f, g, o), others 0: gradients flow early in training.
                nn.init.zeros_(p)
                hidden = p.numel() // 4
                p.data[hidden : 2 * hidden] = 0.5  # bias_ih + bias_hh: 1 in all
            elif p.dim() == 2 and "rnn" not in name:
                nn.init.xavier_uniform_(p)
            elif "bias" in name:
                nn.init.zeros_(p)
        with torch.no_grad():
            self.encoder.embed.weight[PAD].zero_()
            self.decoder.embed.weight[PAD].zero_()

    def encode(self, src: torch.Tensor, src_lens: torch.Tensor) -> DecoderState:
        """src (B, S), src_lens (B,) → the decoder's initial state."""
        memory, final = self.encoder(src, src_lens)
        return self.decoder.init_state(memory, final, src != PAD)

    def forward(self, batch: Batch, label_smoothing: float | None = None) -> torch.Tensor:
        """Teacher-forced logits (B, T, V_out) for `batch.tgt_out` (whose pieces are columns
        `self.decoder.columns(batch.tgt_out)`); given `label_smoothing`, the summed loss instead
        (`loss_sum`; through `forward`, so that a DistributedDataParallel wrapper sees the call)."""
        if label_smoothing is not None:
            return self.loss_sum(batch, label_smoothing)
        state = self.encode(batch.src, batch.src_lens)
        vectors, _, _ = self.decoder.run(batch.tgt_in, state)
        return self.decoder.logits(vectors)

    def loss_sum(self, batch: Batch, label_smoothing: float = 0.0, chunk: int = 512) -> torch.Tensor:
        """`token_loss_sum(self(batch), batch.tgt_out, label_smoothing)`, computed without the (B, T, V) logits:
        the output layer and the loss run on the real (non-PAD) target positions only, `chunk` at a time.
        Besides skipping padding, this keeps every tensor small: with the whole logits, each step allocated
        and freed several tensors of tens of MB, which the C allocator maps and unmaps afresh each time (page
        faults took 15% of training's CPU time on 2 cores)."""
        state = self.encode(batch.src, batch.src_lens)
        vectors, _, _ = self.decoder.run(batch.tgt_in, state)  # (B, T, H)
        real = batch.tgt_out != PAD  # (B, T)
        vectors, target = vectors[real], self.decoder.columns(batch.tgt_out[real])  # (N, H), (N,)
        weight = self.decoder.output_weight()  # (V_out, E): gathered once, not once per chunk
        return sum(
            token_loss_sum(self.decoder.logits(v, weight), t, label_smoothing)
            for v, t in zip(vectors.split(chunk), target.split(chunk))
        )

    def step(self, prev: torch.Tensor, state: DecoderState) -> tuple[torch.Tensor, DecoderState, torch.Tensor]:
        """prev (N,) last tokens → log-probabilities (N, V_out) of the next (column j is piece `output_ids[j]`),
        the new state, attention (N, S)."""
        if self.training:  # with dropout, through the training path
            vectors, state, weights = self.decoder.run(prev.unsqueeze(1), state)
            logits, weights = self.decoder.logits(vectors[:, 0]), weights[:, 0]
            return torch.log_softmax(logits.float(), dim=-1), state, weights
        logits, state, weights = self.decoder.step(prev, state)  # logits fp32, new: overwritten in place
        return torch.log_softmax(logits, dim=-1, out=logits), state, weights

    def set_precision(self, precision: str) -> "Seq2Seq":
        """The precision of decoding's matrix multiplies: fp32, bf16 or int8 (dynamic, CPU only); see nmt.fastpath
        for the decoder and nmt.encoder for the encoder."""
        if precision not in PRECISIONS:
            raise NMTError(f"precision {precision!r}: not one of {', '.join(PRECISIONS)}")
        if precision == "int8" and self.decoder.embed.weight.device.type != "cpu":
            raise NMTError("precision int8: torch's dynamic int8 kernels run on the CPU only; use bf16 on a GPU")
        self.encoder.precision = self.decoder.precision = precision
        return self

    def prepare(self) -> None:
        """Build what decoding computes from the weights once (the decoder's step layout, the int8 encoder) now, so
        that threads decoding side by side share it rather than race to build it."""
        self.decoder.step_layout()
        if self.encoder.precision == "int8":
            self.encoder.int8_rnn()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise NMTError(f"device {name!r}: not a device (auto, cpu, cuda, cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise NMTError(f"device {name!r}: asked for, but torch sees no CUDA device")
    return device
