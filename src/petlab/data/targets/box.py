"""Boxes: the head box of each image, from the release's ``annotations/xmls/NAME.xml`` (Pascal VOC).

A box is kept as (x0, y0, x1, y1) in fractions of its image's width and height: the cache resizes every
image to a square, so fractions survive the resize unchanged; crops and augmentation then move them.
VOC corners are 1-based and inclusive: pixels xmin..xmax cover [xmin - 1, xmax) in continuous coordinates.
"""

from __future__ import annotations

import math
from pathlib import Path
from xml.etree import ElementTree

import pandas as pd
import torch

from petlab.data.targets.base import Target

BoxResult = tuple[tuple[float, float, float, float] | None, str]


def head_box_path(root: Path, name: str) -> Path:
    return Path(root) / "annotations" / "xmls" / f"{name}.xml"


def _number(element: ElementTree.Element, tag: str) -> float:
    found = element.find(tag)
    if found is None or found.text is None:
        raise ValueError(f"no <{tag}>")
    value = float(found.text)
    if not math.isfinite(value):
        raise ValueError(f"<{tag}> is {found.text.strip()}")
    return value


def read_head_box(path: Path, width: int, height: int) -> BoxResult:
    """The head box of the image (``width`` x ``height``) as fractions, and why it cannot be used ("" if it can)."""
    if not path.is_file():
        return None, "no head box"
    try:
        root = ElementTree.parse(path).getroot()
        boxes, size = root.findall("object/bndbox"), root.find("size")
        if not boxes or size is None:
            raise ValueError("no <object><bndbox> or <size>")
        box = boxes[0]
        declared = (round(_number(size, "width")), round(_number(size, "height")))
        xmin, ymin, xmax, ymax = (_number(box, tag) for tag in ("xmin", "ymin", "xmax", "ymax"))
    except (ElementTree.ParseError, ValueError, OverflowError, OSError) as error:
        return None, f"head box xml is malformed: {(str(error).splitlines() or [type(error).__name__])[0][:100]}"
    if len(boxes) > 1:  # a few photos show two animals; which head to learn would be a guess
        return None, f"{len(boxes)} head boxes (several animals): one box per image is learnt"
    if declared != (width, height):
        return None, f"head box xml says the image is {declared[0]}x{declared[1]}, it is {width}x{height}"
    x0, y0, x1, y1 = xmin - 1, ymin - 1, xmax, ymax
    if x1 <= x0 or y1 <= y0:
        return None, f"head box ({xmin:g}, {ymin:g}, {xmax:g}, {ymax:g}) has no area"
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        return None, f"head box ({xmin:g}, {ymin:g}, {xmax:g}, {ymax:g}) lies outside the {width}x{height} image"
    return (x0 / width, y0 / height, x1 / width, y1 / height), ""


def box_text(box: tuple[float, float, float, float] | None) -> str:
    """A box as the index stores it: four fractions separated by spaces ("" for none)."""
    return "" if box is None else " ".join(f"{value:.6f}" for value in box)


def parse_box(text: str) -> list[float]:
    """The index's text of a box as four fractions; NaN for an image without a box."""
    return [float(value) for value in text.split()] if text else [math.nan] * 4


def has_box(targets: torch.Tensor) -> torch.Tensor:
    """Which rows of (N, 4) box targets are boxes (an image without one has NaN)."""
    return targets.isfinite().all(dim=1)


# A box of which less than this share is in view after a crop or augmentation is no longer a target:
# most of the head is gone, and a clipped sliver would teach the model a wrong box.
MIN_VISIBLE = 0.5


def centre_crop_affine(side: int, crop: int) -> torch.Tensor:
    """The (1, 2, 3) affine, output to input in [-1, 1] coordinates (as ``F.affine_grid``), of the centre
    ``crop`` that :class:`petlab.data.transforms.ItemTransform` takes of a ``side`` image."""
    start = (side - crop) // 2
    scale, offset = crop / side, (2 * start + crop) / side - 1
    return torch.tensor([[[scale, 0.0, offset], [0.0, scale, offset]]])


def transform_boxes(boxes: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Boxes (N, 4), (x0, y0, x1, y1) as fractions of the input image -> the same in the output of the
    affine ``theta`` (N, 2, 3) that maps output to input coordinates in [-1, 1] (a crop, flip, rotation):
    the box around the four moved corners, clipped to the output. NaN where less than :data:`MIN_VISIBLE`
    of that box is in view, or where the box was NaN (no box)."""
    x0, y0, x1, y1 = (boxes.to(theta.dtype) * 2 - 1).unbind(dim=-1)
    corners = torch.stack([torch.stack(pair, dim=-1) for pair in ((x0, y0), (x1, y0), (x0, y1), (x1, y1))], dim=2)
    # The inverse of each 2x2 linear part in closed form: torch.linalg.solve waits for the GPU to check
    # for singular matrices, which a crop, flip and rotation never give.
    (a, b), (c, d) = theta[:, 0, :2].unbind(dim=1), theta[:, 1, :2].unbind(dim=1)
    adjugate = torch.stack([torch.stack([d, -b], dim=1), torch.stack([-c, a], dim=1)], dim=1)
    inverse = adjugate / (a * d - b * c).view(-1, 1, 1)
    moved = inverse @ (corners - theta[:, :, 2:])  # (N, 2, 4) output coordinates
    low, high = moved.amin(dim=2), moved.amax(dim=2)
    inside_low, inside_high = low.clamp(-1, 1), high.clamp(-1, 1)
    whole = (high - low).prod(dim=1)
    visible = (inside_high - inside_low).clamp_min(0).prod(dim=1)
    kept = torch.cat([inside_low, inside_high], dim=1).add(1).div(2)
    return torch.where((visible >= MIN_VISIBLE * whole).unsqueeze(1), kept, torch.nan).to(boxes.dtype)


class Box(Target):
    """The box around the animal's head, (4,) floats (x0, y0, x1, y1) as fractions of the image the
    network sees; NaN for an image without one (or whose box a crop cut off), which no task counts."""

    what = "head boxes"

    def __init__(self, name: str = "box") -> None:
        super().__init__(name)

    def missing_from(self, root: Path, layout: str) -> str:
        folder = Path(root) / "annotations" / "xmls"
        if layout != "pets" or not folder.is_dir() or not any(folder.glob("*.xml")):
            return (f"it needs the release's head boxes, and there are none at {folder}: use an Oxford-IIIT Pet "
                    "copy with annotations/xmls/ (data=oxford_pet, or data=sample)")  # fmt: skip
        return ""

    def annotate(self, root: Path, layout: str, images: pd.DataFrame) -> pd.DataFrame:
        values, problems = [], []
        for name, width, height in zip(images["name"], images["width"], images["height"], strict=True):
            box, problem = read_head_box(head_box_path(root, name), width, height)
            values.append(box_text(box))
            problems.append(problem)
        return pd.DataFrame({"value": values, "problem": problems}, index=images.index)

    def stored(self, value: str) -> list[float]:
        return parse_box(value)

    def tensor(self, stored: list[float]) -> torch.Tensor:
        return torch.tensor(stored, dtype=torch.float32)

    def cropped(self, value: torch.Tensor, side: int, crop: int | None) -> torch.Tensor:
        return value if crop is None else transform_boxes(value[None], centre_crop_affine(side, crop))[0]

    def moved(self, batch: torch.Tensor, theta: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        return transform_boxes(batch, theta)
