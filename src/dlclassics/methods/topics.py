"""Measuring topic models: NPMI coherence (two conventions), topic recovery and diversity; and a
synthetic corpus drawn from LDA's generative process, whose true topics are known.

A topic is a distribution over the vocabulary, given as a row of `topic_word` [T, V]; its top-n
words are what coherence judges. NPMI of a word pair (Bouma 2009) is
    NPMI(i, j) = log(p_ij / (p_i p_j)) / -log p_ij   in [-1, 1],
and a topic's coherence is the mean over the pairs of its top-10 words. The probabilities come from
a reference corpus the model did not train on, in one of two conventions:
- documents (Card et al.'s `compute_npmi`, the course's helper files): p = the fraction of
  documents holding the word(s); a pair that never co-occurs scores 0;
- sliding windows (gensim's `c_npmi`): every window of 10 consecutive tokens is a virtual
  document, counted only in documents holding at least one of the topics' words; p_ij gets
  gensim's epsilon 1e-12, so a pair that never co-occurs scores about -1.
Both are computed for all topics at once from one sparse product of the word-presence matrix
restricted to the topics' words (no Python loop over word pairs).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import sparse
from scipy.optimize import linear_sum_assignment

EPSILON = 1e-12  # gensim's smoothing of the joint probability in c_npmi
TOP_WORDS = 10


def top_words(topic_word: np.ndarray, n: int = TOP_WORDS) -> np.ndarray:
    """[T, n] vocabulary indices of each topic's n most probable words, most probable first."""
    return np.argsort(-topic_word, axis=1, kind="stable")[:, :n]


def _pair_means(scores: np.ndarray) -> np.ndarray:
    """[T, n, n] pair scores -> [T] mean over the pairs i < j."""
    n = scores.shape[1]
    upper = np.triu_indices(n, k=1)
    return scores[:, upper[0], upper[1]].mean(axis=1)


def _pair_counts(top: np.ndarray, incidence: sparse.spmatrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(joint [T, n, n], first [T, n, 1], second [T, 1, n]): how many rows of the binary `incidence`
    [rows, U] (columns = the topics' distinct words, in `np.unique(top)` order) hold both / each word."""
    local = np.searchsorted(np.unique(top), top)  # [T, n] column of each top word
    co = np.asarray((incidence.T @ incidence).todense())  # [U, U], diagonal = single counts
    single = np.diagonal(co)[local]
    return co[local[:, :, None], local[:, None, :]], single[:, :, None], single[:, None, :]


def document_npmi(top: np.ndarray, presence: sparse.csc_matrix) -> np.ndarray:
    """[T] NPMI of each topic's words from document co-occurrence in `presence` [N, V] (nonzero = the
    document holds the word). Never co-occurring pairs score 0; a pair in every document scores 1."""
    n_docs = presence.shape[0]
    incidence = (presence[:, np.unique(top)] != 0).astype(np.float64)
    joint, first, second = _pair_counts(top, incidence)
    with np.errstate(divide="ignore", invalid="ignore"):
        pmi = np.log(joint * n_docs) - np.log(first * second)
        npmi = pmi / (np.log(n_docs) - np.log(joint))
    npmi = np.where(joint == n_docs, 1.0, npmi)
    return _pair_means(np.where(joint > 0, npmi, 0.0))


def window_npmi(top: np.ndarray, token_ids: np.ndarray, offsets: np.ndarray, window: int = 10) -> np.ndarray:
    """[T] NPMI of each topic's words over sliding windows of `window` tokens, as gensim's `c_npmi`.

    `token_ids` [P] are the reference documents' tokens in order (vocabulary index, -1 outside it),
    `offsets` [N + 1] where each document starts. A document shorter than the window is one window.
    Pairs with a word that occurs in no window score -1 (gensim divides by zero there).
    """
    words = np.unique(top)
    local = np.full(max(int(token_ids.max(initial=-1)), int(words.max())) + 2, -1)
    local[words] = np.arange(len(words))
    position_word = local[token_ids]  # -1 for -1 ids too: local[-1] is the spare last slot
    hits = np.flatnonzero(position_word >= 0)
    doc = np.searchsorted(offsets, hits, side="right") - 1
    lengths = np.diff(offsets)
    relevant = np.zeros(len(lengths), dtype=bool)
    relevant[doc] = True
    windows = np.where(relevant, np.maximum(lengths - window + 1, 1), 0)  # virtual documents per document
    first_window = np.concatenate([[0], np.cumsum(windows)[:-1]])
    # A token at position q lies in the windows starting at q - window + 1 ... q that exist.
    starts = (hits - offsets[doc])[:, None] - np.arange(window)[None, :]  # [H, window]
    valid = (starts >= 0) & (starts < windows[doc][:, None])
    rows = (first_window[doc][:, None] + starts)[valid]
    columns = np.broadcast_to(position_word[hits][:, None], starts.shape)[valid]
    total = int(windows.sum())
    incidence = sparse.csr_matrix((np.ones(len(rows)), (rows, columns)), shape=(total, len(words)))
    incidence.data[:] = 1.0  # duplicates were summed: presence, not counts
    joint, first, second = _pair_counts(top, incidence)
    with np.errstate(divide="ignore", invalid="ignore"):
        p_joint = joint / max(total, 1) + EPSILON
        npmi = np.log(p_joint / (first * second / max(total, 1) ** 2)) / -np.log(p_joint)
    return _pair_means(np.where((first > 0) & (second > 0), npmi, -1.0))


def topic_diversity(top: np.ndarray) -> float:
    """Fraction of distinct words among all topics' top words (Dieng et al. 2020): 1 = no two topics
    share a top word; near 1/T = the topics collapsed into one."""
    return len(np.unique(top)) / top.size


@dataclasses.dataclass
class Recovery:
    """Learned topics matched one-to-one to the true ones by the Hungarian assignment on cosine similarity."""

    mean: float  # mean matched similarity
    matched: np.ndarray  # [min(T, K)] similarity of each matched pair, in true-topic order
    learned_of_true: np.ndarray  # [min(T, K)] the learned topic matched to each true topic
    similarity: np.ndarray  # [K, T] all cosine similarities


def topic_recovery(learned: np.ndarray, true: np.ndarray) -> Recovery:
    """How well learned topic-word distributions [T, V] recover the true ones [K, V]."""
    unit = lambda rows: rows / np.linalg.norm(rows, axis=1, keepdims=True)  # noqa: E731
    similarity = unit(true) @ unit(learned).T  # [K, T]
    true_index, learned_index = linear_sum_assignment(similarity, maximize=True)
    matched = similarity[true_index, learned_index]
    return Recovery(float(matched.mean()), matched, learned_index, similarity)


@dataclasses.dataclass
class SyntheticCorpus:
    counts: sparse.csr_matrix  # [N, V] word counts, float32
    topics: np.ndarray  # [K, V] the true topic-word distributions
    proportions: np.ndarray  # [N, K] each document's true topic proportions


def lda_corpus(n_docs: int, vocabulary: int, topics: int, length: float, alpha: float, eta: float,
               seed: int) -> SyntheticCorpus:
    """Documents drawn from LDA's generative process (Blei et al. 2003), all at once:
    beta_k ~ Dir(eta) [K, V], theta_d ~ Dir(alpha) [N, K], n_d ~ Poisson(length) (at least 1),
    counts_d ~ Multinomial(n_d, theta_d beta). Small eta gives distinct topics, small alpha documents
    of few topics."""
    rng = np.random.default_rng(seed)
    beta = rng.dirichlet(np.full(vocabulary, eta), size=topics)
    theta = rng.dirichlet(np.full(topics, alpha), size=n_docs)
    lengths = np.maximum(rng.poisson(length, n_docs), 1)
    word_probabilities = theta @ beta
    word_probabilities /= word_probabilities.sum(axis=1, keepdims=True)  # exact sums for multinomial
    counts = rng.multinomial(lengths, word_probabilities)
    return SyntheticCorpus(sparse.csr_matrix(counts, dtype=np.float32), beta, theta)
