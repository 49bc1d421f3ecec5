"""benchmarks/bench_gpu.py: its configurations are the real models', and it runs end to end
at tiny sizes on the CPU (the GPU run itself needs a GPU)."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench_gpu():
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "benchmarks" / "bench_gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_written_configs_build_the_real_architectures(bench_gpu):
    # Parameter counts of the hub checkpoints; built on the meta device (no memory, no weights).
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    cfg = bench_gpu.configs()
    with torch.device("meta"):
        counts = {
            "unet": bench_gpu.n_params(UNet2DConditionModel(**cfg["unet"])),
            "vae": bench_gpu.n_params(AutoencoderKL(**cfg["vae"])),
            "text_encoder_2": bench_gpu.n_params(CLIPTextModelWithProjection(CLIPTextConfig(**cfg["text_encoder_2"]))),
            "blip2": bench_gpu.n_params(bench_gpu.build_blip2(cfg["blip2"])),
            "clip": bench_gpu.n_params(bench_gpu.build_clip(cfg["clip"])),
            "resnet": bench_gpu.n_params(bench_gpu.build_resnet(cfg["resnet"])),
        }
    expected = {
        "unet": 2.26e9,
        "vae": 83.7e6,
        "text_encoder_2": 695e6,
        "blip2": 3.745e9,
        "clip": 151.3e6,
        "resnet": 25.56e6,
    }
    for name, n in counts.items():
        assert n == pytest.approx(expected[name], rel=0.005), name
    # --tiny changes sizes, never the architecture's kind
    tiny = bench_gpu.configs(tiny=True)
    assert tiny["unet"]["down_block_types"] == cfg["unet"]["down_block_types"]
    assert tiny["unet"]["block_out_channels"] != cfg["unet"]["block_out_channels"]
    assert bench_gpu.REFINER_UNET["block_out_channels"] == [384, 768, 1536, 1536]  # not mutated by configs()


def test_tiny_run_measures_every_section_and_projects_the_study(bench_gpu, tmp_path, capsys):
    out = tmp_path / "figures.json"
    assert bench_gpu.main(["--tiny", "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert figures["tiny"] and figures["errors"] == []
    got = {(r["section"], r["label"], r["batch"]) for r in figures["rows"]}
    assert {
        ("sdxl", "moderate (10 steps)", 1),
        ("sdxl", "radical (19 steps)", 2),
        ("blip2", "caption (4 tokens)", 2),
        ("clip", "image embedding", 4),
        ("resnet", "pooled features", 4),
        ("resnet", "training step (stage 07)", 4),
    } <= got
    assert all(r["s_per_image"] > 0 for r in figures["rows"])
    assert all(p["hours"] is not None and p["hours"] > 0 for p in figures["projection"])
    printed = capsys.readouterr().out
    assert "projected GPU-hours" in printed and "s/image" in printed


def test_a_failing_section_is_reported_and_the_others_run(bench_gpu, monkeypatch, capsys):
    def broken(cfg):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(bench_gpu, "build_clip", broken)
    assert bench_gpu.main(["--tiny", "--only", "clip", "resnet"]) == 0
    printed = capsys.readouterr().out
    assert "section failed: clip: RuntimeError: CUDA out of memory (simulated)" in printed
    assert "resnet  pooled features" in printed and "08 CLIP embeddings" in printed


def test_without_a_gpu_it_says_so(bench_gpu, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench_gpu.main([]) == 2
    assert "no CUDA device" in capsys.readouterr().out


def test_a_failing_measurement_is_recorded_and_the_next_one_runs(bench_gpu):
    bench = bench_gpu.Bench(torch.device("cpu"), torch.float32, budget_s=60, tiny=True, repeats=2)
    assert bench.measure("sdxl", "radical", 8, lambda: 1 / 0) is None
    row = bench.measure("sdxl", "radical", 4, lambda: sum(range(1000)))
    assert row["batch"] == 4 and row["s_per_image"] == pytest.approx(row["seconds"] / 4)
    assert bench.errors == ["sdxl radical batch 8: ZeroDivisionError: division by zero"]
    assert bench.best("sdxl", "radical") == row["s_per_image"]
    bench.budget_s = -1  # past the budget: nothing new starts
    assert bench.measure("sdxl", "radical", 2, lambda: pytest.fail("ran past the budget")) is None
