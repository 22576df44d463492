"""A local safetensors checkpoint read by key subsets: headers once, then each shard's byte ranges in file order."""
from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Tuple

import torch

from ..errors import UserError

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
# safetensors dtype codes (https://github.com/huggingface/safetensors, format spec) -> torch dtypes.
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}


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
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    header.pop("__metadata__", None)
    base = 8 + length
    return {key: TensorEntry(path, meta["dtype"], tuple(meta["shape"]), base + meta["data_offsets"][0],
                             base + meta["data_offsets"][1]) for key, meta in header.items()}


class Checkpoint:
    """Every tensor's file and byte range; `read(keys)` returns those tensors and counts what it read."""

    def __init__(self, directory: Path, entries: Dict[str, TensorEntry], files: List[Path]):
        self.directory = directory
        self.entries = entries
        self.files = files
        self.bytes_read = 0
        self.tensors_read = 0
        self.keys_read: List[str] = []

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
                raise UserError(f"{index} names shard(s) that are not there: {', '.join(missing[:3])}; "
                                "re-download the checkpoint")
        elif (directory / SINGLE).is_file():
            files = [directory / SINGLE]
        else:
            found = sorted(p.name for p in directory.glob("*.safetensors"))
            what = (f"{len(found)} .safetensors files but no {INDEX}" if found else
                    "no safetensors weights (e.g. only pytorch_model.bin)")
            raise UserError(f"engine=streamed reads safetensors block by block, and {directory} has {what}; "
                            "use engine=resident, or convert the checkpoint to safetensors with an index")
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

    def read(self, keys: Iterable[str], pin: bool = False) -> Dict[str, torch.Tensor]:
        """The tensors of `keys` on the CPU: per file, merged byte ranges read in ascending offset order.

        Plain buffered reads release the GIL, so a prefetch thread overlaps this with the forward of another block.
        """
        keys = list(keys)
        by_file: Dict[Path, List[str]] = {}
        for key in keys:
            by_file.setdefault(self.entries[key].file, []).append(key)
        out: Dict[str, torch.Tensor] = {}
        for path in sorted(by_file):
            ordered = sorted(by_file[path], key=lambda k: self.entries[k].start)
            with open(path, "rb", buffering=0) as f:
                for run in _runs([self.entries[k] for k in ordered], ordered):
                    start, end = run[0][1].start, run[-1][1].end
                    buffer = torch.empty(end - start, dtype=torch.uint8, pin_memory=pin)
                    view = memoryview(buffer.numpy())
                    f.seek(start)
                    got = 0
                    while got < len(view):
                        n = f.readinto(view[got:])
                        if not n:
                            raise UserError(f"{path} is truncated (wanted bytes {start}..{end}); re-download it")
                        got += n
                    self.bytes_read += end - start
                    for key, entry in run:
                        raw = buffer[entry.start - start:entry.end - start]
                        out[key] = raw.view(_dtype(entry.dtype, path)).view(entry.shape) if entry.nbytes else \
                            torch.empty(entry.shape, dtype=_dtype(entry.dtype, path))
        self.tensors_read += len(keys)
        self.keys_read += keys
        return out


def _dtype(code: str, path: Path) -> torch.dtype:
    try:
        return _DTYPES[code]
    except KeyError:
        raise UserError(f"{path}: safetensors dtype {code} is not supported by engine=streamed; use engine=resident") \
            from None


def _runs(entries: List[TensorEntry], keys: List[str]) -> List[List[Tuple[str, TensorEntry]]]:
    """Entries sorted by offset, grouped where one ends exactly where the next starts (one read each group)."""
    runs: List[List[Tuple[str, TensorEntry]]] = []
    for key, entry in zip(keys, entries):
        if runs and runs[-1][-1][1].end == entry.start:
            runs[-1].append((key, entry))
        else:
            runs.append([(key, entry)])
    return runs
