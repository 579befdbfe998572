"""LSTM decoder with attention, input feeding and a bridge from the encoder's final states.

One step: the LSTM reads the previous target embedding (and, with input feeding, the previous attentional
vector); its top output queries the attention; the attentional vector tanh(W [h; context]) predicts the next
token (Luong et al. 2015). Without input feeding the LSTM has no step-to-step dependency outside itself, so
teacher-forced training runs the whole target sequence through one `nn.LSTM` call.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from nmt.attention import Attention
from nmt.fastpath import StepWeights, lstm_cell, step_weights, weights_key
from nmt.tokenizer import PAD, UNK


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
        h, c, feed = self.h.index_select(1, rows), self.c.index_select(1, rows), self.feed.index_select(0, rows)
        if sources is None:
            return DecoderState(h, c, feed, self.memory, self.keys, self.mask)
        return DecoderState(
            h, c, feed, self.memory.index_select(0, sources), self.keys.index_select(0, sources),
            self.mask.index_select(0, sources),
        )


class Decoder(nn.Module):
    def __init__(
        self, vocab_size: int, emb_size: int, hidden: int, layers: int, memory_size: int, attention: str,
        input_feeding: bool, dropout: float, emb_dropout: float, tie_embeddings: bool, out_vocab_size: int = 0,
    ):
        """`out_vocab_size` > 0: the output layer has that many rows, one per piece of `output_ids` (set by the
        caller; loading a model file fills it), not one per piece of the vocabulary."""
        super().__init__()
        self.layers, self.hidden, self.input_feeding = layers, hidden, input_feeding
        self.embed = nn.Embedding(vocab_size, emb_size, padding_idx=PAD)
        self.emb_dropout = nn.Dropout(emb_dropout)
        self.rnn = nn.LSTM(
            emb_size + (hidden if input_feeding else 0), hidden, num_layers=layers, batch_first=True,
            dropout=dropout if layers > 1 else 0.0,
        )
        self.attention = Attention(attention, hidden, memory_size)
        self.combine = nn.Linear(hidden + memory_size, hidden)
        self.dropout = nn.Dropout(dropout)
        # Bridge: the encoder's last-layer final state initialises every decoder layer.
        self.bridge_h = nn.Linear(memory_size, layers * hidden)
        self.bridge_c = nn.Linear(memory_size, layers * hidden)
        # Column j of the logits is piece output_ids[j] (sorted, so PAD, UNK, BOS and EOS keep their ids as
        # columns); None: column j is piece j.
        self.register_buffer("output_ids", torch.arange(out_vocab_size) if out_vocab_size else None)
        rows = out_vocab_size or vocab_size
        self.tie_embeddings = tie_embeddings
        if tie_embeddings:
            # Logits = embedding matrix (its output_ids rows) × attentional vector, through a projection when
            # the sizes differ.
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
            return torch.tanh(linear(state[-1])).view(batch, self.layers, self.hidden).transpose(0, 1).contiguous()

        feed = memory.new_zeros(batch, self.hidden)
        keys = self.attention.precompute(memory)
        return DecoderState(bridge(self.bridge_h, final[0]), bridge(self.bridge_c, final[1]), feed, memory, keys, mask)

    def output_weight(self) -> torch.Tensor:
        """The output layer's matrix (V_out, E) tied or (V_out, H) not."""
        if not self.tie_embeddings:
            return self.output.weight
        return self.embed.weight if self.output_ids is None else self.embed.weight.index_select(0, self.output_ids)

    def logits(self, vectors: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """Attentional vectors (..., H) → logits (..., V_out); `weight` is `output_weight()`, given when the caller
        computes several logits with the same weights."""
        weight = self.output_weight() if weight is None else weight
        if self.tie_embeddings:
            return F.linear(self.out_proj(vectors), weight, self.out_bias)
        return F.linear(vectors, weight, self.output.bias)

    def columns(self, tokens: torch.Tensor) -> torch.Tensor:
        """Piece ids (any shape) → their columns in the logits; a piece outside the output vocabulary (unseen in
        training) gets UNK's."""
        if self.output_ids is None:
            return tokens
        column = torch.full((self.embed.num_embeddings,), UNK, dtype=torch.long, device=tokens.device)
        column[self.output_ids] = torch.arange(self.output_ids.numel(), device=tokens.device)
        return column[tokens]

    def _context(self, query: torch.Tensor, state: DecoderState) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries (N, T, H), N rows of B sentences → contexts (N, T, M), attention weights (N, T, S).
        Each sentence's rows query its memory together: (B, N / B * T) queries in one batched product."""
        n, t, _ = query.shape
        grouped = query.reshape(state.memory.size(0), -1, query.size(-1))  # (B, N / B * T, H)
        context, weights = self.attention(grouped, state.keys, state.memory, state.mask)
        return context.view(n, t, -1), weights.view(n, t, -1)

    def _attend(self, out: torch.Tensor, state: DecoderState) -> tuple[torch.Tensor, torch.Tensor]:
        """LSTM outputs (N, T, H) → attentional vectors (N, T, H), attention weights (N, T, S)."""
        context, weights = self._context(out, state)  # (N, T, M), (N, T, S)
        vectors = torch.tanh(self.combine(torch.cat([out, context], dim=-1)))  # (N, T, H)
        return self.dropout(vectors), weights

    def run(self, tgt_in: torch.Tensor, state: DecoderState) -> tuple[torch.Tensor, DecoderState, torch.Tensor]:
        """tgt_in (N, T) → attentional vectors (N, T, H), the state after step T, weights (N, T, S)."""
        emb = self.emb_dropout(self.embed(tgt_in))  # (N, T, E)
        if not self.input_feeding:
            out, (h, c) = self.rnn(emb, (state.h, state.c))  # whole sequence in one call
            vectors, weights = self._attend(out, state)
            return vectors, DecoderState(h, c, vectors[:, -1], state.memory, state.keys, state.mask), weights
        h, c, feed = state.h, state.c, state.feed
        all_vectors, all_weights = [], []
        for t in range(emb.size(1)):
            x = torch.cat([emb[:, t], feed], dim=-1).unsqueeze(1)  # (N, 1, E + H)
            out, (h, c) = self.rnn(x, (h, c))  # out (N, 1, H)
            vector, weights = self._attend(out, state)  # (N, 1, H), (N, 1, S)
            feed = vector.squeeze(1)
            all_vectors.append(vector)
            all_weights.append(weights)
        new_state = DecoderState(h, c, feed, state.memory, state.keys, state.mask)
        return torch.cat(all_vectors, 1), new_state, torch.cat(all_weights, 1)

    def step_layout(self) -> StepWeights:
        """The step layout of the current weights, rebuilt when a weight changed (training) or moved."""
        key = weights_key(self) + (self.precision,)
        if self._step_cache is None or self._step_cache[0] != key:
            self._step_cache = (key, step_weights(self, self.precision))
        return self._step_cache[1]

    def step(self, prev: torch.Tensor, state: DecoderState) -> tuple[torch.Tensor, DecoderState, torch.Tensor]:
        """Decoding (eval mode): prev (N,) last tokens → logits (N, V_out), the next state, attention (N, S).

        Same function as `run` on one token, computed with `nmt.fastpath`'s layout, for `prev` among the output
        layer's pieces (all that search feeds back; another piece reads UNK's row of the gate table)."""
        w = self.step_layout()
        rows = prev if w.row is None else w.row[prev]  # (N,) rows of the gate table
        below = state.feed if self.input_feeding else None  # (N, H) the input beside the embedding
        hs, cs = [], []
        for layer, (linear, bias) in enumerate(zip(w.layers, w.layer_bias)):
            own = state.h[layer]  # (N, H)
            gates = linear(own if below is None else torch.cat([below, own], dim=1))  # (N, 4H)
            gates = gates + (w.table[rows] if layer == 0 else bias)
            h, c = lstm_cell(gates, state.c[layer])
            hs.append(h)
            cs.append(c)
            below = h
        context, weights = self._context(below.unsqueeze(1), state)  # (N, 1, M), (N, 1, S)
        vector = torch.tanh(w.combine(torch.cat([below, context[:, 0]], dim=-1)))  # (N, H)
        new_state = DecoderState(torch.stack(hs), torch.stack(cs), vector, state.memory, state.keys, state.mask)
        return w.output(vector), new_state, weights[:, 0]
