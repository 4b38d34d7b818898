"""PyTorch architectures for the benchmarks (torchvision cannot be installed beside torch 2.13)."""

from __future__ import annotations

import torch
from torch import nn


def vgg16(num_classes: int = 1000) -> nn.Module:
    """VGG-16 (138,357,544 parameters)."""
    layers, cin = [], 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=True)]
            cin = v
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(512 * 7 * 7, 4096), nn.ReLU(), nn.Dropout(),
                         nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(), nn.Linear(4096, num_classes))


class _Attention(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value, self.out = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x):
        b, t, d = x.shape
        split = lambda y: y.view(b, t, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        a = torch.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5, dim=-1)
        return self.out((a @ v).transpose(1, 2).reshape(b, t, d))


class _Layer(nn.Module):
    def __init__(self, d: int, heads: int, ffn: int):
        super().__init__()
        self.attention, self.norm1 = _Attention(d, heads), nn.LayerNorm(d)
        self.intermediate, self.output, self.norm2 = nn.Linear(d, ffn), nn.Linear(ffn, d), nn.LayerNorm(d)

    def forward(self, x):
        x = self.norm1(x + self.attention(x))
        return self.norm2(x + self.output(torch.nn.functional.gelu(self.intermediate(x))))


class Bert(nn.Module):
    """A BERT-base-width encoder (vocabulary 30522, d 768, FFN 3072) with `layers` layers."""

    def __init__(self, layers: int = 6, d: int = 768, heads: int = 12, ffn: int = 3072, vocab: int = 30522):
        super().__init__()
        self.word_embeddings, self.position_embeddings = nn.Embedding(vocab, d), nn.Embedding(512, d)
        self.norm = nn.LayerNorm(d)
        self.layers = nn.ModuleList(_Layer(d, heads, ffn) for _ in range(layers))

    def forward(self, ids):
        pos = torch.arange(ids.shape[1]).unsqueeze(0)
        x = self.norm(self.word_embeddings(ids) + self.position_embeddings(pos))
        for layer in self.layers:
            x = layer(x)
        return x


MODELS = {
    "vgg16": (vgg16, lambda: (torch.zeros(1, 3, 224, 224),)),
    "bert6": (lambda: Bert(6), lambda: (torch.zeros(1, 128, dtype=torch.long),)),
}
