"""``python -m petlab.bench``: the data pipeline and training throughput, measured side by side.

On the same images and settings it measures (a) the notebook-style pipeline (PIL open, resize, to
tensor, normalise, per item per epoch), (b) petlab's pipeline cold (building the decoded-image cache)
and warm, (c) the model's compute bound (forward, backward and optimiser step on a batch already in
memory) and (d) petlab's end-to-end training throughput (the Lightning module fed by the data module,
with the default augmentation of ``conf/data/oxford_pet.yaml``); both use the training config's optimizer.
(c) and (d) are measured in fp32 with contiguous tensors (the default before bfloat16) and in the default
precision and memory format of this device (``trainer.precision=auto``), alternately, ``repeats`` times
each, and reported as medians; then it prints
images per second, the ratios b/a and d/c, the speed-up of the default over fp32, the cache build's rate
against the number of cores times one core's decode rate, and peak memory.

``--task predict`` measures (e) instead: ``petlab.predict``'s end-to-end images per second over a folder of
photos (answer files included) against the model's inference bound at the same precision.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException, OverrideParseException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as v1

from petlab.cli import config_error, quiet_console
from petlab.config import config_dir, config_options, project_root
from petlab.data.augment import BatchAugmentation
from petlab.data.cache import build_cache, cache_path, target_cache_path
from petlab.data.datamodule import PetDataModule, resolve_num_workers
from petlab.data.frame import stored_values
from petlab.data.items import CachedImageDataset, ItemTargets, by_key, collate
from petlab.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ItemTransform,
    decoded_pixels,
    resized_side,
)
from petlab.devices import check_devices
from petlab.errors import PetlabError
from petlab.module import PetModule, normalize_batch
from petlab.parallel import core_count
from petlab.precision import AUTO, autocast, resolve_precision, uses_channels_last
from petlab.resolvers import register_resolvers
from petlab.resume import quoted
from petlab.tasks.base import Task, build_task, fp32

Batch = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (images, targets) -> images


class NotebookDataset(Dataset):
    """What the user's notebook did for every item of every epoch (for per-pixel targets, the same for
    each of them: read its file, resize it, to a tensor)."""

    def __init__(self, paths: Sequence[str], image_size: int, targets: ItemTargets) -> None:
        self.paths, self.targets, self.size = list(paths), targets, image_size
        self.transform = v1.Compose([v1.Resize((image_size, image_size)), v1.ToTensor(),
                                     v1.Normalize(IMAGENET_MEAN, IMAGENET_STD)])  # fmt: skip

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, Any]:
        image = self.transform(Image.open(self.paths[item]).convert("RGB"))
        return image, self.targets(item, ItemTransform(self.size, None))


def _one_pass(loader: DataLoader, on_batch: Batch | None) -> float:
    started, count = time.perf_counter(), 0
    for images, targets in loader:
        if on_batch is not None:
            images = on_batch(images, targets)
        count += len(images)
    return count / (time.perf_counter() - started)


def images_per_second(loader: DataLoader, on_batch: Batch | None = None, warm_up: bool = True) -> float:
    """Images per second over a full pass; ``on_batch`` counts petlab's per-batch steps in this process.

    With ``warm_up`` an untimed pass comes first, so that (with persistent workers) the timed pass is the
    steady state of training, not worker start-up: the same for every pipeline measured.
    """
    if warm_up:
        _one_pass(loader, on_batch)
    return _one_pass(loader, on_batch)


def compute_bound(
    model: PetModule, batch: torch.Tensor, targets: torch.Tensor, steps: int, precision: str = "32-true"
) -> float:  # fmt: skip
    """Training steps on one batch already in memory: the most the data pipeline can let the model do.

    ``model`` and ``batch`` come in the memory format to measure; ``precision`` sets autocast as Lightning's
    plugin does, with the loss in fp32 as in training; the optimizer (and its parameter groups) are the
    module's own, as in training.
    """
    optimizer = model.configure_optimizers()["optimizer"]
    model.train()
    targets = model.task.encode_targets(targets)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(batch.device.type, precision):
            outputs = model(batch)
        model.task.loss(fp32(outputs), targets).backward()
        optimizer.step()

    step()  # warm-up: allocations, kernel selection
    _synchronise(batch.device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    _synchronise(batch.device)
    return steps * len(batch) / (time.perf_counter() - started)


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class _StepTimer(L.Callback):
    """Times training batches after ``warmup`` of them, fetching included."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.started, self.finished, self.images = warmup, 0.0, 0.0, 0

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, index: int) -> None:
        if index == self.warmup:
            _synchronise(module.device)
            self.started = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any,
                           index: int) -> None:  # fmt: skip
        if index >= self.warmup:
            _synchronise(module.device)
            self.finished = time.perf_counter()
            self.images += len(batch[1])


def training_config(
    task: str = "species", config_dirs: Sequence[Path] = (), overrides: Sequence[str] = ()
) -> DictConfig:
    """The config ``python -m petlab task=TASK OVERRIDES`` composes, with the user's config folders
    (``--config-dir``): the bench measures its task, data augmentation, crop margin and optimiser."""
    for folder in config_dirs:
        if not Path(folder).is_dir():
            raise PetlabError(f"--config-dir {folder} is not a folder: give the folder of your task/NAME.yaml")
    options = config_options("task", config_dirs)
    if task not in options:
        raise PetlabError(f"--task {task} is not a task config: choose one of {', '.join(options)}, predict or "
                          "audit (a task of your own: --config-dir DIR, the folder of its task/NAME.yaml)")  # fmt: skip
    search = ",".join(quoted(f"file://{Path(folder).resolve()}") for folder in config_dirs)
    register_resolvers()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        try:
            training = compose("train", overrides=[f"hydra.searchpath=[{search}]", f"task={task}", *overrides],
                               return_hydra_config=True)  # fmt: skip
        except (ConfigCompositionException, OverrideParseException) as error:
            raise PetlabError(config_error(error)) from error
        # A joint task composes its tasks as a run does: in the config path with the user's folders.
        HydraConfig.instance().set_config(training)
        try:
            OmegaConf.resolve(training.task)
        finally:
            HydraConfig.instance().cfg = None
    return training


def augmentation_of(data: DictConfig) -> dict[str, Any]:
    """``data.augment`` of a training config as a dict (``data.augment=null``: none)."""
    return OmegaConf.to_container(data.augment) if data.augment else {}


def end_to_end(module: PetModule, datamodule: PetDataModule, device: torch.device, precision: str,
               steps: int) -> float:  # fmt: skip
    """Training images per second of ``module`` fed by ``datamodule``, batch fetching included."""
    timer = _StepTimer(warmup=1)
    trainer = L.Trainer(
        accelerator=device.type, devices=1, precision=precision, max_epochs=1, limit_train_batches=steps + 1,
        limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[timer], num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(module, datamodule=datamodule)
    return timer.images / (timer.finished - timer.started)


def loader_options(batch_size: int, workers: int, targets: Any) -> dict[str, Any]:
    return {"batch_size": batch_size, "num_workers": workers, "persistent_workers": workers > 0,
            "collate_fn": partial(collate, targets)}  # fmt: skip


def notebook_pipeline(paths: Sequence[str], targets: ItemTargets, image_size: int, batch_size: int,
                      workers: int) -> float:  # fmt: skip
    """(a): images per second of the notebook's way, PIL per item per epoch."""
    dataset = NotebookDataset(paths, image_size, targets)
    return images_per_second(DataLoader(dataset, **loader_options(batch_size, workers, targets.kinds)))


def petlab_pipeline(
    paths: Sequence[str], values: dict[str, list[Any]], targets: Any, image_size: int, batch_size: int,
    workers: int, cache_dir: Path, data: DictConfig,
) -> dict[str, float]:  # fmt: skip
    """(b): images per second of petlab's pipeline cold (building the decoded-image cache, and the caches of
    per-pixel targets), warm (as validation reads it) and warm with the training augmentation of ``data``
    (here on the CPU, in this process; in training on the training device)."""
    side = resized_side(image_size, data.crop_margin)
    store, seconds = build_cache(paths, side, cache_path(cache_dir, paths, side, "bench"))
    images_seconds = seconds
    started = time.perf_counter()
    for path in paths:  # one core's rate on the same photos: what the cache build's pool multiplies
        decoded_pixels(path, side)
    one_core = len(paths) / (time.perf_counter() - started)
    stores = {}
    for key, target in by_key(targets).items():
        if target.per_pixel:
            stores[key], more = build_cache(values[key], side, target_cache_path(store, target.name),
                                            partial(target.decode, side=side), target.what)  # fmt: skip
            seconds += more

    def cached(crop: int | None) -> DataLoader:
        rows = range(len(paths))
        dataset = CachedImageDataset(store, rows, ItemTargets(targets, values, stores, rows), ItemTransform(side, crop))
        return DataLoader(dataset, **loader_options(batch_size, workers, targets))

    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    augmentation = BatchAugmentation.from_config(image_size, augmentation_of(data))

    def normalised(images: torch.Tensor, batch_targets: Any) -> torch.Tensor:
        return normalize_batch(images, mean, std)

    def augmented(images: torch.Tensor, batch_targets: Any) -> torch.Tensor:
        return normalize_batch(augmentation(images, batch_targets, targets)[0], mean, std)

    # Like for like with (a): the evaluation pipeline, images at image_size, normalised, no augmentation.
    first_pass = len(paths) / images_per_second(cached(crop=image_size), normalised, warm_up=False)
    return {
        "b_cold_img_s": len(paths) / (seconds + first_pass),
        "b_warm_img_s": images_per_second(cached(crop=image_size), normalised),
        "b_warm_augmented_img_s": images_per_second(cached(crop=None), augmented),
        "cache_mb": round(sum(path.stat().st_size for path in (store, *stores.values())) / 2**20, 1),
        "cache_build_s": round(seconds, 2),
        "cache_build_img_s": len(paths) / images_seconds,
        "decode_one_core_img_s": one_core,
        "cores": core_count(),
        "ratio_cache_build_over_cores_x_one_core": len(paths) / images_seconds / (core_count() * one_core),
    }


def repeated(targets: Any, count: int) -> Any:
    """A batch's targets repeated to ``count`` images (one tensor, or several by key)."""
    if isinstance(targets, dict):
        return {key: repeated(value, count) for key, value in targets.items()}
    return targets.repeat_interleave(-(-count // len(targets)), dim=0)[:count]


def model_throughput(
    task: Task, datamodule: PetDataModule, model: str, device: torch.device, precision: str, steps: int,
    repeats: int, optimizer: Any,
) -> dict[str, Any]:  # fmt: skip
    """(c) and (d): the model's compute bound and petlab's end-to-end training, in fp32 with contiguous
    tensors (what training did before bfloat16) and in this device's default, alternately, ``repeats`` times
    each (so that each ratio d/c compares measurements taken moments apart on a shared machine); medians."""
    image_size, batch_size = datamodule.image_size, datamodule.batch_size
    default = resolve_precision(precision, device.type)
    results: dict[str, Any] = {"precision": default}
    for name, (chosen, channels_last) in {"fp32": ("32-true", False), "default": (default, AUTO)}.items():
        module = PetModule({"name": model, "pretrained": False}, task, image_size, datamodule.mean, datamodule.std,
                           channels_last=channels_last, optimizer=optimizer)  # fmt: skip
        memory_format = torch.channels_last if uses_channels_last(channels_last, device.type) else None
        module.to(device, memory_format=memory_format or torch.contiguous_format)
        batch = torch.randn(batch_size, 3, image_size, image_size, device=device)
        batch = batch.contiguous(memory_format=memory_format or torch.contiguous_format)
        targets = move(repeated(next(iter(datamodule.loader("val")))[1], batch_size), device)
        compute, training = [], []
        for _ in range(repeats):
            compute.append(compute_bound(module, batch, targets, steps, chosen))
            training.append(end_to_end(module, datamodule, device, chosen, steps))
        results[f"c_compute_{name}_img_s"] = statistics.median(compute)
        results[f"d_end_to_end_{name}_img_s"] = statistics.median(training)
        results[f"ratio_d_over_c_{name}"] = statistics.median(d / c for d, c in zip(training, compute, strict=True))
    return results


def move(targets: Any, device: torch.device) -> Any:
    if isinstance(targets, dict):
        return {key: value.to(device) for key, value in targets.items()}
    return targets.to(device)


def run_bench(
    root: Path, model: str = "resnet34", image_size: int = 128, batch_size: int = 32, images: int = 512,
    workers: int | str = "auto", steps: int = 10, precision: str = AUTO, accelerator: str = "auto", repeats: int = 3,
    task: str = "species", config_dirs: Sequence[Path] = (), overrides: Sequence[str] = (),
) -> dict[str, Any]:  # fmt: skip
    """Measure (a)-(d) for ``task`` (any task of ``conf/task`` or of the user's ``config_dirs``, with the data
    and optimiser settings of a training run with ``overrides``) on the first ``images`` images of ``root``
    that have its targets; return the figures. Every pipeline carries the task's
    targets, as their kinds say (a label is a number; a per-pixel mask is read, resized and cached as the images
    are)."""
    notebook_workers, workers = resolve_num_workers(workers), resolve_num_workers(workers, cached=True)
    if not root.is_dir():
        raise PetlabError(f"no dataset at {root}: give --root DIR (`make sample` writes data/sample-pets)")
    training = training_config(task, config_dirs, overrides)
    built = build_task(training.task)
    device = torch.device("cuda" if accelerator != "cpu" and torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory(prefix="petlab-bench-") as cache_dir:
        datamodule = PetDataModule(root, targets=built.targets(), image_size=image_size, batch_size=batch_size,
                                   num_workers=workers, augment=augmentation_of(training.data),
                                   crop_margin=training.data.crop_margin, cache_dir=cache_dir,
                                   split="random")  # fmt: skip
        datamodule.setup("fit")
        frame = datamodule.frame.head(images)
        if len(frame) < batch_size:
            raise PetlabError(f"{root} has {len(frame)} usable images for task={task}; the bench needs at least "
                              "--batch-size")  # fmt: skip
        paths, values = frame["path"].tolist(), stored_values(frame, datamodule.keyed_targets)
        results: dict[str, Any] = {"root": str(root), "task": task, "model": model, "image_size": image_size,
                                   "batch_size": batch_size, "images": len(paths),
                                   "notebook_workers": notebook_workers, "workers": workers}  # fmt: skip
        item_targets = ItemTargets(built.targets(), values)
        results["a_notebook_img_s"] = notebook_pipeline(paths, item_targets, image_size, batch_size, notebook_workers)
        results.update(petlab_pipeline(paths, values, built.targets(), image_size, batch_size, workers,
                                       Path(cache_dir), training.data))  # fmt: skip
        results.update(model_throughput(built, datamodule, model, device, precision, steps, repeats,
                                        instantiate(training.optimizer)))  # fmt: skip
    results["speedup_c_default_over_fp32"] = results["c_compute_default_img_s"] / results["c_compute_fp32_img_s"]
    results["speedup_d_default_over_fp32"] = results["d_end_to_end_default_img_s"] / results["d_end_to_end_fp32_img_s"]
    results["ratio_b_warm_over_a"] = results["b_warm_img_s"] / results["a_notebook_img_s"]
    results["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    if device.type == "cuda":
        results["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    results["device"] = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    results["repeats"] = repeats
    return {key: round(value, 3) if isinstance(value, float) else value for key, value in results.items()}


PREDICTED_TASKS = ("species", "segmentation")  # a label per photo, and a mask (with pictures) per photo


def prediction_checkpoint(root: Path, task_name: str, model: str, image_size: int, directory: Path) -> Path:
    """A checkpoint of ``model`` for ``task_name`` after one training step on ``root``: the bench measures
    how fast answers come, not how good they are."""
    training = training_config(task_name)
    task = build_task(training.task)
    datamodule = PetDataModule(root, targets=task.targets(), image_size=image_size, batch_size=8, num_workers=0,
                               cache_dir=directory / "cache", split="random", augment={})  # fmt: skip
    datamodule.setup("fit")
    module = PetModule({"name": model, "pretrained": False}, task, image_size, datamodule.mean, datamodule.std,
                       optimizer=instantiate(training.optimizer))  # fmt: skip
    trainer = L.Trainer(max_steps=1, limit_val_batches=0, num_sanity_val_steps=0, logger=False, accelerator="cpu",
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(module, datamodule)
    path = directory / f"{task_name}.ckpt"
    trainer.save_checkpoint(path)
    return path


def inference_bound(checkpoint: Any, batch_size: int, device: torch.device, precision: str, steps: int) -> float:
    """Images per second of the checkpoint's model on a batch already in memory, with the precision and memory
    format ``petlab.predict`` uses on ``device``: the most prediction can reach."""
    model, side = checkpoint.model.to(device), checkpoint.side
    size = side if checkpoint.task.spatial else checkpoint.image_size
    channels_last = uses_channels_last(model.channels_last, device.type)
    model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    batch = {"pixels": torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8, device=device)}
    with torch.inference_mode(), autocast(device.type, precision):
        model.predict_step(batch, 0)  # warm-up: allocations, kernel selection
        _synchronise(device)
        started = time.perf_counter()
        for _ in range(steps):
            model.predict_step(batch, 0)
        _synchronise(device)
    return steps * batch_size / (time.perf_counter() - started)


def run_predict_bench(
    root: Path, model: str = "resnet34", image_size: int = 128, batch_size: int = 32, images: int = 512,
    workers: int = 2, steps: int = 10, precision: str = AUTO, accelerator: str = "auto", repeats: int = 3,
) -> dict[str, Any]:  # fmt: skip
    """(e): ``petlab.predict``'s images per second over the first ``images`` photos of ``root/images`` (its
    own code: DataLoader workers, Trainer.predict, answers merged into a JSON-lines file, pictures for
    segmentation) against the model's inference bound at the same precision, alternately, ``repeats`` times
    each; medians, for a classification and a segmentation model."""
    from petlab.answer_log import write_merged
    from petlab.checkpoint import load_checkpoint
    from petlab.predict import answer_files

    files = sorted((root / "images").glob("*.jpg"))[:images]
    if len(files) < batch_size:
        raise PetlabError(f"{root / 'images'} has {len(files)} JPEG photos; the bench needs at least --batch-size")
    kind = check_devices(accelerator, 1)
    device = torch.device("cuda" if kind == "cuda" else "cpu")
    chosen = resolve_precision(precision, accelerator)
    results: dict[str, Any] = {"root": str(root), "task": "predict", "model": model, "image_size": image_size,
                               "batch_size": batch_size, "images": len(files), "workers": workers,
                               "precision": chosen, "repeats": repeats,
                               "device": torch.cuda.get_device_name() if kind == "cuda" else "cpu"}  # fmt: skip
    positions = {str(path): position for position, path in enumerate(files)}
    with tempfile.TemporaryDirectory(prefix="petlab-bench-") as directory:
        for task_name in PREDICTED_TASKS:
            checkpoint = load_checkpoint(prediction_checkpoint(root, task_name, model, image_size, Path(directory)))
            options = OmegaConf.create({"top_k": 3, "batch_size": batch_size, "num_workers": workers, "tta": False,
                                        "accelerator": accelerator, "devices": 1, "num_nodes": 1,
                                        "precision": precision, "resume": False})  # fmt: skip
            bound, answered = [], []
            for repeat in range(repeats):
                bound.append(inference_bound(checkpoint, batch_size, device, chosen, steps))
                log_file = Path(directory) / f"{task_name}-{repeat}.jsonl"
                started = time.perf_counter()
                answer_files(checkpoint, files, log_file, log_file.with_suffix(""), options, several=False)
                write_merged(log_file, positions)
                answered.append(len(files) / (time.perf_counter() - started))
            results[f"e_{task_name}_bound_img_s"] = statistics.median(bound)
            results[f"e_{task_name}_predict_img_s"] = statistics.median(answered)
            results[f"ratio_e_{task_name}"] = statistics.median(a / b for a, b in zip(answered, bound, strict=True))
    results["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return {key: round(value, 3) if isinstance(value, float) else value for key, value in results.items()}


def print_predict_results(results: dict[str, Any]) -> None:
    print(f"petlab bench: petlab.predict on {results['images']} photos from {results['root']}, {results['model']} "
          f"at {results['image_size']} px, batch {results['batch_size']}, {results['workers']} DataLoader workers, "
          f"{results['precision']}, {results['device']}; medians of {results['repeats']}")  # fmt: skip
    for task_name in PREDICTED_TASKS:
        print(f"  {task_name:<13} model alone {results[f'e_{task_name}_bound_img_s']:>8.1f} images/s   "
              f"petlab.predict {results[f'e_{task_name}_predict_img_s']:>8.1f} images/s   "
              f"ratio {results[f'ratio_e_{task_name}']:.2f}")  # fmt: skip
    print(f"  peak memory {results['peak_rss_mb']} MB")


AUDIT_SECTIONS = ("duplicates", "outliers", "annotations")  # what runs without training; --epochs adds labels


def run_audit_bench(root: Path, model: str, image_size: int, epochs: int) -> dict[str, Any]:
    """(f): ``petlab.audit`` on ``root`` (as a user runs it, in a subprocess): its seconds, and with
    ``root/planted_faults.csv`` (``petlab.data.sample --plant-faults``) each section's precision and recall.
    ``epochs`` > 0 adds the label-error section (3 folds of ``model`` at ``image_size``, ``epochs`` each)."""
    from petlab.audit.scoring import score

    sections = [*AUDIT_SECTIONS, *(["labels"] if epochs else [])]
    with tempfile.TemporaryDirectory(prefix="petlab-bench-") as directory:
        command = [sys.executable, "-m", "petlab.audit", f"data.root={root}", f"audit.sections=[{','.join(sections)}]",
                   f"model={model}", f"data.image_size={image_size}", f"trainer.max_epochs={max(epochs, 1)}",
                   "callbacks.progress_bar=null", f"hydra.run.dir={directory}/audit",
                   f"paths.cache_dir={directory}/cache"]  # fmt: skip
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if done.returncode != 0:
            said = (done.stdout + done.stderr).strip().splitlines() or ["no output"]
            raise PetlabError(f"petlab.audit failed on {root}: {said[-1].split('error: ', 1)[-1]}")
        images = sum(1 for _ in (root / "images").glob("*.jpg"))
        results: dict[str, Any] = {"root": str(root), "task": "audit", "images": images, "sections": sections,
                                   "seconds": round(seconds, 1),
                                   "summary": [line for line in done.stdout.splitlines() if line.startswith(
                                       tuple(f"{section}:" for section in sections))]}  # fmt: skip
        planted = root / "planted_faults.csv"
        if planted.is_file():
            results["planted"] = score(Path(directory) / "audit", planted)
    return results


def print_audit_results(results: dict[str, Any]) -> None:
    print(f"petlab bench: petlab.audit on {results['images']} images of {results['root']} "
          f"({', '.join(results['sections'])}): {results['seconds']} s")  # fmt: skip
    for line in results["summary"]:
        print(f"  {line}")
    for section, figures in results.get("planted", {}).items():
        shown = ", ".join(f"{name} {value:.2f}" if isinstance(value, float) else f"{name} {value}"
                          for name, value in figures.items())  # fmt: skip
        print(f"  planted {section:<12} {shown}")


# Settings of a training run that the bench takes as options of its own (the rest of a run's are not measured).
OWN_OPTIONS = {"model": "--model", "data.image_size": "--image-size", "data.batch_size": "--batch-size",
               "data.num_workers": "--workers", "trainer.precision": "--precision",
               "trainer.accelerator": "--accelerator", "data.root": "--root"}  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m petlab.bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--root",
        type=Path,
        default=project_root() / "data" / "sample-pets",
        help="a dataset in the pets layout (default: data/sample-pets of the checkout or PETLAB_ROOT)",
    )
    parser.add_argument("--model", default="resnet34", choices=config_options("model"))
    parser.add_argument(
        "--task",
        default="species",
        help=f"a task config ({', '.join(config_options('task'))}, or one of your own with --config-dir): its "
        "targets travel every pipeline, as their kinds say (default species); "
        "predict: petlab.predict's throughput over --root's photos against the model alone, for a species and a "
        "segmentation model; audit: petlab.audit's time on --root, and with a planted sample (petlab.data.sample "
        "--plant-faults) the precision and recall of each section",
    )
    parser.add_argument(
        "--config-dir",
        type=Path,
        action="append",
        default=[],
        help="a folder of your own configs (its task/NAME.yaml), as for python -m petlab; may be given again",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=0,
        help="--task audit: also the label-error section, its folds trained this many epochs",
    )
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--images", type=int, default=512, help="how many images to read (default 512)")
    parser.add_argument(
        "--workers",
        default="auto",
        help="dataloader workers for every pipeline (default auto: "
        "as training chooses, none for the cached pipelines on a CPU)",
    )
    parser.add_argument("--steps", type=int, default=10, help="timed training steps for (c) and (d)")
    parser.add_argument("--repeats", type=int, default=3, help="measurements of (c) and (d) to take medians of")
    parser.add_argument("--precision", default=AUTO, help="the default to compare with fp32 (auto: as training)")
    parser.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "gpu"])
    parser.add_argument("--quick", action="store_true", help="a fast smoke run: 64 images, 64 px, 2 steps, 1 repeat")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="settings of the training run to measure, as for python -m petlab (e.g. experiment=NAME "
        "data.augment.policy=none): its data augmentation, crop margin and optimiser",
    )
    args = parser.parse_intermixed_args(argv)
    quiet_console()
    if args.quick:
        args.images, args.image_size, args.steps, args.batch_size, args.repeats = 64, 64, 2, 16, 1
    workers = int(args.workers) if str(args.workers).isdigit() else args.workers
    if (args.overrides or args.config_dir) and args.task in ("predict", "audit"):
        given = " ".join([*(f"--config-dir {folder}" for folder in args.config_dir), *args.overrides])
        parser.exit(2, f"error: {given}: a task's training settings, which --task {args.task} does not take\n")
    for override in args.overrides:
        key = override.lstrip("+~").split("=")[0]
        option = next((option for prefix, option in OWN_OPTIONS.items()
                       if key == prefix or key.startswith(f"{prefix}.")), None)  # fmt: skip
        if option:
            parser.exit(2, f"error: {override}: the bench sets this with {option}\n")
    if args.task == "audit":
        run, show = partial(run_audit_bench, args.root, args.model, args.image_size, args.epochs), print_audit_results
    elif args.task == "predict":
        run = partial(run_predict_bench, args.root, args.model, args.image_size, args.batch_size, args.images,
                      2 if workers == "auto" else workers, args.steps, args.precision, args.accelerator,
                      args.repeats)  # fmt: skip
        show = print_predict_results
    else:
        run = partial(run_bench, args.root, args.model, args.image_size, args.batch_size, args.images, workers,
                      args.steps, args.precision, args.accelerator, args.repeats, args.task,
                      args.config_dir, args.overrides)  # fmt: skip
        show = print_training_results
    try:
        results = run()
    except PetlabError as error:
        parser.exit(2, f"error: {error}\n")
    if args.json:
        print(json.dumps(results))
    else:
        show(results)


def print_training_results(results: dict[str, Any]) -> None:
    print(f"petlab bench: task={results['task']}, {results['images']} images from {results['root']}, "
          f"{results['model']} at "
          f"{results['image_size']} px, batch {results['batch_size']}, workers: {results['notebook_workers']} (a), "
          f"{results['workers']} (b-d), "
          f"{results['device']}; (c) and (d): medians of {results['repeats']}")  # fmt: skip
    default = f"default, {results['precision']}"
    rows = [
        ("(a) notebook pipeline (PIL per item)", results["a_notebook_img_s"]),
        ("(b) petlab pipeline, cold (cache build)", results["b_cold_img_s"]),
        ("(b) petlab pipeline, warm", results["b_warm_img_s"]),
        ("    warm, training: default batch augmentation", results["b_warm_augmented_img_s"]),
        ("(c) model compute bound, fp32", results["c_compute_fp32_img_s"]),
        (f"(c) model compute bound, {default}", results["c_compute_default_img_s"]),
        ("(d) petlab end-to-end training, fp32", results["d_end_to_end_fp32_img_s"]),
        (f"(d) petlab end-to-end training, {default}", results["d_end_to_end_default_img_s"]),
    ]
    for name, value in rows:
        print(f"  {name:<52} {value:>10.1f} images/s")
    print(f"  b(warm)/a = {results['ratio_b_warm_over_a']:.1f}x   d/c = {results['ratio_d_over_c_fp32']:.2f} (fp32), "
          f"{results['ratio_d_over_c_default']:.2f} (default)")  # fmt: skip
    print(f"  default over fp32: {results['speedup_c_default_over_fp32']:.2f}x compute, "
          f"{results['speedup_d_default_over_fp32']:.2f}x end-to-end")  # fmt: skip
    print(f"  cache build: {results['cache_build_img_s']:.0f} images/s on {results['cores']} cores, one core decodes "
          f"{results['decode_one_core_img_s']:.0f}: {results['ratio_cache_build_over_cores_x_one_core']:.2f} of "
          "cores x one core")  # fmt: skip
    print(f"  cache: {results['cache_mb']} MB for {results['images']} images, built in {results['cache_build_s']} s;"
          f" peak memory {results['peak_rss_mb']} MB" + (f", GPU {results['peak_gpu_mb']} MB"
                                                        if "peak_gpu_mb" in results else ""))  # fmt: skip


if __name__ == "__main__":
    main()
