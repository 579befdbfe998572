"""The encoder–decoder: built from a `ModelConfig` alone, so a model file rebuilds it."""

from __future__ import annotations

import torch
from torch import nn

from nmt.batch import Batch
from nmt.config import ModelConfig
from nmt.decoder import Decoder, DecoderState
from nmt.encoder import Encoder
from nmt.errors import NMTError
from nmt.fastpath import PRECISIONS
from nmt.loss import rdrop_loss_sum, token_loss_sum
from nmt.tokenizer import PAD
from nmt.vocab import OutputVocab


class Seq2Seq(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab: OutputVocab | None = None, init: bool = True):
        """`vocab`: the output layer's pieces (default: every target piece). `init` False skips the
        initialisation, for weights about to be loaded (70 ms of a translation's start-up)."""
        super().__init__()
        self.cfg = cfg
        vocab = OutputVocab(cfg.tgt_vocab_size) if vocab is None else vocab
        if vocab.size != cfg.tgt_vocab_size:
            raise ValueError(
                f"output vocabulary of {vocab.size} pieces for a target vocabulary of {cfg.tgt_vocab_size}"
            )
        languages = 0 if vocab.languages is None else vocab.languages.size(0)
        if languages != len(cfg.tgt_langs):
            raise ValueError(f"output vocabulary for {languages} languages, model for {cfg.tgt_langs}")
        self.encoder = Encoder(
            cfg.src_vocab_size,
            cfg.emb_size,
            cfg.enc_hidden,
            cfg.enc_layers,
            cfg.dropout,
            cfg.emb_dropout,
            cfg.enc_residual,
        )
        self.decoder = Decoder(
            cfg.tgt_vocab_size,
            cfg.emb_size,
            cfg.dec_hidden,
            cfg.dec_layers,
            self.encoder.output_size,
            cfg.attention,
            cfg.input_feeding,
            cfg.dropout,
            cfg.emb_dropout,
            cfg.tie_embeddings,
            vocab,
        )
        if cfg.share_embeddings:
            if cfg.src_vocab_size != cfg.tgt_vocab_size:
                sizes = f"{cfg.src_vocab_size} source and {cfg.tgt_vocab_size} target pieces"
                raise ValueError(f"shared embeddings for {sizes}")
            self.encoder.embed = self.decoder.embed
            # The weights (state_dict, model files, checkpoints) hold the matrix once, as the decoder's.
            self.register_state_dict_post_hook(_drop_shared)
            self.register_load_state_dict_pre_hook(_restore_shared)
        if init:
            self.reset_parameters()

    @property
    def vocab(self) -> OutputVocab:
        """The output layer's pieces: column j of `step`'s log-probabilities is piece `vocab.to_pieces(j)`."""
        return self.decoder.vocab

    @property
    def device(self) -> torch.device:
        return self.decoder.embed.weight.device

    def reset_parameters(self) -> None:
        for name, p in self.named_parameters():
            if "embed" in name:
                nn.init.normal_(p, std=self.cfg.emb_size**-0.5)
            elif "rnn" in name and "bias" in name:
                # Forget-gate bias 1 (gates are ordered i, f, g, o), others 0: gradients flow early in
                # training.
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

    def logits(self, batch: Batch) -> torch.Tensor:
        """Teacher-forced logits (B, T, V_out) for `batch.tgt_out`, whose pieces are columns
        `self.vocab.columns(batch.tgt_out)`."""
        state = self.encode(batch.src, batch.src_lens)
        vectors, _, _ = self.decoder.run(batch.tgt_in, state)
        return self.decoder.logits(vectors)

    def forward(
        self, batch: Batch, label_smoothing: float = 0.0, rdrop: float = 0.0, chunk: int = 512
    ) -> torch.Tensor:
        """The loss summed over the target tokens:
        `token_loss_sum(self.logits(batch), columns, label_smoothing)`, computed without the (B, T, V) logits
        (training calls the model, so that a DistributedDataParallel wrapper sees the call): the output layer
        and the loss run on the real (non-PAD) target positions only, `chunk` at a time.
        Besides skipping padding, this keeps every tensor small: with the whole logits, each step allocated
        and freed several tensors of tens of MB, which the C allocator maps and unmaps afresh each time (page
        faults took 15% of training's CPU time on 2 cores).
        `rdrop` > 0: the batch runs twice (as one batch of 2B, so the dropout masks differ) and the loss is
        `rdrop_loss_sum` of the two passes with alpha `rdrop`, still summed over the batch's own tokens."""
        if rdrop:
            batch = batch.doubled()
        if self.training and self.cfg.word_dropout:  # after doubling: R-Drop's passes drop different words
            batch = batch.word_dropped(self.cfg.word_dropout, tagged=bool(self.cfg.directions))
        state = self.encode(batch.src, batch.src_lens)
        vectors, _, _ = self.decoder.run(batch.tgt_in, state)  # (B, T, H)
        real = batch.tgt_out != PAD  # (B, T)
        vectors, target = vectors[real], self.vocab.columns(batch.tgt_out[real])  # (N, H), (N,)
        weight = self.decoder.output_weight()  # (V_out, E): gathered once, not once per chunk
        if not rdrop:
            return sum(
                token_loss_sum(self.decoder.logits(v, weight), t, label_smoothing)
                for v, t in zip(vectors.split(chunk), target.split(chunk))
            )
        # Row-major masking keeps the order: the first half's tokens, then the same tokens of the second.
        half = vectors.size(0) // 2
        first, second = vectors[:half].split(chunk), vectors[half:].split(chunk)
        target = target[:half].split(chunk)
        return sum(
            rdrop_loss_sum(
                self.decoder.logits(a, weight), self.decoder.logits(b, weight), t, label_smoothing, rdrop
            )
            for a, b, t in zip(first, second, target)
        )

    def step(
        self, prev: torch.Tensor, state: DecoderState, language: int | None = None
    ) -> tuple[torch.Tensor, DecoderState, torch.Tensor]:
        """Decoding: prev (N,) last pieces → log-probabilities (N, V_out) of the next (column j is piece
        `vocab.to_pieces(j)`), the new state, attention (N, S). With `language` (a multilingual model's target
        language index), over that language's columns only (N, V_lang): `vocab.for_language(language)`'s."""
        logits, state, weights = self.decoder.step(prev, state, language)  # fp32, new: overwritten in place
        return torch.log_softmax(logits, dim=-1, out=logits), state, weights

    def set_precision(self, precision: str) -> "Seq2Seq":
        """The precision of decoding's matrix multiplies: fp32, bf16 or int8 (dynamic, CPU only); see
        nmt.fastpath for the decoder and nmt.encoder for the encoder."""
        if precision not in PRECISIONS:
            raise NMTError(f"precision {precision!r}: not one of {', '.join(PRECISIONS)}")
        if precision == "int8" and self.decoder.embed.weight.device.type != "cpu":
            raise NMTError(
                "precision int8: torch's dynamic int8 kernels run on the CPU only; use bf16 on a GPU"
            )
        self.encoder.precision = self.decoder.precision = precision
        return self

    def prepare(self) -> None:
        """Build what decoding computes from the weights once (the decoder's step layout, the encoder's bf16
        or int8 LSTM) now, so that threads decoding side by side share it rather than race to build it."""
        self.decoder.step_layout()
        if self.encoder.uses_frozen(self.device):
            self.encoder.frozen_rnn()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


SHARED, SHARED_WITH = "encoder.embed.weight", "decoder.embed.weight"  # model.share_embeddings


def _drop_shared(module: nn.Module, state: dict, prefix: str, local_metadata: dict) -> None:
    state.pop(prefix + SHARED, None)


def _restore_shared(module: nn.Module, state: dict, prefix: str, *args) -> None:
    if prefix + SHARED_WITH in state:
        state.setdefault(prefix + SHARED, state[prefix + SHARED_WITH])
