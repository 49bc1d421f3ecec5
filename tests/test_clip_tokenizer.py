"""The real CLIP tokenizer (artsim_lib.models.bpe): the vocabulary built from open-clip-torch's
merges file, checked against the BPE rules themselves.

``_reference_bpe`` is an independent, deliberately plain implementation of CLIP's byte-level
BPE (lowercase, split into words, bytes to symbols, ``</w>`` on each word's last symbol, then
repeatedly merge the adjacent pair with the lowest merge rank). The hand counts below were
worked out from those rules and the merges file (e.g. ``dreamscape`` is no merge result, but
``dream`` and ``scape</w>`` are).
"""

import gzip

import pytest
import regex

from artsim_lib.models import bpe

PIECES = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE)

# (text, tokens without the two specials), counted by hand from the BPE rules
HAND_COUNTS = [
    ("a painting of a house and trees in a field", 10),  # ten common words, one token each
    ("a surreal dreamscape, melting clocks", 7),  # dream|scape, ',' is its own word
    ("the artist's brushstrokes", 5),  # 's splits off; brush|strokes
    ("photorealistic 8k rendering", 5),  # photo|realistic; digits are single pieces
    ("Impressionism", 1),  # lowercased, one merge result
]


def _ranks() -> dict[tuple[str, str], int]:
    lines = gzip.decompress(bpe.clip_merges_path().read_bytes()).decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    return {tuple(m.split()): i for i, m in enumerate(merges)}


def _reference_bpe(text: str, ranks) -> list[str]:
    byte_map = bpe.bytes_to_unicode()
    out = []
    for piece in PIECES.findall(" ".join(text.lower().split())):
        word = [byte_map[b] for b in piece.encode("utf-8")]
        word[-1] += "</w>"
        while len(word) > 1:
            pairs = [(ranks.get((a, b), float("inf")), i) for i, (a, b) in enumerate(zip(word, word[1:]))]
            rank, i = min(pairs)
            if rank == float("inf"):
                break
            first, second = word[i], word[i + 1]
            merged, j = [], 0
            while j < len(word):  # merge every occurrence of the best pair, left to right
                if j + 1 < len(word) and word[j] == first and word[j + 1] == second:
                    merged.append(first + second)
                    j += 2
                else:
                    merged.append(word[j])
                    j += 1
            word = merged
        out += word
    return out


@pytest.fixture(scope="module")
def tok():
    return bpe.clip_tokenizer()


@pytest.fixture(scope="module")
def ranks():
    return _ranks()


def test_vocabulary_is_49408_tokens_in_openai_order():
    vocab, merges = bpe.clip_vocab_merges()
    assert len(vocab) == 49408 and len(merges) == 48894
    chars = list(bpe.bytes_to_unicode().values())
    assert [vocab[c] for c in chars[:3]] == [0, 1, 2] and vocab["!"] == 0
    assert vocab[chars[0] + "</w>"] == 256
    assert vocab["".join(merges[0])] == 512 and merges[0] == ("i", "n")
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407


@pytest.mark.parametrize("text,n", HAND_COUNTS)
def test_hand_counted_sentences(tok, ranks, text, n):
    ids = tok(text)["input_ids"]
    assert len(ids) == n + 2, tok.convert_ids_to_tokens(ids)
    assert tok.convert_ids_to_tokens(ids[1:-1]) == _reference_bpe(text, ranks)


def test_the_hand_counts_follow_from_the_merges(ranks):
    vocab, _ = bpe.clip_vocab_merges()
    assert "dreamscape</w>" not in vocab and {"dream", "scape</w>"} <= set(vocab)
    assert "brushstrokes</w>" not in vocab and {"brush", "strokes</w>"} <= set(vocab)
    assert "photorealistic</w>" not in vocab and {"photo", "realistic</w>"} <= set(vocab)
    assert "impressionism</w>" in vocab


def test_tokenizer_matches_the_reference_bpe_on_varied_text(tok, ranks):
    texts = [
        "An oil painting of a stormy harbour at dusk, in the style of J. M. W. Turner",
        "Rococo pastel portrait; gilded frame — 1750s Paris, café de Flore",
        "cyberpunk neon reinterpretation of a Baroque still life with lemons & oysters",
        "Ukiyo-e woodblock print: Mount Fuji behind crashing waves, 36 views",
        "watercolour wash, soft bleeding edges, Zxqwv ñandú 😀",
    ]
    for text in texts:
        got = tok.convert_ids_to_tokens(tok(text)["input_ids"][1:-1])
        assert got == _reference_bpe(text, ranks), text


def test_tiny_checkpoints_carry_the_real_tokenizer(tiny_models, tok):
    from transformers import CLIPTokenizer

    for kind, sub in (("sdxl_refiner", "tokenizer_2"), ("clip", "")):  # the refiner has tokenizer_2 only
        path = tiny_models(kind)
        loaded = CLIPTokenizer.from_pretrained(path, subfolder=sub) if sub else CLIPTokenizer.from_pretrained(path)
        assert len(loaded) == 49408
        for text, _ in HAND_COUNTS:
            assert loaded(text)["input_ids"] == tok(text)["input_ids"]


def test_a_missing_merges_file_names_the_install_command(monkeypatch):
    import importlib.metadata

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(bpe.ClipMergesNotFoundError, match="pip install --no-deps open-clip-torch"):
        bpe.clip_merges_path()
