"""Load pickles from outside (AVSBench's log-mel ``.pkl`` files) without letting them run code.

A pickle is a small program: every global it names is imported and may be called. The
AVSBench log-mel pickles hold one torch float tensor ``[T, 1, 96, 64]`` written with plain
``pickle.dump``; some tools write numpy arrays instead. :func:`loads` unpickles with an
allow-list that covers exactly those two shapes of data:

- a torch tensor: ``torch._utils._rebuild_tensor_v2`` (checked: no hooks, no metadata, int
  sizes) over a storage from ``torch.storage._load_from_bytes``, which is REPLACED by a loader
  that calls ``torch.load(..., weights_only=True)`` (PyTorch's own restricted unpickler);
  ``collections.OrderedDict`` for the (empty) hook dictionary; ``_codecs.encode`` with
  latin-1 only (protocol 2 writes bytes that way);
- a numpy array: ``numpy[._core].multiarray._reconstruct`` (plain ``ndarray`` only),
  ``numpy[._core].numeric._frombuffer``, ``numpy[._core].multiarray.scalar`` and
  ``numpy.dtype``, all refusing the object dtype (whose items would be arbitrary objects).

Any other global stops the load with :class:`UnsafePickleError` naming the file and the
global, before anything it refers to is imported or called.
"""
from __future__ import annotations

import io
import pickle
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asks for something other than a tensor or an array; nothing of it was run."""

    def __init__(self, source: str, what: str):
        self.source = source
        self.what = what
        super().__init__(
            f"refusing to unpickle {source}: {what} (only torch tensors and numpy arrays may be loaded "
            f"from outside pickles)"
        )


def _refuse_object_dtype(dt: np.dtype, source: str) -> np.dtype:
    if dt.hasobject:
        raise UnsafePickleError(source, f"numpy dtype {dt} holds Python objects")
    return dt


def _allowed_globals(source: str) -> dict[tuple[str, str], Callable[..., Any] | type]:
    """(module, name) -> the object the unpickler may use for it."""
    import torch

    def load_storage(data: bytes):
        if not isinstance(data, (bytes, bytearray)):
            raise UnsafePickleError(source, f"tensor storage is {type(data).__name__}, not bytes")
        storage = torch.load(io.BytesIO(bytes(data)), weights_only=True, map_location="cpu")
        if not isinstance(storage, torch.storage.TypedStorage):
            raise UnsafePickleError(source, f"tensor storage decodes to {type(storage).__name__}")
        return storage

    def rebuild_tensor(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
        if not isinstance(storage, torch.storage.TypedStorage):
            raise UnsafePickleError(source, f"tensor built over {type(storage).__name__}, not a storage")
        if backward_hooks:
            raise UnsafePickleError(source, "tensor carries backward hooks")
        if metadata:
            raise UnsafePickleError(source, "tensor carries extra metadata")
        ints = [storage_offset, *size, *stride]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in ints):
            raise UnsafePickleError(source, "tensor size, stride or offset is not a whole number")
        return torch._utils._rebuild_tensor_v2(
            storage, storage_offset, tuple(size), tuple(stride), bool(requires_grad), OrderedDict()
        )

    def encode(text, encoding="utf-8", errors="strict"):
        # Protocol 2 stores bytes as _codecs.encode(str, "latin1"); no other codec is needed.
        if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
            raise UnsafePickleError(source, f"_codecs.encode with encoding {encoding!r}")
        return text.encode("latin-1")

    def make_dtype(*args, **kwargs):
        return _refuse_object_dtype(np.dtype(*args, **kwargs), source)

    def reconstruct(subtype, shape, dtype_code):
        if subtype is not np.ndarray:
            raise UnsafePickleError(source, f"array subtype {subtype!r}")
        return np.ndarray.__new__(np.ndarray, shape, dtype_code)

    def frombuffer(buffer, dtype, shape, order):
        _refuse_object_dtype(np.dtype(dtype), source)
        return np.frombuffer(buffer, dtype=dtype).reshape(shape, order=order)

    def scalar(dtype, data=None):
        _refuse_object_dtype(np.dtype(dtype), source)
        if not isinstance(data, (bytes, bytearray)):
            raise UnsafePickleError(source, "numpy scalar without raw bytes")
        return np.frombuffer(bytes(data), dtype=dtype)[0]

    allowed: dict[tuple[str, str], Any] = {
        ("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor,
        ("torch.storage", "_load_from_bytes"): load_storage,
        ("collections", "OrderedDict"): OrderedDict,
        ("_codecs", "encode"): encode,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): make_dtype,
    }
    for core in ("numpy.core", "numpy._core"):  # numpy 1.x and 2.x module names
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str):
        super().__init__(file)
        self._source = source
        self._allowed = _allowed_globals(source)

    def find_class(self, module: str, name: str):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(self._source, f"it asks for the global {module}.{name}") from None

    def persistent_load(self, pid):
        raise UnsafePickleError(self._source, f"it uses a persistent id ({pid!r})")


def loads(data: bytes, source: str) -> Any:
    """Unpickle untrusted bytes that should hold a torch tensor or a numpy array.

    source names the file in error messages. Raises UnsafePickleError when the pickle asks
    for anything outside the allow-list, ValueError when it is not a readable pickle.
    """
    try:
        return _RestrictedUnpickler(io.BytesIO(data), source).load()
    except UnsafePickleError:
        raise
    except Exception as e:  # noqa: BLE001 - truncated or garbled bytes, wrong format...
        raise ValueError(f"cannot unpickle {source}: {type(e).__name__}: {e}") from None


def load_array(data: bytes, source: str) -> np.ndarray:
    """float32 numpy array from a pickled torch tensor or numpy array (see :func:`loads`)."""
    import torch

    obj = loads(data, source)
    if isinstance(obj, torch.Tensor):
        return obj.detach().to(torch.float32).cpu().numpy()
    if isinstance(obj, np.ndarray):
        return obj.astype(np.float32)
    raise ValueError(f"{source} holds a {type(obj).__name__}, expected a tensor or an array")
