"""Bundled text (no downloads): passages of pydoc's topic pages labelled by page, and a bag-of-words classifier.

Data: ``pydoc_data.topics.topics``, shipped with Python (the reference manual's
topic pages, a dict page name → text). :func:`load_topic_passages`:

1. lower-cases every page and splits it into words (:data:`WORD`: a letter or
   underscore, then letters, digits and underscores);
2. cuts each page's words into consecutive passages of ``length`` words (the
   tail shorter than ``length`` is dropped); a passage's label is its page's rank
   among the pages (sorted by name) that give at least one passage;
3. shuffles the passages with a generator seeded by ``seed`` and holds out
   ``test_fraction`` of them;
4. builds the vocabulary from the training passages only: id 0 is the unknown
   word, then every word seen at least ``min_count`` times, most frequent first
   (ties alphabetical); words outside it map to 0.

The model (:class:`BagOfWords`) is a fastText-style classifier (Joulin et al.
2017): the mean of the passage's word embeddings (``nn.EmbeddingBag``), then a
linear layer. Its parameters are dominated by the embedding table, and a
batch's gradient touches only the rows of the words it contains: the sparse,
heavy-tailed gradient that FetchSGD (Rothchild et al. 2020) targets.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..rng import generator
from .data import Dataset

__all__ = ["WORD", "BagOfWords", "TopicPassages", "load_topic_passages", "page_words"]

WORD = re.compile(r"[a-z_][a-z0-9_]*")


def page_words() -> dict[str, list[str]]:
    """Each pydoc topic page's words (lower-cased, :data:`WORD`), pages sorted by name."""
    from pydoc_data.topics import topics

    return {name: WORD.findall(topics[name].lower()) for name in sorted(topics)}


@dataclass(frozen=True)
class TopicPassages:
    """A :class:`Dataset` of word-id passages (``x``: int64, ``(n, length)``), its vocabulary and page names."""

    data: Dataset
    vocab: list[str]
    pages: list[str]


def _check_int(value: object, what: str, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{what} must be an integer >= {low}, got {value!r}")


def load_topic_passages(length: int = 16, min_count: int = 1, seed: int = 0,
                        test_fraction: float = 0.2) -> TopicPassages:
    """Passages of ``length`` words from pydoc's topic pages, labelled by page (steps in the module doc)."""
    _check_int(length, "passage length", 1)
    _check_int(min_count, "min_count", 1)
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) or not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be a number in (0, 1), got {test_fraction!r}")
    passages, labels, pages = [], [], []
    for name, words in page_words().items():
        cut = [words[i : i + length] for i in range(0, len(words) - length + 1, length)]
        if cut:
            passages += cut
            labels += [len(pages)] * len(cut)
            pages.append(name)
    order = torch.randperm(len(passages), generator=generator(seed, 0, "words/split")).tolist()
    n_test = int(round(test_fraction * len(passages)))
    if not 0 < n_test < len(passages):
        raise ValueError(f"test_fraction {test_fraction} leaves an empty split of {len(passages)} passages")
    test, train = order[:n_test], order[n_test:]
    counts = Counter(w for i in train for w in passages[i])
    kept = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    vocab = ["<unk>", *kept]
    index = {w: i for i, w in enumerate(vocab)}

    def encode(ids: list[int]) -> tuple[Tensor, Tensor]:
        x = torch.tensor([[index.get(w, 0) for w in passages[i]] for i in ids], dtype=torch.int64)
        return x, torch.tensor([labels[i] for i in ids], dtype=torch.int64)

    return TopicPassages(Dataset(*encode(train), *encode(test)), vocab, pages)


class BagOfWords(nn.Module):
    """Mean of the passage's token embeddings (``EmbeddingBag``), then ``Linear(width, classes)``.

    Tokens are the words and, with ``bigram_buckets = B > 0``, every pair of
    adjacent words hashed into one of ``B`` extra rows (fastText's hashing trick,
    Joulin et al. 2017): the pair ``(a, b)`` goes to row ``vocab + h(a, b) mod B``
    with ``h(a, b) = ((a·vocab + b)·2654435761) mod 2³²`` (Knuth's multiplicative
    hash). The table has ``vocab + B`` rows of ``width``; a batch's gradient is
    zero outside the rows of its tokens.

    Initialisation, each from its own keyed stream (never the global RNG):
    embeddings N(0, 0.1²), the linear weight Uniform(±1/√width), its bias 0.
    """

    def __init__(self, vocab: int, classes: int, width: int = 64, bigram_buckets: int = 0, seed: int = 0) -> None:
        super().__init__()
        _check_int(vocab, "vocab", 1)
        _check_int(classes, "classes", 1)
        _check_int(width, "width", 1)
        _check_int(bigram_buckets, "bigram_buckets", 0)
        self.vocab, self.bigram_buckets = vocab, bigram_buckets
        rows = vocab + bigram_buckets
        self.embed = nn.EmbeddingBag(rows, width, mode="mean")
        self.head = nn.Linear(width, classes)
        bound = width**-0.5
        with torch.no_grad():
            self.embed.weight.copy_(torch.randn(rows, width, generator=generator(seed, 0, "init/embed")) * 0.1)
            u = torch.rand(classes, width, generator=generator(seed, 0, "init/head"))
            self.head.weight.copy_(u.mul_(2 * bound).sub_(bound))
            self.head.bias.zero_()

    def tokens(self, ids: Tensor) -> Tensor:
        """The rows each passage reads: its word ids, then its hashed bigrams' rows (if ``bigram_buckets``)."""
        if ids.dim() != 2 or ids.dtype != torch.int64:
            raise ValueError(f"BagOfWords takes int64 word ids of shape (n, length), got {ids.dtype} "
                             f"{tuple(ids.shape)}")
        if ids.numel() and not 0 <= int(ids.min()) <= int(ids.max()) < self.vocab:
            raise ValueError(f"BagOfWords word ids must lie in [0, {self.vocab}), got [{int(ids.min())}, "
                             f"{int(ids.max())}]")
        if not self.bigram_buckets or ids.shape[1] < 2:
            return ids
        pair = ids[:, :-1] * self.vocab + ids[:, 1:]
        hashed = (pair * 2654435761) % (1 << 32) % self.bigram_buckets
        return torch.cat([ids, self.vocab + hashed], dim=1)

    def forward(self, ids: Tensor) -> Tensor:
        """Logits ``(n, classes)`` of ``n`` passages of word ids, ``(n, length)``."""
        return self.head(self.embed(self.tokens(ids)))
