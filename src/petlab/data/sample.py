"""A generated stand-in for Oxford-IIIT Pet, in the release's exact layout, for demos and tests.

Every image is a drawn "pet": its species decides the head shape (pointed ears for cats, floppy ears and a
muzzle for dogs) and its breed decides the fur colour and texture, on a cluttered background, at a random
position and scale. That gives a model a real, learnable signal while staying cheap to make and to train on.
Each image depends only on (seed, breed, number), so the dataset is identical wherever it is generated.
As in the release, every image has a trimap (``annotations/trimaps/NAME.png``: 1 pet, 2 background, 3 the
uncertain band around the pet) and the trainval images have a head box (``annotations/xmls/NAME.xml``,
Pascal VOC): the generator knows exactly where it drew the pet, whose drawing is all head.
"""

from __future__ import annotations

import argparse
import colorsys
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter
from rich.progress import track
from skimage.morphology import dilation, erosion, footprint_rectangle

from petlab.data.labels import ALL_BREEDS, breed_id, class_id, species_id, species_of

LIST_HEADER = (
    "#Image CLASS-ID SPECIES BREED ID\n"
    "#ID: 1:37 Class ids\n"
    "#SPECIES: 1:Cat 2:Dog\n"
    "#BREED ID: 1-25:Cat 1:12:Dog\n"
    "#All images with 1st letter as captial are cat images\n"
    "#images with small first letter are dog images\n"
)
TEXTURES = ("plain", "stripes", "spots", "patches")
GOLDEN_RATIO = 0.618033988749895


def breed_look(breed: str) -> tuple[tuple[float, float, float], str, float]:
    """Fur colour (RGB in 0-1), texture and texture angle that identify a breed."""
    index = ALL_BREEDS.index(breed)
    hue = (index * GOLDEN_RATIO) % 1.0
    saturation = 0.35 + 0.5 * ((index * 7) % 5) / 4
    value = 0.45 + 0.5 * ((index * 3) % 4) / 3
    return colorsys.hsv_to_rgb(hue, saturation, value), TEXTURES[index % len(TEXTURES)], 30.0 * (index % 6)


def _to_rgb255(colour: Sequence[float], rng: np.random.Generator, jitter: float) -> tuple[int, int, int]:
    noisy = np.clip(np.asarray(colour) + rng.normal(0, jitter, 3), 0, 1)
    return tuple(round(c * 255) for c in noisy)


def _texture_mask(size: int, texture: str, angle: float, rng: np.random.Generator) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    if texture == "stripes":
        period = max(4, size // 8)
        for x in range(-size, 2 * size, period):
            draw.rectangle([x, -size, x + period // 2, 2 * size], fill=255)
        mask = mask.rotate(angle + rng.uniform(-10, 10))
    elif texture == "spots":
        for _ in range(rng.integers(8, 14)):
            cx, cy = rng.uniform(0, size, 2)
            r = rng.uniform(size / 24, size / 12)
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif texture == "patches":
        for _ in range(rng.integers(2, 4)):
            cx, cy = rng.uniform(0, size, 2)
            r = rng.uniform(size / 8, size / 5)
            draw.ellipse([cx - r, cy - r * 0.7, cx + r, cy + r * 0.7], fill=255)
    return mask


def draw_pet(breed: str, number: int, size: int, seed: int) -> tuple[Image.Image, Image.Image]:
    """Draw image ``number`` of ``breed``: a deterministic function of its arguments. Returns the image and
    the pet's silhouette (mode L, 255 on the pet)."""
    rng = np.random.default_rng([seed, ALL_BREEDS.index(breed), number])
    fur, texture, angle = breed_look(breed)
    background = _to_rgb255(rng.uniform(0.2, 0.9, 3), rng, 0.0)
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(3, 7)):  # clutter, so the pet is not the only thing in view
        x0, y0 = rng.uniform(0, size, 2)
        w, h = rng.uniform(size / 10, size / 3, 2)
        draw.rectangle([x0, y0, x0 + w, y0 + h], fill=_to_rgb255(rng.uniform(0, 1, 3), rng, 0.0))

    radius = size * rng.uniform(0.2, 0.28)
    cx = size / 2 + rng.uniform(-0.12, 0.12) * size
    cy = size / 2 + rng.uniform(-0.05, 0.15) * size
    fur_rgb = _to_rgb255(fur, rng, 0.04)
    dark_rgb = tuple(int(c * 0.35) for c in fur_rgb)

    pet = Image.new("L", (size, size), 0)
    shape = ImageDraw.Draw(pet)
    shape.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=255)
    if species_of(breed) == "cat":
        for side in (-1, 1):
            base = cx + side * radius * 0.55
            shape.polygon(
                [(base - radius * 0.35, cy - radius * 0.7), (base + radius * 0.35, cy - radius * 0.7),
                 (base + side * radius * 0.15, cy - radius * 1.6)],
                fill=255,
            )  # fmt: skip
    else:
        for side in (-1, 1):
            ex = cx + side * radius * 0.95
            shape.ellipse([ex - radius * 0.3, cy - radius * 0.6, ex + radius * 0.3, cy + radius * 0.7], fill=255)
        shape.ellipse([cx - radius * 0.45, cy + radius * 0.2, cx + radius * 0.45, cy + radius * 1.15], fill=255)

    image.paste(fur_rgb, mask=pet)
    texture_mask = Image.fromarray(np.minimum(np.asarray(_texture_mask(size, texture, angle, rng)), np.asarray(pet)))
    image.paste(dark_rgb, mask=texture_mask)
    # Species-specific faces: cats have large yellow-green eyes and whiskers, dogs a big dark nose.
    cat = species_of(breed) == "cat"
    eye = radius * (0.2 if cat else 0.11)
    for side in (-1, 1):
        ex, ey = cx + side * radius * 0.4, cy - radius * 0.1
        draw.ellipse([ex - eye, ey - eye, ex + eye, ey + eye], fill=(190, 230, 40) if cat else (20, 20, 20))
        if cat:
            draw.ellipse([ex - eye * 0.3, ey - eye, ex + eye * 0.3, ey + eye], fill=(10, 10, 10))
            for dy in (-0.08, 0.08):
                y = cy + radius * (0.35 + dy)
                draw.line(
                    [cx + side * radius * 0.2, y, cx + side * radius * 1.2, y + side * dy * radius],
                    fill=(240, 240, 240),
                    width=max(1, size // 64),
                )
    if not cat:
        nose = radius * 0.22
        draw.ellipse([cx - nose, cy + radius * 0.45, cx + nose, cy + radius * 0.45 + nose * 1.4], fill=(15, 10, 10))
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 0.6)))
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, 6, (size, size, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)), pet


def trimap(silhouette: Image.Image) -> Image.Image:
    """The release's trimap of a silhouette: 1 pet, 2 background, 3 a band of about size/32 px each side of
    the outline (the blurred edge, which the release leaves uncertain too)."""
    width = 2 * max(1, silhouette.width // 32) + 1
    # A square's erosion and dilation as two 1-D passes: PIL's rank filters take width^2 steps a pixel
    # (a second per image at 500 px).
    band = footprint_rectangle((width, width), decomposition="separable")
    pet = np.asarray(silhouette) > 0
    inside, reach = erosion(pet, band, mode="nearest"), dilation(pet, band, mode="nearest")
    labels = np.full(inside.shape, 2, dtype=np.uint8)
    labels[reach] = 3
    labels[inside] = 1
    return Image.fromarray(labels, mode="L")


def head_box_xml(name: str, breed: str, silhouette: Image.Image) -> str:
    """The release's Pascal VOC annotation of the head box: the silhouette's bounding box, 1-based pixels."""
    left, top, right, bottom = silhouette.getbbox()
    return (
        f"<annotation><folder>OXIIIT</folder><filename>{name}.jpg</filename>"
        f"<size><width>{silhouette.width}</width><height>{silhouette.height}</height><depth>3</depth></size>"
        f"<segmented>0</segmented><object><name>{species_of(breed)}</name><pose>Frontal</pose>"
        f"<truncated>0</truncated><occluded>0</occluded><bndbox><xmin>{left + 1}</xmin><ymin>{top + 1}</ymin>"
        f"<xmax>{right}</xmax><ymax>{bottom}</ymax></bndbox><difficult>0</difficult></object></annotation>\n"
    )


FLIP_FRACTION = 0.05
COPY_FRACTION = 0.03
COPY_EDITS = (
    "re-encoded at quality 35",
    "resized to 75%",
    "cropped by 3% a side",
    "brightened by 20% and resized to 80%",
)


def edited_copy(image: Image.Image, edit: str) -> tuple[Image.Image, int]:
    """``image`` changed as ``edit`` (one of :data:`COPY_EDITS`) says, and the JPEG quality to save it at."""
    width, height = image.size
    if edit == COPY_EDITS[0]:
        return image, 35
    if edit == COPY_EDITS[1]:
        return image.resize((round(width * 0.75), round(height * 0.75)), Image.BILINEAR), 92
    if edit == COPY_EDITS[2]:
        margin_x, margin_y = round(width * 0.03), round(height * 0.03)
        return image.crop((margin_x, margin_y, width - margin_x, height - margin_y)), 92
    brighter = Image.eval(image, lambda value: min(255, round(value * 1.2)))
    return brighter.resize((round(width * 0.8), round(height * 0.8)), Image.BILINEAR), 92


def plant_faults(root: Path, per_breed: int, seed: int) -> list[dict[str, str]]:
    """Plant what an audit must find in a sample at ``root``, and list it (kind, name, original, detail):

    - ``copy``: 3% of the images copied (re-encoded, resized, cropped or recoloured) under a new name of the
      same breed, in the other official split: a leak;
    - ``flipped``: 5% of the images with wrong species labels (a cat's and a dog's pictures, trimaps and
      boxes swapped between their names);
    - ``blank``: one nearly blank picture;
    - ``annotation``: three head boxes moved off the pet.
    """
    rng = np.random.default_rng(seed + 1)
    names = [f"{breed}_{n}" for breed in ALL_BREEDS for n in range(1, per_breed + 1)]
    images, annotations = root / "images", root / "annotations"
    planted, lists = [], {"trainval": [], "test": []}
    order = rng.permutation(len(names))
    copies, rest = order[: max(1, round(COPY_FRACTION * len(names)))], order[len(order) // 2 :]
    for number, index in enumerate(copies):
        original = names[index]
        breed, n = original.rsplit("_", 1)
        copy = f"{breed}_{per_breed + 1 + number}"
        edit = COPY_EDITS[number % len(COPY_EDITS)]
        with Image.open(images / f"{original}.jpg") as opened:
            edited, quality = edited_copy(opened.convert("RGB"), edit)
        edited.save(images / f"{copy}.jpg", quality=quality)
        # The copy goes to the split its original is not in (an odd number is trainval).
        lists["test" if int(n) % 2 else "trainval"].append(f"{copy} {class_id(breed)} {species_id(breed)} "
                                                          f"{breed_id(breed)}")  # fmt: skip
        planted.append({"kind": "copy", "name": copy, "original": original, "detail": edit})
    # Flipped labels among the other half's trainval images (odd numbers: every one has a box to swap too).
    trainval = [names[i] for i in rest if int(names[i].rsplit("_", 1)[1]) % 2]
    cats = [name for name in trainval if species_of(name.rsplit("_", 1)[0]) == "cat"]
    dogs = [name for name in trainval if species_of(name.rsplit("_", 1)[0]) == "dog"]
    for cat, dog in list(zip(cats, dogs, strict=False))[: max(1, round(FLIP_FRACTION * len(names) / 2))]:
        for folder, suffix in ((images, ".jpg"), (annotations / "trimaps", ".png"), (annotations / "xmls", ".xml")):
            first, second = folder / f"{cat}{suffix}", folder / f"{dog}{suffix}"
            first_bytes = first.read_bytes()
            first.write_bytes(second.read_bytes())
            second.write_bytes(first_bytes)
        planted += [
            {"kind": "flipped", "name": cat, "original": dog, "detail": "a dog's picture under a cat's name"},
            {"kind": "flipped", "name": dog, "original": cat, "detail": "a cat's picture under a dog's name"},
        ]
    moved = [name for name in trainval if name not in {row["name"] for row in planted}][:3]
    for name in moved:  # the box moved to the top-left corner: background in every drawn sample
        xml = annotations / "xmls" / f"{name}.xml"
        text = xml.read_text()
        width = int(text.split("<width>")[1].split("<")[0])
        corner = max(2, width // 8)
        for tag, value in (("xmin", 1), ("ymin", 1), ("xmax", corner), ("ymax", corner)):
            head, tail = text.split(f"<{tag}>")
            text = f"{head}<{tag}>{value}{tail[tail.index('<') :]}"
        xml.write_text(text)
        planted.append({"kind": "annotation", "name": name, "original": "", "detail": "head box moved off the pet"})
    breed = ALL_BREEDS[0]
    blank = f"{breed}_{per_breed + len(copies) + 1}"
    with Image.open(images / f"{names[0]}.jpg") as opened:
        size = opened.size
    noise = rng.normal(128, 2, (size[1], size[0], 3)).clip(0, 255).astype(np.uint8)
    Image.fromarray(noise).save(images / f"{blank}.jpg", quality=92)
    lists["trainval"].append(f"{blank} {class_id(breed)} {species_id(breed)} {breed_id(breed)}")
    planted.append({"kind": "blank", "name": blank, "original": "", "detail": "a grey picture with faint noise"})
    for split, rows in lists.items():
        for listed in (annotations / f"{split}.txt", annotations / "list.txt"):
            with listed.open("a") as file:
                file.write("".join(f"{row}\n" for row in rows))
    return planted


def generate_sample(root: Path, per_breed: int = 40, size: int = 64, seed: int = 0, faults: bool = False) -> Path:
    """Write the sample dataset to ``root`` (images/ and annotations/ as in the release) and return root.
    With ``faults``, :func:`plant_faults` plants what an audit must find and lists it in
    ``root/planted_faults.csv``.

    The dataset is built in a temporary sibling directory and moved into place at the end, so an interrupted
    run never leaves a half-made dataset behind. An existing ``root`` is never touched.
    """
    root = Path(root)
    if root.exists():
        raise FileExistsError(f"{root} already exists; remove it first or choose another --root")
    if per_breed < 2 or size < 16:
        raise ValueError("the sample needs at least 2 images per breed and 16 px images")
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        for folder in ("images", "annotations", "annotations/trimaps", "annotations/xmls"):
            (staging / folder).mkdir()
        rows, trainval, test = [], [], []
        jobs = [(breed, n) for breed in ALL_BREEDS for n in range(1, per_breed + 1)]
        for breed, n in track(jobs, description=f"Drawing {len(jobs)} sample images"):
            name = f"{breed}_{n}"
            image, silhouette = draw_pet(breed, n, size, seed)
            image.save(staging / "images" / f"{name}.jpg", quality=92)
            trimap(silhouette).save(staging / "annotations" / "trimaps" / f"{name}.png")
            row = f"{name} {class_id(breed)} {species_id(breed)} {breed_id(breed)}"
            rows.append(row)
            if n % 2:  # the release splits each breed about in half, with head boxes for trainval only
                trainval.append(row)
                (staging / "annotations" / "xmls" / f"{name}.xml").write_text(head_box_xml(name, breed, silhouette))
            else:
                test.append(row)
        (staging / "annotations" / "list.txt").write_text(LIST_HEADER + "\n".join(rows) + "\n")
        (staging / "annotations" / "trainval.txt").write_text("\n".join(trainval) + "\n")
        (staging / "annotations" / "test.txt").write_text("\n".join(test) + "\n")
        if faults:
            planted = pd.DataFrame(
                plant_faults(staging, per_breed, seed), columns=["kind", "name", "original", "detail"]
            )
            planted.to_csv(staging / "planted_faults.csv", index=False)
        os.replace(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return root


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m petlab.data.sample",
        description="Generate a small synthetic dataset in the Oxford-IIIT Pet layout (37 breeds).",
    )
    parser.add_argument("--root", type=Path, default=Path("data/sample-pets"), help="where to write it")
    parser.add_argument("--per-breed", type=int, default=40, help="images per breed (default 40)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="seed; the same seed gives the same files")
    parser.add_argument(
        "--plant-faults",
        action="store_true",
        help="plant copies across splits, 5%% flipped species labels, a blank picture and moved head "
        "boxes, listed in ROOT/planted_faults.csv (what python -m petlab.audit should find)",
    )
    parser.add_argument("--if-missing", action="store_true", help="do nothing when --root already exists")
    args = parser.parse_args(argv)
    if args.if_missing and args.root.exists():
        print(f"Sample dataset already at {args.root}")
        return
    try:
        root = generate_sample(args.root, args.per_breed, args.size, args.seed, args.plant_faults)
    except (FileExistsError, ValueError) as error:
        parser.exit(2, f"error: {error}\n")
    print(f"Sample dataset written to {root} ({args.per_breed * len(ALL_BREEDS)} images)")


if __name__ == "__main__":
    main()
