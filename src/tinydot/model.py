"""tinyDOT: a tiny decoder-only transformer over pen steps, conditioned on the digit class.

What it models, exactly. A digit is a start point (x, y) and pen steps (dx, dy, pen). The start
point is treated as a first move from the origin (0, 0), so a sequence of L steps is L + 1 moves
m_0..m_L, and the model factorizes

    p(m_0..m_L | digit) = prod_t p(pen_t | <t) * p(dx_t | <t)^[pen_t = draw] * p(dy_t | dx_t, <t)^[pen_t = draw]

with categorical distributions: pen in {draw, end-of-stroke, end-of-digit} (the two end markers
never move the pen, so they carry no dx, dy), and dx, dy in -max_move..max_move. This is an exact
discrete likelihood; the headline number is its negative log2 over the pen steps m_1..m_L, in
bits per step (the start point's bits are reported separately).

Inputs at position t are the previous move m_{t-1} (a BOS marker at t = 0) and, as a convenience
the network could compute itself, the absolute pen position after it; every position also gets
the digit class embedding. Pre-norm blocks, learned positional embeddings, causal attention with
`n_heads` heads (one by default) of width `d_head` (d_model // n_heads unless heads were removed).

The text domain (`TextDOT`, `cfg.domain == "text"`) runs the same trunk (`Decoder`: the same
blocks, attention, MLP and final LayerNorm) over word ids: a sentence's inputs are <eos> w_1..w_L
and its targets w_1..w_L <eos> (`tinydot.data.text.Sentences.padded`), embedded as word + learned
position, and the next word is a softmax over the vocabulary. The softmax is *tied* by default:
its weight matrix is the input word embedding (Press & Wolf 2017; Inan et al. 2017), without an
output bias, as in GPT-2. On PTB a 10k x d_model output matrix would otherwise be the largest
tensor of a tiny model, and tying is what small PTB language models do: it saves those weights and
lowers perplexity. `tie_embeddings=False` gives the softmax its own `head` (a Linear with bias).
`build_model(cfg)` picks the class from the config, so a checkpoint alone rebuilds either kind.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tinydot.config import ACTIVATIONS, ModelConfig
from tinydot.data.batching import (FRAME_SLOTS, IGNORE, IN_DX, IN_DY, IN_PEN, IN_X, IN_Y, OUT_DX, OUT_DY, OUT_PEN,
                                   PEN_STATES)


# cfg.activation -> (module, function). Exact GELU is the default; ReLU is ~8x cheaper on CPU
# (benchmarks/train_throughput.py) and changes the model, so it is a choice, never a silent switch.
NONLINEARITIES = {"gelu": (nn.GELU, F.gelu), "relu": (nn.ReLU, F.relu)}
assert tuple(NONLINEARITIES) == ACTIVATIONS


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.d_head = cfg.n_heads, cfg.head_width
        inner = cfg.n_heads * cfg.head_width  # d_model, unless heads were removed
        self.qkv = nn.Linear(cfg.d_model, 3 * inner)
        self.proj = nn.Linear(inner, cfg.d_model)

    def forward(self, x, past=None):
        B, T, _ = x.shape
        inner = self.n_heads * self.d_head
        q, k, v = self.qkv(x).split(inner, dim=2)
        q, k, v = (t.view(B, T, self.n_heads, self.d_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        if past is not None:  # incremental decoding: attend to every cached position too
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=past is None)
        return self.proj(y.transpose(1, 2).reshape(B, T, inner)), (k, v)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(nn.Linear(cfg.d_model, cfg.d_mlp), NONLINEARITIES[cfg.activation][0](),
                                 nn.Linear(cfg.d_mlp, cfg.d_model))

    def forward(self, x, past=None):
        a, present = self.attn(self.ln1(x), past)
        x = x + a
        return x + self.mlp(self.ln2(x)), present


class Decoder(nn.Module):
    """The trunk both domains share: pre-norm causal blocks and a final LayerNorm.

    A subclass creates its input embeddings, then `_add_trunk()`, then its heads, then calls
    `_init_weights()`: this order fixes the parameter order, and with it the seeded initial weights.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg

    def _add_trunk(self):
        self.blocks = nn.ModuleList(Block(self.cfg) for _ in range(self.cfg.n_layers))
        self.ln_f = nn.LayerNorm(self.cfg.d_model)

    def _init_weights(self):
        self.apply(self._init)
        for name, p in self.named_parameters():  # GPT-2: scale residual writes by depth
            if name.endswith(("attn.proj.weight", "mlp.2.weight")):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * self.cfg.n_layers))

    @staticmethod
    def _init(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def _positions(self, T: int, offset: int, device) -> torch.Tensor:
        if offset + T > self.cfg.max_len:
            raise ValueError(f"sequence of {offset + T} positions exceeds max_len {self.cfg.max_len}")
        return torch.arange(offset, offset + T, device=device)

    def _trunk(self, x, past=None):
        """Embedded inputs (B, T, d) -> final hidden states (B, T, d) and the per-layer key/value caches."""
        presents = []
        for i, block in enumerate(self.blocks):
            x, present = block(x, None if past is None else past[i])
            presents.append(present)
        return self.ln_f(x), presents

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


class TinyDOT(Decoder):
    """tinyDOT over pen steps, conditioned on the digit class (`cfg.domain == "strokes"`)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        d, moves = cfg.d_model, 2 * cfg.max_move + 1
        # input embeddings, summed
        self.emb_dx = nn.Embedding(moves, d)
        self.emb_dy = nn.Embedding(moves, d)
        self.emb_pen = nn.Embedding(PEN_STATES + 1, d)  # + BOS
        self.emb_x = nn.Embedding(FRAME_SLOTS, d)
        self.emb_y = nn.Embedding(FRAME_SLOTS, d)
        self.emb_pos = nn.Embedding(cfg.max_len, d)
        self.emb_class = nn.Embedding(cfg.n_classes, d)
        self._add_trunk()
        # output heads: pen, dx, and dy given dx (through a small conditioning layer)
        self.head_pen = nn.Linear(d, PEN_STATES)
        self.head_dx = nn.Linear(d, moves)
        self.dy_given_dx = nn.Embedding(moves, d)
        self.dy_in = nn.Linear(d, d)
        self.head_dy = nn.Linear(d, moves)
        self._nonlinearity = NONLINEARITIES[cfg.activation][1]
        self._init_weights()

    def forward(self, inputs, labels, past=None, offset: int = 0):
        """(hidden states (B, T, d), per-layer key/value caches) for integer `inputs` (B, T, 5) and
        digit `labels` (B,).

        With `past` (a list of per-layer key/value caches) the inputs continue a sequence whose
        first `offset` positions are cached.
        """
        pos = self._positions(inputs.shape[1], offset, inputs.device)
        x = (self.emb_dx(inputs[..., IN_DX]) + self.emb_dy(inputs[..., IN_DY]) + self.emb_pen(inputs[..., IN_PEN])
             + self.emb_x(inputs[..., IN_X]) + self.emb_y(inputs[..., IN_Y]) + self.emb_pos(pos)
             + self.emb_class(labels)[:, None, :])  # (B, T, d)
        return self._trunk(x, past)

    def dy_logits(self, h, dx_index):
        """Logits of dy given the hidden state (..., d) and the chosen dx index (...)."""
        return self.head_dy(self._nonlinearity(self.dy_in(h) + self.dy_given_dx(dx_index)))

    def nll(self, inputs, labels, targets):
        """Per-position negative log-likelihood in nats (B, T); zero where targets are padding."""
        h, _ = self(inputs, labels)
        B, T, d = h.shape
        h = h.reshape(B * T, d)  # (positions, classes) rows: the layout CPU log-softmax runs fastest on
        pen_t = targets[..., OUT_PEN]
        valid, draw = pen_t != IGNORE, pen_t == 0
        dx_t = targets[..., OUT_DX].reshape(-1).long() + self.cfg.max_move
        dy_t = targets[..., OUT_DY].reshape(-1).long() + self.cfg.max_move
        nll_pen = F.cross_entropy(self.head_pen(h), pen_t.reshape(-1).clamp(min=0), reduction="none").view(B, T)
        nll_pen = nll_pen.masked_fill(torch.arange(T, device=h.device) == 0, 0.0)  # m_0: the start, always pen-down
        nll_dx = F.cross_entropy(self.head_dx(h), dx_t, reduction="none").view(B, T)
        nll_dy = F.cross_entropy(self.dy_logits(h, dx_t), dy_t, reduction="none").view(B, T)
        return torch.where(valid, nll_pen + torch.where(draw, nll_dx + nll_dy, 0.0), 0.0)


LOGIT_CHUNK = 2 ** 19  # logits per cross-entropy chunk in TextDOT.nll (2 MB of float32)


class TextDOT(Decoder):
    """tinyDOT over words (`cfg.domain == "text"`): word + position embeddings, the shared trunk,
    a softmax over the `cfg.vocab_size` words, tied to the word embeddings unless `tie_embeddings`
    is False."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.emb_token = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.emb_pos = nn.Embedding(cfg.max_len, cfg.d_model)
        self._add_trunk()
        if not cfg.tie_embeddings:
            self.head = nn.Linear(cfg.d_model, cfg.vocab_size)
        self._init_weights()

    def forward(self, inputs, *, past=None, offset: int = 0):
        """(hidden states (B, T, d), per-layer key/value caches) for word ids `inputs` (B, T); `past`
        and `offset` as in TinyDOT."""
        pos = self._positions(inputs.shape[1], offset, inputs.device)
        return self._trunk(self.emb_token(inputs) + self.emb_pos(pos), past)  # (B, T, d)

    def logits(self, h):
        """Next-word logits (..., vocab_size) from hidden states (..., d)."""
        return F.linear(h, self.emb_token.weight) if self.cfg.tie_embeddings else self.head(h)

    def nll(self, inputs, targets):
        """Per-position negative log-likelihood in nats (B, T); zero where targets are padding (IGNORE).

        The softmax runs over chunks of positions, at most LOGIT_CHUNK logits each: one (positions,
        vocab) matrix for a batch of ~1,024 positions is ~40 MB, above glibc's largest mmap threshold
        (32 MB), so it and its gradient were mapped and zeroed afresh at every step; that page
        faulting took half of a quick text step's time (benchmarks/train_throughput.py, "text" rows).
        Small chunks are reused from the heap. Each position's NLL comes from its own row either way.
        """
        h, _ = self(inputs)
        h, flat = h.flatten(0, 1), targets.flatten()
        rows = max(1, LOGIT_CHUNK // self.cfg.vocab_size)
        nll = torch.cat([F.cross_entropy(self.logits(h[i:i + rows]), flat[i:i + rows], ignore_index=IGNORE,
                                         reduction="none") for i in range(0, len(flat), rows)])
        return nll.view(targets.shape)


MODELS = {"strokes": TinyDOT, "text": TextDOT}  # cfg.domain -> model class


def build_model(cfg: ModelConfig) -> Decoder:
    """A freshly initialised model of the class `cfg.domain` names (global RNG: see training.init_model)."""
    return MODELS[cfg.domain](cfg)
