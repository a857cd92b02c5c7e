"""Zoo formats: list and read checkpoints from local paths or s3:// URIs.

``open_zoo`` lists a zoo into parts, ``read_part`` reads one (a Ray task's unit of work),
``read_zoo`` reads them all. Writers live in the format modules: ``native``, ``smallcnnzoo``,
``modelzoos``, ``tensorfolder`` (format "safetensors"). Importing this package imports no format module, torch or safetensors.
"""

from pipeline.zoo.checkpoint import Checkpoint, Layer, Rejection, validate, with_generalization_gap
from pipeline.zoo.listing import FORMATS, ZooError, ZooListing, detect_format, open_zoo, read_part, read_zoo

__all__ = [
    "FORMATS",
    "Checkpoint",
    "Layer",
    "Rejection",
    "ZooError",
    "ZooListing",
    "detect_format",
    "open_zoo",
    "read_part",
    "read_zoo",
    "validate",
    "with_generalization_gap",
]
