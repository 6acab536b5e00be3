"""Reading photos and drawing answers on them, with numpy and Pillow only.

petlab uses these, and ``petlab.export format=space`` copies this file beside the exported model, so that
the page it runs without petlab reads an image exactly as ``petlab.predict`` does and draws the same masks
and boxes. Keep it free of any other dependency.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageDraw, ImageOps

# Segmentation classes' tints, and the head boxes' outlines (the release's box in green, the model's in red).
COLOURS = {"pet": (255, 0, 200), "background": (40, 90, 200), "border": (240, 240, 60)}
TRUE_COLOUR, PREDICTED_COLOUR = (40, 200, 60), (230, 30, 30)


# The key of an opened image's ``info`` that holds the photo's own (width, height), upright, and the size it was
# decoded at: a JPEG decoded at a reduced scale is smaller than the photo its answers are about.
FULL_SIZE = "petlab_full_size"
# EXIF orientations that turn a photo a quarter turn (width and height swap).
QUARTER_TURNS = {5, 6, 7, 8}


def full_size(image: Image.Image) -> tuple[int, int]:
    """The (width, height) of the photo ``image`` was decoded from (see :func:`open_rgb`); an image made from
    it since (resized, cropped: Pillow copies ``info``) is its own size."""
    photo, decoded = image.info.get(FULL_SIZE, (image.size, image.size))
    return tuple(photo) if tuple(decoded) == image.size else image.size


def open_rgb(path: str | Path, upright: bool = False, at_least: int | None = None) -> Image.Image:
    """Open any image (JPEG, PNG, GIF; grey, palette, RGBA, CMYK) as 3-channel RGB.

    ``at_least``: a JPEG at least twice that side in both directions is decoded at a reduced scale (1/2 to
    1/8, PIL's draft mode) that keeps both sides at or above it: several times faster and smaller in memory
    for a picture about to be shrunk to that side anyway; any other image is decoded whole. The photo's own
    size stays known (:func:`full_size`).

    ``upright`` turns it as its EXIF orientation says, as photo viewers show it: for new photos (a
    phone's). A dataset's own images stay as stored, because its trimaps and boxes follow the stored
    pixels. Raises ``OSError`` (or ``Image.DecompressionBombError``) for a file that is not a readable image.
    """
    with Image.open(path) as opened:
        opened.seek(0)  # first frame of a GIF
        width, height = opened.size
        if upright and opened.getexif().get(ExifTags.Base.Orientation) in QUARTER_TURNS:
            width, height = height, width
        if at_least is not None:
            opened.draft(None, (at_least, at_least))
        image = ImageOps.exif_transpose(opened) if upright else opened
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            # Transparent pixels keep arbitrary colours underneath: composite on white instead.
            rgba = image.convert("RGBA")
            rgb = Image.new("RGB", rgba.size, (255, 255, 255))
            rgb.paste(rgba, mask=rgba.getchannel("A"))
        else:
            rgb = image.convert("RGB")
        rgb.info[FULL_SIZE] = ((width, height), rgb.size)
        return rgb


def open_photo(path: str | Path, network_side: int, photo_side: int | None) -> tuple[Image.Image, Image.Image]:
    """A new photo, upright, decoded for the network (at the smallest JPEG scale that keeps ``network_side``,
    as the training cache decodes) and for the answers (keeping ``photo_side``; None: whole): decoded once
    when both are the same."""
    for_network = open_rgb(path, upright=True, at_least=network_side)
    if photo_side == network_side or full_size(for_network) == for_network.size:  # not reduced: the whole photo
        return for_network, for_network
    return for_network, open_rgb(path, upright=True, at_least=photo_side)


def resized_pixels(image: Image.Image, side: int) -> np.ndarray:
    """An RGB image resized to ``side`` x ``side`` as a (side, side, 3) uint8 array: what the cache stores."""
    return np.array(image.resize((side, side), Image.BILINEAR))


def overlay(image: np.ndarray, classes: np.ndarray, class_names: Sequence[str], alpha: float = 0.45) -> Image.Image:
    """``image`` (H, W, 3) with every pixel that is not background tinted by its class's colour (Pillow's
    blend and composite: a few milliseconds for a photo where float arithmetic over it took tens)."""
    palette = np.array([COLOURS[name] if name != "background" else (0, 0, 0) for name in class_names], np.uint8)
    photo = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    known = classes < len(class_names)  # an ignored pixel (255 in a true mask) stays as it is
    tinted = Image.blend(photo, Image.fromarray(palette[np.where(known, classes, 0)]), alpha)
    background = class_names.index("background") if "background" in class_names else -1
    shown = known & (classes != background)
    return Image.composite(tinted, photo, Image.fromarray(shown.astype(np.uint8) * 255))


def drawn(image: Image.Image, predicted: Sequence[float], true: Sequence[float] | None = None) -> Image.Image:
    """``image`` with the ``true`` box (pixels) in green and the ``predicted`` one in red."""
    picture = image.convert("RGB").copy()
    draw = ImageDraw.Draw(picture)
    width = max(1, round(max(picture.size) / 150))
    for box, colour in ((true, TRUE_COLOUR), (predicted, PREDICTED_COLOUR)):
        if box is not None:
            draw.rectangle(list(box), outline=colour, width=width)
    return picture


def save_whole(picture: Image.Image, path: Path) -> Path:
    """Save ``picture`` so that ``path`` is whole or absent, even when the process is killed meanwhile: written
    under a temporary name (the pattern of ``petlab.files.partial_path``, which later runs clean up) and renamed."""
    host = socket.gethostname().replace(".", "-")
    temporary = path.with_name(f".{path.name}.{host}.{os.getpid()}.partial")
    if path.suffix.lower() == ".png":
        picture.save(temporary, format="PNG", compress_level=1)  # several times faster, files about 1.3x larger
    else:
        picture.save(temporary, format="JPEG", quality=90)
    os.replace(temporary, path)
    return path


def answers_folder(parent: Path, keep_s: float = 3600) -> Path:
    """A new folder in ``parent`` for one request's drawn answers (requests of different visitors never
    share one); folders older than ``keep_s`` seconds go, so that a page that runs for weeks does not
    fill its disk (the page has shown them by then)."""
    parent.mkdir(parents=True, exist_ok=True)
    for old in parent.iterdir():
        if old.is_dir() and time.time() - old.stat().st_mtime > keep_s:
            shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(dir=parent))
