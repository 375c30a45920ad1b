import hashlib
import math
import subprocess
import sys

import pytest
import torch

from gradcourse.data import (
    END_OF_WORD,
    CharTokenizer,
    WordTokenizer,
    encode,
    random_windows,
    stdlib_corpus,
    train_bpe,
    words,
    zipf_token_ids,
)


def test_zipf_ids_are_in_range_with_the_requested_count():
    ids = zipf_token_ids(5000, 50, exponent=1.1, seed=3)
    assert ids.shape == (5000,) and ids.dtype == torch.long
    assert ids.min() >= 0 and ids.max() < 50


def test_zipf_ids_repeat_for_the_same_seed():
    assert torch.equal(zipf_token_ids(100, 20, seed=1), zipf_token_ids(100, 20, seed=1))


def test_zipf_frequencies_follow_the_power_law():
    ids = zipf_token_ids(200_000, 100, exponent=1.0, seed=0)
    counts = torch.bincount(ids, minlength=100).double()
    # frequency of rank r is proportional to 1/r: count(0)/count(9) ~ 10
    assert counts[0] / counts[9] == pytest.approx(10, rel=0.1)


def test_zipf_exponent_zero_is_uniform():
    counts = torch.bincount(zipf_token_ids(100_000, 10, exponent=0.0), minlength=10).double()
    assert (counts / counts.mean() - 1).abs().max() < 0.05


@pytest.mark.parametrize("exponent", [-0.5, math.inf, math.nan])
def test_zipf_refuses_a_bad_exponent(exponent):
    with pytest.raises(ValueError, match="exponent"):
        zipf_token_ids(10, 5, exponent=exponent)


@pytest.mark.parametrize("vocab_size", [0, 2.5])
def test_zipf_refuses_a_bad_vocab_size(vocab_size):
    with pytest.raises((ValueError, TypeError), match="vocab_size"):
        zipf_token_ids(10, vocab_size)


def test_stdlib_corpus_is_english_text_of_useful_size():
    text = stdlib_corpus()
    assert len(text) > 150_000  # enough for a small language model
    assert {"the", "return", "file"} <= set(words(text))


def test_stdlib_corpus_is_deterministic_and_can_be_truncated():
    assert stdlib_corpus(1000) == stdlib_corpus()[:1000]


# sha256 of the shipped text: the same corpus on every Python (rebuilt only
# by tools/build_corpus.py)
CORPUS_SHA256 = "5a6c0ab0bbc38bc115b6c9068b1bc1580ae8e9b7e55596d360972d2ceff0392b"


def test_stdlib_corpus_is_the_shipped_text():
    assert hashlib.sha256(stdlib_corpus().encode("utf-8")).hexdigest() == CORPUS_SHA256


def test_stdlib_corpus_survives_python_minus_OO():
    script = (
        "import hashlib; from gradcourse.data import stdlib_corpus; "
        "print(hashlib.sha256(stdlib_corpus().encode()).hexdigest())"
    )
    result = subprocess.run(
        [sys.executable, "-OO", "-c", script], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == CORPUS_SHA256


def test_words_lowercases_and_splits_punctuation():
    assert words("Hello, World 42!") == ["hello", ",", "world", "42", "!"]


def test_words_refuses_bytes():
    with pytest.raises(TypeError, match="bytes"):
        words(b"abc")


def test_char_tokenizer_round_trips():
    tokenizer = CharTokenizer("hello world")
    assert tokenizer.decode(tokenizer.encode("low hold")) == "low hold"


def test_char_tokenizer_names_an_unknown_character():
    with pytest.raises(ValueError, match="'z'"):
        CharTokenizer("abc").encode("abz")


def test_word_tokenizer_ranks_by_frequency_and_maps_unseen_words_to_unk():
    tokenizer = WordTokenizer("b a a c a b")
    assert tokenizer.vocab == ["<unk>", "a", "b", "c"]
    assert tokenizer.counts == [0, 3, 2, 1]
    assert tokenizer.encode("a zebra").tolist() == [1, 0]


def test_word_tokenizer_max_vocab_counts_unk():
    assert len(WordTokenizer("a a b c", max_vocab=2)) == 2


def test_word_tokenizer_refuses_text_without_words():
    with pytest.raises(ValueError, match="at least one word"):
        WordTokenizer("   ")


def test_bpe_first_merge_is_the_most_frequent_pair():
    merges = train_bpe("low low low lower newest newest", 1)
    assert (
        merges == [("l", "o")]
        # ("l", "o") and ("o", "w") both occur 4 times; ties break by the
        # pair
    )


def test_bpe_pieces_join_back_to_the_words():
    text = stdlib_corpus(20_000)
    merges = train_bpe(text, 200)
    pieces = encode("the gradients of an embedding", merges)
    assert "".join(pieces).replace(END_OF_WORD, " ").split() == [
        "the",
        "gradients",
        "of",
        "an",
        "embedding",
    ]


def test_bpe_shares_a_piece_between_words():
    merges = train_bpe("playing playing running running jumping jumping", 3)
    endings = [encode(word, merges)[-1] for word in ("playing", "running", "jumping")]
    assert endings == ["ing</w>"] * 3


def test_bpe_stops_when_nothing_is_left_to_merge():
    assert len(train_bpe("a", 5)) == 1  # only ("a", "</w>")


def test_bpe_refuses_zero_merges():
    with pytest.raises(ValueError, match="num_merges"):
        train_bpe("abc", 0)


def test_encode_refuses_merges_of_the_wrong_form():
    with pytest.raises(TypeError, match="merges"):
        encode("abc", ["ab"])


def test_random_windows_yield_inputs_and_shifted_targets():
    from gradcourse.data import random_windows

    token_ids = torch.arange(100)
    inputs, targets = next(random_windows(token_ids, 4, 10, seed=1))
    assert inputs.shape == targets.shape == (4, 10)
    # consecutive ids: the next token is id + 1
    assert torch.equal(targets, inputs + 1)


def test_random_windows_repeat_for_a_seed():
    from gradcourse.data import random_windows

    first, second = (
        random_windows(torch.arange(50), 3, 5, seed=7),
        random_windows(torch.arange(50), 3, 5, seed=7),
    )
    assert all(torch.equal(next(first)[0], next(second)[0]) for _ in range(3))


def test_random_windows_refuse_a_sequence_too_short():
    from gradcourse.data import random_windows

    with pytest.raises(ValueError, match="too few for windows of length 10"):
        next(random_windows(torch.arange(5), 2, 10))


def test_random_windows_can_draw_the_last_window():
    # windows of length 4 take 5 tokens: starts 0 and 1
    token_ids = torch.arange(6)
    batches = random_windows(token_ids, batch_size=64, length=4, seed=0)
    inputs, targets = next(batches)
    assert set(inputs[:, 0].tolist()) == {0, 1}
    assert torch.equal(targets, inputs + 1)


@pytest.mark.parametrize("tokenizer", [CharTokenizer("abc"), WordTokenizer("a b c")])
@pytest.mark.parametrize("bad_id", [-1, 99])
def test_decode_names_an_id_outside_the_vocabulary(tokenizer, bad_id):
    with pytest.raises(ValueError, match=f"token id {bad_id} is outside the vocabulary"):
        tokenizer.decode(torch.tensor([0, bad_id]))


def test_random_windows_refuses_bad_arguments_at_the_call():
    # not at the first next(): the error points at the line that is wrong
    with pytest.raises(ValueError, match="too few for windows of length 10"):
        random_windows(torch.arange(5), 2, 10)


@pytest.mark.parametrize("dtype", [torch.complex64, torch.bool])
def test_random_windows_refuses_ids_that_are_not_integers(dtype):
    with pytest.raises(TypeError, match=f"token_ids must hold integers .*got dtype {dtype}"):
        random_windows(torch.zeros(20, dtype=dtype), 2, 3)


def test_random_windows_names_the_shape_of_ids_that_are_not_1d():
    with pytest.raises(TypeError, match=r"1-D .*got shape \(4, 5\)"):
        random_windows(torch.zeros(4, 5, dtype=torch.long), 2, 3)


@pytest.mark.parametrize("seed", [1.5, "0", True])
def test_a_seed_that_is_not_an_int_is_refused_and_named(seed):
    with pytest.raises(TypeError, match=f"seed must be an int, got {seed!r}"):
        zipf_token_ids(10, 5, seed=seed)
    with pytest.raises(TypeError, match=f"seed must be an int, got {seed!r}"):
        random_windows(torch.arange(20), 2, 3, seed=seed)


def test_a_negative_seed_still_seeds_the_generator():
    assert torch.equal(zipf_token_ids(50, 10, seed=-3), zipf_token_ids(50, 10, seed=-3))


@pytest.mark.parametrize("text", [123, ["a", "b"]])
def test_char_tokenizer_refuses_a_text_that_is_not_a_str(text):
    with pytest.raises(TypeError, match=f"text must be a str, got {type(text).__name__}"):
        CharTokenizer(text)
    with pytest.raises(TypeError, match=f"text must be a str, got {type(text).__name__}"):
        CharTokenizer("ab").encode(text)


def test_encode_refuses_merges_that_are_not_pairs_of_strings():
    with pytest.raises(TypeError, match=r"\(str, str\) pairs"):
        encode("abc", [(1, 2)])


def test_zipf_names_a_vocab_size_beyond_what_multinomial_draws_from():
    with pytest.raises(ValueError, match=r"vocab_size must be <= 2\*\*24 = 16777216"):
        zipf_token_ids(10, 2**24 + 1)
