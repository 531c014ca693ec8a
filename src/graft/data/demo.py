"""The demo dataset: ELPV, 2,624 electroluminescence images of solar cells in four defect-probability classes.

Deitsch et al., "Automatic classification of defective photovoltaic module cells in electroluminescence images",
Solar Energy 185 (2019). CC BY-NC-SA 4.0. Installed with ``pip install graft[demo]`` (PyPI ``elpv-dataset``).
"""

from __future__ import annotations

from pathlib import Path

from graft.data.manifest import ImageRecord, Manifest
from graft.errors import DataError

# Defect probability as annotated by experts -> class name.
ELPV_CLASSES = {0.0: "functional", 1 / 3: "possibly_defective", 2 / 3: "likely_defective", 1.0: "defective"}


def elpv_labels_file() -> Path:
    try:
        import elpv_dataset
    except ImportError as error:
        raise DataError(
            "the demo data is not installed; run `pip install 'graft[demo]'` (or `make demo`), "
            "or point the demo at your own data with `graft demo --data DIR`"
        ) from error
    return Path(elpv_dataset.__file__).parent / "data" / "labels.csv"


def elpv_manifest() -> Manifest:
    """One record per cell image; ``view`` is the cell type (mono/poly), each image its own observation."""
    labels_file = elpv_labels_file()
    records = []
    for line in labels_file.read_text().splitlines():
        if not line.strip():
            continue
        relative, probability, cell_type = line.split()
        label = min(ELPV_CLASSES.items(), key=lambda item: abs(item[0] - float(probability)))[1]
        path = labels_file.parent / relative
        records.append(ImageRecord(path=path, label=label, observation=relative, view=cell_type))
    return Manifest(records, str(labels_file))
