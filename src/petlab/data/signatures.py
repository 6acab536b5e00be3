"""What the audit and ``data.dedupe`` compare images by: a digest of each file's bytes, a perceptual hash of
its picture, and a thumbnail and a brightness spread that describe its look.

Perceptual hashes (the DCT hash, "pHash") rather than a network's embeddings: they need no weights (ImageNet
weights cannot be assumed, and a model trained on the data itself learns to place a photo's copies together
only as well as it has memorised them), take about a millisecond per image after decoding, and are made for
the copies that leak between splits: the same photo re-encoded, resized, recoloured or lightly cropped.
What they do not find is two different photos of one scene (a burst from a phone); a network's embedding
would, at the price of many more false matches between photos of one breed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from scipy.fft import dctn

from petlab.files import remove_stale_partials, write_text_atomic
from petlab.parallel import parallel_map
from petlab.pictures import open_rgb

SIGNATURE_VERSION = 1  # raise it when the hashes change (HASH_SIDE, CROPS, perceptual_hash): cached ones go stale
HASH_SIDE = 32  # the greyscale picture the DCT sees
HASH_FREQUENCIES = 8  # its lowest 8 x 8 frequencies give the 64 bits
THUMBNAIL_SIDE = 8
# A copy cropped by a few percent moves every frequency: each picture is also hashed as these crops of
# itself (left, top, right, bottom as fractions), and a photo's copy is near one of them. A centre 95% and
# 90%, and 10% trimmed off one side.
CROPS = ((0, 0, 1, 1), (0.025, 0.025, 0.975, 0.975), (0.05, 0.05, 0.95, 0.95),
         (0.1, 0, 1, 1), (0, 0.1, 1, 1), (0, 0, 0.9, 1), (0, 0, 1, 0.9))  # fmt: skip
# Hashes at most this many bits apart are one photo. Measured on the real sample (600 photos, 180,000
# pairs): copies re-encoded at quality 30, halved, brightened by 30%, cropped by 2-5% a side or trimmed by
# 3-10% on one side are 0-4 bits from their original (99th percentile; 10 at most, for a trim); the 10
# pairs at 0-6 bits are all the same photo, by eye, and the first pair of two different photos is at 8.
DEFAULT_MAX_DISTANCE = 6


@dataclass(frozen=True)
class Signature:
    """``digest``: SHA-1 of the file's bytes; ``phashes``: 64-bit perceptual hashes of the picture and of
    its :data:`CROPS` (the first is the whole picture's); ``thumbnail``: the picture
    squeezed to 8 x 8 RGB in [0, 1] (192 numbers); ``spread``: the standard deviation of its grey levels at
    32 x 32, in [0, 1] (near 0 for a blank picture)."""

    digest: str
    phashes: tuple[int, ...]
    thumbnail: np.ndarray
    spread: float


def perceptual_hash(grey: np.ndarray) -> int:
    """The DCT hash of a ``HASH_SIDE`` square greyscale picture: one bit per low frequency, set when it is
    above their median (so brightness and contrast changes, which scale all of them, keep the bits)."""
    low = dctn(grey, norm="ortho")[:HASH_FREQUENCIES, :HASH_FREQUENCIES].ravel()
    bits = low > np.median(low)
    return int(np.packbits(bits).view(">u8")[0])


def signature(path: str) -> Signature:
    """One image file's :class:`Signature` (JPEGs decoded at a reduced scale: the hash needs 32 pixels)."""
    with open(path, "rb") as file:
        digest = hashlib.sha1(file.read()).hexdigest()
    image = open_rgb(path, at_least=HASH_SIDE * 4)
    grey_image = image.convert("L")
    width, height = image.size
    greys = [
        np.asarray(grey_image.resize((HASH_SIDE, HASH_SIDE), Image.Resampling.BOX,
                                     box=(left * width, top * height, right * width, bottom * height)), np.float32)
        for left, top, right, bottom in CROPS
    ]  # fmt: skip
    thumbnail = np.asarray(image.resize((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.BOX), dtype=np.float32)
    phashes = tuple(perceptual_hash(grey) for grey in greys)
    return Signature(digest, phashes, thumbnail.ravel() / 255, float(greys[0].std() / 255))


def signatures(paths: Sequence[str]) -> list[Signature]:
    """Every file's :class:`Signature`, on every core, with a progress bar."""
    return list(parallel_map(signature, list(paths), "Hashing images"))


def cached_phashes(paths: Sequence[str], cache_dir: Path | None, fingerprint: str) -> list[tuple[int, ...]]:
    """Each file's :attr:`Signature.phashes`, kept in ``cache_dir/index`` under the index's ``fingerprint``
    (the same files give the same hashes): a run's set-up hashes its images once, not at every start."""
    if cache_dir is None or not fingerprint:
        return [found.phashes for found in signatures(paths)]
    key = f"{SIGNATURE_VERSION}\0{fingerprint}"
    cached = Path(cache_dir) / "index" / f"{hashlib.sha1(key.encode()).hexdigest()[:16]}-phashes.json"
    try:
        known = {path: tuple(hashes) for path, hashes in json.loads(cached.read_text()).items()}
    except (OSError, ValueError):
        known = {}
    if missing := [path for path in dict.fromkeys(paths) if path not in known]:
        known |= {path: found.phashes for path, found in zip(missing, signatures(missing), strict=True)}
        cached.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_partials(cached.parent)
        write_text_atomic(cached, json.dumps(known))
    return [known[path] for path in paths]


def photo_distances(wholes: np.ndarray, crops: np.ndarray) -> np.ndarray:
    """Bits between each of the pictures ``wholes`` (their whole hashes, uint64) and the nearest of each other
    picture's ``crops`` hashes (n, len(CROPS)): a (len(wholes), n) uint8 array."""
    return np.bitwise_count(wholes[:, None, None] ^ crops[None, :, :]).min(axis=2)


def photo_distance(first: Sequence[int], second: Sequence[int]) -> int:
    """Bits between two pictures' hashes (each a :attr:`Signature.phashes`): either whole picture from the
    nearest crop of the other, as :func:`close_pairs` measures."""
    return min(min((first[0] ^ crop).bit_count() for crop in second), min((second[0] ^ crop).bit_count()
                                                                          for crop in first))  # fmt: skip


def close_pairs(hashes: Sequence[Sequence[int]], max_distance: int, block: int = 256) -> pd.DataFrame:
    """Pairs ``first < second`` of positions whose pictures are at most ``max_distance`` bits apart (either
    whole picture from a crop of the other), with their ``distance``: all pairs compared, a block of rows at
    a time (7,400 images: 27 million pairs x 7 crops, seconds)."""
    crops = np.array([[np.uint64(value) for value in row] for row in hashes], dtype=np.uint64).reshape(len(hashes), -1)
    found = []
    for start in range(0, len(crops), block):
        part = slice(start, start + block)
        forward = photo_distances(crops[part, 0], crops)
        backward = photo_distances(crops[:, 0], crops[part]).T
        distances = np.minimum(forward, backward)
        rows, columns = np.nonzero(distances <= max_distance)
        rows += start
        keep = rows < columns
        found.append(pd.DataFrame({"first": rows[keep], "second": columns[keep],
                                   "distance": distances[rows[keep] - start, columns[keep]]}))  # fmt: skip
    return pd.concat(found, ignore_index=True) if found else pd.DataFrame(columns=["first", "second", "distance"])


def groups_of(count: int, pairs: pd.DataFrame) -> np.ndarray:
    """Each of ``count`` positions' group (the smallest position in it) when every pair joins its two
    positions' groups (union-find): a photo and all its copies, even copies of copies, share one group."""
    parent = np.arange(count)

    def root(position: int) -> int:
        while parent[position] != position:
            parent[position] = parent[parent[position]]
            position = parent[position]
        return position

    for first, second in zip(pairs["first"], pairs["second"], strict=True):
        low, high = sorted((root(int(first)), root(int(second))))
        parent[high] = low
    return np.array([root(position) for position in range(count)])
