"""Labels of the Oxford-IIIT Pet dataset, derived from file names as the dataset's README defines them."""

from __future__ import annotations

import re

CAT_BREEDS = (
    "Abyssinian", "Bengal", "Birman", "Bombay", "British_Shorthair", "Egyptian_Mau",
    "Maine_Coon", "Persian", "Ragdoll", "Russian_Blue", "Siamese", "Sphynx",
)  # fmt: skip
DOG_BREEDS = (
    "american_bulldog", "american_pit_bull_terrier", "basset_hound", "beagle", "boxer", "chihuahua",
    "english_cocker_spaniel", "english_setter", "german_shorthaired", "great_pyrenees", "havanese",
    "japanese_chin", "keeshond", "leonberger", "miniature_pinscher", "newfoundland", "pomeranian", "pug",
    "saint_bernard", "samoyed", "scottish_terrier", "shiba_inu", "staffordshire_bull_terrier",
    "wheaten_terrier", "yorkshire_terrier",
)  # fmt: skip

# The release numbers classes 1-37 alphabetically ignoring case, and breeds 1-N within each species.
ALL_BREEDS = tuple(sorted(CAT_BREEDS + DOG_BREEDS, key=str.lower))
SPECIES = ("cat", "dog")

_IMAGE_NAME = re.compile(r"^(?P<breed>[A-Za-z]+(?:_[A-Za-z]+)*)_(?P<number>\d+)$")


def species_of(name: str) -> str:
    """Species of an image name: the dataset marks cats with an upper-case first letter."""
    return "cat" if name[:1].isupper() else "dog"


def breed_of(name: str) -> str | None:
    """Breed of an image name such as ``Egyptian_Mau_12`` (``Egyptian_Mau``), or None if it does not parse."""
    match = _IMAGE_NAME.match(name)
    return match["breed"] if match else None


def class_id(breed: str) -> int:
    """The release's 1-based CLASS-ID of a breed."""
    return ALL_BREEDS.index(breed) + 1


def species_id(breed: str) -> int:
    """The release's SPECIES column: 1 for cats, 2 for dogs."""
    return SPECIES.index(species_of(breed)) + 1


def breed_id(breed: str) -> int:
    """The release's BREED-ID column: 1-based, numbered within the breed's species."""
    breeds = CAT_BREEDS if species_of(breed) == "cat" else DOG_BREEDS
    return sorted(breeds, key=str.lower).index(breed) + 1
