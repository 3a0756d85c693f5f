"""Which files are images: the suffixes every command and loader agrees on."""

from __future__ import annotations

# Files treated as images in folders and tars (every command); anything else (README, .txt) is
# skipped.
IMAGE_SUFFIXES = frozenset(
    {".jpeg", ".jpg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
)


def is_image_file(name: str) -> bool:
    """True for names that look like images (by suffix, case-insensitive); hidden files never
    are."""
    if name.startswith("."):
        return False
    dot = name.rfind(".")
    return dot > 0 and name[dot:].lower() in IMAGE_SUFFIXES
