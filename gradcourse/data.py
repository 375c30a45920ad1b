"""Data that needs no download: Zipfian token ids, a text corpus from
Python's own docstrings, tokenizers and a small byte-pair encoding.

Taught in: Chapter 4 (token frequency: Zipfian ids, subword pieces shared
by many words); the corpus and tokenizers are reused by the chapters that
train TinyGPT.
"""

from __future__ import annotations

import collections
import functools
import gzip
import importlib.resources
import re
from collections.abc import Iterator

import torch

from gradcourse._validate import check_int, check_int_tensor, check_number, check_positive_int

#: The corpus file shipped inside the package, as (folder, name); built by
#: ``tools/build_corpus.py``.
CORPUS_FILE = ("corpus", "stdlib_docstrings.txt.gz")

#: The smallest seed ``torch.Generator.manual_seed`` accepts.
_SMALLEST_SEED = -(2**63)

#: The most categories ``torch.multinomial`` draws from.
_MULTINOMIAL_LIMIT = 2**24

END_OF_WORD = "</w>"
_WORD = re.compile(r"[a-z]+|[0-9]+|[^\sa-z0-9]")


def zipf_token_ids(
    num_tokens: int, vocab_size: int, exponent: float = 1.0, *, seed: int = 0
) -> torch.Tensor:
    """Token ids drawn with ``P(id = r) proportional to 1 / (r + 1) **
    exponent``: id 0 is the most frequent.

    Returns:
        ``(num_tokens,)`` int64 tensor with ids in ``[0, vocab_size)``.

    Raises:
        TypeError / ValueError: ``num_tokens`` or ``vocab_size`` is not a
            positive int, ``vocab_size`` exceeds ``2**24`` (the most
            categories ``torch.multinomial`` draws from),
            ``exponent`` is not a finite number >= 0, or ``seed`` is not
            an int.
    """
    check_positive_int("num_tokens", num_tokens)
    check_positive_int("vocab_size", vocab_size)
    if vocab_size > _MULTINOMIAL_LIMIT:
        raise ValueError(
            f"vocab_size must be <= 2**24 = {_MULTINOMIAL_LIMIT} (the most categories "
            f"torch.multinomial draws from), got {vocab_size}"
        )
    check_number("exponent", exponent, minimum=0)
    check_int("seed", seed, minimum=_SMALLEST_SEED)
    ranks = torch.arange(1, vocab_size + 1, dtype=torch.float64)
    probabilities = ranks.pow(-float(exponent))
    generator = torch.Generator().manual_seed(seed)
    return torch.multinomial(
        probabilities / probabilities.sum(), num_tokens, replacement=True, generator=generator
    )


def stdlib_corpus(max_chars: int | None = None) -> str:
    """English text available offline everywhere: docstrings of about forty
    standard-library modules.

    The text was built once (``tools/build_corpus.py``, CPython 3.11) and
    ships gzip-compressed inside the package, so it is the same on every
    Python version, under ``python -OO`` and on every device. The
    docstrings are CPython's, under the PSF License
    (``gradcourse/corpus/LICENSE-PSF.txt``).

    Args:
        max_chars: return only the first ``max_chars`` characters (a
            positive int), or all of it.
    """
    if max_chars is not None:
        check_positive_int("max_chars", max_chars)
    text = _corpus_text()
    return text if max_chars is None else text[:max_chars]


@functools.cache
def _corpus_text() -> str:
    folder, name = CORPUS_FILE
    compressed = (importlib.resources.files("gradcourse") / folder / name).read_bytes()
    return gzip.decompress(compressed).decode("utf-8")


def words(text: str) -> list[str]:
    """Lower-cased words, numbers and single punctuation marks of ``text``,
    in order."""
    _check_text(text)
    return _WORD.findall(text.lower())


class CharTokenizer:
    """Characters as tokens; the vocabulary is every character of the
    training text, sorted."""

    def __init__(self, text: str) -> None:
        _check_text(text)
        if not text:
            raise ValueError("CharTokenizer needs a non-empty training text")
        self.vocab: list[str] = sorted(set(text))
        self._index = {char: i for i, char in enumerate(self.vocab)}

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> torch.Tensor:
        """``(len(text),)`` int64 ids; raises ``ValueError`` naming a
        character not in the vocabulary."""
        _check_text(text)
        unknown = next((char for char in text if char not in self._index), None)
        if unknown is not None:
            raise ValueError(f"character {unknown!r} is not in the vocabulary")
        return torch.tensor([self._index[char] for char in text], dtype=torch.long)

    def decode(self, token_ids: torch.Tensor) -> str:
        """The text of ``token_ids`` (any shape, flattened); raises
        ``ValueError`` naming an unknown id."""
        return "".join(self.vocab[i] for i in _checked_ids(token_ids, len(self.vocab)))


class WordTokenizer:
    """Words (see :func:`words`) as tokens, most frequent first; id 0 is
    ``<unk>`` for anything unseen.

    Args:
        text: the training text.
        max_vocab: keep at most this many tokens (``<unk>`` included);
            ``None`` keeps every word.
    """

    UNKNOWN = "<unk>"

    def __init__(self, text: str, max_vocab: int | None = None) -> None:
        if max_vocab is not None:
            check_positive_int("max_vocab", max_vocab)
        counts = collections.Counter(words(text))
        if not counts:
            raise ValueError("WordTokenizer needs a training text with at least one word")
        ranked = sorted(counts, key=lambda word: (-counts[word], word))
        keep = ranked if max_vocab is None else ranked[: max_vocab - 1]
        self.vocab: list[str] = [self.UNKNOWN, *keep]
        self.counts: list[int] = [0, *(counts[word] for word in keep)]
        self._index = {word: i for i, word in enumerate(self.vocab)}

    def __len__(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> torch.Tensor:
        """``(number of words,)`` int64 ids; unseen words map to 0
        (``<unk>``)."""
        return torch.tensor([self._index.get(word, 0) for word in words(text)], dtype=torch.long)

    def decode(self, token_ids: torch.Tensor) -> str:
        """The words of ``token_ids`` (any shape, flattened); raises
        ``ValueError`` naming an unknown id."""
        return " ".join(self.vocab[i] for i in _checked_ids(token_ids, len(self.vocab)))


def _check_text(text: object) -> None:
    """Raise ``TypeError`` naming the type unless ``text`` is a str (a
    list of characters would otherwise pass for one)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")


def _checked_ids(token_ids: torch.Tensor, vocab_size: int) -> list[int]:
    """``token_ids`` as a list of ints in ``[0, vocab_size)``; a negative
    id would index from the end."""
    check_int_tensor("token_ids", token_ids)
    ids = token_ids.reshape(-1).tolist()
    bad = next((i for i in ids if not 0 <= i < vocab_size), None)
    if bad is not None:
        raise ValueError(f"token id {bad} is outside the vocabulary [0, {vocab_size})")
    return ids


def _merge_pair(symbols: tuple[str, ...], pair: tuple[str, str]) -> tuple[str, ...]:
    merged: list[str] = []
    i = 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            merged.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            merged.append(symbols[i])
            i += 1
    return tuple(merged)


def _pair_counts(symbols: tuple[str, ...]) -> collections.Counter[tuple[str, str]]:
    return collections.Counter(zip(symbols, symbols[1:]))


def train_bpe(text: str, num_merges: int) -> list[tuple[str, str]]:
    """Learn byte-pair-encoding merges (Sennrich et al., 2016) from the
    words of ``text``.

    Each word starts as its characters plus an end-of-word marker ``</w>``;
    each step merges the most frequent adjacent pair (ties broken by the
    pair itself, so the result is deterministic). Stops early when no pair
    is left. After a merge, pair counts are updated only for the words that
    held the pair.

    Returns:
        The merges in the order learned; :func:`encode` applies them in
        that order.
    """
    check_positive_int("num_merges", num_merges)
    vocabulary = collections.Counter(tuple(word) + (END_OF_WORD,) for word in words(text))
    pairs: collections.Counter[tuple[str, str]] = collections.Counter()
    for symbols, count in vocabulary.items():
        pairs.update({pair: count * n for pair, n in _pair_counts(symbols).items()})
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        for symbols in [symbols for symbols in vocabulary if best in zip(symbols, symbols[1:])]:
            count = vocabulary.pop(symbols)
            merged = _merge_pair(symbols, best)
            vocabulary[merged] += count
            pairs.subtract({pair: count * n for pair, n in _pair_counts(symbols).items()})
            pairs.update({pair: count * n for pair, n in _pair_counts(merged).items()})
        pairs = +pairs  # drop the pairs whose count fell to zero
    return merges


def encode(text: str, merges: list[tuple[str, str]]) -> list[str]:
    """Split ``text`` into BPE pieces by applying ``merges`` (from
    :func:`train_bpe`) to each word in order.

    The last piece of each word ends with ``</w>``, so ``"".join(pieces)``
    with the markers replaced by spaces gives the words back.
    """
    if not isinstance(merges, list) or not all(
        isinstance(m, tuple) and len(m) == 2 and all(isinstance(symbol, str) for symbol in m)
        for m in merges
    ):
        raise TypeError("merges must be a list of (str, str) pairs, as train_bpe returns")
    cache: dict[str, tuple[str, ...]] = {}  # a word is split the same way every time it occurs
    pieces: list[str] = []
    for word in words(text):
        if word not in cache:
            symbols = tuple(word) + (END_OF_WORD,)
            for pair in merges:
                if len(symbols) == 1:
                    break
                symbols = _merge_pair(symbols, pair)
            cache[word] = symbols
        pieces.extend(cache[word])
    return pieces


def random_windows(
    token_ids: torch.Tensor, batch_size: int, length: int, *, seed: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless batches of random windows of a token sequence, for
    next-token training.

    Taught in: Chapter 7 and Chapter 9 (training TinyGPT on the corpus).
    Yields ``(inputs, targets)``, each ``(batch_size, length)`` on
    ``token_ids``' device, with ``targets`` the inputs shifted by one
    token. The window starts come from a CPU generator seeded with
    ``seed``, so a run repeats exactly.

    Raises:
        TypeError / ValueError: ``token_ids`` is not a 1-D integer tensor
            longer than ``length + 1``, a size is not a positive int, or
            ``seed`` is not an int; raised by the call itself, not at the
            first ``next()``.
    """
    check_positive_int("batch_size", batch_size)
    check_positive_int("length", length)
    check_int("seed", seed, minimum=_SMALLEST_SEED)
    check_int_tensor("token_ids", token_ids)
    if token_ids.dim() != 1:
        raise TypeError(
            f"token_ids must be a 1-D integer tensor, got shape {tuple(token_ids.shape)}"
        )
    if token_ids.numel() < length + 2:
        raise ValueError(
            f"token_ids has {token_ids.numel()} tokens: too few for windows of length {length}"
        )
    return _windows(token_ids, batch_size, length, seed)


def _windows(
    token_ids: torch.Tensor, batch_size: int, length: int, seed: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The endless batches of :func:`random_windows`, whose arguments are
    checked."""
    generator = torch.Generator().manual_seed(seed)
    offsets = torch.arange(length + 1, device=token_ids.device)
    # a window takes length + 1 tokens: starts 0 .. numel - length - 1, the
    # last one included
    while True:
        starts = torch.randint(0, token_ids.numel() - length, (batch_size,), generator=generator)
        window = token_ids[starts.to(token_ids.device).unsqueeze(1) + offsets]
        yield window[:, :-1], window[:, 1:]


def windows_at(
    token_ids: torch.Tensor, starts: torch.Tensor, length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The windows of ``length + 1`` tokens beginning at ``starts``, as next-token
    ``(inputs, targets)``, each ``(len(starts), length)``: the fixed-position counterpart of
    :func:`random_windows` (Chapter 5 evaluates on windows at chosen starts).

    Raises:
        TypeError / ValueError: ``token_ids`` or ``starts`` not 1-D integer tensors, ``length``
            not a positive int, or a window running past the end (named).
    """
    check_int_tensor("token_ids", token_ids)
    check_int_tensor("starts", starts)
    check_positive_int("length", length)
    if token_ids.dim() != 1 or starts.dim() != 1:
        raise ValueError("token_ids and starts must be 1-D")
    if starts.numel() and (starts.min() < 0 or starts.max() + length >= token_ids.numel()):
        raise ValueError(
            f"a window of {length + 1} tokens must fit in the {token_ids.numel()} tokens: "
            f"starts must lie in [0, {token_ids.numel() - length - 1}]"
        )
    offsets = torch.arange(length + 1, device=token_ids.device)
    window = token_ids[starts.to(token_ids.device).unsqueeze(1) + offsets]
    return window[:, :-1], window[:, 1:]
