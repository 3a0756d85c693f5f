"""`RawImage`: one image of the raw stream, as bytes (tar members), a path (folders) or pixels
(CIFAR, MNIST)."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
from PIL import Image


@dataclasses.dataclass(frozen=True)
class RawImage:
    split: str  # "train" or "val"
    wnid: str  # the class, e.g. "n01440764"
    key: str  # file stem, unique within the split, e.g. "n01440764_10026"
    source: str  # where it came from, for messages: a path or "TAR:MEMBER[/INNER]"
    path: Path | None = None  # the file, for folder layouts
    data: bytes | None = dataclasses.field(default=None, repr=False)  # the bytes, for tar members
    # uint8 [H, W, 3] RGB or [H, W] gray, for datasets that ship arrays (CIFAR, MNIST)
    pixels: np.ndarray | None = dataclasses.field(default=None, repr=False)

    def read(self) -> bytes:
        """The original file's bytes (for pixel arrays: a lossless PNG of them)."""
        if self.data is not None:
            return self.data
        if self.pixels is not None:
            buffer = io.BytesIO()
            Image.fromarray(self.pixels).save(buffer, "PNG")
            return buffer.getvalue()
        assert self.path is not None, f"RawImage {self.key} has neither data nor path"
        return self.path.read_bytes()
