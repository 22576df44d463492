"""A local safetensors checkpoint read by key subsets: headers once, then each shard's byte ranges in file order."""

from __future__ import annotations

import json
import mmap
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Tuple

import numpy as np
import torch

from outlier_lab.errors import UserError

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
# safetensors dtype codes (https://github.com/huggingface/safetensors, format spec) -> torch dtypes.
SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}


@dataclass(frozen=True)
class TensorEntry:
    file: Path
    dtype: str
    shape: Tuple[int, ...]
    start: int  # absolute byte offsets in the file
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def _header(path: Path) -> Dict[str, TensorEntry]:
    """Tensor entries of one .safetensors file: an 8-byte little-endian header length, then a JSON header."""
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        header.pop("__metadata__", None)
        base = 8 + length
        return {
            key: TensorEntry(
                path,
                meta["dtype"],
                tuple(meta["shape"]),
                base + meta["data_offsets"][0],
                base + meta["data_offsets"][1],
            )
            for key, meta in header.items()
        }
    except (struct.error, ValueError, KeyError, TypeError, AttributeError, IndexError) as err:
        # A truncated or damaged file: engine=auto then plans the resident engine, whose loader names the damage.
        raise UserError(
            f"{path} is not a readable safetensors file ({type(err).__name__}: {err}); "
            "re-download or re-save the checkpoint"
        ) from None


class Checkpoint:
    """Every tensor's file and byte range; `read(keys)` returns those tensors and counts what it read."""

    def __init__(self, directory: Path, entries: Dict[str, TensorEntry], files: List[Path]):
        self.directory = directory
        self.entries = entries
        self.files = files
        self.bytes_read = 0
        self.tensors_read = 0
        self._maps: Dict[Path, mmap.mmap] = {}

    @classmethod
    def open(cls, directory: str | Path) -> "Checkpoint":
        """A checkpoint directory with model.safetensors, or shards plus model.safetensors.index.json."""
        directory = Path(directory)
        index = directory / INDEX
        if index.is_file():
            weight_map = json.loads(index.read_text()).get("weight_map") or {}
            files = sorted({directory / name for name in weight_map.values()})
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise UserError(
                    f"{index} names shard(s) that are not there: {', '.join(missing[:3])}; re-download the checkpoint"
                )
        elif (directory / SINGLE).is_file():
            files = [directory / SINGLE]
        else:
            found = sorted(p.name for p in directory.glob("*.safetensors"))
            what = (
                f"{len(found)} .safetensors files but no {INDEX}"
                if found
                else "no safetensors weights (e.g. only pytorch_model.bin)"
            )
            raise UserError(
                f"engine=streamed reads safetensors block by block, and {directory} has {what}; "
                "use engine=resident, or convert the checkpoint to safetensors with an index"
            )
        entries: Dict[str, TensorEntry] = {}
        for path in files:
            entries.update(_header(path))
        return cls(directory, entries, files)

    def keys_matching(self, pattern: re.Pattern) -> Dict[int, List[str]]:
        """Keys grouped by the integer that `pattern`'s first group captures (a block index)."""
        groups: Dict[int, List[str]] = {}
        for key in self.entries:
            match = pattern.match(key)
            if match:
                groups.setdefault(int(match.group(1)), []).append(key)
        return groups

    def nbytes(self, keys: Iterable[str]) -> int:
        return sum(self.entries[k].nbytes for k in keys)

    def _map(self, path: Path) -> mmap.mmap:
        """The file mapped copy-on-write: tensors are views of the page cache, writable, never written back."""
        if path not in self._maps:
            size = path.stat().st_size
            with open(path, "rb") as f:
                self._maps[path] = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY)
        return self._maps[path]

    def read(self, keys: Iterable[str]) -> Dict[str, torch.Tensor]:
        """The tensors of `keys` on the CPU, their pages faulted in from disk: per file, ranges in offset order.

        The kernel is asked to read each contiguous range ahead (MADV_WILLNEED), then every page is touched with a
        strided numpy reduction, which releases the GIL: a prefetch thread overlaps this with another block's forward.
        """
        keys = list(keys)
        by_file: Dict[Path, List[str]] = {}
        for key in keys:
            by_file.setdefault(self.entries[key].file, []).append(key)
        out: Dict[str, torch.Tensor] = {}
        for path in sorted(by_file):
            ordered = sorted(by_file[path], key=lambda k: self.entries[k].start)
            mapping = self._map(path)
            for run in _runs([self.entries[k] for k in ordered], ordered):
                start, end = run[0][1].start, run[-1][1].end
                if end > len(mapping):
                    raise UserError(f"{path} is truncated (wanted bytes {start}..{end}); re-download it")
                aligned = start - start % mmap.PAGESIZE
                mapping.madvise(mmap.MADV_WILLNEED, aligned, end - aligned)
                np.frombuffer(mapping, np.uint8, end - start, start)[:: mmap.PAGESIZE].max(initial=0)
                self.bytes_read += end - start
                for key, entry in run:
                    out[key] = _tensor(mapping, entry, _dtype(entry.dtype, path))
        self.tensors_read += len(keys)
        return out

    def release(self, keys: Iterable[str]) -> None:
        """Drop the pages of `keys` from this process (RSS): a later access would fault them in again from the file."""
        for key in keys:
            entry = self.entries[key]
            mapping = self._maps.get(entry.file)
            if mapping is None:
                continue
            first = -(-entry.start // mmap.PAGESIZE) * mmap.PAGESIZE  # whole pages inside the tensor only
            last = entry.end - entry.end % mmap.PAGESIZE
            if last > first:
                mapping.madvise(mmap.MADV_DONTNEED, first, last - first)


def _tensor(mapping: mmap.mmap, entry: TensorEntry, dtype: torch.dtype) -> torch.Tensor:
    """A view of the mapping; a copy where the file does not align the tensor to its element size."""
    if not entry.nbytes:
        return torch.empty(entry.shape, dtype=dtype)
    itemsize = torch.empty(0, dtype=dtype).element_size()
    if entry.start % itemsize == 0:
        return torch.frombuffer(mapping, dtype=dtype, count=entry.nbytes // itemsize, offset=entry.start).view(
            entry.shape
        )
    raw = torch.frombuffer(mapping, dtype=torch.uint8, count=entry.nbytes, offset=entry.start).clone()
    return raw.view(dtype).view(entry.shape)


def _dtype(code: str, path: Path) -> torch.dtype:
    try:
        return SAFETENSORS_DTYPES[code]
    except KeyError:
        raise UserError(
            f"{path}: safetensors dtype {code} is not supported by engine=streamed; use engine=resident"
        ) from None


def _runs(entries: List[TensorEntry], keys: List[str]) -> List[List[Tuple[str, TensorEntry]]]:
    """Entries sorted by offset, grouped where one ends exactly where the next starts (one read each group)."""
    runs: List[List[Tuple[str, TensorEntry]]] = []
    for key, entry in zip(keys, entries):
        if runs and runs[-1][-1][1].end == entry.start:
            runs[-1].append((key, entry))
        else:
            runs.append([(key, entry)])
    return runs
