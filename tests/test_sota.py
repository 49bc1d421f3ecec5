"""DINOv2 and SSCD as measures, on tiny seeded stand-ins built offline: the same code paths as the
real checkpoints (transformers' Dinov2Model with its processor; a TorchScript file via torch.jit.load)."""

import numpy as np
import pytest
import torch
from PIL import Image

from artsim_lib import config
from artsim_lib.measures import registry as compare
from artsim_lib.measures import sota
from artsim_lib.measures.base import MeasureUnavailableError


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)
    other = rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)
    return [
        Image.fromarray(base),
        Image.fromarray(np.clip(base.astype(int) + 8, 0, 255).astype(np.uint8)),
        Image.fromarray(other),
    ]


def test_tiny_dinov2_is_the_pooled_cls_cosine(tmp_path, images):
    from transformers import AutoImageProcessor, Dinov2Model

    folder = sota.make_tiny_dinov2(tmp_path / "dinov2", seed=1)
    m = sota.dinov2_measure(str(folder))
    emb = m.embed(images)  # [3, 32], unit rows
    assert emb.shape == (3, 32) and np.allclose(np.linalg.norm(emb, axis=1), 1)
    model, proc = Dinov2Model.from_pretrained(folder).eval(), AutoImageProcessor.from_pretrained(folder)
    with torch.no_grad():
        cls = model(**proc(images=images, return_tensors="pt")).pooler_output.numpy()
    cls /= np.linalg.norm(cls, axis=1, keepdims=True)
    assert np.allclose(emb, cls, atol=1e-5)
    assert m.similarity(images[0], images[0]) == pytest.approx(1, abs=1e-6)


def test_tiny_sscd_torchscript_is_loaded_and_normalised(tmp_path, images):
    path = sota.make_tiny_sscd(tmp_path / "sscd.torchscript.pt", seed=2)
    net = torch.jit.load(str(path))
    m = sota.sscd_measure(path, short_side=64)
    emb = m.embed(images)
    direct = torch.cat([net(sota.sscd_preprocess(im, 64)[None]) for im in images]).detach().numpy()
    assert np.allclose(emb, direct / np.linalg.norm(direct, axis=1, keepdims=True), atol=1e-6)
    x = sota.sscd_preprocess(images[0], 64)
    assert x.shape == (3, 64, 96)  # short side 64, aspect kept
    with pytest.raises(MeasureUnavailableError, match="TorchScript"):
        sota.sscd_measure(tmp_path / "missing.pt")


def test_loaders_build_tiny_models_for_a_smoke_run(run_dir):
    P = config.load_params("smoke")
    P.run.root.mkdir(parents=True, exist_ok=True)
    P.run.params_file.write_text(P.to_yaml())
    for name in ("dinov2", "sscd"):
        m = compare.load_measure(name, run_dir)
        assert m.name == name
    assert (run_dir / "models" / "tiny-dinov2" / "config.json").exists()
    full = config.load_params("full")
    assert full.models.dinov2 == "facebook/dinov2-base"


def test_missing_models_are_skipped_with_a_reason(run_dir, tmp_path):
    P = config.load_params(
        "smoke",
        ["models.build_tiny=false", f"models.sscd={tmp_path}/none.pt", "models.dinov2=no-such-org/dinov2-missing"],
    )
    P.run.root.mkdir(parents=True, exist_ok=True)
    P.run.params_file.write_text(P.to_yaml())
    with pytest.raises(MeasureUnavailableError, match="TorchScript"):
        compare.load_measure("sscd", run_dir)
    with pytest.raises(MeasureUnavailableError, match="dinov2"):
        compare.load_measure("dinov2", run_dir)
