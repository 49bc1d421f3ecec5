"""The measure registry on real image files: measures, registering, matrices, the compare and matrix commands."""

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageFilter

from artsim_lib import cli
from artsim_lib.measures import registry


def _painting(seed: int, size: int = 96) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (size // 8, size // 8, 3), dtype=np.uint8)
    return Image.fromarray(arr).resize((size, size), Image.Resampling.BICUBIC)


@pytest.fixture
def images(tmp_path):
    """Three PNGs: a painting, its blurred copy and another painting."""
    d = tmp_path / "imgs"
    d.mkdir()
    a = _painting(1)
    a.save(d / "a.png")
    a.filter(ImageFilter.GaussianBlur(1)).save(d / "a_blur.png")
    _painting(2).save(d / "b.png")
    return [d / "a.png", d / "a_blur.png", d / "b.png"]


def _values(out: str) -> dict:
    return {line.split()[0]: line.split()[1] for line in out.strip().splitlines()}


def test_compare_main_prints_raw_and_01(images, capsys):
    assert cli.compare_main([str(images[0]), str(images[1])]) == 0
    v = _values(capsys.readouterr().out)
    m = registry.load_measure("descriptor")
    expected = m.similarity(images[0], images[1])
    assert v["measure"] == "descriptor"
    assert float(v["raw"]) == pytest.approx(expected, abs=1e-6)
    assert float(v["[0,1]"]) == pytest.approx(m.similarity01(images[0], images[1]), abs=1e-6)
    assert cli.compare_main([str(images[0]), str(images[0]), "--measure", "texture"]) == 0
    assert float(_values(capsys.readouterr().out)["raw"]) == pytest.approx(1.0, abs=1e-6)


def test_compare_families_breakdown_matches_the_family_measures(images, capsys):
    assert cli.compare_main([str(images[0]), str(images[2]), "--families"]) == 0
    lines = dict(line.split() for line in capsys.readouterr().out.splitlines()[4:])
    for family in ("colour", "texture", "edges", "shape"):
        direct = registry.load_measure(family).similarity01(images[0], images[2])
        assert float(lines[family]) == pytest.approx(direct, abs=1e-6)


@pytest.mark.parametrize("case", ["missing", "garbage"])
def test_bad_image_exits_2_naming_the_file(images, tmp_path, capsys, case):
    bad = tmp_path / "nothing-here.png"
    if case == "garbage":
        bad.write_bytes(b"\x89PNG but not really")
    assert cli.compare_main([str(images[0]), str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(bad) in err


def test_unknown_measure_and_bad_usage_exit_2(images, capsys):
    assert cli.compare_main([str(images[0]), str(images[1]), "--measure", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown measure 'nope'" in err and "descriptor" in err
    assert cli.compare_main([str(images[0])]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert cli.compare_main(["--help"]) == 0


def test_fitted_measure_without_a_run_says_what_to_do(images, tmp_path, capsys):
    argv = [str(images[0]), str(images[1]), "--measure", "descriptor_fitted", "--run", str(tmp_path / "run")]
    assert cli.compare_main(argv) == 2
    assert "run stage 06 first or pass --run DIR" in capsys.readouterr().err


def test_ssim_maps_negative_raw_to_zero(tmp_path):
    a = _painting(3)
    inverse = Image.fromarray(255 - np.asarray(a))
    m = registry.load_measure("ssim")
    assert m.similarity(a, inverse) < 0
    assert m.similarity01(a, inverse) == 0.0
    assert m.similarity(a, a) == pytest.approx(1.0)


def test_registered_embedding_measure(images, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(registry, "_LOADERS", dict(registry._LOADERS))

    def loader(run_dir):
        registry.trained_model_dir(run_dir / "siamese", "mean-colour")
        # An embedding by hand: the mean colour minus mid-grey.
        return registry.EmbeddingMeasure(
            "mean-colour", lambda ims: np.stack([np.asarray(i, float).reshape(-1, 3).mean(0) - 127.5 for i in ims])
        )

    registry.register_measure("mean-colour", loader)
    with pytest.raises(registry.MeasureError, match="already registered"):
        registry.register_measure("mean-colour", loader)
    run = tmp_path / "run"
    assert cli.compare_main([str(images[0]), str(images[2]), "--measure", "mean-colour", "--run", str(run)]) == 2
    assert "run stage 08 first or pass --run DIR" in capsys.readouterr().err
    (run / "siamese").mkdir(parents=True)
    m = registry.load_measure("mean-colour", run)
    ea, eb = (np.asarray(Image.open(p), float).reshape(-1, 3).mean(0) - 127.5 for p in (images[0], images[2]))
    cos = ea @ eb / np.linalg.norm(ea) / np.linalg.norm(eb)
    assert m.similarity(images[0], images[2]) == pytest.approx(cos)
    assert m.similarity01(images[0], images[2]) == pytest.approx((cos + 1) / 2)
    assert m.embed(images).shape == (3, 3)
    mat = registry.similarity_matrix(images, m)
    assert mat[0, 2] == pytest.approx((cos + 1) / 2) and np.allclose(np.diag(mat), 1)


def test_similarity_matrix_matches_pairwise_calls(images):
    m = registry.load_measure("descriptor")
    mat = registry.similarity_matrix(images, m)
    assert mat.shape == (3, 3) and np.allclose(mat, mat.T) and np.allclose(np.diag(mat), 1)
    assert ((mat >= 0) & (mat <= 1)).all()
    for i, j in ((0, 1), (0, 2), (1, 2)):
        assert mat[i, j] == pytest.approx(m.similarity01(images[i], images[j]), abs=1e-12)
    assert mat[0, 1] > mat[0, 2]  # the blurred copy is closer than another painting
    with pytest.raises(NotImplementedError, match="no embedding"):
        m.embed(images)


def test_matrix_main_writes_png_and_csv(images, tmp_path, capsys):
    png, csv = tmp_path / "out" / "m.png", tmp_path / "out" / "m.csv"
    assert cli.matrix_main([str(images[0].parent), "--png", str(png), "--csv", str(csv), "--measure", "colour"]) == 0
    table = pd.read_csv(csv, index_col=0)
    assert list(table.index) == list(table.columns) == ["a.png", "a_blur.png", "b.png"]
    direct = registry.load_measure("colour").similarity01(images[1], images[2])
    assert table.loc["a_blur.png", "b.png"] == pytest.approx(direct, abs=1e-6)
    with Image.open(png) as im:
        assert im.format == "PNG" and im.width > 100
    assert "3 images" in capsys.readouterr().out
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.matrix_main([str(empty)]) == 2
    assert "no images" in capsys.readouterr().err


def test_descriptor_measure_reads_the_runs_params(images, tmp_path):
    from artsim_lib import config

    run = tmp_path / "run"
    run.mkdir()
    P = config.load_params("smoke", ["descriptors.size=64", "descriptors.hog_cell=8"])
    (run / "params.resolved.yaml").write_text(P.to_yaml())
    m = registry.load_measure("descriptor", run)
    assert m.cfg.size == 64
    assert registry.load_measure("descriptor", tmp_path / "no-run").cfg == config.compare_descriptor_params()


def test_duck_typed_measures_are_adapted(images, monkeypatch, capsys):
    monkeypatch.setattr(registry, "_LOADERS", dict(registry._LOADERS))

    class Embedder:  # paths or PIL images in, embeddings out (like a CLIP measure)
        name = "grey-level"

        def embed(self, items):
            seen.extend(items)
            return np.array([[np.asarray(registry.read_image(i), float).mean() - 100.0, 1.0] for i in items])

    class Pairwise:  # no embedding: only the two similarities
        name = "same-size"

        def similarity(self, a, b):
            return 1.0 if a.size == b.size else -1.0

        def similarity01(self, a, b):
            return (self.similarity(a, b) + 1) / 2

    seen = []
    registry.register_measure("grey-level", lambda run: Embedder())
    registry.register_measure("same-size", lambda run: Pairwise())
    emb = registry.load_measure("grey-level")
    assert isinstance(emb, registry.EmbeddingMeasure)
    mat = registry.similarity_matrix(images, emb)
    assert seen == images  # the paths went through as they were
    e = np.array([[np.asarray(Image.open(p), float).mean() - 100.0, 1.0] for p in images])
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    np.testing.assert_allclose(mat, (e @ e.T + 1) / 2)
    pw = registry.load_measure("same-size")
    assert isinstance(pw, registry.PairwiseMeasure)
    assert registry.similarity_matrix(images, pw).min() == 1.0
    assert pw.similarity(images[0], Image.new("RGB", (5, 5))) == -1.0
    assert pw.scores(images[0], Image.new("RGB", (5, 5))) == (-1.0, 0.0)
    small = images[0].parent / "small.png"
    Image.new("RGB", (5, 5)).save(small)
    assert cli.compare_main([str(images[0]), str(small), "--measure", "same-size"]) == 0
    out = _values(capsys.readouterr().out)
    assert (float(out["raw"]), float(out["[0,1]"])) == (-1.0, 0.0)  # the object's own similarity01
    registry.register_measure("broken", lambda run: object())
    with pytest.raises(registry.MeasureError, match="not a measure"):
        registry.load_measure("broken")


def _run_with_colour_only(run_dir):
    """A run whose descriptor weights are colour only (not the defaults)."""
    from artsim_lib import config

    P = config.load_params("smoke", ["descriptors.weights={colour: 1.0}"])
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "params.resolved.yaml").write_text(P.to_yaml())
    return run_dir


def test_compare_uses_the_defaults_unless_a_run_is_given(images, tmp_path, monkeypatch, capsys):
    run = _run_with_colour_only(tmp_path / "run")
    monkeypatch.setenv("ARTSIM_RUN_DIR", str(run))  # the default run: it used to be read silently
    argv = [str(images[0]), str(images[2])]
    assert cli.compare_main(argv) == 0
    out = capsys.readouterr()
    default = registry.DescriptorMeasure("descriptor", registry.config.compare_descriptor_params())
    assert float(_values(out.out)["raw"]) == pytest.approx(default.similarity(images[0], images[2]), abs=1e-6)
    assert "the default descriptor params (no --run given)" in out.err
    assert cli.compare_main(argv + ["--run", str(run)]) == 0
    out = capsys.readouterr()
    colour = registry.load_measure("colour").similarity(images[0], images[2])
    assert float(_values(out.out)["raw"]) == pytest.approx(colour, abs=1e-6)
    assert f"the descriptor params of {run / 'params.resolved.yaml'}" in out.err


def test_matrix_skips_and_lists_unreadable_files(images, tmp_path, capsys):
    folder = images[0].parent
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    (folder / "empty.jpg").write_bytes(b"")
    png, csv = tmp_path / "m.png", tmp_path / "m.csv"
    assert cli.matrix_main([str(folder), "--png", str(png), "--csv", str(csv)]) == 0
    out = capsys.readouterr()
    table = pd.read_csv(csv, index_col=0)
    assert list(table.index) == ["a.png", "a_blur.png", "b.png"]
    assert "skipped 2 file(s)" in out.err and "broken.png: cannot read image" in out.err
    assert "empty.jpg" in out.err and "2 skipped" in out.out


def test_the_trained_measures_table_names_every_backbone_and_variant():
    from artsim_lib import models
    from artsim_lib.measures import sota, trained
    from artsim_lib.models import heads

    cnn = {f"{k}_finetuned" for k in models.BACKBONE_KINDS}
    cnn |= {trained.measure_name(k, v) for k in models.BACKBONE_KINDS for v in heads.VARIANTS}
    assert set(trained.LOADERS) == {"clip", "clip_siamese", "resnet"} | cnn
    assert set(trained.LOADERS) | set(sota.LOADERS) <= set(registry.available_measures())


def test_the_registry_loads_without_torch():
    import subprocess
    import sys

    code = "import sys, artsim_lib.measures.registry as r; r.available_measures(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"  # `artsim compare --measure descriptor` stays light
