"""Held-out Flax/JAX architectures written the ordinary ways (linen, nnx, plain JAX), small and random.

Each builder returns what a user's `file.py:callable` returns and `irtools.analyze` accepts:
`(linen_module, variables, inputs)`, `(apply_fn, params, inputs)` or `(nnx_module, None, inputs)`.
Models cover the layer zoo of Flax: BatchNorm / GroupNorm / LayerNorm / RMSNorm, Dropout,
pooling called positionally and by keyword, ConvTranspose, depthwise and dilated convolutions,
explicit padding, DenseGeneral / Einsum, embeddings and attention (a ViT, a decoder LM with a
causal mask and tied output through `Embed.attend`), lifted transforms (`nn.scan`, `nn.remat`,
`nn.vmap`), recurrent cells through `nn.RNN`, weight sharing, several inputs and dict outputs.
Imports flax only when a builder is called; every builder is deterministic.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

REGISTRY: dict[str, Callable] = {}


def register(name: str):
    def wrap(builder):
        REGISTRY[name] = builder
        return builder

    return wrap


def _x(*shape, seed=0):
    return np.asarray(np.random.default_rng(seed).standard_normal(shape), dtype=np.float32)


def _ids(*shape, vocab=32, seed=0):
    return np.asarray(np.random.default_rng(seed).integers(0, vocab, shape), dtype=np.int32)


def _linen(module, *inputs, **init_kwargs):
    import jax  # noqa: PLC0415

    variables = module.init(jax.random.PRNGKey(0), *inputs, **init_kwargs)
    return module, variables, tuple(inputs)


def _randomize_stats(variables, seed=1):
    """Trained-looking BatchNorm statistics instead of the fresh 0/1 (so a lost one would show)."""
    import jax  # noqa: PLC0415

    rng = np.random.default_rng(seed)

    def perturb(path, leaf):
        keys = [str(getattr(k, "key", k)) for k in path]
        if keys and keys[0] == "batch_stats":
            base = rng.uniform(0.5, 2.0, leaf.shape) if keys[-1] == "var" else rng.normal(size=leaf.shape)
            return np.asarray(base, dtype=leaf.dtype)
        return leaf

    return jax.tree_util.tree_map_with_path(perturb, variables)


# -- linen --------------------------------------------------------------------------------------
@register("linen-cnn-bn-dropout-pools")
def linen_cnn_bn_dropout_pools():
    import flax.linen as nn  # noqa: PLC0415

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            x = nn.Conv(8, (3, 3), padding="SAME")(x)
            x = nn.BatchNorm(use_running_average=not train)(x)
            x = nn.relu(x)
            x = nn.avg_pool(x, (2, 2), (2, 2))  # positional window and strides
            x = nn.Conv(8, kernel_size=(3, 3), strides=1, padding="VALID")(x)
            x = nn.BatchNorm(use_running_average=True, momentum=0.9, epsilon=1e-5)(x)
            x = nn.max_pool(x, window_shape=(2, 2), strides=(1, 1), padding="SAME")
            x = nn.Dropout(0.5, deterministic=True)(x)
            x = x.reshape((x.shape[0], -1))
            x = nn.Dropout(0.2)(x, deterministic=not train)
            return nn.Dense(5)(x)

    module, variables, inputs = _linen(Net(), _x(2, 12, 12, 3))
    return module, _randomize_stats(variables), inputs


@register("linen-norms")
def linen_norms():
    import flax.linen as nn  # noqa: PLC0415

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.GroupNorm(num_groups=2)(nn.Conv(8, (3, 3))(x))
            x = nn.swish(x)
            x = nn.LayerNorm()(nn.Conv(8, (3, 3))(x))
            x = nn.gelu(x)
            x = nn.RMSNorm()(nn.Conv(8, (1, 1))(x))
            x = jnp_mean(x)
            return nn.Dense(4)(nn.LayerNorm(use_bias=False)(x))

    return _linen(Net(), _x(1, 8, 8, 3))


def jnp_mean(x):
    return x.mean(axis=(1, 2))


@register("linen-conv-variants")
def linen_conv_variants():
    import flax.linen as nn  # noqa: PLC0415

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Conv(8, (3, 3), strides=(2, 2), padding="SAME", name="strided")(x)
            x = nn.Conv(8, (3, 3), kernel_dilation=(2, 2), padding="SAME", name="dilated")(x)
            x = nn.Conv(8, (3, 3), padding=((1, 2), (0, 1)), name="explicit")(x)
            x = nn.Conv(8, (3, 3), feature_group_count=8, padding="SAME", name="depthwise")(x)
            x = nn.Conv(16, (1, 1), use_bias=False, name="pointwise")(x)
            x = nn.Conv(16, (3, 3), feature_group_count=4, padding=1, name="grouped")(x)
            x = nn.ConvTranspose(6, (3, 3), strides=(2, 2), padding="SAME", name="up")(x)
            x = nn.ConvTranspose(4, (2, 2), padding="VALID", name="up_valid")(x)
            return nn.Conv(2, (3,) * 2, padding="CIRCULAR", name="circular")(nn.relu(x))

    return _linen(Net(), _x(1, 16, 16, 3))


@register("linen-conv1d")
def linen_conv1d():
    import flax.linen as nn  # noqa: PLC0415

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Conv(8, (5,), padding="CAUSAL")(x))
            x = nn.Conv(8, (3,), strides=2, padding="SAME")(x)
            x = nn.avg_pool(x, (2,))
            return nn.Dense(3)(x.mean(axis=1))

    return _linen(Net(), _x(2, 20, 4))


@register("linen-dense-3d-general-einsum")
def linen_dense_general():
    import flax.linen as nn  # noqa: PLC0415

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):  # (batch, seq, 12)
            h = nn.Dense(16)(x)  # Dense on a 3-D input
            h = nn.DenseGeneral(features=(2, 8), axis=-1, name="split_heads")(h)  # (b, s, 2, 8)
            h = nn.DenseGeneral(features=10, axis=(-2, -1), name="merge_heads")(h)  # (b, s, 10)
            h = nn.Einsum((10, 6), "bsd,df->bsf", name="einsum")(h)
            return nn.DenseGeneral(features=3, axis=(1, 2), name="flatten_out")(h)  # over (seq, feature)

    return _linen(Net(), _x(2, 5, 12))


@register("linen-attention")
def linen_attention():
    import flax.linen as nn  # noqa: PLC0415

    class Net(nn.Module):
        @nn.compact
        def __call__(self, ids):
            x = nn.Embed(32, 16)(ids)
            x = x + nn.MultiHeadDotProductAttention(num_heads=4, qkv_features=16)(x)
            x = nn.LayerNorm()(x)
            x = x + nn.SelfAttention(num_heads=2)(x)
            return nn.Dense(3)(x.mean(axis=1))

    return _linen(Net(), _ids(2, 6))


@register("linen-cross-attention-two-inputs")
def linen_cross_attention():
    import flax.linen as nn  # noqa: PLC0415

    class Net(nn.Module):
        @nn.compact
        def __call__(self, q, kv):
            return nn.MultiHeadDotProductAttention(num_heads=2, qkv_features=8, out_features=6)(q, kv)

    return _linen(Net(), _x(1, 4, 6), _x(1, 7, 5, seed=1))


@register("linen-vit")
def linen_vit():
    import flax.linen as nn  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    class Block(nn.Module):
        dim: int

        @nn.compact
        def __call__(self, x):
            x = x + nn.MultiHeadDotProductAttention(num_heads=2)(nn.LayerNorm()(x), nn.LayerNorm()(x))
            h = nn.Dense(2 * self.dim)(nn.LayerNorm()(x))
            return x + nn.Dense(self.dim)(nn.gelu(h))

    class ViT(nn.Module):
        dim: int = 16
        depth: int = 2

        @nn.compact
        def __call__(self, img):
            x = nn.Conv(self.dim, (4, 4), strides=(4, 4), padding="VALID", name="patch")(img)
            b, h, w, c = x.shape
            x = x.reshape(b, h * w, c)
            cls = self.param("cls", nn.initializers.normal(0.02), (1, 1, c))
            x = jnp.concatenate([jnp.tile(cls, (b, 1, 1)), x], axis=1)
            x = x + self.param("pos_embedding", nn.initializers.normal(0.02), (1, h * w + 1, c))
            for i in range(self.depth):
                x = Block(self.dim, name=f"block_{i}")(x)
            return nn.Dense(5, name="head")(nn.LayerNorm(name="norm")(x[:, 0]))

    return _linen(ViT(), _x(1, 16, 16, 3))


@register("linen-decoder-lm-tied")
def linen_decoder_lm():
    import flax.linen as nn  # noqa: PLC0415

    class Block(nn.Module):
        @nn.compact
        def __call__(self, x, mask):
            x = x + nn.MultiHeadDotProductAttention(num_heads=2, name="attn")(nn.RMSNorm()(x), mask=mask)
            h = nn.Dense(32, use_bias=False, name="up")(nn.RMSNorm()(x))
            return x + nn.Dense(16, use_bias=False, name="down")(nn.silu(h))

    class LM(nn.Module):
        @nn.compact
        def __call__(self, ids):
            embed = nn.Embed(40, 16, name="wte")
            pos = nn.Embed(8, 16, name="wpe")(np.arange(ids.shape[1])[None])
            x = embed(ids) + pos
            mask = nn.make_causal_mask(ids)
            for i in range(2):
                x = Block(name=f"h_{i}")(x, mask)
            return embed.attend(nn.LayerNorm(name="ln_f")(x))  # tied output projection

    return _linen(LM(), _ids(1, 8, vocab=40))


@register("linen-resnet-sequential")
def linen_resnet_sequential():
    import flax.linen as nn  # noqa: PLC0415

    class Bottleneck(nn.Module):
        features: int
        strides: int = 1

        @nn.compact
        def __call__(self, x):
            norm = lambda name: nn.BatchNorm(use_running_average=True, name=name)  # noqa: E731
            y = nn.relu(norm("bn1")(nn.Conv(self.features, (1, 1), use_bias=False, name="conv1")(x)))
            y = nn.relu(norm("bn2")(nn.Conv(self.features, (3, 3), self.strides, use_bias=False, name="conv2")(y)))
            y = norm("bn3")(nn.Conv(self.features * 2, (1, 1), use_bias=False, name="conv3")(y))
            if x.shape != y.shape:
                x = norm("proj_bn")(nn.Conv(self.features * 2, (1, 1), self.strides, use_bias=False,
                                            name="proj")(x))
            return nn.relu(x + y)

    class ResNet(nn.Module):
        @nn.compact
        def __call__(self, x):
            stem = nn.Sequential([nn.Conv(8, (3, 3), use_bias=False), nn.BatchNorm(use_running_average=True),
                                  nn.relu, lambda y: nn.max_pool(y, (3, 3), (2, 2), "SAME")], name="stem")
            x = stem(x)
            for i, (f, s) in enumerate([(4, 1), (8, 2)]):
                x = Bottleneck(f, s, name=f"stage_{i}")(x)
            return nn.Dense(10, name="fc")(jnp_mean(x))

    module, variables, inputs = _linen(ResNet(), _x(1, 16, 16, 3))
    return module, _randomize_stats(variables), inputs


@register("linen-scan-stack")
def linen_scan_stack():
    import flax.linen as nn  # noqa: PLC0415

    class Layer(nn.Module):
        @nn.compact
        def __call__(self, x, _):
            return nn.tanh(nn.Dense(8)(nn.LayerNorm()(x))) + x, None

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            stack = nn.scan(Layer, variable_axes={"params": 0}, split_rngs={"params": True}, length=3)
            x, _ = stack(name="layers")(x, None)
            return nn.Dense(2)(x)

    return _linen(Net(), _x(2, 8))


@register("linen-remat-vmap")
def linen_remat_vmap():
    import flax.linen as nn  # noqa: PLC0415

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(8)(nn.relu(nn.Dense(16)(x)))

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):  # x: (ensemble=3, batch, 8)
            x = nn.remat(MLP)(name="checkpointed")(x)
            ensemble = nn.vmap(MLP, in_axes=0, out_axes=0, variable_axes={"params": 0},
                               split_rngs={"params": True})
            return ensemble(name="ensemble")(x)

    return _linen(Net(), _x(3, 2, 8))


def _rnn(cell_name):
    def build():
        import flax.linen as nn  # noqa: PLC0415

        class Net(nn.Module):
            @nn.compact
            def __call__(self, x):
                cell = getattr(nn, cell_name)(features=6)
                y = nn.RNN(cell, name="rnn")(x)
                return nn.Dense(2)(y[:, -1])

        return _linen(Net(), _x(2, 5, 4))

    return build


for _cell in ("LSTMCell", "GRUCell", "OptimizedLSTMCell", "SimpleCell"):
    register(f"linen-rnn-{_cell.lower()}")(_rnn(_cell))


@register("linen-bidirectional-lstm")
def linen_bidirectional():
    import flax.linen as nn  # noqa: PLC0415

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            bi = nn.Bidirectional(nn.RNN(nn.LSTMCell(5)), nn.RNN(nn.LSTMCell(5)))
            return nn.Dense(2)(bi(x)[:, -1])

    return _linen(Net(), _x(1, 4, 3))


@register("linen-shared-dense-dict-out")
def linen_shared_dict():
    import flax.linen as nn  # noqa: PLC0415

    class Net(nn.Module):
        @nn.compact
        def __call__(self, a, b):
            shared = nn.Dense(8, name="shared")
            ha, hb = shared(a), shared(b)  # one module called twice: one kernel, read twice
            return {"sum": nn.Dense(3, name="head_sum")(ha + hb), "diff": nn.Dense(2, name="head_diff")(ha - hb)}

    return _linen(Net(), _x(2, 6), _x(2, 6, seed=1))


@register("linen-bfloat16-params")
def linen_bf16():
    import flax.linen as nn  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Dense(16, param_dtype=jnp.bfloat16, dtype=jnp.float32)(x)
            return nn.Dense(4, param_dtype=jnp.bfloat16, dtype=jnp.bfloat16)(nn.relu(x))

    return _linen(Net(), _x(2, 10))


@register("linen-float16-params")
def linen_f16():
    import flax.linen as nn  # noqa: PLC0415
    import jax.numpy as jnp  # noqa: PLC0415

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Conv(8, (3, 3), param_dtype=jnp.float16)(x)
            return nn.Dense(4, param_dtype=jnp.float16)(x.mean(axis=(1, 2)))

    return _linen(Net(), _x(1, 6, 6, 3))


# -- plain JAX ----------------------------------------------------------------------------------
@register("jax-mlp-list-params")
def jax_mlp_list():
    import jax.numpy as jnp  # noqa: PLC0415

    rng = np.random.default_rng(0)
    sizes = [10, 16, 16, 3]
    params = [{"w": rng.standard_normal((m, n)).astype(np.float32) / np.sqrt(m), "b": np.zeros(n, np.float32)}
              for m, n in zip(sizes[:-1], sizes[1:])]

    def apply(p, x):
        for layer in p[:-1]:
            x = jnp.tanh(x @ layer["w"] + layer["b"])
        return x @ p[-1]["w"] + p[-1]["b"]

    return apply, params, (_x(4, 10),)


@register("jax-conv-lax")
def jax_conv_lax():
    import jax  # noqa: PLC0415

    rng = np.random.default_rng(1)
    params = {"conv": {"w": rng.standard_normal((3, 3, 3, 8)).astype(np.float32)},
              "out": {"w": rng.standard_normal((8, 2)).astype(np.float32)}}

    def apply(p, x):
        y = jax.lax.conv_general_dilated(x, p["conv"]["w"], (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jax.nn.relu(y).mean(axis=(1, 2)) @ p["out"]["w"]

    return apply, params, (_x(1, 8, 8, 3),)


# -- nnx ----------------------------------------------------------------------------------------
def _nnx(cls, *inputs):
    from flax import nnx  # noqa: PLC0415

    return cls(nnx.Rngs(0)), None, tuple(inputs)


@register("nnx-cnn-norms-dropout-pools")
def nnx_cnn():
    from functools import partial  # noqa: PLC0415

    from flax import nnx  # noqa: PLC0415

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.conv1 = nnx.Conv(3, 8, (3, 3), rngs=rngs)
            self.bn = nnx.BatchNorm(8, rngs=rngs)
            self.conv2 = nnx.Conv(8, 8, (3, 3), strides=2, padding="VALID", rngs=rngs)
            self.gn = nnx.GroupNorm(8, num_groups=4, rngs=rngs)
            self.dw = nnx.Conv(8, 8, (3, 3), feature_group_count=8, rngs=rngs)
            self.ln = nnx.LayerNorm(8, rngs=rngs)
            self.rms = nnx.RMSNorm(8, rngs=rngs)
            self.up = nnx.ConvTranspose(8, 4, (2, 2), strides=(2, 2), rngs=rngs)
            self.drop = nnx.Dropout(0.3, rngs=rngs)
            self.fc = nnx.Linear(4, 3, rngs=rngs)

        def __call__(self, x):
            x = nnx.relu(self.bn(self.conv1(x)))
            x = nnx.avg_pool(x, (2, 2), (2, 2))
            x = nnx.relu(self.gn(self.conv2(x)))
            x = self.rms(self.ln(self.dw(x)))
            x = partial(nnx.max_pool, window_shape=(2, 2), strides=(1, 1), padding="SAME")(x)
            x = self.drop(self.up(x))
            return self.fc(x.mean(axis=(1, 2)))

    return _nnx(Net, _x(1, 16, 16, 3))


@register("nnx-transformer")
def nnx_transformer():
    import jax.numpy as jnp  # noqa: PLC0415
    from flax import nnx  # noqa: PLC0415

    class Block(nnx.Module):
        def __init__(self, dim, rngs):
            self.norm1 = nnx.LayerNorm(dim, rngs=rngs)
            self.attn = nnx.MultiHeadAttention(num_heads=2, in_features=dim, decode=False, rngs=rngs)
            self.norm2 = nnx.LayerNorm(dim, rngs=rngs)
            self.mlp = nnx.Sequential(nnx.Linear(dim, 2 * dim, rngs=rngs), nnx.gelu, nnx.Linear(2 * dim, dim, rngs=rngs))

        def __call__(self, x, mask):
            x = x + self.attn(self.norm1(x), mask=mask)
            return x + self.mlp(self.norm2(x))

    class LM(nnx.Module):
        def __init__(self, rngs):
            self.embed = nnx.Embed(40, 16, rngs=rngs)
            self.pos = nnx.Param(jnp.asarray(_x(8, 16, seed=3) * 0.02))
            self.blocks = nnx.List([Block(16, rngs) for _ in range(2)])
            self.norm = nnx.RMSNorm(16, rngs=rngs)

        def __call__(self, ids):
            x = self.embed(ids) + self.pos[...][: ids.shape[1]]
            mask = nnx.make_causal_mask(ids)
            for block in self.blocks:
                x = block(x, mask)
            return self.embed.attend(self.norm(x))

    return _nnx(LM, _ids(1, 8, vocab=40))


@register("nnx-linear-general-einsum")
def nnx_linear_general():
    from flax import nnx  # noqa: PLC0415

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.split = nnx.LinearGeneral(12, (3, 4), rngs=rngs)
            self.merge = nnx.LinearGeneral((3, 4), 6, axis=(-2, -1), rngs=rngs)
            self.einsum = nnx.Einsum("bsd,df->bsf", (6, 5), (5,), rngs=rngs)

        def __call__(self, x):
            return self.einsum(self.merge(self.split(x)))

    return _nnx(Net, _x(2, 3, 12))


@register("nnx-lstm")
def nnx_lstm():
    from flax import nnx  # noqa: PLC0415

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.rnn = nnx.RNN(nnx.LSTMCell(4, 6, rngs=rngs))
            self.gru = nnx.RNN(nnx.GRUCell(6, 5, rngs=rngs))
            self.fc = nnx.Linear(5, 2, rngs=rngs)

        def __call__(self, x):
            return self.fc(self.gru(self.rnn(x))[:, -1])

    return _nnx(Net, _x(2, 5, 4))


@register("nnx-shared-multi-output")
def nnx_shared():
    from flax import nnx  # noqa: PLC0415

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.shared = nnx.Linear(6, 8, rngs=rngs)
            self.a = nnx.Linear(8, 3, rngs=rngs)
            self.b = nnx.Linear(8, 2, rngs=rngs)

        def __call__(self, x, y):
            h = nnx.relu(self.shared(x)) + nnx.relu(self.shared(y))
            return self.a(h), {"b": self.b(h)}

    return _nnx(Net, _x(2, 6), _x(2, 6, seed=1))


@register("nnx-bfloat16-params")
def nnx_bf16():
    import jax.numpy as jnp  # noqa: PLC0415
    from flax import nnx  # noqa: PLC0415

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.l1 = nnx.Linear(10, 16, param_dtype=jnp.bfloat16, rngs=rngs)
            self.l2 = nnx.Linear(16, 4, param_dtype=jnp.bfloat16, rngs=rngs)

        def __call__(self, x):
            return self.l2(nnx.relu(self.l1(x)))

    return _nnx(Net, _x(2, 10))
