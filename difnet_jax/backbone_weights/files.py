"""Named tensors from PyTorch (`.pth`/`.pt`), `.safetensors` and `.npz` files, as numpy arrays, without PyTorch.

A `.pth` written by `torch.save` (PyTorch >= 1.6) is a zip archive holding a pickle
(`data.pkl`) whose tensors point at raw storages (`data/<key>`). Unpickling it with
`pickle` would let the file run arbitrary code, so `read_tensors` uses an unpickler
that accepts only what a state dict is made of: dicts, `OrderedDict`, numbers and
strings, and torch's tensor/parameter rebuild functions, which it rebuilds as numpy
arrays from the storages. Anything else (a pickled module, an optimizer, a lambda)
is refused with its name: such files need `torch.load` in a trusted session, and
`python -m experiments.convert_weights` then writes the portable `.npz` once.

`.safetensors` files are read with the `safetensors` library, `.npz` with numpy
(`allow_pickle=False`).
"""

from __future__ import annotations

import collections
import os
import pickle
import tempfile
import zipfile
from collections.abc import Mapping

import ml_dtypes
import numpy as np

SUFFIXES = (".pth", ".pt", ".safetensors", ".npz")

# torch storage classes -> numpy dtypes.
_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
# Top-level keys under which training scripts commonly nest the state dict.
_NESTING_KEYS = ("state_dict", "model", "model_state_dict", "module")


class WeightFileError(ValueError):
    """A weight file that cannot be read, named with its path."""


def read_tensors(path: str) -> dict[str, np.ndarray]:
    """{name: array} of a state-dict file; `module.` prefixes (DataParallel) are stripped."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weight file {path!r} does not exist")
    suffix = os.path.splitext(path)[1].lower()
    if suffix in (".pth", ".pt"):
        tensors = _read_torch_zip(path)
    elif suffix == ".safetensors":
        from safetensors.numpy import load_file

        try:
            tensors = load_file(path)
        except Exception as error:  # noqa: BLE001 (the library raises several types for a bad file)
            raise WeightFileError(f"{path}: not a readable .safetensors file ({error})") from error
    elif suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as archive:
                tensors = {name: archive[name] for name in archive.files}
        except (OSError, ValueError, zipfile.BadZipFile) as error:
            raise WeightFileError(f"{path}: not a readable .npz file ({error})") from error
    else:
        raise WeightFileError(f"{path}: unknown weight file type {suffix!r}; expected one of {SUFFIXES}")
    return _strip_prefix(tensors, "module.")


def write_npz(path: str, tensors: Mapping[str, np.ndarray]) -> None:
    """Writes `tensors` to `path` atomically: a failure leaves any existing file untouched."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".npz.tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **{name: np.asarray(value) for name, value in tensors.items()})
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _strip_prefix(tensors: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    if tensors and all(name.startswith(prefix) for name in tensors):
        return {name[len(prefix):]: value for name, value in tensors.items()}
    return tensors


class _StorageType:
    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)


def _rebuild_tensor(storage, offset, size, stride, *_unused):
    """torch._utils._rebuild_tensor_v2: a strided view of `storage`, copied to a contiguous array."""
    itemsize = storage.dtype.itemsize
    if not size:
        return np.array(storage[offset])
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride), writeable=False
    )
    return np.ascontiguousarray(view)


def _rebuild_parameter(data, *_unused):
    return data


class _StateDictUnpickler(pickle.Unpickler):
    _ALLOWED = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    }

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, path: str, big_endian: bool):
        super().__init__(file)
        self.archive, self.prefix, self.path, self.big_endian = archive, prefix, path, big_endian
        self.storages: dict[str, np.ndarray] = {}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        raise WeightFileError(
            f"{self.path}: holds a pickled {module}.{name}; only tensors, dicts and numbers are read without "
            "PyTorch (unpickling anything else can run code). Save model.state_dict() instead, or convert the "
            "file with `python -m experiments.convert_weights --trusted_torch_load` if you trust its source."
        )

    def persistent_load(self, pid):
        kind, storage_type, key, _location, numel = pid
        if kind != "storage" or not isinstance(storage_type, _StorageType):
            raise WeightFileError(f"{self.path}: unsupported storage record {pid!r}")
        if key not in self.storages:
            raw = self.archive.read(f"{self.prefix}data/{key}")
            dtype = storage_type.dtype.newbyteorder(">") if self.big_endian else storage_type.dtype
            self.storages[key] = np.frombuffer(raw, dtype=dtype, count=numel).astype(storage_type.dtype)
        return self.storages[key]


def _read_torch_zip(path: str) -> dict[str, np.ndarray]:
    if not zipfile.is_zipfile(path):
        raise WeightFileError(
            f"{path}: not a zip-format PyTorch file (written by PyTorch < 1.6, or not a .pth at all). Re-save it "
            "with `torch.save(torch.load(path), new_path)`, or run `python -m experiments.convert_weights "
            "--trusted_torch_load` where PyTorch is installed."
        )
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [name for name in archive.namelist() if name.endswith("data.pkl")]
            if len(pickles) != 1:
                raise WeightFileError(f"{path}: expected one data.pkl in the archive, found {len(pickles)}")
            prefix = pickles[0][: -len("data.pkl")]
            byteorder = f"{prefix}byteorder"
            big_endian = byteorder in archive.namelist() and archive.read(byteorder).strip() == b"big"
            with archive.open(pickles[0]) as f:
                obj = _StateDictUnpickler(f, archive, prefix, path, big_endian).load()
    except (zipfile.BadZipFile, KeyError, EOFError, pickle.UnpicklingError, ValueError) as error:
        if isinstance(error, WeightFileError):
            raise
        raise WeightFileError(f"{path}: truncated or corrupt PyTorch file ({type(error).__name__}: {error})") from error
    return _tensor_dict(obj, path)


def _tensor_dict(obj, path: str) -> dict[str, np.ndarray]:
    """The flat {name: array} inside a loaded object (a state dict, or a checkpoint nesting one)."""
    if not isinstance(obj, Mapping):
        raise WeightFileError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    for key in _NESTING_KEYS:
        if key in obj and isinstance(obj[key], Mapping):
            return _tensor_dict(obj[key], path)
    tensors = {name: value for name, value in obj.items() if isinstance(value, np.ndarray)}
    if not tensors:
        raise WeightFileError(f"{path}: no tensors found (top-level keys: {sorted(map(str, obj))[:10]})")
    return tensors
