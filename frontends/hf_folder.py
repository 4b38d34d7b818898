"""Hugging Face checkpoint folders (and hub ids from the local cache) as model sources.

A folder `save_pretrained` wrote holds the architecture (`config.json`) and the weights
(`model.safetensors`, sharded `model-0000x-of-0000y.safetensors` with `model.safetensors.index.json`,
or `pytorch_model.bin`, sharded with `pytorch_model.bin.index.json`). Both families come from it:

- the architecture is the class `config.json` names in `architectures`, built by `transformers`
  with `from_config` on the meta device: its parameters hold no memory. The reuse family's graph is
  exported with stand-in parameters (`torch.export_structure`), each initializer reading its values
  lazily from the folder's own files, so a checkpoint's weights are never held twice;
- the spectral family reads the same tensors through the module's parameter rules
  (`torch.module_weight_layers`): layers are named by module path, as the weights-only route names
  them. Tensors `transformers` converts when it loads (mixture-of-experts checkpoints stored one
  expert per module, loaded fused `[experts, out, in]`) are loaded through `transformers` itself, and
  their rows named by the checkpoint's tensors as the weights-only route names them (Mixtral's
  `block_sparse_moe.experts.3.w1`, not the module's `mlp.experts.gate_up_proj[3].gate`); the graph
  carries the same renaming (`irtools.ir.fused.CHECKPOINT_NAMES_KEY`).

The trace input comes from the config: token ids of `seq_len` (`--seq-len`, default
`DEFAULT_SEQ_LEN`, at most the model's maximum positions) for text models, decoder ids for
encoder-decoders, `image_size` x `num_channels` pixels for vision models, the feature extractor's
sizes (`preprocessor_config.json`) for audio, text and an image for dual encoders (CLIP, SigLIP). Caches are
off (`use_cache=False`, in the config too), attention is
`eager`. Weights come from the folder only, never the hub; a config with `auto_map` (code shipped
with the checkpoint) is refused unless `trust`. Without `transformers`, the spectral family still
runs from the weights and one note names the extra to install.

A hub id (`org/name`, optionally `@revision`) is resolved from the local Hugging Face cache through
`huggingface_hub` with `local_files_only` (nothing is downloaded).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import re

from irtools.errors import IrtoolsError, printable

#: Layers a config may declare for the graph to be traced (real models have at most a few hundred): an
#: architecture that shares one layer's weights across its depth (ALBERT) is built small whatever the
#: count, but its trace unrolls every layer.
MAX_TRACED_LAYERS = 1024
_LAYER_FIELDS = ("num_hidden_layers", "num_layers", "n_layer", "n_layers", "encoder_layers", "decoder_layers",
                 "num_encoder_layers", "num_decoder_layers")
#: How many times its input's bytes a trace is budgeted for (the activations it computes on the way).
TRACE_GROWTH = 64
#: Token ids traced for a text model when `--seq-len` is not given (clamped to the model's maximum positions).
DEFAULT_SEQ_LEN = 128
CONFIG = "config.json"
_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_BIN = "pytorch_model.bin"
_MISSING_TRANSFORMERS = ("reuse metrics left out: building the architecture from config.json needs transformers "
                         "(pip install irtools[hf]); spectral metrics come from the weights alone")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*(@[\w./-]+)?$")
_FILE_SUFFIXES = (".onnx", ".py", ".safetensors", ".bin", ".pt", ".pth", ".pt2", ".npz", ".h5", ".keras", ".ckpt",
                  ".json", ".gguf")
#: Config fields that bound the positions a text model can take, most specific first.
_MAX_POSITIONS = ("max_position_embeddings", "n_positions", "max_seq_len", "max_sequence_length", "n_ctx",
                  "context_length", "seq_length")


# -- recognising ---------------------------------------------------------------------------------
def _weight_files(path: str) -> list[str]:
    try:
        names = os.listdir(path)
    except OSError:
        return []
    return [n for n in names if n.endswith(".safetensors") or n in _INDEXES or n == _BIN]


def is_checkpoint_folder(source) -> bool:
    """A directory holding weights and a `transformers` `config.json` (one naming `model_type` or
    `architectures`; a folder with an empty or foreign config.json stays a weights folder). Cheap: a
    directory listing and one small JSON file, no import. A config.json the folder may not read (a
    symlink out of it, a FIFO: `model_member`) is not opened here: the folder is a checkpoint, and
    `read_config` says why its config is refused (before, the symlink's target was read)."""
    from irtools.files import model_member  # noqa: PLC0415

    if not (isinstance(source, str) and os.path.isdir(source) and _weight_files(source)):
        return False
    if not os.path.lexists(os.path.join(source, CONFIG)):
        return False
    try:
        full = model_member(source, CONFIG, "config")
    except IrtoolsError:
        return True
    try:
        if os.path.getsize(full) > 16_000_000:
            return False
        with open(full, "rb") as fh:
            config = json.loads(fh.read().decode("utf-8"))
    except (OSError, ValueError, RecursionError):  # ValueError: not UTF-8, not JSON, a 5,000-digit number
        return False
    return isinstance(config, dict) and bool(config.get("model_type") or config.get("architectures"))


def is_hub_id(source) -> bool:
    """`org/name[@revision]` that is not an existing path (nor a file name or `file.py:callable`)."""
    return (isinstance(source, str) and ":" not in source and not os.path.lexists(source)
            and bool(_HUB_ID.match(source)) and not source.partition("@")[0].lower().endswith(_FILE_SUFFIXES))


# -- reading -------------------------------------------------------------------------------------
def read_config(path: str) -> dict:
    from irtools.files import model_member  # noqa: PLC0415

    full = model_member(path, CONFIG, "config")
    if os.path.getsize(full) > 16_000_000:
        raise IrtoolsError("config.json is over 16 MB", path)
    try:
        with open(full, "rb") as fh:
            config = json.loads(fh.read().decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # not UTF-8, not JSON, a number past Python's digit limit
        raise IrtoolsError(f"config.json is not JSON ({type(exc).__name__})", path) from None
    if not isinstance(config, dict):
        raise IrtoolsError("config.json holds no JSON object", path)
    return config


def folder_tensors(path: str, trust: bool = False) -> dict:
    """{state_dict name: StoredArray} of the folder's weights (safetensors preferred, else the
    PyTorch .bin files through the restricted unpickler); lazy."""
    from irtools.files import model_member  # noqa: PLC0415
    from irtools.frontends.weights_file import checkpoint_order, read_weights  # noqa: PLC0415

    files = _weight_files(path)
    if any(f.endswith(".safetensors") or f == _INDEXES[0] for f in files):
        return read_weights(path, trust=trust)
    index = os.path.join(path, _INDEXES[1])
    if os.path.lexists(index):
        full = model_member(path, _INDEXES[1], "shard index")
        try:
            with open(full, "rb") as fh:
                weight_map = json.loads(fh.read().decode("utf-8")).get("weight_map")
        except (ValueError, AttributeError, RecursionError) as exc:
            raise IrtoolsError(f"{_INDEXES[1]} is not a shard index ({type(exc).__name__})", path) from None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise IrtoolsError(f"{_INDEXES[1]} has no weight_map of tensor names to shard files", path)
        out = {}
        for shard in sorted(set(weight_map.values())):
            for name, array in read_weights(model_member(path, shard, "shard"), trust=trust).items():
                if name in out:
                    raise IrtoolsError(f"tensor '{name}' is in two shards", path)
                out[name] = array
        missing = [k for k in weight_map if k not in out]
        if missing:
            raise IrtoolsError(f"the index names tensor '{missing[0]}', which no shard holds", path)
        return {k: out[k] for k in checkpoint_order(list(out))}
    return read_weights(model_member(path, _BIN, "weights file"), trust=trust)


# -- the architecture ----------------------------------------------------------------------------
def _transformers_class(path: str, config, raw: dict, trust: bool):
    """The model class config.json names: a `transformers` model class (`PreTrainedModel`) by its
    plain name in `architectures` (never a dotted path, a function or another kind of class), or,
    with `trust`, the class `auto_map` names in code shipped with the checkpoint."""
    import transformers  # noqa: PLC0415

    auto_map = raw.get("auto_map")
    names = raw.get("architectures") or []
    names = [names] if isinstance(names, str) else names
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise IrtoolsError("config.json's architectures is not a list of class names", path)
    if auto_map:
        from transformers.dynamic_module_utils import get_class_from_dynamic_module  # noqa: PLC0415

        refs = list(auto_map.values()) if isinstance(auto_map, dict) else []
        ref = next((auto_map[k] for k in ("AutoModelForCausalLM", "AutoModel") if k in auto_map), refs[0] if refs
                   else None) if isinstance(auto_map, dict) else None
        ref = ref[0] if isinstance(ref, list | tuple) and ref else ref
        if not isinstance(ref, str) or ref.count(".") != 1:
            raise IrtoolsError("config.json's auto_map names no class as 'module.Class'", path)
        cls = get_class_from_dynamic_module(ref, path, local_files_only=True)
        return _model_class(transformers, cls, ref, path)
    for arch in names:
        cls = getattr(transformers, arch, None) if arch.isidentifier() else None
        if cls is not None:
            return _model_class(transformers, cls, arch, path)
    if names:
        raise IrtoolsError(f"transformers {transformers.__version__} has no class {printable(names[0])!r} "
                           "(config.json's architectures)", path)
    return transformers.AutoModel._model_mapping[type(config)]


def _model_class(transformers, cls, named: str, path: str):
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise IrtoolsError(f"config.json's architectures names {printable(named)!r}, which is not a transformers "
                           "model class", path)
    return cls


def build_module(path: str, raw: dict, trust: bool, tensors: dict):
    """The architecture of `config.json` on the meta device (parameters hold no memory); buffers
    real: the checkpoint's own where it has them, the others as the model initialises them."""
    import torch  # noqa: PLC0415
    import transformers  # noqa: PLC0415

    with _quiet_transformers(transformers):
        config = transformers.AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=trust)
        cls = _transformers_class(path, config, raw, trust)
        with torch.device("meta"), _bounded_construction(torch, path, tensors):
            module = cls._from_config(config, attn_implementation="eager")
    from irtools import budget  # noqa: PLC0415

    persistent = set(module.state_dict())
    buffers = list(module.named_buffers())
    budget.check(sum(b.numel() * b.element_size() for _, b in buffers), "the architecture's buffers (config.json)",
                 path)
    for key, buf in buffers:
        owner, _, attr = key.rpartition(".")
        sub = module.get_submodule(owner) if owner else module
        if key in persistent and key in tensors and tuple(tensors[key].shape) == tuple(buf.shape):
            sub._buffers[attr] = _to_torch(torch, tensors[key].load()).to(buf.dtype)
            sub._buffers[attr]._is_hf_initialized = True
        else:
            sub._buffers[attr] = torch.empty_like(buf, device="cpu")
    for p in module.parameters():
        p._is_hf_initialized = True
    try:
        module.initialize_weights()  # the buffers no checkpoint holds (rotary frequencies, position ids)
    except Exception:  # noqa: BLE001  (an older model's init may not run on meta parameters: buffers stay empty)
        pass
    return module.eval(), config


#: Submodules an architecture may build per tensor of its checkpoint (plus `_MODULES_FREE`) before its
#: construction is stopped: real models build 1-3 per tensor (activations, dropouts and rotary embeddings
#: included); a config.json of 10^6 layers over a one-layer checkpoint would build for hours.
MODULES_PER_TENSOR = 32
_MODULES_FREE = 4096


@contextlib.contextmanager
def _quiet_transformers(transformers):
    """transformers' own warnings about a config (`Missing validation function ...`) kept off stderr:
    what matters reaches the user as irtools' one note."""
    verbosity = transformers.logging.get_verbosity()
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # "Loading weights: 100%|...|" from from_pretrained
    try:
        yield
    finally:
        transformers.logging.set_verbosity(verbosity)
        if bars:
            transformers.utils.logging.enable_progress_bar()


class _bounded_construction:
    """Stops building an architecture (one-line error) once it has registered more submodules than
    `MODULES_PER_TENSOR` per checkpoint tensor allow, before the work is done (a config.json can declare
    any number of layers; on the meta device each costs time, not memory)."""

    def __init__(self, torch, path: str, tensors: dict):
        self.torch, self.path = torch, path
        self.cap = MODULES_PER_TENSOR * len(tensors) + _MODULES_FREE
        self.count = 0

    def _hook(self, module, name, submodule):
        self.count += 1
        if self.count > self.cap:
            raise IrtoolsError(f"config.json's architecture builds over {self.cap:,} modules for a checkpoint of "
                               f"{(self.cap - _MODULES_FREE) // MODULES_PER_TENSOR:,} tensors (refused before "
                               "building it: does the config declare far more layers than the weights hold?)",
                               self.path)
        return None

    def __enter__(self):
        register = self.torch.nn.modules.module.register_module_module_registration_hook
        self.handle = register(self._hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def _to_torch(torch, array):
    import numpy as np  # noqa: PLC0415

    a = np.asarray(array)
    if a.dtype.kind == "V" or str(a.dtype) == "bfloat16":
        return torch.from_numpy(a.astype(np.float32)).to(torch.bfloat16)
    return torch.from_numpy(np.array(a))


def _text_config(config):
    """The config's text part: itself, or its text sub-config (CLIP's, LLaVA's `text_config`) where the
    top level has no vocabulary of its own."""
    if getattr(config, "vocab_size", None) is None:
        try:
            text = config.get_text_config()
        except Exception:  # noqa: BLE001  (an older or odd config: the top level it is)
            text = None
        if text is not None:
            return text
    return config


def _positions_bound(config) -> int | None:
    config = _text_config(config)
    for key in _MAX_POSITIONS:
        v = getattr(config, key, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def _positive(value, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default


def check_seq_len(seq_len) -> None:
    """`--seq-len`: a whole number of tokens from 1 to 2^31 (refused before any work)."""
    if seq_len is not None and (isinstance(seq_len, bool) or not isinstance(seq_len, int) or
                                not 1 <= seq_len <= 1 << 31):
        raise IrtoolsError(f"--seq-len: must be a whole number from 1 to {1 << 31:,}, got {printable(seq_len)}")


def _preprocessor(path: str) -> dict:
    from irtools.files import model_member  # noqa: PLC0415

    name = "preprocessor_config.json"
    try:  # the folder's own file (a symlink out of it, a FIFO: none), under 1 MB
        full = model_member(path, name, name) if os.path.lexists(os.path.join(path, name)) else None
    except IrtoolsError:
        full = None
    if full is None or os.path.getsize(full) > 1_000_000:
        return {}
    try:
        with open(full, "rb") as fh:
            data = json.loads(fh.read().decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def _image_tokens(config) -> bool:
    """Whether the config places image features at image tokens of its text (LLaVA-style): its image input
    needs those tokens in the ids, so the trace is of the text alone."""
    return any(getattr(config, key, None) is not None for key in ("image_token_id", "image_token_index"))


def _documented_rank(module, name: str) -> int | None:
    """The rank of input `name` as the model's forward documents it (transformers' docstrings: `name (`torch.Tensor`
    of shape `(batch_size, channels, sequence_length)`)`), or None where it says no shape."""
    doc = getattr(getattr(module, "forward", None), "__doc__", None) or ""
    found = re.search(rf"\b{re.escape(name)} \(`[^`]*` of shape `\(([^)`]*)\)`", doc)
    return len([d for d in found.group(1).split(",") if d.strip()]) if found else None


def _series_inputs(config, accepted: set, zeros) -> dict:
    """A time-series model's trace inputs: `past_values` over its context (PatchTST, PatchTSMixer: [1, context,
    channels]; Informer, Time Series Transformer: [1, context + largest lag(, input_size)] with the time features
    and the observed mask they require, and the prediction window's for their decoder)."""
    lags = [int(v) for v in getattr(config, "lags_sequence", None) or [] if isinstance(v, int)]
    past = _positive(getattr(config, "context_length", None), 32) + max(lags, default=0)
    width = _positive(getattr(config, "num_input_channels", None), 0) or _positive(
        getattr(config, "input_size", None), 1)
    per = (width,) if width > 1 or getattr(config, "num_input_channels", None) else ()
    out = {"past_values": zeros(1, past, *per)}
    times = sum(int(getattr(config, k, 0) or 0) for k in ("num_time_features", "num_dynamic_real_features"))
    ahead = _positive(getattr(config, "prediction_length", None), 1)
    for key, shape in (("past_time_features", (1, past, times)), ("past_observed_mask", (1, past, *per)),
                       ("future_values", (1, ahead, *per)), ("future_time_features", (1, ahead, times))):
        if key in accepted and (times or "time_features" not in key):
            out[key] = zeros(*shape) + 1 if key.endswith("mask") else zeros(*shape)
    return out


def trace_inputs(module, config, path: str, seq_len: int | None = None) -> dict:
    """The keyword inputs the model is traced with, from its config (see the module docstring)."""
    import inspect  # noqa: PLC0415

    import torch  # noqa: PLC0415

    from irtools import budget  # noqa: PLC0415

    main = getattr(module, "main_input_name", "input_ids")
    bound = _positions_bound(config)
    n = seq_len or DEFAULT_SEQ_LEN
    if bound is not None and seq_len is None:
        n = min(n, bound)
    elif bound is not None and seq_len > bound and main == "input_ids":
        raise IrtoolsError(f"--seq-len {seq_len:,} is over the model's {bound:,} positions (config.json)", path)
    # what the trace computes grows with the input: eager attention holds seq^2 scores per head
    text = _text_config(config)
    heads = _positive(getattr(text, "num_attention_heads", None), 1)
    width = _positive(getattr(text, "hidden_size", None), 1)
    budget.check(4.0 * (n * n * heads + 8 * n * width), f"the trace of {n:,} tokens (--seq-len)", path)
    vocab = _positive(getattr(text, "vocab_size", None), 2)

    def ids(k):
        return (torch.arange(k, dtype=torch.long) % max(vocab - 1, 1) + (1 if vocab > 1 else 0)).reshape(1, k)

    def zeros(*shape):  # a config's sizes are checked before the input (and the trace over it) is allocated
        shape = tuple(int(d) for d in shape)
        if any(d <= 0 for d in shape):
            raise IrtoolsError(f"config.json gives the trace input the shape {list(shape)}", path)
        budget.check(4.0 * math.prod(shape) * TRACE_GROWTH, f"the trace over a {list(shape)} input (config.json)",
                     path)
        return torch.zeros(*shape)

    def image(vision):  # one num_channels x image_size x image_size image of the (vision) config
        size = getattr(vision, "image_size", None) or _preprocessor(path).get("crop_size") or 224
        size = size.get("height", 224) if isinstance(size, dict) else size
        h, w = (size, size) if isinstance(size, int) else tuple(size)[:2]
        return zeros(1, int(getattr(vision, "num_channels", 3) or 3), int(h), int(w))

    try:
        accepted = set(inspect.signature(module.forward).parameters)
    except (TypeError, ValueError):
        accepted = set()
    kwargs: dict = {}
    if main == "pixel_values":
        # the image size of the config, else of its vision tower's (SAM's `vision_config`)
        kwargs[main] = image(config if getattr(config, "image_size", None) is not None else
                             getattr(config, "vision_config", None) or config)
    elif main == "input_values":
        pre = _preprocessor(path)
        # one second of audio; an audio codec (EnCodec, Mimi, DAC) documents it (batch, channels, time)
        samples = int(seq_len or pre.get("sampling_rate") or _positive(getattr(config, "sampling_rate", None), 16000))
        channels = _positive(getattr(config, "audio_channels", None), 1)
        kwargs[main] = zeros(1, channels, samples) if _documented_rank(module, main) == 3 else zeros(1, samples)
    elif main == "input_features":
        pre = _preprocessor(path)
        mels = int(getattr(config, "num_mel_bins", 0) or pre.get("feature_size") or 80)
        if getattr(config, "max_source_positions", None) and getattr(config, "num_mel_bins", None):
            kwargs[main] = zeros(1, mels, 2 * int(config.max_source_positions))  # Whisper's fixed window
        else:  # (batch, frames, features): Wav2Vec2-BERT's stacked frames are its feature projection's input
            per = int(getattr(config, "input_feat_per_channel", mels) or mels)
            feat = _positive(getattr(config, "feature_projection_input_dim", None), 0) or per * int(
                getattr(config, "input_channels", 1) or 1)
            kwargs[main] = zeros(1, seq_len or 64, feat)
    elif main == "past_values":  # a time series: a context window (Informer's lags reach further back)
        kwargs.update(_series_inputs(config, accepted, zeros))
    else:
        kwargs[main] = ids(n)
    vision = getattr(config, "vision_config", None)
    if main == "input_ids" and "pixel_values" in accepted and vision is not None and not _image_tokens(config):
        # a dual encoder (CLIP, SigLIP): its forward runs both towers, on the text and on an image
        kwargs["pixel_values"] = image(vision)
    if getattr(config, "is_encoder_decoder", False) and "decoder_input_ids" in accepted:
        kwargs["decoder_input_ids"] = ids(max(1, min(n, 8) if main != "input_ids" else n))
    if "use_cache" in accepted:
        kwargs["use_cache"] = False
    # a forward that takes use_cache only through **kwargs (GraniteMoe's LM head) reads it from the config:
    # with the cache on it returns a cache object, which no exporter can write as an output
    for top in {id(c): c for c in (config, getattr(module, "config", None)) if c is not None}.values():
        for part in [top] + [v for v in vars(top).values() if hasattr(v, "use_cache")]:
            if getattr(part, "use_cache", False) is True:
                part.use_cache = False
    if "return_dict" in accepted:
        kwargs["return_dict"] = True
    return kwargs


# -- the source table's row ----------------------------------------------------------------------
def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a module set to None in sys.modules (blocked), or half-initialised
        return False


def is_checkpoint_source(source) -> bool:
    """A checkpoint folder or a hub id (the source table's `recognise`)."""
    return is_checkpoint_folder(source) or is_hub_id(source)


def open_checkpoint_source(source: str, name: str, options):
    return open_checkpoint_folder(source, name, options) if os.path.isdir(source) else \
        open_hub_id(source, name, options)


def open_checkpoint_folder(path: str, name: str, options):
    """Both families of a checkpoint folder (see the module docstring)."""
    from irtools.frontends import OpenedSource  # noqa: PLC0415

    check_seq_len(getattr(options, "seq_len", None))
    raw = read_config(path)
    if raw.get("auto_map") and not options.trust:
        raise IrtoolsError("refused: config.json's auto_map runs code shipped with the checkpoint; pass --trust "
                           "(trust=True) only for checkpoints you trust", path)
    tensors = folder_tensors(path, trust=options.trust)
    if not tensors:
        raise IrtoolsError("the checkpoint folder holds no tensors", path)
    metadata = {"format": "huggingface", "architectures": list(raw.get("architectures") or []),
                "model_type": raw.get("model_type")}
    if not _importable("transformers") or not _importable("torch"):
        return _weights_only(path, name, options, tensors, metadata, _MISSING_TRANSFORMERS)
    if raw.get("quantization_config") or raw.get("quantization"):
        # stored quantized (fp8 blocks, GPTQ, AWQ, MLX ...): the weights readers dequantize them; the
        # architecture's graph would read tensors of other names and shapes
        return _weights_only(path, name, options, tensors, metadata,
                             "reuse metrics left out: the checkpoint is stored quantized (config.json's quantization "
                             "config); spectral metrics from its dequantized weights")
    from irtools.frontends.torch import export_structure, module_weight_layers  # noqa: PLC0415

    deep = _declared_depth(raw)
    if deep is not None:
        return _weights_only(path, name, options, tensors, metadata,
                             f"reuse metrics left out: config.json declares {deep[1]:,} layers ({deep[0]}), over the "
                             f"{MAX_TRACED_LAYERS:,} a graph is traced for (refused before building it); spectral "
                             "metrics from the weights alone")
    try:
        module, config = build_module(path, raw, options.trust, tensors)
        values = _parameter_values(module, path, config, raw, tensors, options.trust, metadata)
    except IrtoolsError as exc:
        return _weights_only(path, name, options, tensors, metadata,
                             f"reuse metrics left out: {exc.message}; spectral metrics from the weights alone")
    except Exception as exc:  # noqa: BLE001  (transformers cannot build it: the weights still can be analysed)
        from irtools.frontends.torch import export_reason  # noqa: PLC0415

        return _weights_only(path, name, options, tensors, metadata,
                             f"reuse metrics left out: transformers cannot build the architecture "
                             f"({export_reason(exc)}); spectral metrics from the weights alone")
    unread = [] if metadata.get("converted") else _unread_matrices(module, tensors)
    if unread:  # the architecture is not the checkpoint's model (fewer layers, other names): no weight is dropped
        return _weights_only(path, name, options, tensors, metadata,
                             f"reuse metrics left out: the architecture config.json describes has no parameter for "
                             f"{len(unread)} tensor(s) of the checkpoint (e.g. '{printable(unread[0])}'); spectral "
                             "metrics from the weights alone")
    absent = set(metadata.get("not_in_checkpoint", ()))
    made_up = sorted(k for k in absent if len(values[k].shape) >= 2)
    if made_up:  # the graph route would analyse the zeros it reads there as rows of weights nobody stored
        metadata.pop("not_in_checkpoint", None)
        return _weights_only(path, name, options, tensors, metadata,
                             f"reuse metrics left out: the architecture config.json describes has {len(made_up)} weight "
                             f"matri{'x' if len(made_up) == 1 else 'ces'} the checkpoint does not hold (e.g. '{printable(made_up[0])}'); spectral "
                             "metrics from the weights alone")
    layers = [layer for layer in module_weight_layers(module, {k: v.load for k, v in values.items()})
              if layer.parameter not in absent]
    renames, named = {}, layers
    if metadata.get("converted"):  # rows under the checkpoint's names (the rule: torch_names.checkpoint_named)
        named = _checkpoint_named(layers, module, tensors, metadata["converted"], raw)
        renames = {old.name: [new.name, new.parameter, list(new.weight_shape)]
                   for old, new in zip(layers, named, strict=True) if old.name != new.name}
    notes = []
    if absent:
        notes.append(f"{len(absent)} parameter(s) of the architecture are not in the checkpoint (e.g. "
                     f"'{sorted(absent)[0]}'): no spectral row; the graph reads zeros there")
    if metadata.get("converted"):
        converted = metadata["converted"]
        notes.append(f"{len(converted)} parameter(s) of the architecture are not stored under their own names "
                     f"(e.g. '{printable(converted[0])}'): their values are transformers' own loading of the "
                     "checkpoint, which renames or converts them")
    seq_len = getattr(options, "seq_len", None)
    model = None
    try:
        kwargs = trace_inputs(module, config, path, seq_len)
        metadata["trace_inputs"] = {k: list(v.shape) for k, v in kwargs.items() if hasattr(v, "shape")}
        model = export_structure(module, kwargs, values, name=name, opset=options.opset)
        if renames:  # the graph route's rows of those parameters under the checkpoint's names too
            from irtools.ir.fused import CHECKPOINT_NAMES_KEY  # noqa: PLC0415

            model.model.metadata_props[CHECKPOINT_NAMES_KEY] = json.dumps(renames)
    except IrtoolsError as exc:
        notes.append(f"reuse metrics left out: {exc.message}")
    except (Exception, MemoryError) as exc:  # noqa: BLE001  (the trace failed: the spectral family still holds)
        from irtools.frontends.torch import export_reason  # noqa: PLC0415

        notes.append(f"reuse metrics left out: the trace failed ({export_reason(exc)})")
    # the weights pass names the graph's rows by CHECKPOINT_NAMES_KEY too: the rows of both routes, one name each
    return OpenedSource(name, "checkpoint-folder", model=model, layers=named, metadata=metadata, notes=notes)


def _checkpoint_named(layers: list, module, tensors: dict, converted: list[str], raw: dict) -> list:
    """The rows of the parameters transformers converted on loading renamed to the checkpoint's tensors
    holding the same matrices (the weights-only route's rows of the tensors no parameter or buffer is
    named for): `block_sparse_moe.experts.3.w1`, not the module's `mlp.experts.gate_up_proj[3].gate`."""
    from irtools.frontends.formats.layers import weight_layers  # noqa: PLC0415
    from irtools.frontends.torch_names import checkpoint_named  # noqa: PLC0415

    known = set(module.state_dict()) | {k for k, _ in module.named_buffers(remove_duplicate=False)} | \
        {k for k, _ in module.named_parameters(remove_duplicate=False)}
    stored = weight_layers({k: t for k, t in tensors.items() if k not in known}, model_type=raw.get("model_type"))
    return checkpoint_named(layers, dict.fromkeys(converted, stored))


def _unread_matrices(module, tensors: dict) -> list[str]:
    """The checkpoint's matrices the architecture has no parameter or buffer for (a config of fewer layers
    than the weights hold), less what the class itself says to ignore on loading."""
    known = set(module.state_dict()) | {k for k, _ in module.named_buffers()}
    ignore = [re.compile(p) for p in getattr(module, "_keys_to_ignore_on_load_unexpected", None) or ()
              if isinstance(p, str)]
    return [k for k, t in tensors.items() if k not in known and len(t.shape) >= 2 and
            not any(p.search(k) for p in ignore)]


def _declared_depth(raw: dict) -> tuple[str, int] | None:
    """(field, count) of a layer count config.json declares over `MAX_TRACED_LAYERS` (at the top level
    or in a sub-config such as `text_config`), else None."""
    for part in [raw] + [v for v in raw.values() if isinstance(v, dict)]:
        for key in _LAYER_FIELDS:
            v = part.get(key)
            if isinstance(v, int) and not isinstance(v, bool) and v > MAX_TRACED_LAYERS:
                return key, v
    return None


def _weights_only(path: str, name: str, options, tensors: dict, metadata: dict, note: str):
    """The folder read as plain weights (the weights row's own reader where the folder holds safetensors,
    so quantized formats are dequantized as there), with one note saying why."""
    from irtools.frontends import OpenedSource  # noqa: PLC0415
    from irtools.frontends.weights_file import open_weights_file, weight_layers  # noqa: PLC0415

    if any(f.endswith(".safetensors") for f in _weight_files(path)):
        opened = open_weights_file(path, name, options)
        opened.kind = "checkpoint-folder"
        opened.metadata = {**metadata, **(opened.metadata or {})}
        opened.notes = [*opened.notes, note]
        return opened
    return OpenedSource(name, "checkpoint-folder", layers=weight_layers(tensors), metadata=metadata, notes=[note])


class _Converted:
    """A parameter whose stored layout differs from the module's, from transformers' loading."""

    def __init__(self, tensor):
        self._tensor = tensor
        self.shape = tuple(tensor.shape)
        import numpy as np  # noqa: PLC0415

        self.dtype = np.dtype("float32") if str(tensor.dtype) == "torch.bfloat16" else \
            np.dtype(str(tensor.dtype).removeprefix("torch."))

    def load(self):
        t = self._tensor.detach()
        return t.float().numpy() if str(t.dtype) == "torch.bfloat16" else t.numpy()


def _parameter_values(module, path, config, raw, tensors, trust, metadata) -> dict:
    """{parameter name: StoredArray-like} for every parameter of the module: the folder's tensor of that
    name, or (a layout transformers converts on loading) the tensor transformers' loading makes."""
    from irtools.frontends.torch import _unique_tensors  # noqa: PLC0415

    state = module.state_dict(keep_vars=True)
    params, aliases = _unique_tensors(state)
    params = [k for k in params if k in dict(module.named_parameters(remove_duplicate=False))]
    values = {}
    missing = []
    for k in params:
        names = [k] + [a for a, o in aliases.items() if o == k]
        found = next((n for n in names if n in tensors), None)
        _check_tied(names, tensors, path)
        if found is None:
            missing.append(k)
        elif tuple(tensors[found].shape) != tuple(state[k].shape):  # config.json describes another model
            raise IrtoolsError(f"tensor '{printable(found)}' has shape {tuple(tensors[found].shape)} in the checkpoint, "
                               f"the architecture config.json describes has {tuple(state[k].shape)}", path)
        else:
            values[k] = tensors[found]
    if missing:
        cls = type(module)
        try:
            import transformers  # noqa: PLC0415

            with _quiet_transformers(transformers):
                loaded, info = cls.from_pretrained(path, config=config, local_files_only=True,
                                                   trust_remote_code=trust, attn_implementation="eager",
                                                   output_loading_info=True)
        except Exception as exc:  # noqa: BLE001
            from irtools.frontends.torch import export_reason  # noqa: PLC0415

            raise IrtoolsError(f"parameter '{missing[0]}' is not in the checkpoint and transformers cannot load it "
                               f"({export_reason(exc)})", path) from None
        unread = sorted(k for k in info.get("unexpected_keys") or () if k in tensors and len(tensors[k].shape) >= 2)
        if unread:  # the checkpoint's matrices the architecture reads nothing from (a base class for a head model)
            raise IrtoolsError(f"the architecture config.json describes reads no parameter from {len(unread)} tensor(s) "
                               f"of the checkpoint (e.g. '{printable(unread[0])}')", path)
        got = dict(loaded.named_parameters(remove_duplicate=False))
        absent = set(info.get("missing_keys") or ()) | {k for k in missing if k not in got}
        for k in missing:
            if k in absent:  # the architecture has it, the checkpoint does not (a pooler saved without)
                values[k] = _Absent(tuple(module.get_parameter(k).shape))
            else:
                values[k] = _Converted(got[k])
        converted = [k for k in missing if k not in absent]
        if converted:
            metadata["converted"] = converted
        if absent:
            metadata["not_in_checkpoint"] = sorted(k for k in missing if k in absent)
    return values


def _check_tied(names: list[str], tensors: dict, path: str) -> None:
    """The architecture ties these parameter names to one tensor (config.json's tie_word_embeddings); if the
    checkpoint stores several of them, they must hold the same values, else the model is not tied and the graph
    would analyse one matrix where the checkpoint holds two (its other row dropped without a word)."""
    import numpy as np  # noqa: PLC0415

    present = [n for n in names if n in tensors]
    for other in present[1:]:
        a, b = tensors[present[0]], tensors[other]
        if tuple(a.shape) != tuple(b.shape) or not np.array_equal(np.asarray(a.load()), np.asarray(b.load())):
            raise IrtoolsError(f"config.json ties '{printable(other)}' to '{printable(present[0])}', but the "
                               "checkpoint holds different values under the two names", path)


class _Absent:
    """A parameter the checkpoint does not hold: no layer; the graph reads zeros (reuse needs shapes only)."""

    def __init__(self, shape):
        import numpy as np  # noqa: PLC0415

        self.shape, self.dtype = shape, np.dtype("float32")

    def load(self):
        import numpy as np  # noqa: PLC0415

        return np.broadcast_to(np.zeros((), np.float32), self.shape)


def resolve_hub_id(source: str) -> str:
    """The local snapshot folder of `org/name[@revision]` (never a download)."""
    repo, _, revision = source.partition("@")
    if not _importable("huggingface_hub"):  # most likely a path that does not exist: say that first
        raise IrtoolsError(f"no such file or directory (as a hub id, '{repo}' needs huggingface_hub: "
                           "pip install irtools[hf])", source)
    import huggingface_hub as hub  # noqa: PLC0415

    try:
        folder = hub.snapshot_download(repo, revision=revision or None, local_files_only=True)
    except Exception as exc:  # noqa: BLE001  (LocalEntryNotFoundError and friends: one line)
        raise IrtoolsError(f"no such file or directory, and hub id '{repo}'"
                           f"{f' @ {printable(revision)}' if revision else ''} is not in the local Hugging Face cache "
                           f"(irtools never downloads; {type(exc).__name__})") from None
    # the cache's refs/<revision> file names the snapshot: one folder name under <repo>/snapshots, never a path
    folder = os.fspath(folder)
    snapshots = os.path.dirname(os.path.normpath(folder))
    if os.path.basename(snapshots) != "snapshots" or os.path.dirname(os.path.realpath(folder)) != \
            os.path.realpath(snapshots):
        raise IrtoolsError(f"the local Hugging Face cache's entry for '{repo}' names a snapshot outside its "
                           f"snapshots folder ({printable(folder)!r}; refused)")
    return folder


def open_hub_id(source: str, name: str, options):
    from irtools.frontends.weights_file import is_weights_file, open_weights_file  # noqa: PLC0415

    folder = resolve_hub_id(source)
    if is_checkpoint_folder(folder):
        opened = open_checkpoint_folder(folder, name, options)
    elif is_weights_file(folder):
        opened = open_weights_file(folder, name, options)
    else:
        raise IrtoolsError(f"the cached snapshot of '{source}' holds no config.json with weights", folder)
    opened.metadata["hub_id"] = source
    opened.metadata["snapshot"] = folder
    return opened
