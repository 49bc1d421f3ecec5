"""Offline byte-level BPE tokenizers for the tiny checkpoints.

**CLIP** (the tiny CLIP and both tiny SDXL tokenizers) uses the *real* CLIP vocabulary:
the BPE merges of OpenAI's CLIP tokenizer ship in the ``open-clip-torch`` wheel as
``open_clip/bpe_simple_vocab_16e6.txt.gz`` (installed with ``--no-deps``; the package is
never imported, the file is found through ``importlib.metadata``). The 49,408-token
vocabulary follows from them deterministically -- 256 byte symbols, the same with ``</w>``,
one token per merge of the first 48,894 merges, then ``<|startoftext|>`` and
``<|endoftext|>`` -- exactly the vocabulary of ``openai/clip-vit-base-patch32`` and of
SDXL's ``tokenizer``/``tokenizer_2``. So every token count of the smoke profile is the
full study's.

**OPT** (the tiny BLIP-2 and the tiny LMs) has no offline source of its real merges, so we
train BPE merges on a small embedded corpus of English and art words
(``tokenizer_corpus.txt``) with a deterministic pure-Python trainer (the ``tokenizers``
trainer breaks ties differently from one process to the next). Every byte stays in the base
alphabet, so unknown words still tokenise, character by character.
"""

from __future__ import annotations

import functools
import gzip
import heapq
import importlib.metadata
import json
import re
from collections import Counter, defaultdict
from pathlib import Path

from tokenizers import pre_tokenizers

CORPUS_FILE = Path(__file__).with_name("tokenizer_corpus.txt")
EOW = "</w>"  # CLIP's end-of-word suffix
CLIP_BOS, CLIP_EOS = "<|startoftext|>", "<|endoftext|>"
CLIP_VOCAB_SIZE = 49408  # 256 bytes + 256 bytes</w> + 48,894 merges + 2 specials
CLIP_MERGES_FILE = "open_clip/bpe_simple_vocab_16e6.txt.gz"  # inside the open-clip-torch wheel
CLIP_MERGES_DIST = "open_clip_torch"
INSTALL_HINT = "pip install --no-deps open-clip-torch==3.3.0"  # what `make install` runs
OPT_SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")  # ids 0..3, as in facebook/opt-*
Merge = tuple[str, str]


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (printable bytes first)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def read_corpus(path: str | Path = CORPUS_FILE) -> list[tuple[str, int]]:
    """The corpus as ``(line, weight)`` pairs; ``[name weight]`` lines set the weight."""
    lines, weight = [], 1
    for raw in Path(path).read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        header = re.fullmatch(r"\[(\w+)\s+(\d+)\]", line)
        if header:
            weight = int(header.group(2))
            continue
        lines.append((line, weight))
    return lines


def _pairs(word: list[str]) -> Counter:
    return Counter(zip(word, word[1:]))


def _merge_word(word: list[str], pair: Merge) -> list[str]:
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and word[i] == pair[0] and word[i + 1] == pair[1]:
            out.append(pair[0] + pair[1])
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def train_bpe(word_counts: dict[tuple[str, ...], int], num_merges: int, min_count: int = 2) -> list[Merge]:
    """Learn up to ``num_merges`` BPE merges from words given as symbol tuples.

    The most frequent pair wins; ties go to the lexicographically smallest pair, so
    the result depends on the corpus only.
    """
    words = [list(w) for w in word_counts]
    counts = list(word_counts.values())
    pair_count: Counter = Counter()
    where: dict[Merge, set[int]] = defaultdict(set)  # pair -> indices of words holding it
    for i, w in enumerate(words):
        for p, n in _pairs(w).items():
            pair_count[p] += n * counts[i]
            where[p].add(i)
    heap = [(-c, p) for p, c in pair_count.items()]
    heapq.heapify(heap)
    merges: list[Merge] = []
    while heap and len(merges) < num_merges:
        neg, pair = heapq.heappop(heap)
        if pair_count.get(pair, 0) != -neg:
            continue  # a stale heap entry
        if -neg < min_count:
            break
        merges.append(pair)
        touched = set()
        for i in sorted(where.pop(pair)):
            for p, n in _pairs(words[i]).items():
                pair_count[p] -= n * counts[i]
                where[p].discard(i)
                touched.add(p)
            words[i] = _merge_word(words[i], pair)
            for p, n in _pairs(words[i]).items():
                pair_count[p] += n * counts[i]
                where[p].add(i)
                touched.add(p)
        pair_count.pop(pair, None)
        for p in sorted(touched):
            if pair_count.get(p, 0) > 0:
                heapq.heappush(heap, (-pair_count[p], p))
    return merges


def _opt_words(corpus: list[tuple[str, int]]) -> Counter:
    pre = pre_tokenizers.ByteLevel(add_prefix_space=False)
    words: Counter = Counter()
    for line, weight in corpus:
        for piece, _ in pre.pre_tokenize_str(" " + line):  # 'Ġword': a word after a space
            words[tuple(piece)] += weight
    return words


class ClipMergesNotFoundError(FileNotFoundError):
    """The real CLIP merges file is missing (open-clip-torch not installed)."""


def clip_merges_path() -> Path:
    """Where the installed ``open-clip-torch`` wheel keeps CLIP's BPE merges (not importing it)."""
    try:
        dist = importlib.metadata.distribution(CLIP_MERGES_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise ClipMergesNotFoundError(
            f"the real CLIP tokenizer needs {CLIP_MERGES_FILE} from the open-clip-torch wheel, which is not "
            f"installed: run `{INSTALL_HINT}` (make install does)"
        ) from None
    for f in dist.files or ():
        if str(f).replace("\\", "/").endswith(CLIP_MERGES_FILE):
            path = Path(dist.locate_file(f))
            if path.is_file():
                return path
    raise ClipMergesNotFoundError(
        f"open-clip-torch is installed but {CLIP_MERGES_FILE} is missing from it: "
        f"reinstall it with `{INSTALL_HINT} --force-reinstall`"
    )


@functools.cache
def clip_vocab_merges() -> tuple[dict[str, int], list[Merge]]:
    """The real CLIP vocab and merges, in openai/clip's order: 256 bytes, 256 bytes + ``</w>``,
    one token per merge, then ``<|startoftext|>`` and ``<|endoftext|>`` (49,408 tokens)."""
    lines = gzip.decompress(clip_merges_path().read_bytes()).decode("utf-8").split("\n")
    n_merges = CLIP_VOCAB_SIZE - 2 * 256 - 2
    merges = [tuple(line.split()) for line in lines[1 : n_merges + 1]]  # line 0 is the version header
    if len(merges) != n_merges or any(len(m) != 2 for m in merges):
        raise ValueError(f"{clip_merges_path()}: expected {n_merges} merges of two symbols after the header")
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + EOW for c in chars] + ["".join(m) for m in merges] + [CLIP_BOS, CLIP_EOS]
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != CLIP_VOCAB_SIZE:
        raise ValueError(f"{clip_merges_path()}: the vocabulary has {len(vocab)} tokens, not {CLIP_VOCAB_SIZE}")
    return vocab, merges


@functools.cache
def opt_vocab_merges(num_merges: int = 4000) -> tuple[dict[str, int], list[Merge]]:
    """OPT/GPT-2-format vocab and merges: ``<s> <pad> </s> <unk>``, 256 bytes, merges."""
    merges = train_bpe(_opt_words(read_corpus()), num_merges)
    vocab: dict[str, int] = {}
    for token in list(OPT_SPECIALS) + list(bytes_to_unicode().values()) + [a + b for a, b in merges]:
        vocab.setdefault(token, len(vocab))
    return vocab, merges


def write_vocab_files(directory: str | Path, vocab: dict[str, int], merges: list[Merge]) -> None:
    """Write ``vocab.json`` and ``merges.txt`` (the slow-tokenizer files) into ``directory``."""
    directory = Path(directory)
    (directory / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (directory / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def clip_tokenizer(pad_token: str = CLIP_EOS, max_length: int = 77):
    """A fresh ``CLIPTokenizer`` over the real CLIP vocab (77 tokens like CLIP)."""
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_merges()
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), pad_token=pad_token, model_max_length=max_length)


def opt_tokenizer(max_length: int = 2048):
    """A fresh OPT-style ``GPT2Tokenizer`` (``</s>`` as bos/eos, prepended like OPT's)."""
    from transformers import GPT2Tokenizer

    vocab, merges = opt_vocab_merges()
    return GPT2Tokenizer(
        vocab=dict(vocab),
        merges=list(merges),
        bos_token="</s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        add_bos_token=True,
        model_max_length=max_length,
    )
