#!/usr/bin/env python3
"""Train a small CNN on scikit-learn's offline ``load_digits`` data and export it to ONNX.

Regenerate the bundled example with::

    pip install torch==2.13.0 scikit-learn onnx onnxruntime
    python examples/train_digits.py

Outputs (next to this script):

* ``digits_cnn.onnx`` - the trained model (BatchNorm kept as separate nodes, every
  float tensor of the PyTorch ``state_dict`` stored as an ONNX initializer under its
  exact ``state_dict`` name, bit-for-bit identical values).
* ``digits_cnn.md``   - a short model card (architecture, recipe, held-out accuracy).

Everything is seeded and single-threaded, so reruns are deterministic; it takes a few
seconds on a CPU.
"""

from __future__ import annotations

import hashlib
import os
import random
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import sklearn
import torch
from onnx import numpy_helper
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

HERE = Path(__file__).resolve().parent
ONNX_PATH = HERE / "digits_cnn.onnx"
CARD_PATH = HERE / "digits_cnn.md"

SEED = 0
TEST_SIZE = 0.25
EPOCHS = 30
BATCH_SIZE = 64
LR = 1e-3
WEIGHT_DECAY = 1e-4
OPSET = 17

# The exact torch.onnx.export settings that keep BatchNorm unfolded and every
# state_dict float tensor as a same-named, untransformed initializer.
EXPORT_KWARGS = dict(
    dynamo=False,  # legacy TorchScript exporter
    opset_version=OPSET,
    export_params=True,
    # Both of the next two are needed (checked with torch 2.13.0): the defaults
    # (EVAL + folding) fuse BN into the Conv as new `onnx::Conv_*` initializers; either
    # flag alone keeps BN but feeds running_mean/var through Identity nodes from
    # renamed initializers.
    do_constant_folding=False,
    training=torch.onnx.TrainingMode.PRESERVE,  # skips the eval-mode Conv+BN fusion pass
    keep_initializers_as_inputs=False,
    input_names=["image"],
    output_names=["logits"],
    dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
)


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),  # features.0
            nn.BatchNorm2d(16),  # features.1
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),  # features.3
            nn.BatchNorm2d(32),  # features.4
            nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, 64),  # classifier.1
            nn.ReLU(),
            nn.Linear(64, 10),  # classifier.3
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(image))


def set_determinism(seed: int) -> None:
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


def load_data():
    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]  # (N,1,8,8) in [0,1]
    y = digits.target.astype(np.int64)
    return train_test_split(x, y, test_size=TEST_SIZE, random_state=SEED, stratify=y)


def train(model: nn.Module, x_train: np.ndarray, y_train: np.ndarray) -> None:
    xt = torch.from_numpy(x_train)
    yt = torch.from_numpy(y_train)
    opt = torch.optim.Adam(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(SEED)
    model.train()
    for epoch in range(EPOCHS):
        perm = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for i in range(0, len(xt), BATCH_SIZE):
            idx = perm[i : i + BATCH_SIZE]
            opt.zero_grad()
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        if epoch % 10 == 9 or epoch == EPOCHS - 1:
            print(f"epoch {epoch + 1:3d}  train loss {total / len(xt):.4f}")
    model.eval()


def check_initializers(model: nn.Module, onnx_model: onnx.ModelProto) -> list[str]:
    """Assert every float state_dict tensor is an identically named, bit-identical initializer."""
    sd = {
        k: v.detach().cpu().numpy()
        for k, v in model.state_dict().items()
        if v.is_floating_point()
    }
    inits = {t.name: numpy_helper.to_array(t) for t in onnx_model.graph.initializer}
    assert set(inits) == set(sd), (
        f"initializer/state_dict mismatch: only in onnx={sorted(set(inits) - set(sd))}, "
        f"only in state_dict={sorted(set(sd) - set(inits))}"
    )
    for name, ref in sd.items():
        got = inits[name]
        assert got.dtype == ref.dtype and got.shape == ref.shape, (name, got.dtype, got.shape)
        assert got.tobytes() == ref.tobytes(), f"{name}: values differ"
    ops = [n.op_type for n in onnx_model.graph.node]
    assert ops.count("BatchNormalization") == 2, f"BatchNorm folded? ops={ops}"
    return list(sd)


def main() -> int:
    set_determinism(SEED)
    x_train, x_test, y_train, y_test = load_data()
    print(f"train {len(x_train)}  test {len(x_test)}")

    model = DigitsCNN()
    train(model, x_train, y_train)

    with torch.no_grad():
        torch_logits = model(torch.from_numpy(x_test)).numpy()
    torch_acc = float((torch_logits.argmax(1) == y_test).mean())

    torch.onnx.export(model, (torch.zeros(1, 1, 8, 8),), str(ONNX_PATH), **EXPORT_KWARGS)

    onnx_model = onnx.load(str(ONNX_PATH))
    onnx.checker.check_model(onnx_model, full_check=True)
    names = check_initializers(model, onnx_model)
    assert [i.name for i in onnx_model.graph.input] == ["image"]
    assert [o.name for o in onnx_model.graph.output] == ["logits"]

    sess = ort.InferenceSession(str(ONNX_PATH), providers=["CPUExecutionProvider"])
    ort_logits = sess.run(["logits"], {"image": x_test})[0]
    max_diff = float(np.abs(ort_logits - torch_logits).max())
    assert np.allclose(ort_logits, torch_logits, atol=1e-5, rtol=1e-5), max_diff
    ort_pred = ort_logits.argmax(1)
    ort_acc = float((ort_pred == y_test).mean())
    n_correct = int((ort_pred == y_test).sum())

    n_params = sum(p.numel() for p in model.parameters())
    n_buffers = sum(b.numel() for b in model.buffers() if b.is_floating_point())
    size = ONNX_PATH.stat().st_size
    sha = hashlib.sha256(ONNX_PATH.read_bytes()).hexdigest()
    ops = sorted({n.op_type for n in onnx_model.graph.node})

    print(f"torch acc {torch_acc:.4f}  onnxruntime acc {ort_acc:.4f}  max|diff| {max_diff:.2e}")
    print(f"wrote {ONNX_PATH.name} ({size} bytes, sha256 {sha[:16]}...)")

    init_lines = "\n".join(
        f"| `{n}` | {tuple(model.state_dict()[n].shape)} |" for n in names
    )
    card = f"""# digits_cnn.onnx

A small convolutional classifier for scikit-learn's offline `load_digits` data set
(8x8 greyscale handwritten digits, 10 classes), trained in PyTorch and exported to ONNX
with **real trained weights**. Generated by `examples/train_digits.py`.

## Interface

- input `image`: float32, shape `(batch, 1, 8, 8)`, pixel values divided by 16 (range
  [0, 1]); the scaling is done in data preparation, not inside the model.
- output `logits`: float32, shape `(batch, 10)`.
- opset {OPSET}; ops: {", ".join(ops)}.

## Architecture

| module | layer |
|---|---|
| `features.0` | Conv2d(1, 16, 3, padding=1) |
| `features.1` | BatchNorm2d(16) |
| `features.2` | ReLU |
| `features.3` | Conv2d(16, 32, 3, padding=1) |
| `features.4` | BatchNorm2d(32) |
| `features.5` | ReLU |
| `features.6` | MaxPool2d(2) (8x8 -> 4x4) |
| `classifier.0` | Flatten |
| `classifier.1` | Linear(512, 64) |
| `classifier.2` | ReLU |
| `classifier.3` | Linear(64, 10) |

Trainable parameters: {n_params:,}; plus {n_buffers} BatchNorm running-statistics values.

BatchNorm is **not** folded into the convolutions. Every float tensor of the PyTorch
`state_dict` is an ONNX initializer under exactly its `state_dict` name, with
bit-identical values (no renamed or transposed copies; `num_batches_tracked` is dropped):

| initializer | shape |
|---|---|
{init_lines}

## Training recipe

- data: `sklearn.datasets.load_digits()` (1797 images); stratified split with
  `train_test_split(test_size={TEST_SIZE}, random_state={SEED}, stratify=y)` ->
  {len(x_train)} train / {len(x_test)} held-out test images.
- Adam, lr {LR}, weight decay {WEIGHT_DECAY}, batch size {BATCH_SIZE}, {EPOCHS} epochs,
  cross-entropy loss, no augmentation.
- deterministic: `torch.manual_seed({SEED})`, `torch.use_deterministic_algorithms(True)`,
  `torch.set_num_threads(1)`, seeded shuffling; CPU only.

## Result

Held-out accuracy measured with onnxruntime {ort.__version__} (CPUExecutionProvider) on the
test split: **{ort_acc:.4f}** ({n_correct}/{len(y_test)}). onnxruntime logits match PyTorch
to max abs difference {max_diff:.1e}.

## Export

`torch.onnx.export(model, (torch.zeros(1, 1, 8, 8),), path, dynamo=False,
opset_version={OPSET}, do_constant_folding=False, training=torch.onnx.TrainingMode.PRESERVE,
input_names=["image"], output_names=["logits"],
dynamic_axes={{"image": {{0: "batch"}}, "logits": {{0: "batch"}}}})` on the model in eval
mode. Both `training=PRESERVE` and `do_constant_folding=False` are needed: the
defaults fuse BatchNorm into the Conv weights (new `onnx::Conv_*` initializers), and either
flag alone keeps BatchNorm but routes the running statistics through `Identity` nodes from
renamed initializers. The BatchNorm nodes are exported in inference mode
(`training_mode=0`, running statistics).

File size: {size:,} bytes.

## Versions

torch {torch.__version__}, onnx {onnx.__version__}, onnxruntime {ort.__version__},
scikit-learn {sklearn.__version__}, numpy {np.__version__}, Python
{sys.version.split()[0]}.

## Regenerate

```
python examples/train_digits.py
```
"""
    CARD_PATH.write_text(card)
    print(f"wrote {CARD_PATH.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
