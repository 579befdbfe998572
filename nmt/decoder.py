"""LSTM decoder with attention, input feeding and a bridge from the encoder's final states.

One step: the LSTM reads the previous target embedding (and, with input feeding, the previous attentional
vector); its top output queries the attention; the attentional vector tanh(W [h; context]) predicts the next
token (Luong et al. 2015). Without input feeding the LSTM has no step-to-step dependency outside itself, so
teacher-forced training runs the whole target sequence through one `nn.LSTM` call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from nmt.attention import Attention
from nmt.dropout import Dropout
from nmt.fastpath import ROWS, StepWeights, step_weights, weights_key
from nmt.tokenizer import PAD
from nmt.vocab import OutputVocab


@dataclass
class DecoderState:
    """Everything a decoding step needs, batch-first except the LSTM states (torch's layout).

    The recurrent tensors have a row per hypothesis (N), the source-side ones a row per sentence (B): N is a
    multiple of B and each sentence's N / B hypotheses are consecutive rows. Beam search's K hypotheses of a
    sentence thus share one copy of its encoder outputs and attend to it in one matrix multiply."""

    h: torch.Tensor  # (L, N, H)
    c: torch.Tensor  # (L, N, H)
    feed: torch.Tensor  # (N, H) previous attentional vector (zeros before the first step)
    memory: torch.Tensor  # (B, S, M) encoder outputs
    keys: torch.Tensor  # (B, S, H) attention keys, projected once per sentence
    mask: torch.Tensor  # (B, S) True on real source tokens

    def select(self, rows: torch.Tensor, sources: torch.Tensor | None = None) -> "DecoderState":
        """Hypotheses `rows` (N',) and sentences `sources` (B',): for beam expansion, reordering and dropping
        finished sentences. `sources` None keeps the sentences as they are (rows must then pick, for each
        sentence in turn, N' / B of its own hypotheses); otherwise row i of the result is a hypothesis of
        sentence `sources[i // (N' / B')]`."""
        h, c, feed = (
            self.h.index_select(1, rows),
            self.c.index_select(1, rows),
            self.feed.index_select(0, rows),
        )
        if sources is None:
            return DecoderState(h, c, feed, self.memory, self.keys, self.mask)
        return DecoderState(
            h,
            c,
            feed,
            self.memory.index_select(0, sources),
            self.keys.index_select(0, sources),
            self.mask.index_select(0, sources),
        )


class Decoder(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        emb_size: int,
        hidden: int,
        layers: int,
        memory_size: int,
        attention: str,
        input_feeding: bool,
        dropout: float,
        emb_dropout: float,
        tie_embeddings: bool,
        vocab: OutputVocab,
    ):
        """The output layer has a row for each piece of `vocab` (its column in the logits)."""
        super().__init__()
        self.layers, self.hidden, self.input_feeding = layers, hidden, input_feeding
        self.embed = nn.Embedding(vocab_size, emb_size, padding_idx=PAD)
        self.emb_dropout = Dropout(emb_dropout)
        self.rnn = nn.LSTM(
            emb_size + (hidden if input_feeding else 0),
            hidden,
            num_layers=layers,
            batch_first=True,
            dropout=dropout if layers > 1 else 0.0,
        )
        self.attention = Attention(attention, hidden, memory_size)
        self.combine = nn.Linear(hidden + memory_size, hidden)
        self.dropout = Dropout(dropout)
        # Bridge: the encoder's last-layer final state initialises every decoder layer.
        self.bridge_h = nn.Linear(memory_size, layers * hidden)
        self.bridge_c = nn.Linear(memory_size, layers * hidden)
        self.vocab = vocab
        rows = vocab.rows
        self.tie_embeddings = tie_embeddings
        if tie_embeddings:
            # Logits = embedding matrix (the vocabulary's rows) × attentional vector, through a projection
            # when the sizes differ.
            self.out_proj = nn.Linear(hidden, emb_size, bias=False) if hidden != emb_size else nn.Identity()
            self.out_bias = nn.Parameter(torch.zeros(rows))
        else:
            self.output = nn.Linear(hidden, rows)
        self.precision = "fp32"  # of decoding's matrix multiplies (nmt.fastpath)
        self._step_cache: tuple | None = None  # (weights' versions, precision, StepWeights)

    def init_state(
        self, memory: torch.Tensor, final: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor
    ) -> DecoderState:
        """memory (B, S, M), final (h, c) each (enc_layers, B, M), mask (B, S)."""
        batch = memory.size(0)

        def bridge(linear: nn.Linear, state: torch.Tensor) -> torch.Tensor:
            # (B, M) → (B, L*H) → (L, B, H)
            x = state[-1]
            if self.precision != "fp32":  # rows padded as FrozenLinear's: each row summed in one order, any B
                x = F.pad(x, (0, 0, 0, -batch % ROWS))
            return (
                torch.tanh(linear(x)[:batch])
                .view(batch, self.layers, self.hidden)
                .transpose(0, 1)
                .contiguous()
            )

        feed = memory.new_zeros(batch, self.hidden)
        keys = self.attention.precompute(memory)
        return DecoderState(
            bridge(self.bridge_h, final[0]), bridge(self.bridge_c, final[1]), feed, memory, keys, mask
        )

    def output_weight(self) -> torch.Tensor:
        """The output layer's matrix (V_out, E) tied or (V_out, H) not."""
        return self.vocab.select(self.embed.weight) if self.tie_embeddings else self.output.weight

    def folded_output(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The output layer as one matrix (V_out, H) and bias (V_out,): the tied embedding and its projection
        multiplied out, for decoding."""
        if not self.tie_embeddings:
            return self.output.weight, self.output.bias
        weight = self.output_weight()  # (V_out, E)
        return (
            weight if isinstance(self.out_proj, nn.Identity) else weight @ self.out_proj.weight
        ), self.out_bias

    def logits(self, vectors: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Attentional vectors (..., H) → logits (..., V_out); `weight` is `output_weight()`, given when the
        caller computes several logits with the same weights."""
        weight = self.output_weight() if weight is None else weight
        if self.tie_embeddings:
            return F.linear(self.out_proj(vectors), weight, self.out_bias)
        return F.linear(vectors, weight, self.output.bias)

    def _context(self, query: torch.Tensor, state: DecoderState) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries (N, T, H), N rows of B sentences → contexts (N, T, M), attention weights (N, T, S).
        Each sentence's rows query its memory together: (B, N / B * T) queries in one batched product."""
        n, t, _ = query.shape
        grouped = query.reshape(state.memory.size(0), -1, query.size(-1))  # (B, N / B * T, H)
        context, weights = self.attention(grouped, state.keys, state.memory, state.mask)
        return context.view(n, t, -1), weights.view(n, t, -1)

    def _attend(
        self, out: torch.Tensor, state: DecoderState, combine: Callable
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """LSTM outputs (N, T, H) → attentional vectors tanh(W [out; context]) (N, T, H) and attention weights
        (N, T, S): the one statement of this part of the step, for training (`combine` the layer) and decoding
        (`combine` its step layout)."""
        context, weights = self._context(out, state)  # (N, T, M), (N, T, S)
        vectors = torch.tanh(combine(torch.cat([out, context], dim=-1)))  # (N, T, H)
        return self.dropout(vectors), weights

    def run(
        self, tgt_in: torch.Tensor, state: DecoderState
    ) -> tuple[torch.Tensor, DecoderState, torch.Tensor]:
        """tgt_in (N, T) → attentional vectors (N, T, H), the state after step T, weights (N, T, S)."""
        emb = self.emb_dropout(self.embed(tgt_in))  # (N, T, E)
        if not self.input_feeding:
            out, (h, c) = self.rnn(emb, (state.h, state.c))  # whole sequence in one call
            vectors, weights = self._attend(out, state, self.combine)
            return vectors, DecoderState(h, c, vectors[:, -1], state.memory, state.keys, state.mask), weights
        h, c, feed = state.h, state.c, state.feed
        all_vectors, all_weights = [], []
        for t in range(emb.size(1)):
            x = torch.cat([emb[:, t], feed], dim=-1).unsqueeze(1)  # (N, 1, E + H)
            out, (h, c) = self.rnn(x, (h, c))  # out (N, 1, H)
            vector, weights = self._attend(out, state, self.combine)  # (N, 1, H), (N, 1, S)
            feed = vector.squeeze(1)
            all_vectors.append(vector)
            all_weights.append(weights)
        new_state = DecoderState(h, c, feed, state.memory, state.keys, state.mask)
        return torch.cat(all_vectors, 1), new_state, torch.cat(all_weights, 1)

    def step_layout(self) -> StepWeights:
        """The step layout of the current weights, rebuilt when a weight changed (training) or moved."""
        key = weights_key(self) + (self.precision,)
        if self._step_cache is None or self._step_cache[0] != key:
            rows = (
                None
                if self.vocab.pieces is None
                else self.vocab.columns(torch.arange(self.vocab.size, device=self.embed.weight.device))
            )
            embeddings = self.vocab.select(self.embed.weight)  # (V_out, E)
            output, languages = self.folded_output(), self.vocab.languages
            layout = step_weights(self.rnn, embeddings, rows, self.combine, output, self.precision, languages)
            self._step_cache = (key, layout)
        return self._step_cache[1]

    def step(
        self, prev: torch.Tensor, state: DecoderState, language: int | None = None
    ) -> tuple[torch.Tensor, DecoderState, torch.Tensor]:
        """Decoding: prev (N,) last pieces → logits (N, V_out), the next state, attention (N, S); with
        `language`, a multilingual decoder's logits of that target language's columns only (N, V_lang).

        The function `run` computes on one token, with the LSTM and output layer in `nmt.fastpath`'s step
        layout, for `prev` among the output layer's pieces (all that search feeds back; another piece reads
        UNK's row of the gate table)."""
        w = self.step_layout()
        h, c = w.lstm(prev, state.h, state.c, state.feed if self.input_feeding else None)  # (L, N, H) each

        def combine(x: torch.Tensor) -> torch.Tensor:  # (N, 1, H + M) → (N, 1, H)
            return w.combine(x.squeeze(1)).unsqueeze(1)

        vector, weights = self._attend(h[-1].unsqueeze(1), state, combine)  # (N, 1, H), (N, 1, S)
        vector = vector.squeeze(1)  # (N, H)
        new_state = DecoderState(h, c, vector, state.memory, state.keys, state.mask)
        output = w.output if language is None else w.by_language[language]
        return output(vector), new_state, weights[:, 0]
