"""Stage 04: token budget with the tiny checkpoint's real CLIP tokenizer, family balance, levels,
determinism, the clause-aware compressor on hand cases, and the llm/summarize backends."""

import random

import numpy as np
import pandas as pd
import pytest

from artsim_lib import config
from artsim_lib.core import prompt_compress, prompt_grammar
from artsim_lib.core.prompt_compress import Clause, compress
from artsim_lib.core.prompt_grammar import MODERATE_FAMILIES, RADICAL_FAMILIES
from artsim_lib.io import shards
from artsim_lib.models import prompt_llm, tiny_lm
from artsim_lib.stages import s04_prompting as prompting

CAPTIONS = [
    "a painting of a woman in a red dress sitting on a chair",
    "an oil painting of a landscape with trees and a river",
    "a painting of boats on the water at sunset",
    "arafed man with a beard wearing a black hat",
    "a drawing of a group of people standing in front of a building",
    "a painting of a vase of flowers on a table",
    "a black and white sketch of a horse",
    "a painting of a church in a snowy village",
    "mist bott quite flower clear salvador natural photo",  # what the tiny BLIP-2 writes
    "",
    "a very long caption " + " ".join(f"word{i}" for i in range(60)),  # empty; over-long
]
STYLES = ["Impressionism", "Cubism", "Baroque", "Ukiyo_e"]


def _images(n=60, seed=0):
    rng = random.Random(seed)
    ids = [f"img-{i:03d}" for i in range(n)]
    manifest = pd.DataFrame({"id": ids, "style": [STYLES[i % 4] for i in range(n)]})
    captions = pd.DataFrame({"id": ids, "caption": [rng.choice(CAPTIONS) for _ in ids]})
    return manifest, captions


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory, tiny_models):
    """``{name: dir}``: the session's tiny refiner (for its tokenizer_2), and the tiny LM and the
    tiny summariser, built once."""
    root = tmp_path_factory.mktemp("tiny")
    tiny_lm.build("lm", root / "lm")
    tiny_lm.build("summarizer", root / "summarizer")
    return {"refiner": tiny_models("sdxl_refiner"), "lm": root / "lm", "summarizer": root / "summarizer"}


@pytest.fixture(scope="module")
def tokenizer(models_dir):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(models_dir["refiner"], subfolder="tokenizer_2")


def _params(models_dir, *overrides):
    return config.load_params(
        "smoke",
        [
            f"models.sdxl_refiner={models_dir['refiner']}",
            f"prompting.llm={models_dir['lm']}",
            f"prompting.summarizer={models_dir['summarizer']}",
            *overrides,
        ],
    )


def _build(models_dir, *overrides, n=60):
    return prompting.build_prompts(_params(models_dir, *overrides), *_images(n))


@pytest.fixture(scope="module")
def prompts(models_dir):
    return _build(models_dir)


def test_every_prompt_fits_the_real_tokenizer_and_the_mean_is_near_the_target(prompts, tokenizer):
    counts = [len(ids) for ids in tokenizer(list(prompts["prompt"]), verbose=False)["input_ids"]]
    assert counts == list(prompts["tokens"]) and max(counts) <= 77
    assert abs(np.mean(counts) - 55) <= 3
    raw = [len(ids) for ids in tokenizer(list(prompts["prompt_raw"]), verbose=False)["input_ids"]]
    assert raw == list(prompts["tokens_raw"]) and np.mean(raw) > 55 + 10  # compression was needed
    assert (prompts["compressed"] == (prompts["prompt"] != prompts["prompt_raw"])).all()
    assert "clauses" in set(prompts["compression"])


def test_an_enormous_caption_is_cut_at_whole_words(models_dir):
    out = _build(models_dir, "prompting.caption_max_words=60", n=40)
    cut = out[out["compression"] == "words"]
    assert len(cut) and (out["tokens"] <= 77).all() and (cut["tokens"] >= 70).all()
    for raw, short in zip(cut["prompt_raw"], cut["prompt"]):
        remaining = iter(raw.replace(",", " ").split())
        assert all(word in remaining for word in short.replace(",", " ").split())  # whole words, in order


def test_the_table_follows_the_contract(prompts):
    assert list(prompts.columns) == prompting.COLUMNS
    assert (prompts["prompt_id"] == prompts["id"] + ":" + prompts["level"]).all()
    assert all(sorted(levels) == ["moderate", "radical"] for levels in prompts.groupby("id")["level"].apply(list))
    assert set(prompts.loc[prompts["level"] == "moderate", "family"]) == set(MODERATE_FAMILIES)
    assert set(prompts.loc[prompts["level"] == "radical", "family"]) == set(RADICAL_FAMILIES)
    assert set(prompts["backend"]) == {"template"} and not prompts["llm_fallback"].any()


def test_families_are_balanced_overall_and_spread_within_each_style(prompts):
    for level in ("moderate", "radical"):
        counts = prompts[prompts["level"] == level]["family"].value_counts()
        assert counts.max() - counts.min() <= 1
    radical = prompts[prompts["level"] == "radical"].merge(_images()[0], on="id")
    for _, grp in radical.groupby("style"):  # 15 images per style: all ten families appear
        assert grp["family"].nunique() == min(len(grp), len(RADICAL_FAMILIES))


def test_same_seed_same_prompts_other_seed_other_prompts(models_dir, prompts):
    again = _build(models_dir, "prompting.batch_size=3")
    assert shards.content_hash(again) == shards.content_hash(prompts)
    other = _build(models_dir, "seed=7")
    assert (other["prompt"] != prompts["prompt"]).mean() > 0.9


def test_split_levels_give_one_level_per_image_and_the_exact_share():
    ids = [f"i{k}" for k in range(41)]
    a = prompting.assign_levels(ids, "split", 0.3, seed=1)
    assert sorted(a["id"]) == sorted(ids) and (a["level"] == "radical").sum() == round(0.3 * 41)
    b = prompting.assign_levels(ids, "split", 0.3, seed=2)
    assert not a["level"].equals(b["level"])
    assert a.equals(prompting.assign_levels(ids, "split", 0.3, seed=1))
    assert set(prompting.assign_levels(ids, "split", 0.0)["level"]) == {"moderate"}
    assert set(prompting.assign_levels(ids, "split", 1.0)["level"]) == {"radical"}
    assert len(prompting.assign_levels(ids, "both")) == 82


def test_split_levels_in_the_stage(models_dir):
    out = _build(models_dir, "prompting.levels=split", "prompting.radical_share=0.25", n=40)
    assert out["id"].is_unique and (out["level"] == "radical").sum() == 10
    assert out["tokens"].max() <= 77


def _words(texts):  # a hand-countable tokenizer: one token per word, plus start and end
    return [len(t.split()) + 2 for t in texts]


def test_compression_drops_the_least_important_trailing_clause_first():
    clauses = [
        Clause("a red boat on a lake", 0),
        Clause("in evening light", 1),
        Clause("rich textures", 4),
        Clause("museum quality", 4),
        Clause("calm mood", 3),
    ]
    # 15 words + 2 = 17 tokens; then without 'museum quality' (rank 4, trailing) 15, 'rich textures' 13,
    # 'calm mood' (rank 3) 11, 'in evening light' 8; the subject (rank 0) always stays.
    out = compress(clauses, _words, target=15, limit=20)
    assert out == prompt_compress.Compressed(
        "a red boat on a lake, in evening light, rich textures, calm mood", 15, "clauses"
    )
    out = compress(clauses, _words, target=12, limit=20)  # 13 and 11 are equally close: the longer one wins
    assert out.text == "a red boat on a lake, in evening light, calm mood" and out.tokens == 13
    assert compress(clauses, _words, target=30, limit=40) == prompt_compress.Compressed(
        prompt_grammar.render(clauses), 17, "none"
    )
    only_core = compress(clauses, _words, target=3, limit=10)
    assert only_core.text == "a red boat on a lake" and only_core.tokens == 8


def test_compression_then_drops_modifiers_then_whole_words():
    clauses = [Clause("a very old wooden boat on a calm lake", 0), Clause("highly detailed", 4)]
    # 13 tokens; the subject alone is 11: drop 'calm' (10), 'old' (9), 'very' (8), trailing ones first
    out = compress(clauses, _words, target=8, limit=9)
    assert out == prompt_compress.Compressed("a wooden boat on a lake", 8, "modifiers")
    assert compress(clauses, _words, target=9, limit=9).text == "a very wooden boat on a lake"
    long = [Clause("the old fisherman and his grandson mend the nets of their boat", 0)]
    out = compress(long, _words, target=5, limit=8)  # no clause to drop; without 'old' still 13 tokens
    assert out == prompt_compress.Compressed("the fisherman and his grandson mend", 8, "words")
    out = compress(long, _words, target=3, limit=5)  # 'the fisherman and' fits, but 'and' would dangle
    assert out == prompt_compress.Compressed("the fisherman", 4, "words")


def test_hard_token_cut_is_the_last_resort(tokenizer):
    count = prompt_compress.token_counter(tokenizer)
    out = compress([Clause("x" * 400, 0)], count, target=55, limit=77, tokenizer=tokenizer)
    assert out.method == "tokens" and out.tokens <= 77 and out.text and set(out.text) == {"x"}


def test_split_clauses_and_article_agreement():
    parts = prompt_compress.split_clauses("A harbour at dawn, pale mist; gulls overhead. Boats - sails down")
    assert [c.text for c in parts] == ["A harbour at dawn", "pale mist", "gulls overhead", "Boats", "sails down"]
    assert [c.rank for c in parts] == [0, 1, 2, 3, 4]
    assert (
        prompt_grammar.fix_articles("a amber glow, an blue sky, an hour, a one-off, An oak")
        == "an amber glow, a blue sky, an hour, a one-off, An oak"
    )


def test_captions_are_cleaned_before_prompting():
    clean = prompt_grammar.clean_caption
    assert clean("arafed man with a a beard.") == "man with a beard"
    assert clean("there is a dog dog dog on the grass", max_words=4) == "a dog on the"
    assert clean("") == clean(None) == "the painting"
    assert prompt_grammar.subject_of("an oil painting of a river at dusk") == "a river at dusk"
    assert prompt_grammar.subject_of("a river at dusk") == "a river at dusk"


def test_the_grammar_is_varied_and_never_repeats_a_clause():
    texts = set()
    for k in range(200):
        level = ("moderate", "radical")[k % 2]
        family = (MODERATE_FAMILIES if level == "moderate" else RADICAL_FAMILIES)[k % 5]
        clauses = prompt_grammar.template_prompt("a river at dusk", level, family, random.Random(k), "Baroque")
        assert len({c.text for c in clauses}) == len(clauses) and clauses[0].rank == 0
        assert [c.rank for c in clauses] == sorted(c.rank for c in clauses)
        texts.add(prompt_grammar.render(clauses))
    assert len(texts) == 200


def test_llm_output_is_cleaned_or_rejected():
    clean = prompt_llm.clean_output
    want = "a harbour at dawn, pale mist, gulls"
    assert clean(f'Sure! Here is the prompt: "{want}"') == want
    assert clean(f"Here are two options:\n1. **{want}**\n2. other") == want
    for bad in [
        "",
        None,
        "I'm sorry, I cannot help with that request.",
        "a harbour",
        "mist mist mist mist mist",
        "a\x10 harbour at dawn, mist",
        "harbour \ufffd at dawn with mist",
    ]:
        assert clean(bad) is None, bad


def test_llm_backend_with_the_tiny_lm_records_its_fallbacks(models_dir):
    template = _build(models_dir, n=8)
    starved = _build(models_dir, "prompting.backend=llm", "prompting.llm_max_new_tokens=1", n=8)
    assert starved["llm_fallback"].all() and set(starved["backend"]) == {"template"}
    assert list(starved["prompt"]) == list(template["prompt"])  # the fallback is the template prompt
    out = _build(
        models_dir, "prompting.backend=llm", "prompting.llm_temperature=0", "prompting.llm_max_new_tokens=24", n=8
    )
    assert (out["llm_fallback"] == out["backend"].eq("template")).all()
    assert out["backend"].eq("llm").any() and out["llm_fallback"].any()  # the tiny LM babbles: both happen
    assert out["tokens"].max() <= 77
    llm = out[out["backend"] == "llm"]
    assert all(prompt_llm.clean_output(t) == t for t in llm["prompt_raw"])


def test_sampled_llm_prompts_do_not_depend_on_the_batch(models_dir):
    opts = ["prompting.backend=llm", "prompting.llm_temperature=0.8", "prompting.llm_max_new_tokens=12"]
    a = _build(models_dir, *opts, "prompting.batch_size=1", n=5)
    b = _build(models_dir, *opts, "prompting.batch_size=4", n=5)
    assert a["backend"].eq("llm").any() and shards.content_hash(a) == shards.content_hash(b)


def test_summaries_are_used_only_when_they_fit(models_dir, monkeypatch):
    def fake_summarize(P, texts):  # usable, over the limit, unusable, usable...
        answers = ["a harbour at dawn, pale mist, gulls overhead", " ".join(["word"] * 90) + " end", None]
        return [answers[i % 3] for i in range(len(texts))]

    monkeypatch.setattr(prompt_llm, "summarize", fake_summarize)
    out = _build(models_dir, "prompting.compressor=summarize", n=12)
    over = out[out["tokens_raw"] > 55]
    assert len(over) > 3 and (out["tokens"] <= 77).all()
    used = over["compression"].eq("summarize")
    assert (over.loc[used, "prompt"] == "a harbour at dawn, pale mist, gulls overhead").all()
    assert (used == ~over["summary_fallback"]).all() and used.sum() == (len(over) + 2) // 3
    assert not out.loc[out["tokens_raw"] <= 55, "summary_fallback"].any()


def test_summarize_backend_with_the_tiny_summarizer(models_dir):
    out = _build(models_dir, "prompting.compressor=summarize", "prompting.summarizer_max_new_tokens=16", n=6)
    over = out["tokens_raw"] > 55
    assert (out["tokens"] <= 77).all()
    assert (out.loc[over, "compression"].eq("summarize") | out.loc[over, "summary_fallback"]).all()


def test_load_reads_current_prompts_and_never_builds_them(models_dir, run_dir):
    from artsim_lib.io.artifacts import StageNotRunError
    from artsim_lib.stages import s01_eda, s02_preprocess, s03_captioning

    small = [
        "data.synthart.num_images=16",
        "data.synthart.max_side=160",
        "preprocess.size=32",
        "captioning.max_new_tokens=6",
    ]
    P = _params(models_dir, *small)
    with pytest.raises(StageNotRunError, match="run stage 02 first"):
        prompting.run(P)  # no manifest yet: stage 04 says which stage to run, it runs none
    s01_eda.run(P)
    s02_preprocess.run(P)
    with pytest.raises(StageNotRunError, match="run stage 03 first"):
        prompting.run(P)
    s03_captioning.run(P)
    with pytest.raises(StageNotRunError, match="run stage 04 first"):
        prompting.load(P)
    first = prompting.run(P).prompts
    assert prompting.prompts_path(P).exists() and first["tokens"].max() <= 77
    assert shards.content_hash(prompting.load(P)) == shards.content_hash(first)
    shorter_P = _params(models_dir, *small, "prompting.target_tokens=40")
    with pytest.raises(StageNotRunError, match="made with other params"):
        prompting.load(shorter_P)
    shorter = prompting.run(shorter_P).prompts
    assert shorter["tokens"].mean() < first["tokens"].mean() - 8


def test_the_budget_counts_real_clip_tokens_on_every_prompt(prompts, tokenizer):
    # The checkpoint's tokenizer_2 is the real CLIP tokenizer, and a second one built straight from
    # open-clip-torch's merges file counts every prompt of the run exactly as the budget did.
    from artsim_lib.models import bpe

    assert len(tokenizer) == 49408 and tokenizer.get_vocab() == bpe.clip_vocab_merges()[0]
    real = bpe.clip_tokenizer()
    for col, n_col in (("prompt", "tokens"), ("prompt_raw", "tokens_raw")):
        counts = [len(ids) for ids in real(list(prompts[col]), verbose=False)["input_ids"]]
        assert counts == list(prompts[n_col]), col
    assert prompts["tokens"].max() <= 77


def test_token_figures_sit_beside_the_seed_studys(prompts):
    table = prompting.token_figures_vs_seed(prompts)
    assert list(table["seed study"]) == [89, 55, 77]
    assert table.loc["mean after compression", "this run"] == round(prompts["tokens"].mean(), 1)
    assert table.loc["longest after compression", "this run"] <= 77
