"""A few checks on the real offline Lite0 weights and ../shared/datasets (small samples, to stay fast)."""

import numpy as np

from conftest import shared_dataset
from graft.config import FeatureConfig
from graft.data.demo import ELPV_CLASSES, elpv_manifest
from graft.features.backbones import create_backbone
from graft.features.extract import extract_features


def test_lite0_separates_two_real_species(tmp_path):
    folders = sorted(p for p in shared_dataset("flavia").iterdir() if p.is_dir())[:2]
    paths = [sorted(folder.glob("*.jpg"))[:4] for folder in folders]
    result = extract_features(paths[0] + paths[1], create_backbone(),
                              FeatureConfig(cache_dir=str(tmp_path), batch_size=8, num_workers=0))
    features = result.features / np.linalg.norm(result.features, axis=1, keepdims=True)
    similarity = features @ features.T
    within = (similarity[:4, :4].mean() + similarity[4:, 4:].mean()) / 2
    assert result.features.shape == (8, 1280) and np.isfinite(result.features).all()
    assert within > similarity[:4, 4:].mean()  # pretrained features: same species closer than different species


def test_demo_data_is_elpv():
    manifest = elpv_manifest()
    assert len(manifest) == 2624 and set(manifest.labels) == set(ELPV_CLASSES.values())
    assert {r.view for r in manifest} == {"mono", "poly"}
