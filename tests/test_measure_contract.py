"""The contract every registered measure keeps (as diffusers' PipelineTesterMixin does for pipelines):
for each name in ``registry.available_measures()``, loaded from a small smoke run directory, on three
tiny images:

* identity: an image is most similar to itself, and ``similarity01(a, a)`` is 1;
* symmetry: ``similarity(a, b) == similarity(b, a)``;
* range: ``similarity01`` in [0, 1], ``similarity`` in [-1, 1];
* ``matrix`` equals the pairwise calls (raw and normalised);
* cached equals fresh: a measure used before (warm in-memory caches) and one loaded anew give the
  same matrix, and so do the on-disk caches the study fills (stage 06's descriptor features, stage
  08's CLIP embeddings).

The run has params and tiny models but no trained stage: a measure that needs stage 07's or 08's
model is skipped with its loader's ``MeasureUnavailableError`` message; every other measure must load.
"""

import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageFilter

from artsim_lib import config
from artsim_lib.core import descriptors
from artsim_lib.measures import embeddings, registry
from artsim_lib.measures.base import DescriptorMeasure

NAMES = registry.available_measures()
# Need only the run's params and the models a smoke run builds (tiny, random) or installs (the real
# EfficientNet-Lite0): these must load. The rest need a model trained by stage 07 or 08.
OFFLINE = {
    "ssim",
    "colour",
    "texture",
    "edges",
    "shape",
    "descriptor",
    "geometry",
    "effnet_lite0",
    "clip",
    "resnet",
    "dinov2",
    "sscd",
}
SMALL = [
    "descriptors.size=64",
    "descriptors.thumb_size=32",
    "descriptors.hog_cell=8",
    "descriptors.workers=1",
    "finetune.image_size=32",
    "evaluation.batch_size=4",
    "num_workers=1",
]
TOL = 1e-5
PAIRS = [(0, 1), (0, 2), (1, 2)]


def _painting(seed: int, size: int = 48) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (size // 8, size // 8, 3), dtype=np.uint8)
    return Image.fromarray(arr).resize((size, size), Image.Resampling.BICUBIC)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[str]:
    """A painting, its blurred copy, and another painting letterboxed into a wider frame (so that
    the content-free geometry measure tells them apart too)."""
    d = tmp_path_factory.mktemp("contract-images")
    a = _painting(1)
    a.save(d / "a.png")
    a.filter(ImageFilter.GaussianBlur(1)).save(d / "a_blur.png")
    wide = Image.new("RGB", (64, 48))
    wide.paste(_painting(2), (8, 0))
    wide.save(d / "b_wide.png")
    return [str(d / n) for n in ("a.png", "a_blur.png", "b_wide.png")]


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_models):
    """A smoke run directory with its params.resolved.yaml and nothing run; CLIP and ResNet are the
    session's shared tiny checkpoints (DINOv2 and SSCD are built tiny into the run by their loaders)."""
    run = tmp_path_factory.mktemp("contract-run")
    shared = [f"models.{kind}={tiny_models(kind)}" for kind in ("clip", "resnet")]
    P = config.load_params("smoke", [*shared, *SMALL])
    (run / config.RUN_PARAMS_FILE).write_text(P.to_yaml())
    return run


@pytest.fixture(scope="module")
def loaded(run):
    """``loaded(name)``: the measure of the run, loaded once per module (skipped when its stage has not run)."""
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            try:
                cache[name] = registry.load_measure(name, run)
            except registry.MeasureUnavailableError as err:
                if name in OFFLINE:
                    raise
                cache[name] = err
        if isinstance(cache[name], Exception):
            pytest.skip(str(cache[name]))
        return cache[name]

    return get


def test_the_offline_measures_are_registered():
    assert OFFLINE <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_identity(name, loaded, images):
    m = loaded(name)
    assert m.name == name
    mat = m.matrix(images)
    for i, img in enumerate(images):
        assert m.similarity01(img, img) == pytest.approx(1.0, abs=TOL)
        assert mat[i, i] == pytest.approx(1.0, abs=TOL)
        assert mat[i, i] >= mat[i].max() - TOL


@pytest.mark.parametrize("name", NAMES)
def test_symmetry_and_range(name, loaded, images):
    m = loaded(name)
    for i, j in PAIRS:
        raw, s01 = m.similarity(images[i], images[j]), m.similarity01(images[i], images[j])
        assert raw == pytest.approx(m.similarity(images[j], images[i]), abs=TOL)
        assert s01 == pytest.approx(m.similarity01(images[j], images[i]), abs=TOL)
        assert -1.0 - TOL <= raw <= 1.0 + TOL
        assert 0.0 <= s01 <= 1.0
        assert m.scores(images[i], images[j]) == pytest.approx((raw, s01), abs=TOL)


@pytest.mark.parametrize("name", NAMES)
def test_matrix_equals_pairwise_calls(name, loaded, images):
    m = loaded(name)
    mat, raw = m.matrix(images), m.matrix(images, normalised=False)
    assert mat.shape == raw.shape == (3, 3)
    assert np.allclose(mat, mat.T, atol=TOL) and np.allclose(raw, raw.T, atol=TOL)
    assert ((mat >= 0) & (mat <= 1)).all()
    for i, j in PAIRS:
        assert mat[i, j] == pytest.approx(m.similarity01(images[i], images[j]), abs=TOL)
        assert raw[i, j] == pytest.approx(m.similarity(images[i], images[j]), abs=TOL)
    assert np.allclose(registry.similarity_matrix(images, m), mat, atol=TOL)


@pytest.mark.parametrize("name", NAMES)
def test_a_used_measure_and_a_fresh_one_agree(name, loaded, run, images):
    used = loaded(name)
    first = used.matrix(images)
    assert np.allclose(used.matrix(images), first, atol=TOL)  # its in-memory caches are warm now
    assert np.allclose(registry.load_measure(name, run).matrix(images), first, atol=TOL)


@pytest.mark.parametrize("name", [n for n in NAMES if n in registry.DESCRIPTOR_MEASURES])
def test_cached_descriptor_features_equal_fresh_ones(name, loaded, images, tmp_path):
    m = loaded(name)
    assert isinstance(m, DescriptorMeasure)
    descriptors.extract_many(images, m.cfg, tmp_path / "cache")
    cached, hits = descriptors.extract_many(images, m.cfg, tmp_path / "cache")
    assert hits.all()
    for i, j in PAIRS:
        assert m.raw_from_features(cached[i], cached[j]) == pytest.approx(m.similarity(images[i], images[j]), abs=1e-9)


def test_cached_clip_embeddings_equal_fresh_ones(run, images, monkeypatch):
    fresh = registry.load_measure("clip", run).matrix(images)  # no embedding cache in the run yet
    P, encoder = embeddings.run_encoder(run)
    root = run / "embeddings" / encoder.key
    table = pd.DataFrame({"id": [f"img{i}" for i in range(len(images))], "path": images})
    try:
        assert embeddings.extract(encoder, table, root).complete  # what stage 08 does
        cached = registry.load_measure("clip", run)

        def no_forward(encoder, items, *a, **k):
            assert not list(items), "the cached images were embedded again"
            return iter(())

        with monkeypatch.context() as m:
            m.setattr(embeddings, "encode", no_forward)
            assert np.allclose(cached.matrix(images), fresh, atol=TOL)
    finally:  # the other tests' measures read the run without a cache
        shutil.rmtree(run / "embeddings", ignore_errors=True)
