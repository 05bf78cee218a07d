"""Data: safe image I/O, FIDL dataset readers, synthetic forgeries.

This package's top level imports only numpy and Pillow, so the torch-free runtime can use
`defaker_edge.data.io` for decoding. Synthetic forgeries (OpenCV) live in `data.synth`.
"""

from .io import DEFAULT_MAX_PIXELS, load_dataset_image, load_image, load_mask, save_mask_png
from .dataset import DOMAINS, Sample, load_dataset, read_folders, read_manifest, write_manifest

__all__ = [
    "DEFAULT_MAX_PIXELS", "load_dataset_image", "load_image", "load_mask", "save_mask_png",
    "DOMAINS", "Sample", "load_dataset", "read_folders", "read_manifest", "write_manifest",
]
