"""Tiny checkpoints, offline loaders and the tokenizers (artsim_lib.models): real CLIP, corpus-trained OPT."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from artsim_lib.config import load_params
from artsim_lib.models import (
    KINDS,
    ModelNotAvailableError,
    bpe,
    build_tiny,
    check_blip2_processor,
    clip_image_embeddings,
    clip_text_embeddings,
    ensure_tiny_checkpoints,
    load_blip2,
    load_clip,
    load_resnet,
    load_sdxl_refiner,
    pick_device,
    pick_dtype,
    resolve_model_ref,
    tiny,
    tiny_marker,
)

# 20 ordinary words, not a line of the corpus (one token a word plus the two specials: 22).
SENTENCE_20 = (
    "An old fisherman mends his nets on the quiet beach while two small children watch the grey waves at sunset"
)


@pytest.fixture(scope="session")
def tiny_dirs(tiny_models):
    """Every tiny checkpoint, the session's shared ones (``tiny_models``): ``{kind: dir}``."""
    return {kind: tiny_models(kind) for kind in KINDS}


@pytest.fixture(scope="session")
def clip(tiny_dirs):
    return load_clip(tiny_dirs["clip"])


@pytest.fixture(scope="session")
def blip2(tiny_dirs):
    return load_blip2(tiny_dirs["blip2"])


@pytest.fixture(scope="session")
def refiner(tiny_dirs):
    pipe = load_sdxl_refiner(tiny_dirs["sdxl_refiner"])
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def images():
    """Four different images of different sizes: [red, blue, noise, smooth random blobs]."""
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (120, 90, 3), dtype=np.uint8))
    blobs = Image.fromarray((rng.random((4, 4, 3)) * 255).astype(np.uint8)).resize((100, 140), Image.BICUBIC)
    return [Image.new("RGB", (64, 64), "red"), Image.new("RGB", (80, 48), "blue"), noise, blobs]


LOADERS = {  # kind -> ref -> a tuple whose first item is the model (or pipeline)
    "clip": load_clip,
    "blip2": load_blip2,
    "resnet": load_resnet,
    "sdxl_refiner": lambda ref: (load_sdxl_refiner(ref),),
}


def _state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def _modules(kind, objects):
    """The nn.Modules of a make_tiny / loader result, by name."""
    if kind == "sdxl_refiner":
        return {n: c for n, c in objects[0].components.items() if isinstance(c, torch.nn.Module)}
    return {"model": objects[0]}


# -- tokenizers ---------------------------------------------------------------------------


def test_train_bpe_picks_most_frequent_pair_and_breaks_ties_lexicographically():
    words = {("x", "y"): 2, ("u", "v"): 2, ("a", "b"): 3, ("a", "b", "c"): 1}
    # (a,b) is seen 4 times; (u,v) and (x,y) twice each; (ab,c) once, below min_count 2.
    assert bpe.train_bpe(words, num_merges=10) == [("a", "b"), ("u", "v"), ("x", "y")]
    assert bpe.train_bpe(words, num_merges=1) == [("a", "b")]


def test_clip_tokenizer_is_the_real_clip_vocabulary():
    tok = bpe.clip_tokenizer()
    assert len(tok) == bpe.CLIP_VOCAB_SIZE == 49408
    assert (tok.bos_token_id, tok.eos_token_id) == (49406, 49407)  # as in openai/clip-vit-base-patch32
    ids = tok(SENTENCE_20)["input_ids"]
    # 20 words, 'mends' is 'm' + 'ends</w>' in CLIP's merges: 21 tokens + the two specials
    assert len(ids) == 23, tok.convert_ids_to_tokens(ids)
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.decode(ids, skip_special_tokens=True) == SENTENCE_20.lower()
    assert tok.tokenize("painting landscape portrait") == ["painting</w>", "landscape</w>", "portrait</w>"]


def test_clip_tokenizer_unknown_words_fall_back_to_bytes():
    tok = bpe.clip_tokenizer()
    ids = tok("Zxqwv ñandú 😀")["input_ids"]
    inner = ids[1:-1]
    assert len(inner) >= 6 and tok.unk_token_id not in inner, tok.convert_ids_to_tokens(
        ids
    )  # unk == <|endoftext|> for CLIP
    assert tok.decode(ids, skip_special_tokens=True) == "zxqwv ñandú 😀"


def test_clip_tokenizer_truncates_at_77():
    tok = bpe.clip_tokenizer()
    assert tok.model_max_length == 77
    ids = tok(" ".join(["painting"] * 200), truncation=True)["input_ids"]
    assert len(ids) == 77 and ids[-1] == tok.eos_token_id
    padded = tok("a cat", padding="max_length", truncation=True)["input_ids"]
    assert len(padded) == 77


def test_vocab_and_merges_files_load_with_clip_tokenizer(tmp_path):
    from transformers import CLIPTokenizer

    bpe.write_vocab_files(tmp_path, *bpe.clip_vocab_merges())  # no tokenizer.json
    assert (tmp_path / "merges.txt").read_text().startswith("#version: 0.2\n")
    from_files = CLIPTokenizer.from_pretrained(tmp_path, model_max_length=77)
    assert from_files(SENTENCE_20)["input_ids"] == bpe.clip_tokenizer()(SENTENCE_20)["input_ids"]


def test_opt_tokenizer_is_gpt2_style_with_bos():
    tok = bpe.opt_tokenizer()
    ids = tok("A painting of a woman in a red dress")["input_ids"]
    assert ids[0] == tok.bos_token_id == 2  # OPT prepends </s>
    assert tok.convert_ids_to_tokens(ids)[2:5] == ["Ġpainting", "Ġof", "Ġa"]
    assert tok.decode(ids, skip_special_tokens=True) == "A painting of a woman in a red dress"


def test_tokenizer_training_is_the_same_in_a_fresh_process():
    code = (
        "import hashlib, json; from artsim_lib.models import bpe; "
        "print(hashlib.sha256(json.dumps([bpe.clip_vocab_merges(), bpe.opt_vocab_merges()]).encode()).hexdigest())"
    )
    here = __import__("hashlib").sha256(json.dumps([bpe.clip_vocab_merges(), bpe.opt_vocab_merges()]).encode())
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == here.hexdigest()


# -- tiny checkpoints ---------------------------------------------------------------------


def test_tiny_dirs_hold_safetensors_and_a_marker(tiny_dirs):
    for kind, d in tiny_dirs.items():
        assert tiny_marker(d) == {
            "kind": kind,
            "seed": 0,
            "version": tiny.TINY_VERSION,
            "note": "random weights, for smoke runs",
        }
        assert list(d.rglob("*.safetensors")), kind
        assert not list(d.rglob("*.bin")), kind
    assert (tiny_dirs["clip"] / "vocab.json").exists() and (tiny_dirs["clip"] / "merges.txt").exists()
    assert not [p for p in tiny_dirs["clip"].parent.iterdir() if p.name.endswith(".tmp")]  # atomic


@pytest.mark.parametrize("kind", KINDS)
def test_tiny_round_trips_and_same_seed_gives_same_weights(kind, tiny_dirs):
    loader = LOADERS[kind]
    loaded = _modules(kind, loader(tiny_dirs[kind]))
    again = _modules(kind, tiny.make_tiny(kind, seed=0))
    other = _modules(kind, tiny.make_tiny(kind, seed=1))
    assert loaded.keys() == again.keys()
    for name in loaded:
        _assert_same_weights(loaded[name], again[name])  # save -> load is lossless, seed 0 == seed 0
    main = "unet" if kind == "sdxl_refiner" else "model"
    pairs = zip(_state(again[main]).values(), _state(other[main]).values())
    assert any(not torch.equal(a, b) for a, b in pairs)  # seed 1 gives other weights


@pytest.mark.parametrize("kind", KINDS)
def test_loaders_return_frozen_eval_models(kind, tiny_dirs):
    loader = LOADERS[kind]
    for name, module in _modules(kind, loader(tiny_dirs[kind])).items():
        assert not module.training, name
        assert all(not m.training for m in module.modules()), name
        assert all(not p.requires_grad for p in module.parameters()), name


def test_build_tiny_rejects_unknown_kind(tmp_path):
    with pytest.raises(ValueError, match="unknown tiny model kind"):
        build_tiny("dalle", tmp_path / "x")
    assert not (tmp_path / "x").exists()


# -- forward passes -----------------------------------------------------------------------


def test_clip_embeddings_shapes_and_norm(clip, images):
    model, processor = clip
    img = clip_image_embeddings(model, processor, images)
    assert img.shape == (4, tiny.CLIP_EMBED_DIM) and img.dtype == torch.float32
    assert torch.allclose(img.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert not torch.allclose(img[0], img[1])  # different images, different embeddings
    txt = clip_text_embeddings(model, processor, ["a red square", " ".join(["painting"] * 150)])
    assert txt.shape == (2, tiny.CLIP_EMBED_DIM)  # the long one was truncated to 77, not an error
    assert torch.allclose(txt.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert processor.tokenizer.model_max_length == model.config.text_config.max_position_embeddings == 77


def test_clip_image_embeddings_accepts_tensor_features(clip, images):
    """transformers 4.x returned a tensor from get_image_features; 5.x an output object."""
    model, processor = clip

    class TensorCLIP(torch.nn.Module):
        device, dtype = model.device, model.dtype

        def get_image_features(self, pixel_values):
            return model.get_image_features(pixel_values=pixel_values).pooler_output * 3.0  # [B, D]

    out = clip_image_embeddings(TensorCLIP(), processor, images)
    assert torch.allclose(out, clip_image_embeddings(model, processor, images), atol=1e-6)


def test_blip2_generates_word_captions(blip2, images):
    model, processor = blip2
    inputs = processor(images=images, return_tensors="pt")
    assert inputs["pixel_values"].shape == (4, 3, tiny.BLIP2_IMAGE_SIZE, tiny.BLIP2_IMAGE_SIZE)
    out = model.generate(**inputs, max_new_tokens=6)
    captions = processor.batch_decode(out, skip_special_tokens=True)
    assert len(captions) == 4
    assert all(len(c.split()) == 6 for c in captions), captions
    assert len(set(captions)) > 1, captions  # the caption depends on the image
    again = processor.batch_decode(model.generate(**inputs, max_new_tokens=6), skip_special_tokens=True)
    assert again == captions  # greedy decoding is deterministic


def test_blip2_generates_after_a_text_prompt(blip2, images):
    model, processor = blip2
    inputs = processor(images=images[:2], text=["a painting of"] * 2, return_tensors="pt")
    n_image = (inputs["input_ids"] == model.config.image_token_index).sum(dim=1)
    assert n_image.tolist() == [tiny.BLIP2_QUERY_TOKENS] * 2
    captions = processor.batch_decode(model.generate(**inputs, max_new_tokens=4), skip_special_tokens=True)
    assert all(c.startswith("a painting of ") and len(c.split()) == 3 + 4 for c in captions), captions


def test_blip2_query_token_mismatch_is_a_clear_error(blip2):
    model, processor = blip2
    check_blip2_processor(model, processor)  # as built: consistent
    saved = processor.num_query_tokens
    try:
        processor.num_query_tokens = saved + 1
        with pytest.raises(ValueError, match="num_query_tokens=9 but the model has 8"):
            check_blip2_processor(model, processor)
        processor.num_query_tokens = None  # an old processor config: take the model's
        check_blip2_processor(model, processor)
        assert processor.num_query_tokens == model.config.num_query_tokens
    finally:
        processor.num_query_tokens = saved


def test_sdxl_refiner_is_shaped_like_the_refiner(refiner):
    assert refiner.text_encoder is None and refiner.tokenizer is None
    assert refiner.config.requires_aesthetics_score is True
    assert refiner.config.force_zeros_for_empty_prompt is False
    assert refiner.vae_scale_factor == 8
    # time ids: (orig h, w, crop top, left, aesthetic score) -> 5 x 8, plus the pooled text 32
    assert refiner.unet.add_embedding.linear_1.in_features == 5 * tiny.SDXL_TIME_DIM + tiny.SDXL_TEXT_DIM
    assert refiner.tokenizer_2.model_max_length == 77


@pytest.mark.parametrize("size", [(64, 64), (96, 64)])
def test_sdxl_img2img_two_steps(refiner, size):
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    kwargs = dict(prompt="an oil painting of a harbour at dawn", image=image, num_inference_steps=2, strength=1.0)
    a = refiner(**kwargs, generator=torch.Generator().manual_seed(0)).images[0]
    b = refiner(**kwargs, generator=torch.Generator().manual_seed(0)).images[0]
    c = refiner(**kwargs, generator=torch.Generator().manual_seed(1)).images[0]
    assert isinstance(a, Image.Image) and a.size == size
    assert np.array_equal(np.asarray(a), np.asarray(b))  # same seed, same image
    assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_sdxl_fp16_variant_holds_the_same_weights_in_half(tiny_dirs, refiner):
    half = load_sdxl_refiner(tiny_dirs["sdxl_refiner"], variant="fp16", dtype="float32")
    for name in ("unet", "vae", "text_encoder_2"):
        full = getattr(refiner, name).state_dict()
        for key, value in getattr(half, name).state_dict().items():
            assert torch.equal(value, full[key].half().float()), (name, key)


def test_sdxl_loader_takes_a_separate_vae(tiny_dirs):
    pipe = load_sdxl_refiner(tiny_dirs["sdxl_refiner"], vae=str(tiny_dirs["sdxl_refiner"] / "vae"))
    assert not pipe.vae.training and all(not p.requires_grad for p in pipe.vae.parameters())


def test_resnet_logits(tiny_dirs, images):
    model, processor = load_resnet(tiny_dirs["resnet"])
    x = processor(images=images, return_tensors="pt")["pixel_values"]  # [4, 3, 32, 32]
    assert x.shape == (4, 3, tiny.RESNET_IMAGE_SIZE, tiny.RESNET_IMAGE_SIZE)
    with torch.no_grad():
        out = model(pixel_values=x, output_hidden_states=True)
    assert out.logits.shape == (4, tiny.RESNET_LABELS) == (4, len(model.config.id2label))
    assert model.config.layer_type == "bottleneck"
    assert model.resnet(x).pooler_output.shape == (4, tiny.RESNET_HIDDEN[-1], 1, 1)


# -- resolving refs -----------------------------------------------------------------------


def test_uncached_hub_id_raises_model_not_available():
    ref = "artsim-tests/definitely-not-cached"
    with pytest.raises(ModelNotAvailableError) as err:
        resolve_model_ref(ref)
    assert ref in str(err.value) and "download" in str(err.value)
    assert f"hf download {ref}" in str(err.value)
    assert isinstance(err.value, OSError)
    with pytest.raises(ModelNotAvailableError, match="download"):
        load_clip(ref)


def test_missing_local_dir_names_the_path(tmp_path):
    missing = tmp_path / "models" / "tiny-clip"
    with pytest.raises(ModelNotAvailableError) as err:
        load_clip(missing)
    assert str(missing) in str(err.value) and "build_tiny" in str(err.value)
    missing.mkdir(parents=True)  # an empty directory is no checkpoint either
    with pytest.raises(ModelNotAvailableError, match="build_tiny"):
        resolve_model_ref(missing)


def test_incomplete_local_checkpoint_is_model_not_available(tiny_dirs, tmp_path):
    for name in ("config.json", "preprocessor_config.json"):  # no weights
        (tmp_path / name).write_bytes((tiny_dirs["resnet"] / name).read_bytes())
    with pytest.raises(ModelNotAvailableError, match="incomplete checkpoint"):
        load_resnet(tmp_path)


def test_existing_dir_resolves_to_itself(tiny_dirs):
    assert resolve_model_ref(tiny_dirs["resnet"]) == str(tiny_dirs["resnet"])


def test_pick_device_and_dtype(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto") == torch.device("cpu")
    assert pick_dtype("auto", "cpu") == torch.float32
    with pytest.raises(RuntimeError, match="no CUDA"):
        pick_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("auto") == torch.device("cuda")
    assert pick_dtype("auto", "auto") == torch.float16
    assert pick_dtype("bfloat16", "cpu") == torch.bfloat16
    assert pick_dtype(torch.float16) == torch.float16
    with pytest.raises(ValueError, match="unknown dtype"):
        pick_dtype("float8")


# -- ensure_tiny_checkpoints ----------------------------------------------------------------


def test_ensure_tiny_builds_missing_once(run_dir):
    P = load_params("smoke")
    built = ensure_tiny_checkpoints(P, kinds=["resnet"])
    path = built["resnet"]
    assert str(path) == P.model_ref("resnet") and str(path).startswith(str(run_dir))
    assert tiny_marker(path)["kind"] == "resnet"
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert ensure_tiny_checkpoints(P, kinds=["resnet"]) == {"resnet": path}
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp  # not rebuilt
    marker = json.loads((path / tiny.MARKER).read_text())
    (path / tiny.MARKER).write_text(json.dumps({**marker, "version": -1}))
    ensure_tiny_checkpoints(P, kinds=["resnet"])
    assert tiny_marker(path)["version"] == tiny.TINY_VERSION  # an outdated build is replaced


def test_ensure_tiny_leaves_foreign_dirs_alone(run_dir):
    P = load_params("smoke")
    foreign = run_dir / "models" / "tiny-resnet"
    foreign.mkdir(parents=True)
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not replacing"):
        ensure_tiny_checkpoints(P, kinds=["resnet"])
    assert (foreign / "notes.txt").read_text() == "mine"


def test_ensure_tiny_is_off_in_the_full_profile(run_dir):
    P = load_params("full")
    assert ensure_tiny_checkpoints(P) == {}
    assert not (run_dir / "models").exists()
    with pytest.raises(ValueError, match="hub id"):
        ensure_tiny_checkpoints(load_params("full", ["models.build_tiny=true"]), kinds=["clip"])
