"""Hand-written PyTorch architectures auditors meet that `transformers` does not build.

Recurrent language models (LSTM, GRU, vanilla RNN, bidirectional, an explicit LSTMCell loop, a
GRU encoder-decoder with attention), a U-Net (ConvTranspose, skip concatenations), a top-k
mixture of experts, a message-passing GNN (index_add / scatter_add over a fixed edge list),
weight-norm and spectral-norm parametrizations, `nn.Transformer` / `nn.TransformerEncoder` /
`nn.MultiheadAttention`, an embedding tied to the output head, buffers with unused and frozen
parameters, 1-D and 3-D convolutions with group/instance norms, PixelShuffle/PReLU/EmbeddingBag.
Each builder returns `(module, example_inputs)` and registers in `tests.zoo.REGISTRY`.
"""

import torch
import torch.nn.functional as F
from torch import nn

from tests.zoo import register


def _g():
    return torch.Generator().manual_seed(0)


def _tokens(n=8, vocab=64):
    return torch.randint(0, vocab, (1, n), generator=_g())


class RNNLM(nn.Module):
    def __init__(self, cell, vocab=64, dim=16, layers=2, bidirectional=False, tie=False):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.rnn = cell(dim, dim, num_layers=layers, batch_first=True, bidirectional=bidirectional)
        self.head = nn.Linear(dim * (2 if bidirectional else 1), vocab)
        if tie:
            self.head.weight = self.embed.weight

    def forward(self, ids):
        out, _ = self.rnn(self.embed(ids))
        return self.head(out)


register("lstm-lm", "rnn")(lambda: (RNNLM(nn.LSTM), (_tokens(),)))
register("gru-lm", "rnn")(lambda: (RNNLM(nn.GRU), (_tokens(),)))
register("rnn-tanh-lm", "rnn")(lambda: (RNNLM(nn.RNN), (_tokens(),)))
register("bilstm-tagger", "rnn")(lambda: (RNNLM(nn.LSTM, layers=1, bidirectional=True), (_tokens(),)))
register("lstm-lm-tied", "rnn")(lambda: (RNNLM(nn.LSTM, layers=1, tie=True), (_tokens(),)))


class GRUSeq2Seq(nn.Module):
    def __init__(self, vocab=64, dim=16):
        super().__init__()
        self.src = nn.Embedding(vocab, dim)
        self.tgt = nn.Embedding(vocab, dim)
        self.encoder = nn.GRU(dim, dim, batch_first=True)
        self.decoder = nn.GRU(dim, dim, batch_first=True)
        self.attn = nn.Linear(dim, dim, bias=False)
        self.out = nn.Linear(2 * dim, vocab)

    def forward(self, src, tgt):
        enc, h = self.encoder(self.src(src))
        dec, _ = self.decoder(self.tgt(tgt), h)
        scores = torch.softmax(self.attn(dec) @ enc.transpose(1, 2), dim=-1)
        return self.out(torch.cat([dec, scores @ enc], dim=-1))


register("gru-seq2seq", "rnn")(lambda: (GRUSeq2Seq(), (_tokens(8), _tokens(5))))


class LSTMCellLoop(nn.Module):
    """An explicit Python loop over an LSTMCell (unrolled by the exporter)."""

    def __init__(self, dim=8):
        super().__init__()
        self.cell = nn.LSTMCell(dim, dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, x):
        h = c = torch.zeros(x.shape[0], x.shape[2])
        for t in range(x.shape[1]):
            h, c = self.cell(x[:, t], (h, c))
        return self.head(h)


register("lstmcell-loop", "rnn")(lambda: (LSTMCellLoop(), (torch.randn(1, 5, 8, generator=_g()),)))


class UNet(nn.Module):
    def __init__(self, c=4):
        super().__init__()
        block = lambda i, o: nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(),
                                           nn.Conv2d(o, o, 3, padding=1), nn.ReLU())
        self.d1, self.d2, self.mid = block(3, c), block(c, 2 * c), block(2 * c, 4 * c)
        self.up2 = nn.ConvTranspose2d(4 * c, 2 * c, 2, stride=2)
        self.u2 = block(4 * c, 2 * c)
        self.up1 = nn.ConvTranspose2d(2 * c, c, 2, stride=2)
        self.u1 = block(2 * c, c)
        self.head = nn.Conv2d(c, 2, 1)

    def forward(self, x):
        a = self.d1(x)
        b = self.d2(F.max_pool2d(a, 2))
        m = self.mid(F.max_pool2d(b, 2))
        y = self.u2(torch.cat([self.up2(m), b], 1))
        y = self.u1(torch.cat([self.up1(y), a], 1))
        return self.head(y)


register("unet", "conv")(lambda: (UNet(), (torch.randn(1, 3, 16, 16, generator=_g()),)))


class TopKMoE(nn.Module):
    """Top-k routing, dense dispatch: every expert runs, the router's top-k weights scattered into a
    (tokens, experts) gate matrix (the usual exportable formulation)."""

    def __init__(self, dim=16, experts=4, k=2):
        super().__init__()
        self.router = nn.Linear(dim, experts, bias=False)
        self.experts = nn.ModuleList(nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
                                     for _ in range(experts))
        self.k = k
        self.head = nn.Linear(dim, 5)

    def forward(self, x):
        logits = self.router(x)
        w, idx = torch.topk(torch.softmax(logits, -1), self.k, dim=-1)
        gates = torch.zeros_like(logits).scatter(-1, idx, w / w.sum(-1, keepdim=True))
        out = torch.stack([e(x) for e in self.experts], -1)  # (..., dim, experts)
        return self.head((out * gates.unsqueeze(-2)).sum(-1))


register("topk-moe", "moe")(lambda: (TopKMoE(), (torch.randn(1, 6, 16, generator=_g()),)))


class GNN(nn.Module):
    """Two message-passing layers: messages gathered by source index, summed into targets with index_add
    and scatter_add (a fixed graph held as a buffer)."""

    def __init__(self, f=8, nodes=6):
        super().__init__()
        src = torch.tensor([0, 1, 2, 3, 4, 5, 0, 2])
        dst = torch.tensor([1, 2, 3, 4, 5, 0, 3, 5])
        self.register_buffer("edges", torch.stack([src, dst]))
        self.msg1, self.self1 = nn.Linear(f, f), nn.Linear(f, f)
        self.msg2 = nn.Linear(f, f)
        self.readout = nn.Linear(f, 2)

    def forward(self, x):
        src, dst = self.edges
        m = self.msg1(x)[:, src]
        h = torch.relu(self.self1(x) + torch.zeros_like(x).index_add(1, dst, m))
        m2 = self.msg2(h)[:, src]
        agg = torch.zeros_like(h).scatter_add(1, dst.view(1, -1, 1).expand_as(m2), m2)
        return self.readout(h + agg)


register("gnn-index-add", "graph")(lambda: (GNN(), (torch.randn(1, 6, 8, generator=_g()),)))


class Normed(nn.Module):
    def __init__(self):
        super().__init__()
        P = nn.utils.parametrizations
        self.conv = P.weight_norm(nn.Conv1d(4, 8, 3, padding=1))
        self.sn = P.spectral_norm(nn.Linear(8, 8))
        self.old_wn = nn.utils.weight_norm(nn.Linear(8, 4))
        self.sn.eval()

    def forward(self, x):
        h = torch.relu(self.conv(x)).transpose(1, 2)
        return self.old_wn(torch.relu(self.sn(h)))
register("weight-spectral-norm", "param")(lambda: (Normed(), (torch.randn(1, 4, 10, generator=_g()),)))


class TorchTransformer(nn.Module):
    def __init__(self, vocab=64, dim=16):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.t = nn.Transformer(d_model=dim, nhead=2, num_encoder_layers=2, num_decoder_layers=2,
                                dim_feedforward=32, dropout=0.0, batch_first=True)
        self.head = nn.Linear(dim, vocab)
        self.head.weight = self.embed.weight  # tied

    def forward(self, src, tgt):
        mask = nn.Transformer.generate_square_subsequent_mask(tgt.shape[1])
        return self.head(self.t(self.embed(src), self.embed(tgt), tgt_mask=mask, tgt_is_causal=True))


register("nn-transformer", "seq2seq")(lambda: (TorchTransformer(), (_tokens(8), _tokens(5))))


class EncoderOnly(nn.Module):
    def __init__(self, dim=16):
        super().__init__()
        layer = nn.TransformerEncoderLayer(dim, 2, 32, dropout=0.0, batch_first=True, norm_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(dim, 3)

    def forward(self, x):
        return self.head(self.enc(x))


register("nn-transformer-encoder", "encoder")(lambda: (EncoderOnly(), (torch.randn(1, 7, 16, generator=_g()),)))


class MHA(nn.Module):
    def __init__(self, dim=16):
        super().__init__()
        self.mha = nn.MultiheadAttention(dim, 4, batch_first=True)
        self.kv = nn.MultiheadAttention(dim, 2, kdim=8, vdim=12, batch_first=True)

    def forward(self, q, k, v):
        a, _ = self.mha(q, q, q)
        b, _ = self.kv(a, k, v)
        return b


register("multihead-attention", "attention")(lambda: (MHA(), (torch.randn(1, 5, 16, generator=_g()),
                                                       torch.randn(1, 6, 8, generator=_g()),
                                                       torch.randn(1, 6, 12, generator=_g()))))


class Extras(nn.Module):
    """Buffers (a running statistic, a fixed table), a parameter never used, a frozen parameter."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.unused = nn.Linear(8, 8)
        self.unused_vec = nn.Parameter(torch.randn(8))
        self.frozen = nn.Parameter(torch.randn(8, 8), requires_grad=False)
        self.register_buffer("scale", torch.linspace(0.5, 1.5, 8))
        self.bn = nn.BatchNorm1d(8)

    def forward(self, x):
        return self.bn(self.a(x) * self.scale) @ self.frozen


register("buffers-unused", "misc")(lambda: (Extras(), (torch.randn(3, 8, generator=_g()),)))


class Conv1dAudio(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv1d(1, 8, 9, stride=4), nn.GroupNorm(2, 8), nn.GELU(),
                                 nn.Conv1d(8, 8, 3, groups=8), nn.Conv1d(8, 16, 1), nn.AdaptiveAvgPool1d(1),
                                 nn.Flatten(), nn.Linear(16, 4))

    def forward(self, x):
        return self.net(x)


register("conv1d-audio", "audio")(lambda: (Conv1dAudio(), (torch.randn(1, 1, 200, generator=_g()),)))


class Conv3d(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.InstanceNorm3d(4, affine=True), nn.ReLU(),
                                 nn.ConvTranspose3d(4, 2, 2, stride=2), nn.LayerNorm([8, 8, 8]))

    def forward(self, x):
        return self.net(x)


register("conv3d-instancenorm", "conv")(lambda: (Conv3d(), (torch.randn(1, 2, 4, 4, 4, generator=_g()),)))


class PixelShuffleSR(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 12, 3, padding=1)
        self.prelu = nn.PReLU(12)
        self.ps = nn.PixelShuffle(2)
        self.c2 = nn.Conv2d(3, 3, 3, padding=1)
        self.emb = nn.EmbeddingBag(10, 3, mode="mean")

    def forward(self, x, ids):
        return self.c2(self.ps(self.prelu(self.c1(x)))) + self.emb(ids)[:, :, None, None]


register("pixelshuffle-prelu-embbag", "conv")(lambda: (PixelShuffleSR(), (torch.randn(1, 3, 8, 8, generator=_g()),
                                                                     torch.tensor([[1, 2, 3]]))))


class WeightNormed(nn.Module):
    """Weight normalisation only (parametrization and the legacy hook): the effective weight g * v / ||v||."""

    def __init__(self):
        super().__init__()
        self.conv = nn.utils.parametrizations.weight_norm(nn.Conv1d(4, 8, 3, padding=1))
        self.old = nn.utils.weight_norm(nn.Linear(8, 4))

    def forward(self, x):
        return self.old(torch.relu(self.conv(x)).transpose(1, 2))


register("weight-norm", "param")(lambda: (WeightNormed(), (torch.randn(1, 4, 10, generator=_g()),)))
