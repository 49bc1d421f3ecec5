"""The real ImageNet EfficientNet-Lite0 (artsim_lib.models.backbones) on SynthArt: tests that fail if
the weights are not the real ones, or the features do not carry what the study needs."""

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from artsim_lib import cli
from artsim_lib.core import augment
from artsim_lib.io import synthart
from artsim_lib.measures import registry
from artsim_lib.models import backbone_from_spec, embed_images, load_backbone

SIZE = 128  # cheap on a CPU; the features at 224 rank the same way on these images


@pytest.fixture(scope="module")
def paintings(tmp_path_factory):
    """SynthArt originals without defects: (PIL images, styles)."""
    root = synthart.generate(tmp_path_factory.mktemp("synthart"), num_images=64, seed=0, max_side=384).parent
    bad = {f for files in synthart.defects(root).values() for f in files}
    rows = pd.read_csv(root / "classes.csv")
    rows = rows[~rows["filename"].isin(bad)].reset_index(drop=True)
    images = [Image.open(root / f).convert("RGB") for f in rows["filename"]]
    return images, rows["filename"].str.split("/").str[0].to_numpy()


@pytest.fixture(scope="module")
def effnet():
    return load_backbone("effnet_lite0", image_size=SIZE)


def test_loads_the_imagenet_weights_and_gives_1280_features(effnet):
    model, preprocess = effnet
    x = torch.zeros(2, 3, 224, 224)
    with torch.no_grad():
        assert model.net.extract_features(x).shape == (2, 1280, 7, 7)
        assert model(x).shape == (2, 1280)
    fresh = backbone_from_spec(model.spec)
    assert not torch.equal(fresh.net._conv_stem.weight, model.net._conv_stem.weight)  # weights really loaded
    assert list(preprocess.image_mean) == pytest.approx([0.485, 0.456, 0.406])


def test_a_derivative_outranks_another_painting_of_the_same_style(effnet, paintings):
    # For each original and each moderate derivative (strength 0.5, every augment family), the
    # derivative must be nearer the original than another SynthArt painting of the same style is,
    # for at least 75% of the (derivative, other painting) pairs overall and 60% in each family
    # (seed 0: photometric 0.95, degradation 0.74, geometric 0.66, stylistic 0.92).
    model, preprocess = effnet
    images, styles = paintings
    orig = embed_images(model, preprocess, images).numpy()  # [N, 1280]
    rates = {}
    for family in augment.FAMILIES:
        derived = [augment.apply(im, family, 0.5, seed=i)[0] for i, im in enumerate(images)]
        der = embed_images(model, preprocess, derived).numpy()
        wins = [
            orig[i] @ der[i] > orig[i] @ orig[j]
            for i in range(len(images))
            for j in range(len(images))
            if j != i and styles[j] == styles[i]
        ]
        rates[family] = float(np.mean(wins))
    assert np.mean(list(rates.values())) >= 0.75 and min(rates.values()) >= 0.6, rates


def _held_out_accuracy(features: np.ndarray, styles: np.ndarray) -> float:
    """A seeded linear head trained on 2/3 of the originals, scored on the other third."""
    y = torch.tensor(pd.factorize(styles)[0])
    x = torch.tensor(features, dtype=torch.float32) * 10  # unit vectors: a larger scale trains faster
    train = torch.arange(len(y)) % 3 != 0
    torch.manual_seed(0)
    head = torch.nn.Linear(x.shape[1], int(y.max()) + 1)
    opt = torch.optim.Adam(head.parameters(), lr=0.01, weight_decay=1e-4)
    for _ in range(300):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(head(x[train]), y[train]).backward()
        opt.step()
    with torch.no_grad():
        return (head(x[~train]).argmax(1) == y[~train]).float().mean().item()


def test_a_head_on_the_features_beats_chance_and_a_random_network(effnet, paintings):
    # 8 styles: chance is 0.125. The pretrained features must give at least chance + 0.6 on held-out
    # originals, and beat the same head on a randomly initialised EfficientNet-Lite0 by 0.1.
    model, preprocess = effnet
    images, styles = paintings
    pretrained = _held_out_accuracy(embed_images(model, preprocess, images).numpy(), styles)
    torch.manual_seed(0)
    random_net = backbone_from_spec(model.spec).eval()
    random = _held_out_accuracy(embed_images(random_net, preprocess, images).numpy(), styles)
    chance = 1 / len(set(styles))
    assert pretrained >= chance + 0.6 and pretrained >= random + 0.1, (pretrained, random, chance)


def test_compare_measure_needs_no_run(tmp_path, paintings, capsys):
    images, _ = paintings
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    images[0].save(a)
    augment.apply(images[0], "photometric", 0.25, seed=0)[0].save(b)
    assert cli.compare_main([str(a), str(b), "--measure", "effnet_lite0", "--run", str(tmp_path / "none")]) == 0
    out = dict(line.split(None, 1) for line in capsys.readouterr().out.strip().splitlines())
    m = registry.load_measure("effnet_lite0", tmp_path / "none")
    assert out["measure"].strip() == "effnet_lite0"
    assert float(out["raw"]) == pytest.approx(m.similarity(a, b), abs=1e-5) and float(out["raw"]) > 0.8


def test_every_evaluation_row_says_what_its_weights_are():
    from artsim_lib import config
    from artsim_lib.measures.base import measure_weights

    smoke, full = config.load_params("smoke"), config.load_params("full")
    w = {n: measure_weights(n, smoke) for n in smoke.evaluation.measures}
    assert w["effnet_lite0"] == "real-pretrained" and w["clip"] == "tiny-random" and w["descriptor"] == "handcrafted"
    assert w["effnet_lite0_siamese"] == "trained-here on real-pretrained EfficientNet-Lite0"
    assert w["clip_siamese"] == "trained-here on tiny-random CLIP"
    assert not any(n.startswith("resnet") for n in smoke.evaluation.measures)  # smoke trains no ResNet
    assert measure_weights("resnet_finetuned", full) == "trained-here on real-pretrained ResNet"
    assert measure_weights("clip", full) == "real-pretrained"
    assert "unknown" not in {measure_weights(n, p) for p in (smoke, full) for n in p.evaluation.measures}
    rehearsal = config.load_params("rehearsal")
    assert measure_weights("resnet_finetuned", rehearsal) == "trained-here on rehearsal-random ResNet"
    assert measure_weights("effnet_lite0", rehearsal) == "real-pretrained"
    assert rehearsal.finetune.backbone == "resnet"  # the rehearsal keeps exercising ResNet-50 at real size
