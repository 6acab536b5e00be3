"""Contact sheets: the flagged images as a grid of thumbnails, each captioned with its name, split and label
(and what was found), so that a person checks a section by eye in seconds."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

from petlab.pictures import open_rgb

TILE = 160
CAPTION_LINES = 3
LINE_HEIGHT = 12


@dataclass(frozen=True)
class Tile:
    """One image of a sheet: its file, caption lines, and the caption's colour (red: the one to act on)."""

    path: str
    caption: Sequence[str]
    colour: str = "black"


def thumbnail(path: str) -> Image.Image:
    try:
        image = open_rgb(path, at_least=TILE)
    except OSError:  # an unreadable file never reaches an audit's sections; a file gone since is shown grey
        return Image.new("RGB", (TILE, TILE), "grey")
    image.thumbnail((TILE, TILE))
    return image


def contact_sheet(rows: Sequence[Sequence[Tile]], title: str) -> Image.Image:
    """``rows`` of tiles (a duplicate group per row, or a section's images wrapped in rows) under ``title``."""
    columns = max((len(row) for row in rows), default=1)
    cell_height = TILE + CAPTION_LINES * LINE_HEIGHT + 8
    sheet = Image.new("RGB", (columns * (TILE + 8) + 8, 24 + len(rows) * cell_height), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    draw.text((8, 6), title, fill="black", font=font)
    for row_number, row in enumerate(rows):
        for column, tile in enumerate(row):
            left, top = 8 + column * (TILE + 8), 24 + row_number * cell_height
            picture = thumbnail(tile.path)
            sheet.paste(picture, (left + (TILE - picture.width) // 2, top + (TILE - picture.height) // 2))
            for line_number, line in enumerate(list(tile.caption)[:CAPTION_LINES]):
                draw.text((left, top + TILE + 2 + line_number * LINE_HEIGHT), str(line)[:28], fill=tile.colour,
                          font=font)  # fmt: skip
    return sheet


def wrapped(tiles: Sequence[Tile], columns: int = 6) -> list[list[Tile]]:
    return [list(tiles[start : start + columns]) for start in range(0, len(tiles), columns)]
