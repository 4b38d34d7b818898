"""CUDA backend: the CPU backend's eigenvalues, computed on GPUs with PyTorch, in float64.

Weights go to the device in their stored dtype (float16, bfloat16, float32, float64) and are
widened to float64 there; the Gram product W^T W and the symmetric eigensolve
(`torch.linalg.eigvalsh`, cuSOLVER syevd) run in float64, or with `method="svd"` the singular
values (`torch.linalg.svdvals`), exactly the routes and noise floors of the CPU backend
(`irtools.backends.cpu.gram_route`, `noise_floor`), so that the numbers equal the CPU's (eigenvalues
to round-off; NaN/Inf weights give NaN spectra there too).

Scheduling (`map_spectra`): the spectral pass hands over layers sorted by shape; matrices of
one shape and dtype (conv kernel slices, attention heads, layers of one size) are stacked into
batches of at most `max_bytes` of device memory each (stored copy + float64 copy + Gram +
eigensolver workspace) and `HOST_BATCH_BYTES` of host memory. A producer thread loads the
layers and builds the batches; one worker thread per device takes every k-th batch (layers are
spread over all visible GPUs), stages it in pinned host memory and copies it on a copy stream
while the previous batch is computed on the compute stream. A matrix bigger than the bound has its
Gram accumulated over row blocks (block k+1 copied while block k is multiplied); one whose m x m Gram and eigensolver workspace
alone exceed the bound is computed by the CPU backend, with a note in `notes`.

The array code is device-generic: with `device="cpu"` the same functions run on torch's CPU
device (no streams, no pinned memory), which is how the tests check them on machines with no GPU.
"""

from __future__ import annotations

import ctypes
import importlib.util
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from irtools.backends.base import EigenBackend, Spectrum
from irtools.backends.cpu import CPUBackend, gram_route, noise_floor, non_finite
from irtools.errors import IrtoolsError

INSTALL_HINT = ("pip install 'irtools[cuda]' (a CUDA build of PyTorch, numba-cuda) on a machine with an NVIDIA "
                "GPU and driver")
#: Device memory for one batch when there is no GPU to ask (torch's CPU device, in tests).
CPU_DEVICE_BYTES = 1 << 30
#: Fraction of a GPU's free memory one batch may use.
FREE_MEMORY_FRACTION = 0.5
#: Host bytes of one batch's stacked weights (bigger batches do not keep a GPU busier; at most
#: about 3 batches per device are in host memory at once).
HOST_BATCH_BYTES = 256 << 20
_F64 = 8


_DRIVER_LIBRARIES = ("libcuda.so.1", "libcuda.so", "nvcuda.dll")
_CUDA_ERROR_NO_DEVICE = 100


def _driver():
    """The NVIDIA driver library (ctypes), or None when it does not load."""
    for name in _DRIVER_LIBRARIES:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def _driver_loads() -> bool:
    """Whether the NVIDIA driver library loads (checked without importing torch)."""
    return _driver() is not None


def _driver_devices() -> int:
    """CUDA devices the driver sees (cuInit, cuDeviceGetCount through ctypes: CUDA_VISIBLE_DEVICES
    applies), -1 when the driver does not load or fails to initialise. No torch import."""
    lib = _driver()
    if lib is None:
        return -1
    try:
        status = lib.cuInit(0)
        if status == _CUDA_ERROR_NO_DEVICE:
            return 0
        count = ctypes.c_int(0)
        if status != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return -1
        return count.value
    except (AttributeError, OSError):
        return -1


def _torch_cuda_build() -> tuple[str, str | None]:
    """(torch's version, the CUDA version it was built for or None) read from torch/version.py
    as text, so that a CPU-only build is recognised without importing torch (1-2 s); ("", "?")
    when the file cannot be read (then torch itself is asked)."""
    import ast

    spec = importlib.util.find_spec("torch")
    try:
        folder = list(spec.submodule_search_locations)[0]
        with open(f"{folder}/version.py", encoding="utf-8") as fh:
            text = fh.read()
        values = {}
        for node in ast.parse(text).body:
            if isinstance(node, (ast.Assign, ast.AnnAssign)):
                target = node.targets[0] if isinstance(node, ast.Assign) else node.target
                if isinstance(target, ast.Name) and target.id in ("__version__", "cuda") and node.value is not None:
                    values[target.id] = ast.literal_eval(node.value)
        return str(values["__version__"]), values["cuda"]
    except (AttributeError, IndexError, KeyError, OSError, SyntaxError, TypeError, ValueError):
        return "", "?"


#: What `--device auto` probes, in order (for the CLI's help): nothing here imports torch until
#: all three hold, and CUDA is not initialised for a CPU-only torch.
AUTO_PROBES = ("the installed PyTorch is a CUDA build (read from torch/version.py), the NVIDIA driver loads "
               "(libcuda.so.1) and cuInit/cuDeviceGetCount find a CUDA device; only then is torch imported and "
               "torch.cuda.is_available() asked")


def gpu_problem(spec: str = "cuda") -> str:
    """Why `spec` ("cuda" or "cuda:N") names no usable GPU here, or "" when it does.

    The driver and the PyTorch build are checked first without importing torch (ctypes, and
    torch/version.py read as text), so that a machine without a GPU never pays torch's import."""
    if importlib.util.find_spec("torch") is None:
        return "PyTorch is not installed"
    version, build = _torch_cuda_build()
    if build is None:  # no CUDA initialised at all (cuInit in a process that later forks is best avoided)
        driver = [] if _driver_loads() else ["no NVIDIA driver (libcuda.so.1 does not load)"]
        return "; ".join(driver + [f"PyTorch {version} is a CPU-only build"])
    devices = _driver_devices()
    if devices < 0:
        return "no NVIDIA driver (libcuda.so.1 does not load or cuInit fails)"
    if devices == 0:
        return "the NVIDIA driver sees no CUDA device (check CUDA_VISIBLE_DEVICES)"
    import torch

    if torch.version.cuda is None:
        return f"PyTorch {torch.__version__} is a CPU-only build"
    if not torch.cuda.is_available():
        return "torch.cuda.is_available() is False (no visible CUDA device; check CUDA_VISIBLE_DEVICES)"
    if ":" in spec:
        index, count = int(spec.split(":", 1)[1]), torch.cuda.device_count()
        if index >= count:
            return f"{spec} asked for, but {count} CUDA device(s) are visible"
    return ""


def usable() -> bool:
    """Whether `--device auto` should use the GPU(s)."""
    return not gpu_problem("cuda")


def resolve_devices(device: str | Sequence[str]) -> list[str]:
    """Torch device names for "cuda" (every visible GPU), "cuda:N", "cpu" (the array code on the
    CPU, for tests) or a list of them; IrtoolsError naming what is missing for an unusable GPU."""
    specs = [device] if isinstance(device, str) else list(device)
    out = []
    for spec in specs:
        if spec != "cpu" and not (spec == "cuda" or (spec.startswith("cuda:") and spec[5:].isdigit())):
            raise IrtoolsError(f"unknown device '{spec}' (use auto, cpu, cuda or cuda:N)")
        if spec.startswith("cuda"):
            problem = gpu_problem(spec)
            if problem:
                raise IrtoolsError(f"--device {spec}: no usable GPU: {problem}. Install: {INSTALL_HINT}")
            if spec == "cuda":
                import torch

                out += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
                continue
        out.append(spec)
    return out


def host_matrix(w) -> np.ndarray:
    """W as the CPU backend sees it (tall, N >= M), in its stored dtype when torch has it."""
    w = np.asarray(w)
    if w.dtype not in (np.float16, np.float32, np.float64) and w.dtype.name != "bfloat16":
        w = w.astype(np.float32 if w.dtype.itemsize <= 4 else np.float64)  # fp8, ints: as the CPU does
    return w.T if w.shape[0] < w.shape[1] else w


def to_torch(a: np.ndarray):
    """A numpy array (bfloat16 too, via its bits) as a CPU tensor sharing its memory."""
    import torch

    a = np.ascontiguousarray(a)
    if a.dtype.name == "bfloat16":
        return torch.from_numpy(a.view(np.uint16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def batch_eigenvalues(stack, method: str):
    """Ascending eigenvalues of W^T W for a (B, n, m) tensor of tall matrices on any device,
    in float64, and which matrices were finite (the others' rows are zeros, to be discarded)."""
    import torch

    w = stack.to(torch.float64)
    if gram_route(w.shape[-1], method):
        return gram_eigenvalues(w.mT @ w)
    finite = torch.isfinite(w).all(dim=(-2, -1))
    w = torch.where(finite[:, None, None], w, 0.0)
    sv = torch.linalg.svdvals(w)
    ev = torch.sort(sv * sv, dim=-1).values
    return ev, finite & torch.isfinite(ev).all(dim=-1)


def gram_eigenvalues(gram):
    """Eigenvalues (ascending, clipped at 0) of a (B, m, m) float64 Gram stack, and which Grams
    were finite: a NaN or Inf in column j of W makes G[j, j] NaN or Inf (so does overflow)."""
    import torch

    finite = torch.isfinite(torch.diagonal(gram, dim1=-2, dim2=-1)).all(dim=-1)
    gram = torch.where(finite[:, None, None], gram, 0.0)  # the eigensolver fails on NaN
    return torch.linalg.eigvalsh(gram).clamp_min(0.0), finite


def spectrum(ev: np.ndarray, finite: bool, n: int, m: int, gram: bool) -> Spectrum:
    """The CPU backend's Spectrum of one matrix from its eigenvalues."""
    if not finite:
        return non_finite(m)
    return Spectrum(ev, noise_floor(float(ev[-1]), n, m, gram) if ev.size else 0.0)


def device_bytes(n: int, m: int, itemsize: int, method: str) -> int:
    """Device memory one n x m matrix needs: stored and float64 copies, then the Gram, its copy
    and the eigensolver's workspace (syevd: about 2 m^2), or the SVD's copies."""
    if gram_route(m, method):
        return n * m * (itemsize + _F64) + 4 * m * m * _F64
    return n * m * (itemsize + 3 * _F64)


class _Stopped(Exception):
    """The consumer of `map_spectra` went away."""


def _put(q: queue.Queue, item, stop: threading.Event) -> bool:
    """Put into a bounded queue unless `stop` is set first (then False)."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.05)
            return True
        except queue.Full:
            continue
    return False


def _get(q: queue.Queue, stop: threading.Event):
    """The next item, or None once `stop` is set."""
    while not stop.is_set():
        try:
            return q.get(timeout=0.05)
        except queue.Empty:
            continue
    return None


@dataclass(slots=True)
class _Batch:
    """Matrices of one shape and dtype: (layer position, slot in the layer) and the host stack."""

    slots: list[tuple[int, int]]
    host: np.ndarray  # (B, n, m), or (n, m) for a blocked one
    blocked_rows: int = 0  # > 0: one matrix whose Gram is accumulated over blocks of these rows


@dataclass(slots=True)
class _Layer:
    mats: Sequence[np.ndarray]
    spectra: list = field(default_factory=list)
    missing: int = 0


class _Device:
    """One torch device: uploads through pinned memory on a copy stream (CUDA) and computes on
    a compute stream; on the CPU device both are the identity."""

    def __init__(self, name: str):
        import torch

        self.torch = torch
        self.device = torch.device(name)
        self.is_cuda = self.device.type == "cuda"
        if self.is_cuda:
            self.copy_stream = torch.cuda.Stream(self.device)
            self.compute_stream = torch.cuda.Stream(self.device)

    def upload(self, a: np.ndarray):
        """Start copying `a` to the device; returns (tensor, event to wait on)."""
        host = to_torch(a)
        if not self.is_cuda:
            return host, None
        torch = self.torch
        pinned = torch.empty(host.shape, dtype=host.dtype, pin_memory=True)
        pinned.copy_(host)
        with torch.cuda.stream(self.copy_stream):
            tensor = pinned.to(self.device, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.copy_stream)
        return tensor, event

    def run(self, fn: Callable, tensor=None, event=None):
        """fn(tensor) on the compute stream, after the tensor's copy (its `event`)."""
        if not self.is_cuda:
            return fn(tensor)
        with self.torch.cuda.stream(self.compute_stream):
            if event is not None:
                self.compute_stream.wait_event(event)
            if tensor is not None:  # allocated on the copy stream, used here
                tensor.record_stream(self.compute_stream)
            return fn(tensor)

    def fetch(self, *tensors) -> list[np.ndarray]:
        """Results back on the host (waits for the compute stream)."""
        if self.is_cuda:
            with self.torch.cuda.stream(self.compute_stream):
                out = [t.to("cpu") for t in tensors]
            self.compute_stream.synchronize()
            return [t.numpy() for t in out]
        return [t.numpy() for t in tensors]

    def free_bytes(self) -> int:
        if not self.is_cuda:
            return CPU_DEVICE_BYTES
        return int(self.torch.cuda.mem_get_info(self.device)[0] * FREE_MEMORY_FRACTION)


class CUDABackend(EigenBackend):
    """float64 eigenvalues on GPUs (all visible ones for "cuda"), equal to the CPU backend's.

    `max_bytes` bounds the device memory of one batch (default: half of the smallest free
    memory of the devices); `device="cpu"` runs the same array code on torch's CPU device."""

    name = "cuda"
    batches_layers = True  # the spectral pass hands over all layers at once (`map_spectra`)

    def __init__(self, method: str = "auto", device: str | Sequence[str] = "cuda", max_bytes: int | None = None):
        if method not in ("auto", "svd", "gram"):
            raise ValueError(f"unknown eigenvalue method {method!r}")
        self.method = method
        self.device_names = resolve_devices(device)
        if not self.device_names:
            raise IrtoolsError(f"--device {device}: no CUDA device is visible. Install: {INSTALL_HINT}")
        self.devices = [_Device(name) for name in self.device_names]
        self.max_bytes = int(max_bytes) if max_bytes else min(d.free_bytes() for d in self.devices)
        self.notes: list[str] = []

    # -- the EigenBackend interface ----------------------------------------------------
    def spectra(self, matrices: Sequence[np.ndarray]) -> list[Spectrum]:
        ((_, _, out),) = list(self.map_spectra([lambda: matrices]))
        return out

    def map_spectra(
        self, sources: Iterable[Callable[[], Sequence[np.ndarray]]]
    ) -> Iterator[tuple[int, Sequence[np.ndarray], list[Spectrum]]]:
        layers: dict[int, _Layer] = {}
        results: queue.Queue = queue.Queue()
        stop = threading.Event()
        inboxes = [queue.Queue(maxsize=2) for _ in self.devices]  # bounds the host memory in flight
        workers = [threading.Thread(target=self._work, args=(dev, inbox, results, stop), daemon=True,
                                    name=f"irtools-{dev.device}") for dev, inbox in zip(self.devices, inboxes)]
        producer = threading.Thread(target=self._produce, args=(sources, layers, inboxes, results, stop), daemon=True,
                                    name="irtools-batches")
        for t in workers + [producer]:
            t.start()
        running = len(workers) + 1
        try:
            while running:
                kind, payload = results.get()
                if kind == "error":
                    raise payload
                if kind == "stopped":
                    running -= 1
                    continue
                for (pos, slot), sp in payload:
                    layer = layers[pos]
                    layer.spectra[slot] = sp
                    layer.missing -= 1
                    if layer.missing == 0:
                        del layers[pos]
                        yield pos, layer.mats, layer.spectra
        finally:
            stop.set()  # producer and workers stop if the consumer stopped early (an error, a break)

    # -- producer: layers -> batches ----------------------------------------------------
    def _produce(self, sources, layers: dict, inboxes: list, results: queue.Queue, stop: threading.Event) -> None:
        try:
            count = 0

            def send(batch: _Batch):
                nonlocal count
                if not _put(inboxes[count % len(inboxes)], batch, stop):
                    raise _Stopped
                count += 1

            open_key, open_slots, open_mats, open_bytes, open_host = None, [], [], 0, 0

            def flush():
                nonlocal open_key, open_slots, open_mats, open_bytes, open_host
                if open_slots:
                    send(_Batch(open_slots, np.stack(open_mats)))
                open_key, open_slots, open_mats, open_bytes, open_host = None, [], [], 0, 0

            for pos, load in enumerate(sources):
                mats = load()
                layers[pos] = _Layer(mats, [None] * len(mats), len(mats))
                for slot, w in enumerate(mats):
                    w = host_matrix(w)
                    n, m = w.shape
                    if m == 0:
                        results.put(("done", [((pos, slot), Spectrum(np.zeros(0), 0.0))]))
                        continue
                    need = device_bytes(n, m, w.dtype.itemsize, self.method)
                    if need > self.max_bytes:
                        flush()
                        self._oversized(pos, slot, w, send, results)
                        continue
                    key = (n, m, w.dtype)
                    if (key != open_key or open_bytes + need > self.max_bytes
                            or open_host + w.nbytes > HOST_BATCH_BYTES):
                        flush()
                        open_key = key
                    open_slots.append((pos, slot))
                    open_mats.append(w)
                    open_bytes += need
                    open_host += w.nbytes
            flush()
        except _Stopped:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            results.put(("error", exc))
        finally:
            for inbox in inboxes:
                _put(inbox, None, stop)
            results.put(("stopped", None))

    def _oversized(self, pos: int, slot: int, w: np.ndarray, send, results: queue.Queue) -> None:
        """A matrix over the batch bound: its Gram over row blocks, or the CPU when even the
        Gram does not fit."""
        n, m = w.shape
        per_row = m * (w.dtype.itemsize + _F64)
        room = self.max_bytes - 4 * m * m * _F64
        if gram_route(m, self.method) and room >= per_row * min(n, 64):
            send(_Batch([(pos, slot)], w, blocked_rows=max(1, min(n, room // per_row))))
            return
        gib = self.max_bytes / 2**30
        self.notes.append(f"a {n} x {m} matrix does not fit the GPU memory bound ({gib:.2g} GiB per batch): "
                          f"its eigenvalues were computed on the CPU")
        results.put(("done", [((pos, slot), CPUBackend(self.method).spectra([w])[0])]))

    # -- one worker per device: copy batch k+1 while batch k computes --------------------
    def _work(self, dev: _Device, inbox: queue.Queue, results: queue.Queue, stop: threading.Event) -> None:
        try:
            pending = None
            while True:
                batch = _get(inbox, stop)
                if batch is None:
                    break
                if batch.blocked_rows:
                    if pending is not None:
                        results.put(("done", self._collect(dev, *pending)))
                        pending = None
                    results.put(("done", self._blocked(dev, batch)))
                    continue
                staged = dev.upload(batch.host)
                if pending is not None:
                    results.put(("done", self._collect(dev, *pending)))
                pending = (batch, dev.run(lambda t: batch_eigenvalues(t, self.method), *staged))
            if pending is not None:
                results.put(("done", self._collect(dev, *pending)))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            results.put(("error", exc))
        finally:
            results.put(("stopped", None))

    def _collect(self, dev: _Device, batch: _Batch, out) -> list:
        ev, finite = dev.fetch(*out)
        _, n, m = batch.host.shape
        gram = gram_route(m, self.method)
        return [(s, spectrum(ev[b], bool(finite[b]), n, m, gram)) for b, s in enumerate(batch.slots)]

    def _blocked(self, dev: _Device, batch: _Batch) -> list:
        torch = dev.torch
        w, rows = batch.host, batch.blocked_rows
        n, m = w.shape
        gram = dev.run(lambda _: torch.zeros((1, m, m), dtype=torch.float64, device=dev.device))

        def accumulate(block):
            b = block.to(torch.float64)
            gram[0].addmm_(b.mT, b)

        staged = dev.upload(w[:rows])
        for start in range(0, n, rows):
            current = staged
            if start + rows < n:  # the next block's copy runs while this one is multiplied
                staged = dev.upload(w[start + rows:start + 2 * rows])
            dev.run(accumulate, *current)
        ev, finite = dev.fetch(*dev.run(lambda _: gram_eigenvalues(gram)))
        return [(batch.slots[0], spectrum(ev[0], bool(finite[0]), n, m, True))]
