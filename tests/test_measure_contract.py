"""The contract every registered measure keeps (as diffusers' PipelineTesterMixin does for pipelines):
for each name in ``registry.available_measures()``, loaded from a small smoke run directory, on three
tiny images:

* identity: an image is most similar to itself, and ``similarity01(a, a)`` is 1 (a learnt score of
  a pair, the regression siamese, says it is not: ``self_similarity_is_one``; it must still be
  symmetric, in range, and the same in a matrix and pair by pair);
* symmetry: ``similarity(a, b) == similarity(b, a)``;
* range: ``similarity01`` in [0, 1], ``similarity`` in [-1, 1];
* ``matrix`` equals the pairwise calls (raw and normalised);
* cached equals fresh: a measure used before (warm in-memory caches) and one loaded anew give the
  same matrix, and so do the on-disk caches the study fills (stage 06's descriptor features, stage
  08's CLIP embeddings).

Every registered measure must load, none is skipped. The runs hold params and tiny models, and the
models stages 06-08 would train, written by the stages' own savers (``measures.trained``) untrained:
the contract is about the measure, not about what training taught it. Stage 07 trains one backbone
per run, so the ``resnet_*`` measures read a run with ``finetune.backbone=resnet`` and the
``effnet_lite0_*`` ones a run with ``finetune.backbone=effnet_lite0``.
"""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageFilter

from artsim_lib import config
from artsim_lib.core import descriptors
from artsim_lib.measures import embeddings, registry, trained
from artsim_lib.measures.base import DescriptorMeasure

NAMES = registry.available_measures()
# Need only the run's params and the models a smoke run builds (tiny, random) or installs (the real
# EfficientNet-Lite0). The rest read the models of stages 06-08 (_write_trained_models).
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


def _write_trained_models(run, P):
    """What stages 06, 07 and 08 write into ``run`` for the measures that read it, with untrained
    weights: the fitted descriptor weights, the fine-tuned ``finetune.backbone``, its two siamese
    variants and the CLIP siamese head."""
    import torch

    from artsim_lib import models
    from artsim_lib.models import heads

    trained.fitted_weights_path(run).parent.mkdir(parents=True, exist_ok=True)
    trained.fitted_weights_path(run).write_text(json.dumps({"weights": dict.fromkeys(descriptors.FAMILIES, 0.2)}))
    kind = P.finetune.backbone
    torch.manual_seed(0)
    if kind == "resnet":
        backbone, processor = models.load_backbone("resnet", P.model_ref("resnet", run))
    else:
        backbone, processor = models.load_backbone(kind, None)
    clf = heads.CNNClassifier(backbone, ["style_a", "style_b"], seed=0)
    trained.save_checkpoint(clf, processor, trained.finetuned_dir(run), {"complete": True, "backbone": kind})
    for variant in heads.VARIANTS:
        model = heads.ResNetSiamese(clf.backbone, [8], 4, 0.0, variant)
        model.processor = processor
        info = {"variant": variant, "hidden": [8], "out_dim": 4, "dropout": 0.0, "tau": 0.07, "learn_tau": False}
        trained.save_resnet_siamese(model, trained.siamese_dir(run, kind, variant), info)
    _, encoder = embeddings.run_encoder(run)
    cfg = heads.head_config(P.siamese, encoder.model.config.projection_dim)
    trained.save_head(
        heads.siamese_from_config(cfg),
        {**cfg, "clip_key": encoder.key},
        pd.DataFrame(columns=["epoch", "split", "loss"]),
        trained.clip_head_dir(run, trained.split_name(P.siamese.train_splits[0])),
    )


def _run(tmp_path_factory, tiny_models, backbone: str):
    run = tmp_path_factory.mktemp(f"contract-run-{backbone}")
    shared = [f"models.{kind}={tiny_models(kind)}" for kind in ("clip", "resnet")]
    P = config.load_params("smoke", [*shared, *SMALL, f"finetune.backbone={backbone}"])
    (run / config.RUN_PARAMS_FILE).write_text(P.to_yaml())
    _write_trained_models(run, P)
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_models):
    """``{backbone: run directory}`` for the two backbones stage 07 can fine-tune."""
    return {kind: _run(tmp_path_factory, tiny_models, kind) for kind in ("resnet", "effnet_lite0")}


def run_for(name: str, runs) -> object:
    """The run a measure reads: the one whose stage 07 trained its backbone."""
    return runs["effnet_lite0" if name.startswith("effnet_lite0_") else "resnet"]


@pytest.fixture(scope="module")
def run(runs):
    return runs["resnet"]


@pytest.fixture(scope="module")
def loaded(runs):
    """``loaded(name)``: the measure, loaded once per module from its run."""
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            cache[name] = registry.load_measure(name, run_for(name, runs))
        return cache[name]

    return get


def test_the_offline_measures_are_registered():
    assert OFFLINE <= set(NAMES)
    assert set(NAMES) - OFFLINE >= {"descriptor_fitted", "clip_siamese", "resnet_finetuned", "effnet_lite0_siamese"}


@pytest.mark.parametrize("name", NAMES)
def test_identity(name, loaded, images):
    m = loaded(name)
    assert m.name == name
    mat = m.matrix(images)
    if not m.self_similarity_is_one:
        assert name.endswith("_regression")  # only the learnt pair score may say so
        return
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
def test_a_used_measure_and_a_fresh_one_agree(name, loaded, runs, images):
    used = loaded(name)
    first = used.matrix(images)
    assert np.allclose(used.matrix(images), first, atol=TOL)  # its in-memory caches are warm now
    assert np.allclose(registry.load_measure(name, run_for(name, runs)).matrix(images), first, atol=TOL)


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
