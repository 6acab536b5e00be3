"""Data: labels from file names, the dataset index, splits, transforms and the LightningDataModule."""

from petlab.data.datamodule import PetDataModule

__all__ = ["PetDataModule"]
