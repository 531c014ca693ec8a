"""The data: decoding images safely, manifest readers (folder, CSV, LifeCLEF XML), splits, inspection."""

from graft.data.images import is_image_path, load_rgb
from graft.data.manifest import ImageRecord, Manifest, load_manifest, read_csv
from graft.data.splits import assign_splits, check_trainable

__all__ = ["ImageRecord", "Manifest", "assign_splits", "check_trainable", "is_image_path", "load_manifest", "load_rgb",
           "read_csv"]
