"""Datasets: the MedMNIST catalog and readers, and a user's folder of images plus a CSV."""

from medlens.datasets.base import ClassificationData, Split
from medlens.datasets.catalog import dataset_names, get_dataset_info, resolve_data_dir, resolve_dataset_file
from medlens.datasets.folder import load_folder_dataset
from medlens.datasets.medmnist import load_medmnist

__all__ = [
    "ClassificationData",
    "Split",
    "dataset_names",
    "get_dataset_info",
    "load_folder_dataset",
    "load_medmnist",
    "resolve_data_dir",
    "resolve_dataset_file",
]
