"""Fetch the official Oxford-IIIT Pet archives: progress bar, checksum, atomic extraction, idempotent."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

from petlab.errors import PetlabError

log = logging.getLogger(__name__)

DATASET_PAGE = "https://www.robots.ox.ac.uk/~vgg/data/pets/"


@dataclass(frozen=True)
class Archive:
    url: str
    md5: str
    folder: str  # the top-level folder the archive unpacks to

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


OXFORD_PET_ARCHIVES = (
    Archive(f"{DATASET_PAGE}data/images.tar.gz", "5c4f3ee8e5d25df40f4fd59a7f44e54c", "images"),
    Archive(f"{DATASET_PAGE}data/annotations.tar.gz", "95a8c909bbe2e81eed6a22bccdf3f68f", "annotations"),
)


def _fetch(archive: Archive, target: Path, timeout: float) -> None:
    digest = hashlib.md5()
    with urllib.request.urlopen(archive.url, timeout=timeout) as response, target.open("wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        columns = ("{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
        with Progress(*columns) as progress:
            task = progress.add_task(f"Downloading {archive.filename}", total=total)
            while chunk := response.read(1 << 20):
                out.write(chunk)
                digest.update(chunk)
                progress.advance(task, len(chunk))
    if digest.hexdigest() != archive.md5:
        raise PetlabError(
            f"{archive.filename} is corrupt (md5 {digest.hexdigest()}, expected {archive.md5}); "
            "nothing was written: run again to retry the download"
        )


def _extract(tar_path: Path, into: Path) -> None:
    with tarfile.open(tar_path) as tar:
        # The "data" filter refuses absolute paths, links out of the tree and device files.
        tar.extractall(into, filter="data") if hasattr(tarfile, "data_filter") else tar.extractall(into)


def download_dataset(root: Path, archives: tuple[Archive, ...] = OXFORD_PET_ARCHIVES, timeout: float = 60) -> Path:
    """Make ``root`` hold each archive's folder. Folders already there are kept as they are.

    Each archive is downloaded and unpacked in a staging directory beside ``root`` and moved into place
    only when complete, so an interrupted download leaves nothing half-made; a second call does nothing.
    """
    root = Path(root).expanduser().resolve()
    missing = [archive for archive in archives if not (root / archive.folder).is_dir()]
    if not missing:
        log.info(f"Dataset already in {root}: nothing to download")
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}-download-", dir=root.parent))
    try:
        for archive in missing:
            tar_path = staging / archive.filename
            try:
                _fetch(archive, tar_path, timeout)
            except (urllib.error.URLError, OSError) as error:
                reason = getattr(error, "reason", error)
                raise PetlabError(
                    f"could not download {archive.url} ({reason}). Without a network, download "
                    f"{', '.join(a.filename for a in archives)} from {DATASET_PAGE} by hand and extract "
                    f"them into {root} (it must hold {' and '.join(a.folder + '/' for a in archives)})"
                ) from error
            _extract(tar_path, staging / "unpacked")
            if not (staging / "unpacked" / archive.folder).is_dir():
                raise PetlabError(f"{archive.filename} does not contain a top-level {archive.folder}/ folder")
        root.mkdir(exist_ok=True)
        for archive in missing:
            os.replace(staging / "unpacked" / archive.folder, root / archive.folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info(f"Dataset ready in {root}")
    return root
