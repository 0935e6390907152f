"""Topic passages from pydoc's pages and the bag-of-words classifier (commlib.train.words)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from commlib.train.words import BagOfWords, load_topic_passages, page_words

LENGTH = 16


@pytest.fixture(scope="module")
def passages():
    return load_topic_passages(LENGTH)


def test_passages_are_consecutive_chunks_of_their_labelled_page(passages):
    pages = page_words()
    chunks = {name: {tuple(words[i : i + LENGTH]) for i in range(0, len(words) - LENGTH + 1, LENGTH)}
              for name, words in pages.items()}
    data = passages.data
    assert data.x_train.shape[1] == LENGTH and data.x_train.dtype == torch.int64
    assert len(data.y_train) + len(data.y_test) == sum(len(words) // LENGTH for words in pages.values())
    assert len(passages.pages) == data.classes == sum(len(words) >= LENGTH for words in pages.values())
    for x, y in zip(data.x_train[:200], data.y_train[:200]):
        words = tuple(passages.vocab[i] for i in x.tolist())
        assert words in chunks[passages.pages[int(y)]]


def test_vocabulary_comes_from_the_training_passages_only(passages):
    data = passages.data
    assert passages.vocab[0] == "<unk>"
    assert bool((data.x_train != 0).all())  # min_count 1: every training word is known
    assert data.x_train.unique().numel() == len(passages.vocab) - 1
    assert bool((data.x_test == 0).any())  # some test words never occur in training
    counts = torch.bincount(data.x_train.reshape(-1), minlength=len(passages.vocab))[1:]
    assert bool((counts[:-1] >= counts[1:]).all())  # most frequent first


def test_min_count_maps_rare_words_to_unknown():
    rare = load_topic_passages(LENGTH, min_count=3)
    counts = torch.bincount(rare.data.x_train.reshape(-1), minlength=len(rare.vocab))
    assert counts[0] > 0 and bool((counts[1:] >= 3).all())


def test_split_is_deterministic_in_the_seed():
    a, b, c = load_topic_passages(LENGTH, seed=5), load_topic_passages(LENGTH, seed=5), load_topic_passages(LENGTH)
    assert torch.equal(a.data.x_train, b.data.x_train) and torch.equal(a.data.y_test, b.data.y_test)
    assert a.vocab == b.vocab
    assert not torch.equal(a.data.y_train, c.data.y_train)


@pytest.mark.parametrize("kwargs", [{"length": 0}, {"length": 2.5}, {"min_count": 0}, {"test_fraction": 1.0},
                                    {"test_fraction": True}, {"test_fraction": 1e-9}])
def test_bad_arguments_are_named(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs)).replace("length", "passage length")):
        load_topic_passages(**kwargs)


def test_gradient_touches_only_the_rows_of_the_batch_tokens():
    model = BagOfWords(vocab=50, classes=4, width=8, bigram_buckets=64, seed=1)
    ids = torch.tensor([[3, 7, 3, 9], [11, 7, 12, 13]])
    F.cross_entropy(model(ids), torch.tensor([0, 2])).backward()
    touched = torch.zeros(50 + 64, dtype=torch.bool)
    touched[model.tokens(ids).unique()] = True
    row_norms = model.embed.weight.grad.norm(dim=1)
    assert bool((row_norms[~touched] == 0).all()) and bool((row_norms[touched] > 0).all())


def test_bigrams_hash_adjacent_pairs_into_the_extra_rows():
    vocab, buckets = 50, 64
    model = BagOfWords(vocab=vocab, classes=3, width=4, bigram_buckets=buckets)
    ids = torch.tensor([[3, 7, 3, 7], [7, 3, 0, 49]])
    tokens = model.tokens(ids)
    assert tokens.shape == (2, 7) and torch.equal(tokens[:, :4], ids)
    pairs = tokens[:, 4:]
    assert bool(((pairs >= vocab) & (pairs < vocab + buckets)).all())
    assert pairs[0, 0] == pairs[0, 2] == vocab + (3 * vocab + 7) * 2654435761 % 2**32 % buckets
    assert pairs[0, 0] != pairs[0, 1]  # (3, 7) and (7, 3) land apart here
    assert torch.equal(BagOfWords(vocab=vocab, classes=3, width=4).tokens(ids), ids)


def test_initialisation_is_keyed_by_the_seed():
    a, b, c = (BagOfWords(vocab=30, classes=5, width=8, seed=s) for s in (2, 2, 3))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.embed.weight, c.embed.weight)
    assert a(torch.tensor([[1, 2, 3]])).shape == (1, 5)


@pytest.mark.parametrize("ids, problem", [(torch.tensor([[1, 30]]), "lie in"), (torch.tensor([[-1, 2]]), "lie in"),
                                          (torch.tensor([1, 2]), "shape"), (torch.tensor([[1.0, 2.0]]), "int64")])
def test_bad_word_ids_are_named(ids, problem):
    with pytest.raises(ValueError, match=problem):
        BagOfWords(vocab=30, classes=5, width=8)(ids)
