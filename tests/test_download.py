"""data.download=true, exercised with archives the test builds and serves from file:// URLs."""

import hashlib
import tarfile
from pathlib import Path

import pytest

from petlab.data.download import Archive, download_dataset
from petlab.errors import PetlabError


def make_archives(source: Path, where: Path) -> tuple[Archive, ...]:
    archives = []
    for folder in ("images", "annotations"):
        tar_path = where / f"{folder}.tar.gz"
        with tarfile.open(tar_path, "w:gz") as tar:
            tar.add(source / folder, arcname=folder)
        md5 = hashlib.md5(tar_path.read_bytes()).hexdigest()
        archives.append(Archive(tar_path.as_uri(), md5, folder))
    return tuple(archives)


def test_download_checks_extracts_and_is_idempotent(sample_root: Path, tmp_path: Path):
    archives = make_archives(sample_root, tmp_path)
    root = download_dataset(tmp_path / "pets", archives)
    assert sorted(p.name for p in (root / "images").iterdir()) == sorted(
        p.name for p in (sample_root / "images").iterdir()
    )
    assert (root / "annotations" / "list.txt").read_text() == (sample_root / "annotations" / "list.txt").read_text()
    gone = tuple(Archive(a.url.replace(".tar.gz", "-gone.tar.gz"), a.md5, a.folder) for a in archives)
    assert download_dataset(root, gone) == root  # nothing fetched the second time
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".pets-download-")]


def test_a_corrupt_archive_leaves_nothing_behind(sample_root: Path, tmp_path: Path):
    images, annotations = make_archives(sample_root, tmp_path)
    corrupt = Archive(annotations.url, "0" * 32, annotations.folder)
    with pytest.raises(PetlabError, match=r"annotations\.tar\.gz is corrupt"):
        download_dataset(tmp_path / "pets", (images, corrupt))
    assert not (tmp_path / "pets").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".pets-download-")]


def test_offline_says_where_to_put_the_files_by_hand(tmp_path: Path):
    unreachable = (Archive("http://127.0.0.1:9/images.tar.gz", "0" * 32, "images"),)
    with pytest.raises(PetlabError, match=r"by hand and extract them into .*pets \(it must hold images/\)"):
        download_dataset(tmp_path / "pets", unreachable, timeout=5)
    assert not (tmp_path / "pets").exists()
