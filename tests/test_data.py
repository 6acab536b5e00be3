"""The data module on a dataset with the release's flaws, and everything it must never do."""

import logging
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import REAL_SAMPLE, snapshot, targets_named
from petlab.data import PetDataModule
from petlab.data.augment import BatchAugmentation
from petlab.data.index import build_index
from petlab.data.items import CachedImageDataset
from petlab.data.sample import generate_sample
from petlab.data.stats import Unnormalised
from petlab.data.transforms import decoded_pixels, load_rgb
from petlab.errors import PetlabError
from petlab.files import partial_path


def datamodule(root: Path, tmp_path: Path, target: str = "species", **options) -> PetDataModule:
    options = {"image_size": 32, "batch_size": 16, "num_workers": 0, "cache_dir": tmp_path / "cache", **options}
    module = PetDataModule(root, targets=targets_named(target), **options)
    module.setup("fit")
    return module


def test_every_flawed_file_is_read_as_rgb_or_skipped_with_a_reason(flawed_root: Path, tmp_path: Path, caplog):
    with caplog.at_level(logging.WARNING):
        index = build_index(flawed_root, tmp_path / "cache").set_index("name")
    for name in ("Bengal_101", "Bengal_102", "Bengal_103", "Bengal_104"):
        assert index.loc[name, "readable"], name
        image = load_rgb(index.loc[name, "path"])
        assert image.mode == "RGB" and np.asarray(image).shape[2] == 3
    assert index.loc["Bengal_101", "mode"] == "P" and index.loc["Bengal_104", "mode"] == "CMYK"
    assert "cannot decode" in index.loc["Bengal_105", "problem"]
    assert "cannot decode" in index.loc["Bengal_106", "problem"]
    assert "not an image file" in index.loc["Abyssinian_100", "problem"]
    assert "malformed line" in caplog.text and "Bengal_999" in caplog.text
    assert "list.txt says Bengal_102 is a dog" in caplog.text


def test_unreadable_files_are_found_before_training_and_never_loaded(flawed_root: Path, tmp_path: Path, caplog):
    with caplog.at_level(logging.WARNING):
        module = datamodule(flawed_root, tmp_path)
    assert "skipping Bengal_105" in caplog.text and "skipping Abyssinian_100" in caplog.text
    names = set(module.frame["name"])
    assert {"Bengal_101", "Bengal_104"} <= names and not {"Bengal_105", "Bengal_106", "Abyssinian_100"} & names
    for split in ("train", "val", "test"):
        for images, _ in getattr(module, f"{split}_dataloader")():
            assert images.shape[1:] == (3, 32, 32) and images.dtype == torch.uint8  # normalised by the model
    assert set(module.report.skipped["name"]) == {"Bengal_105", "Bengal_106", "Abyssinian_100"}


def test_images_without_a_list_row_keep_their_file_name_labels(flawed_root: Path, tmp_path: Path):
    listing = flawed_root / "annotations" / "list.txt"
    listing.write_text("\n".join(line for line in listing.read_text().splitlines() if "Persian_1 " not in line))
    frame = datamodule(flawed_root, tmp_path, target="breed").frame.set_index("name")
    assert frame.loc["Persian_1", "label"] == "Persian" and frame.loc["Persian_1", "species"] == "cat"


@pytest.mark.parametrize("split", ["official", "random"])
def test_splits_are_disjoint_stratified_and_seeded(sample_root: Path, tmp_path: Path, split: str):
    first = datamodule(sample_root, tmp_path, split=split, seed=3).frame
    again = datamodule(sample_root, tmp_path, split=split, seed=3).frame
    other = datamodule(sample_root, tmp_path, split=split, seed=4).frame
    assert first["name"].is_unique
    assert first.set_index("name")["split"].equals(again.set_index("name")["split"])
    assert not first.set_index("name")["split"].equals(other.set_index("name")["split"])
    counts = pd.crosstab(first["label"], first["split"])
    assert (counts > 0).all().all()
    if split == "official":
        official = first.set_index("name")["official_split"]
        assert (official[first.set_index("name")["split"] == "test"] == "test").all()
    else:
        fractions = first["split"].value_counts(normalize=True)
        assert fractions["train"] == pytest.approx(0.70, abs=0.03)
        assert fractions["test"] == pytest.approx(0.15, abs=0.03)


def test_a_subset_of_breeds_is_the_label_space(tmp_path: Path):
    root = generate_sample(tmp_path / "pets", per_breed=6, size=32)
    for path in (root / "images").iterdir():
        if not path.name.startswith(("Bengal", "beagle", "pug")):
            path.unlink()
    assert datamodule(root, tmp_path, target="breed").class_names == ["Bengal", "beagle", "pug"]


def test_synthetic_upsampling_balances_species_from_training_cats_only(sample_root: Path, tmp_path: Path):
    module = datamodule(sample_root, tmp_path, upsample="synthetic", seed=5)
    train = module.frame[module.frame["split"] == "train"]
    synthetic = module.datasets["train"].datasets[1]
    counts = train["label"].value_counts()
    assert len(synthetic) == counts["dog"] - counts["cat"]
    assert {target for _, target in synthetic.sources} == {module.class_names.index("cat")}
    train_cats = set(train.loc[train["label"] == "cat", "path"])
    assert all(set(paths) == train_cats for paths, _ in synthetic.sources)
    assert module.report.counts.loc["cat", "train"] + module.report.counts.loc["cat", "synthetic"] == counts["dog"]
    again = datamodule(sample_root, tmp_path, upsample="synthetic", seed=5).datasets["train"].datasets[1]
    assert np.array_equal(np.asarray(synthetic.image(3)), np.asarray(again.image(3)))
    assert synthetic[0][0].shape == (3, 32, 32)


@pytest.mark.parametrize("cache", [False, True])
def test_evaluation_sees_the_centre_crop_and_augmented_training_the_whole_resized_image(
    sample_root: Path, tmp_path: Path, cache: bool
):
    augment = {"crop_scale": [0.75, 1.0], "hflip": 0.5}
    module = datamodule(sample_root, tmp_path, cache=cache, crop_margin=0.25, augment=augment)
    assert module.side == 40
    train_images, _ = next(iter(module.train_dataloader()))
    val_images, _ = next(iter(module.val_dataloader()))
    assert train_images.shape[1:] == (3, 40, 40) and val_images.shape[1:] == (3, 32, 32)
    first = module.frame[module.frame["split"] == "val"].iloc[0]
    whole = np.array(load_rgb(first["path"]).resize((40, 40), Image.BILINEAR))
    assert np.array_equal(val_images[0].permute(1, 2, 0).numpy(), whole[4:36, 4:36])  # same pixels, cache or not
    unaugmented = datamodule(sample_root, tmp_path, cache=cache, crop_margin=0.25, augment={})
    assert next(iter(unaugmented.train_dataloader()))[0].shape[1:] == (3, 32, 32)


def test_batch_augmentation_draws_per_image_and_is_exact_when_it_should_be():
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    assert torch.allclose(BatchAugmentation(16)(images)[0], images / 255, atol=1e-6)
    assert torch.allclose(BatchAugmentation(16, hflip=1.0)(images)[0], images.flip(-1) / 255, atol=1e-6)
    same = images[:1].expand(8, -1, -1, -1)
    for options in ({"crop_scale": (0.3, 0.6)}, {"rotation": 30}, {"color_jitter": 0.5}):
        outputs = BatchAugmentation(8, **options)(same)[0]
        assert outputs.shape == (8, 3, 8, 8) and not torch.equal(outputs[0], outputs[1]), options


def test_the_training_batches_are_augmented_on_the_device_with_seeded_parameters(sample_root: Path, tmp_path: Path):
    augment = {"crop_scale": [0.5, 1.0], "hflip": 0.5, "rotation": 20, "color_jitter": 0.2}
    module = datamodule(sample_root, tmp_path, augment=augment, seed=3)
    batch = next(iter(module.train_dataloader()))
    module.trainer = SimpleNamespace(training=False, current_epoch=0, global_rank=0)
    assert module.on_after_batch_transfer(batch, 0) is batch  # validation, test and prediction: untouched

    def augmented(epoch: int) -> torch.Tensor:
        module.trainer = SimpleNamespace(training=True, current_epoch=epoch, global_rank=0)
        images, targets = module.on_after_batch_transfer(next(iter(module.train_dataloader())), 0)
        assert images.shape == (len(targets), 3, 32, 32) and images.dtype == torch.float32
        assert images.min() >= 0 and images.max() <= 1
        return images

    assert torch.equal(augmented(1), augmented(1))  # a resumed epoch is augmented as it was the first time
    assert not torch.equal(augmented(1), augmented(2))


def test_weighted_sampling_draws_classes_evenly(sample_root: Path, tmp_path: Path):
    module = datamodule(sample_root, tmp_path, upsample="weighted")
    targets = torch.cat([t for _, t in module.train_dataloader()])
    assert 0.4 < targets.float().mean() < 0.6  # dogs are two thirds of the images, drawn half the time


@pytest.mark.parametrize("cache", [False, True])
def test_dataset_normalisation_is_the_exact_training_split_statistic(sample_root: Path, tmp_path: Path, cache: bool):
    module = datamodule(sample_root, tmp_path, normalize="dataset", cache=cache)
    train = module.frame[module.frame["split"] == "train"]
    resize = Unnormalised(32, module.side)
    if cache:
        store = np.load(module.store)
        images = [resize(torch.from_numpy(store[row]).permute(2, 0, 1)) for row in train["cache_row"]]
    else:
        images = [resize(load_rgb(path)) for path in train["path"]]
    pixels = torch.cat([image.reshape(3, -1) for image in images], dim=1).double()
    assert module.mean == pytest.approx(pixels.mean(dim=1).tolist(), abs=1e-5)
    assert module.std == pytest.approx(pixels.std(dim=1, unbiased=False).tolist(), abs=1e-5)
    assert list((tmp_path / "cache" / "stats").glob("*.json"))


def test_the_decoded_image_cache_is_built_once_reused_and_redone_when_interrupted(sample_root: Path, tmp_path):
    first = datamodule(sample_root, tmp_path)
    store = first.store
    assert store.parent == tmp_path / "cache" / "images" and np.load(store, mmap_mode="r").shape[1:] == (37, 37, 3)
    built = store.stat().st_mtime_ns
    assert datamodule(sample_root, tmp_path).store == store and store.stat().st_mtime_ns == built
    store.with_suffix(".json").unlink()  # as if the build had been interrupted before its marker
    assert datamodule(sample_root, tmp_path).store.stat().st_mtime_ns != built
    assert datamodule(sample_root, tmp_path, image_size=40).store != store  # another size, another cache
    cached, files = first.datasets["val"], datamodule(sample_root, tmp_path, cache=False).datasets["val"]
    assert isinstance(cached, CachedImageDataset) and not isinstance(files, CachedImageDataset)
    # The same image, resized twice vs once: close, pixel for pixel (mean difference under 13/255).
    difference = (cached[0][0].float() - files[0][0].float()).abs().mean() / 255
    assert cached[0][1] == files[0][1] and difference < 0.05


def test_a_cache_that_does_not_fit_on_the_disk_is_one_line_and_leaves_no_partial_file(
    sample_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    def disk_full(descriptor: int, offset: int, length: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.posix_fallocate", disk_full)
    with pytest.raises(PetlabError, match=r"Cannot cache the images in .* MiB are free \(No space left on device\)"):
        datamodule(sample_root, tmp_path)
    assert not list((tmp_path / "cache" / "images").iterdir())


def test_a_photo_much_larger_than_the_cache_side_is_decoded_at_reduced_scale_to_nearly_the_same_pixels(tmp_path: Path):
    rows, columns = np.mgrid[0:300, 0:400]
    photo = np.stack([rows * 255 // 300, columns * 255 // 400, (rows + columns) % 256], axis=-1).astype(np.uint8)
    Image.fromarray(photo).save(tmp_path / "photo.jpg", quality=95)
    reduced = load_rgb(tmp_path / "photo.jpg", at_least=37)
    assert min(reduced.size) >= 37 and reduced.size[0] < 400 // 2  # a DCT scale of 1/4 or 1/8
    assert load_rgb(tmp_path / "photo.jpg", at_least=250).size == (400, 300)  # not twice the side: whole
    whole = np.array(load_rgb(tmp_path / "photo.jpg").resize((37, 37), Image.BILINEAR), dtype=np.float32)
    assert np.abs(decoded_pixels(tmp_path / "photo.jpg", 37) - whole).mean() < 2  # of 255


def test_the_index_is_cached_outside_the_dataset_and_rebuilt_when_files_change(flawed_root: Path, tmp_path: Path):
    before = snapshot(flawed_root)
    first = build_index(flawed_root, tmp_path / "cache")
    assert len(list((tmp_path / "cache" / "index").glob("*.csv"))) == 1
    assert build_index(flawed_root, tmp_path / "cache").equals(first)
    assert snapshot(flawed_root) == before
    (flawed_root / "images" / "Bengal_2.jpg").unlink()
    assert len(build_index(flawed_root, tmp_path / "cache")) == len(first) - 1


def test_folder_datasets_use_their_split_folders_or_a_random_split(tmp_path: Path):
    source = generate_sample(tmp_path / "pets", per_breed=8, size=32)
    for split in ("train", "test"):
        for animal in ("Bengal", "pug"):
            folder = tmp_path / "folders" / split / animal.lower()
            folder.mkdir(parents=True)
            for n in range(1, 9):
                if (n % 4 == 0) == (split == "test"):
                    (folder / f"{n}.jpg").write_bytes((source / "images" / f"{animal}_{n}.jpg").read_bytes())
    module = datamodule(tmp_path / "folders", tmp_path, layout="folder")
    assert module.class_names == ["bengal", "pug"]
    assert set(module.frame["split"]) == {"train", "val", "test"}
    assert (module.frame.loc[module.frame["split"] == "test", "path"].str.contains("/test/")).all()
    flat = datamodule(tmp_path / "folders" / "train", tmp_path, layout="folder", split="random")
    assert set(flat.frame["split"]) == {"train", "val", "test"}
    (tmp_path / "folders" / "train" / "pug").rename(tmp_path / "folders" / "val")  # now a val/ folder...
    (tmp_path / "folders" / "val" / "pug").mkdir()
    for path in list((tmp_path / "folders" / "val").glob("*.jpg")):
        path.rename(tmp_path / "folders" / "val" / "pug" / path.name)
    (tmp_path / "folders" / "train" / "pug").mkdir()
    for path in list((tmp_path / "folders" / "val" / "pug").glob("*.jpg"))[:3]:
        path.rename(tmp_path / "folders" / "train" / "pug" / path.name)
    with_val = datamodule(tmp_path / "folders", tmp_path, layout="folder").frame
    validation = with_val[with_val["split"] == "val"]
    assert len(validation) > 0 and validation["path"].str.contains("/val/").all()  # ...used as it is


@pytest.mark.parametrize("fold", [0, 1, 2])
def test_k_fold_validation_folds_partition_the_training_pool(sample_root: Path, tmp_path: Path, fold: int):
    frames = [datamodule(sample_root, tmp_path, folds=3, fold=f, seed=1).frame.set_index("name") for f in range(3)]
    validation = [set(f.index[f["split"] == "val"]) for f in frames]
    assert not validation[0] & validation[1] and not validation[1] & validation[2]
    pool = set(frames[fold].index[frames[fold]["split"].isin(["train", "val"])])
    assert set().union(*validation) == pool
    assert (frames[fold]["split"] == "test").sum() == (frames[0]["split"] == "test").sum()
    with pytest.raises(PetlabError, match="0 <= fold < folds"):
        datamodule(sample_root, tmp_path, folds=3, fold=3)


def test_a_folder_dataset_with_one_class_is_refused(tmp_path: Path):
    source = generate_sample(tmp_path / "pets", per_breed=4, size=32)
    (tmp_path / "one" / "cats").mkdir(parents=True)
    for path in list((source / "images").glob("Bengal_*.jpg")):
        (tmp_path / "one" / "cats" / path.name).write_bytes(path.read_bytes())
    with pytest.raises(PetlabError, match="only one class"):
        datamodule(tmp_path / "one", tmp_path, layout="folder", split="random")


def test_a_folder_dataset_refuses_a_joint_task_of_species_and_breed(tmp_path: Path):
    source = generate_sample(tmp_path / "pets", per_breed=4, size=32)
    root = folder_dataset(tmp_path / "folders", source, {"train": 6})
    with pytest.raises(
        PetlabError, match=r"task.tasks species and breed both read the class folder of .*: keep one of them"
    ):
        datamodule(root, tmp_path, target=["species", "breed"], layout="folder", split="random")
    assert datamodule(root, tmp_path, target="breed", layout="folder", split="random").class_names == ["bengal", "pug"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"upsample": "smote"}, "data.upsample"),
        ({"normalize": "minmax"}, "data.normalize"),
        ({"split": "kfold"}, "data.split"),
        ({"val_fraction": 1.2}, "val_fraction"),
        ({"crop_margin": 2}, "data.crop_margin"),
        ({"crop_margin": "wide"}, "data.crop_margin='wide' is not valid: it must be a number >= 0"),
        ({"val_fraction": "some"}, "data.val_fraction='some' is not valid: it must be a number >= 0"),
        ({"augment": {"crop_scale": [0.9, 0.5]}}, "data.augment.crop_scale"),
        ({"augment": {"auto_augment": "v0"}}, "unknown data.augment option auto_augment"),
    ],
)
def test_impossible_options_are_one_line_errors(sample_root: Path, tmp_path: Path, options: dict, message: str):
    with pytest.raises(PetlabError, match=message):
        datamodule(sample_root, tmp_path, **options)


def test_an_empty_dataset_directory_is_a_clear_error(tmp_path: Path):
    (tmp_path / "empty" / "images").mkdir(parents=True)
    with pytest.raises(PetlabError, match="is empty"):
        build_index(tmp_path / "empty")


@pytest.mark.skipif(not REAL_SAMPLE.is_dir(), reason="the real 600-image sample is not beside this checkout")
def test_the_real_release_sample_is_read_with_its_quirks(tmp_path: Path):
    before = snapshot(REAL_SAMPLE)
    index = build_index(REAL_SAMPLE, tmp_path / "cache").set_index("name")
    assert int(index["readable"].sum()) == 600
    assert (index.loc[~index["readable"], "problem"].str.startswith("not an image file")).sum() == 3
    assert set(index.loc[index["readable"], "mode"]) >= {"RGB", "RGBA", "P"}
    module = datamodule(REAL_SAMPLE, tmp_path, target="breed")
    assert module.class_names == ["Abyssinian", "Bengal", "american_bulldog"]
    assert snapshot(REAL_SAMPLE) == before


def folder_dataset(root: Path, source: Path, folders: dict[str, int]) -> Path:
    """``root/FOLDER/CLASS/*.jpg``: ``count`` images of two breeds (as classes) in each named folder."""
    images = iter(sorted((source / "images").glob("*.jpg")))
    for folder, count in folders.items():
        for animal in ("bengal", "pug"):
            (root / folder / animal).mkdir(parents=True)
            for _ in range(count):
                image = next(images)
                (root / folder / animal / image.name).write_bytes(image.read_bytes())
    return root


@pytest.mark.parametrize(
    ("train", "val", "test"),
    [("train", "validation", None), ("train", "valid", "test"), ("Training", "Val", "Testing")],
)
def test_the_usual_split_folder_names_are_used_and_reported(tmp_path: Path, caplog, train, val, test):
    source = generate_sample(tmp_path / "pets", per_breed=2, size=32)
    folders = {train: 6, val: 2, **({test: 2} if test else {}), "extras": 3}
    root = folder_dataset(tmp_path / "folders", source, folders)
    (root / "notes.txt").write_text("not an image, not in a folder")
    with caplog.at_level(logging.WARNING):
        module = datamodule(root, tmp_path, layout="folder")
    frame = module.frame
    assert (frame.loc[frame["split"] == "val", "path"].str.contains(f"/{val}/")).all()
    assert (frame["split"] == "val").sum() == 4 and (frame["split"] == "train").sum() == 12
    assert (frame["split"] == "test").sum() == (4 if test else 0)
    assert f"{val}/ -> val" in module.report.text() and f"{train}/ -> train" in module.report.text()
    stray = [record for record in caplog.records if "extras/" in record.getMessage()]
    assert len(stray) == 1 and "6 files" in stray[0].getMessage() and "not a split folder" in stray[0].getMessage()


def test_a_class_folder_named_like_a_split_is_a_class(tmp_path: Path):
    source = generate_sample(tmp_path / "pets", per_breed=2, size=32)
    root = tmp_path / "vehicles"
    for name in ("bus", "train"):  # train/ holds images, not class folders: it is the class "train"
        (root / name).mkdir(parents=True)
        for image in sorted((source / "images").glob("*.jpg"))[:10]:
            (root / name / image.name).write_bytes(image.read_bytes())
    module = datamodule(root, tmp_path, layout="folder", split="random")
    assert module.class_names == ["bus", "train"] and len(module.frame) == 20


def test_a_folder_dataset_without_a_validation_folder_says_validation_is_carved_from_train(tmp_path: Path):
    source = generate_sample(tmp_path / "pets", per_breed=2, size=32)
    module = datamodule(
        folder_dataset(tmp_path / "folders", source, {"train": 8, "test": 2}), tmp_path, layout="folder"
    )
    assert (module.frame["split"] == "val").sum() > 0 and "carved from train" in module.report.text()


def test_an_image_too_large_to_decode_safely_is_skipped_or_accepted_when_asked(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored after the test
    root = generate_sample(tmp_path / "pets", per_breed=4, size=32, seed=2)
    bomb = root / "images" / "Bengal_1.jpg"  # a JPEG whose header says 14000 x 14000: PIL refuses to open it
    data = bytearray(bomb.read_bytes())
    frame_header = data.index(b"\xff\xc0")
    data[frame_header + 5 : frame_header + 9] = (14000).to_bytes(2, "big") * 2
    bomb.write_bytes(bytes(data))
    module = datamodule(root, tmp_path)
    problem = module.report.skipped.set_index("name").loc["Bengal_1", "problem"]
    assert problem.startswith("too large") and "data.max_image_pixels" in problem
    assert "Bengal_1" not in set(module.frame["name"])
    large = root / "images" / "Bengal_2.jpg"
    Image.open(large).resize((80, 80)).save(large)  # 6,400 pixels; the others have 32 x 32 = 1,024
    assert "Bengal_2" in set(datamodule(root, tmp_path, max_image_pixels=5000).report.skipped["name"])
    assert "Bengal_2" in set(datamodule(root, tmp_path, max_image_pixels=6400).frame["name"])


def test_stale_partial_files_of_interrupted_builds_are_removed_and_live_ones_kept(sample_root: Path, tmp_path):
    images = tmp_path / "cache" / "images"
    images.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname().replace(".", "-")
    stale = images / f".old.npy.{host}.{dead.stdout.strip()}.partial"  # its process was killed mid-build
    stale.write_bytes(b"half a cache")
    live = partial_path(images / "building.npy")  # this process is still writing it
    live.write_bytes(b"being written")
    foreign = images / ".other.npy.another-host.1.partial"
    foreign.write_bytes(b"a build on another machine of a shared file system")
    odd = images / ".x.partial"  # not a name petlab writes: left alone
    odd.write_bytes(b"")
    datamodule(sample_root, tmp_path)
    assert not stale.exists() and live.exists() and foreign.exists() and odd.exists()
