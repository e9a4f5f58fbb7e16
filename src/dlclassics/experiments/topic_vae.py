"""topic-vae: a neural topic model (ProdLDA-style VAE) beside classical LDA, S2's topic model (a-d).

Source: `../shared/seeds/002_2461c30dc0c8b3cd.txt`, the topic-model answer: encoder V -> h ReLU
h -> h ReLU -> (mu, log sigma) of size T, theta = softmax(z), word distribution eta = softmax(B theta)
with B: V x T and no bias, loss -sum x log eta + alpha KL with alpha rising linearly from 0 to 1
over 1,000 steps, h = T = 81, Adam lr 0.01, batch 64, stopped when the NPMI of the topics stops
changing for P epochs. The source reports no numbers. Two of its bugs are fixed (the report says
so): `torch.normal(mu, sigma)` passes no gradient to mu and sigma (we sample mu + sigma * eps), and
`x * log(softmax(.))` turns NaN once a probability underflows (we use log_softmax).

The tuned recipe is ProdLDA (Srivastava & Sutton 2017, Pyro's example): softplus encoder, dropout,
batch norm on mu, log sigma and the decoder's logits, and the Laplace approximation of a
Dirichlet(alpha) prior in the softmax basis; it does not collapse into identical topics. As in AVITM's
code, the batch norm of the logits has a learned shift (a background word frequency, which puts the
frequent words that co-occur within a sentence into the topics); batch 200, Adam lr 5e-3 falling along
a cosine over 4,000 steps, alpha 3, words in at least 15 training pages (chosen on a validation split of
the training pages). The budget is counted in optimizer steps, not epochs, so a larger corpus costs
about as much as the man pages: the epochs follow as ceil(steps / batches per epoch), at most `epochs`
(1,000): 1,000 epochs of the man pages' 4 batches (716 training pages), 160 of the synthetic corpus's
25, about 71 of 20 Newsgroups' 57. `seeds` models (3) train at once as one batched model: every weight
has the seed as its first dimension, so the seeds cost one model's Python overhead and stay exactly
independent.
Every run fits scikit-learn's LDA on the same vocabulary with the same number of topics and the same
seeds, and reports the mean and spread over the seeds of NPMI in both conventions on held-out documents
(`dlclassics.methods.topics`), topic diversity and perplexity for both; the goal rows judge topic-vae's
means minus LDA's. On `--dataset synthetic` (drawn from LDA) it reports how well the true topics are
recovered.
Anchors: Pyro's ProdLDA on 20 Newsgroups, NPMI 0.355 (document co-occurrence, held out, 20 topics).

    dlclassics run topic-vae                       the Linux man pages (apt-get install manpages-dev)
    dlclassics run topic-vae --dataset synthetic   recovery of known topics
    dlclassics run topic-vae --dataset 20newsgroups    after 'dlclassics data fetch 20newsgroups'
    dlclassics run topic-vae --dataset folder --data-dir DIR   your own text files
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any

import numpy as np
import torch
from scipy import sparse
from torch import nn
from torch.nn import functional as F

from dlclassics import plots
from dlclassics.config import (
    BaseConfig,
    batch_size_option,
    dataset_option,
    epochs_option,
    limit_option,
    lr_option,
    option,
    width_option,
)
from dlclassics.data.text import (
    NEWS_PARTS,
    Corpus,
    load_corpus,
    text_datasets,
    token_ids,
    vectorize,
)
from dlclassics.engine import make_optimizer
from dlclassics.errors import RunError
from dlclassics.methods import topics
from dlclassics.methods.pca import PCA
from dlclassics.models.stacked import StackedBatchNorm, StackedLinear
from dlclassics.runs import Reference, Run, markdown_table

TITLE = "Neural topic model (ProdLDA-style VAE) beside LDA: NPMI, recovery of known topics (S2)"
SYNTHETIC = "synthetic"


def corpora() -> tuple[str, ...]:
    return (*text_datasets(), SYNTHETIC)


@dataclasses.dataclass(frozen=True)
class Config(BaseConfig):
    dataset: str = dataset_option("manpages-dev", corpora, "corpus: a registered text corpus, 'folder' (the text "
                                  "files in --data-dir) or 'synthetic' (drawn from LDA with known topics)")
    topics: int = option(20, "number of topics T", low=2)
    # Every value below that differs from the seed recipe's is ProdLDA's or was chosen on a validation split
    # of the training man pages (NPMI in both conventions and diversity against LDA's).
    hidden: int = width_option(100, "units of each of the encoder's two hidden layers")  # ProdLDA's
    activation: str = option("softplus", "the encoder's nonlinearity", choices=("relu", "softplus"))  # ProdLDA's
    batch_norm: bool = option(True, "batch norm (no scale) on mu, log sigma and the decoder's logits "
                              "(ProdLDA)")  # ProdLDA's fix of component collapse
    background: bool = option(True, "a learned shift after the batch norm of the decoder's logits (AVITM): "
                              "a background word frequency that the topics' words then carry")  # window NPMI
    dropout: float = option(0.2, "dropout on the encoder's output and on theta (ProdLDA)", low=0.0,
                            high=0.9)  # ProdLDA's
    prior: str = option("dirichlet", "prior on z: Laplace approximation of Dirichlet(alpha) (ProdLDA) or "
                        "N(0, I) (the source)", choices=("dirichlet", "normal"))  # ProdLDA's
    alpha: float = option(3.0, "Dirichlet concentration of each topic (prior dirichlet)", low=0.0,
                          low_open=True)  # validation: window NPMI higher than at 0.3 or 1
    lr: float = lr_option(5e-3)  # validation, with batch 200 and the cosine schedule
    beta1: float = option(0.9, "Adam's first-moment decay (AVITM's ProdLDA: 0.99)", low=0.0, high=0.999)
    batch_size: int = batch_size_option(200)  # steadier batch statistics; fewer, cheaper steps per epoch
    kl_warmup: int = option(300, "steps over which the KL weight rises linearly from 0 to 1 (0: always 1)",
                            low=0)  # 75 epochs of the man pages' 4 batches (100 of the validation split's 3)
    seeds: int = option(3, "independent models trained at once as one batched model, and LDAs fitted (seeds "
                        "seed, seed + 1, ...); the report gives the mean and spread over them", low=1)
    steps: int = option(4000, "optimizer steps to train: ceil(steps / batches per epoch) epochs, at most "
                        "`epochs` (0: `epochs` epochs, the source's budget)",
                        low=0)  # 1,000 epochs of the man pages' 4 batches; validation: 1,000 epochs beat 600, 300
    epochs: int = epochs_option(1000, "at most this many epochs (all of them when `steps` is 0)")  # a cap: `steps`
    cosine: bool = option(True, "learning rate falling along a cosine from lr to 0 over the training "
                          "epochs")  # validation
    patience: int = option(0, "stop once the training documents' NPMI has not improved for this many epochs "
                           "(0: never, train all epochs); each seed keeps its best epoch",
                           low=0)  # the schedule decides the end
    min_df: int = option(15, "keep words found in at least this many training documents",
                         low=1)  # validation: both models' NPMI rise from min_df 5 (both see this vocabulary)
    max_df: float = option(0.5, "drop words found in more than this fraction of training documents", low=0.0,
                           high=1.0, low_open=True)
    max_words: int = option(0, "keep at most this many words, the most frequent (0 = all)", low=0)
    held_out: float = option(0.2, "fraction of documents held out as the reference corpus, for corpora "
                             "without a published test split", low=0.0, high=0.9, low_open=True)
    strip_news: bool = option(True, "remove headers, signature footers and quoted replies of newsgroup posts")
    limit: int = limit_option("training documents")
    lda_iterations: int = option(50, "passes of scikit-learn's batch variational LDA", low=1)
    synthetic_docs: int = option(6000, "synthetic corpus: documents (a sixth are held out)", low=10)
    synthetic_vocabulary: int = option(1000, "synthetic corpus: words", low=10)
    synthetic_topics: int = option(20, "synthetic corpus: true topics", low=2)
    synthetic_length: float = option(100.0, "synthetic corpus: mean document length (Poisson)", low=1.0)
    synthetic_alpha: float = option(0.1, "synthetic corpus: Dirichlet concentration of topic proportions",
                                    low=0.0, low_open=True)
    synthetic_eta: float = option(0.05, "synthetic corpus: Dirichlet concentration of topic-word distributions",
                                  low=0.0, low_open=True)


RECIPES = {"seed": {"topics": 81, "hidden": 81, "activation": "relu", "batch_norm": False, "background": False,
                    "dropout": 0.0, "prior": "normal", "lr": 0.01, "batch_size": 64, "kl_warmup": 1000,
                    "steps": 0, "epochs": 200, "cosine": False, "patience": 10}, "tuned": {}}
QUICK = {"topics": 4, "hidden": 16, "epochs": 3, "patience": 2, "kl_warmup": 10, "min_df": 1, "limit": 300,
         "lda_iterations": 5, "synthetic_docs": 300, "synthetic_vocabulary": 60, "synthetic_topics": 4}

REFERENCES = [
    Reference("npmi_doc", 0.355, "NPMI, document co-occurrence, held out (Pyro's ProdLDA, 20 topics)",
              rule="higher", tolerance=0.03, dataset="20newsgroups"),
    Reference("npmi_doc_minus_lda", 0.0, "topic-vae's NPMI (documents) minus LDA's, means over the seeds, "
              "held-out man pages (target >= 0)", rule="at_least", dataset="manpages-dev"),
    Reference("npmi_window_minus_lda", 0.0, "topic-vae's NPMI (sliding windows) minus LDA's, means over the "
              "seeds, held-out man pages (target >= 0)", rule="at_least", dataset="manpages-dev"),
    Reference("topic_diversity_minus_lda", 0.0, "topic-vae's topic diversity minus LDA's, means over the seeds, "
              "man pages (target >= 0)", rule="at_least", dataset="manpages-dev"),
    Reference("recovery", 0.90, "mean cosine of matched learned and true topics (target >= 0.90)",
              rule="at_least", dataset=SYNTHETIC),
]


# ---------------------------------------------------------------- the corpus as bags of words

@dataclasses.dataclass
class Prepared:
    """Training and held-out (reference) documents as sparse counts over one vocabulary."""

    vocabulary: tuple[str, ...]
    train: sparse.csr_matrix  # [N, V]
    test: sparse.csr_matrix  # [M, V]
    test_labels: np.ndarray  # [M], -1 when unlabelled
    classes: tuple[str, ...]
    test_tokens: tuple[np.ndarray, np.ndarray] | None  # (ids, offsets) for the sliding-window NPMI
    true_topics: np.ndarray | None  # [K, V] on synthetic data


def prepared_corpus(cfg: Config, run: Run) -> Prepared:
    if cfg.dataset == SYNTHETIC:
        return synthetic_corpus(cfg, run)
    corpus = load_corpus(cfg.dataset, run.data_dir, run.unverified, strip=NEWS_PARTS if cfg.strip_news else ())
    if corpus.replaced:
        run.note(f"data: {corpus.replaced} documents were not valid text in their encoding and were decoded "
                 "with replacement characters")
    if run.unverified:
        run.mark_not_comparable("data: unverified, not comparable (files not checked against the official checksums)")
    is_test = held_out_mask(corpus, cfg, run)
    train_docs = [d for d, test in zip(corpus.documents, is_test) if not test]
    test_docs = [d for d, test in zip(corpus.documents, is_test) if test]
    if cfg.limit:
        train_docs = train_docs[: cfg.limit]
    bag = vectorize(train_docs, cfg.min_df, cfg.max_df, cfg.max_words)
    train, test = bag.counts(train_docs), bag.counts(test_docs)
    keep_train, keep_test = _nonempty(train, "training", run), _nonempty(test, "held-out", run)
    ids, offsets = token_ids(bag, [d for d, keep in zip(test_docs, keep_test) if keep])
    run.note(f"data: {corpus.description} from {corpus.source}: {len(corpus.documents):,} documents, "
             f"{keep_train.sum():,} for training and {keep_test.sum():,} held out, {len(bag.vocabulary):,} words "
             f"(min_df {cfg.min_df}, max_df {cfg.max_df})")
    return Prepared(bag.vocabulary, train[keep_train], test[keep_test], corpus.labels[is_test][keep_test],
                    corpus.classes, (ids, offsets), None)


def held_out_mask(corpus: Corpus, cfg: Config, run: Run) -> np.ndarray:
    """[N] bool: the published test split, or a `held_out` fraction drawn by the seed when there is none."""
    if (corpus.splits == "test").any():
        return corpus.splits == "test"
    order = np.random.default_rng(cfg.seed).permutation(len(corpus.documents))
    is_test = np.zeros(len(order), dtype=bool)
    is_test[order[: int(round(cfg.held_out * len(order)))]] = True
    run.note(f"data: no published test split; {is_test.sum():,} documents ({cfg.held_out:.0%}) held out by seed "
             f"{cfg.seed} as the reference corpus")
    return is_test


def _nonempty(counts: sparse.csr_matrix, which: str, run: Run) -> np.ndarray:
    """Rows with at least one vocabulary word; documents without any are dropped, and said so."""
    keep = np.diff(counts.indptr) > 0
    if not keep.any():
        raise RunError(f"no {which} document holds a word of the vocabulary; lower min_df or check the corpus")
    if not keep.all():
        run.note(f"data: {(~keep).sum():,} {which} documents hold no word of the vocabulary and were left out")
    return keep


def synthetic_corpus(cfg: Config, run: Run) -> Prepared:
    """Documents drawn from LDA with known topics; the first sixth are held out."""
    drawn = topics.lda_corpus(cfg.synthetic_docs, cfg.synthetic_vocabulary, cfg.synthetic_topics,
                              cfg.synthetic_length, cfg.synthetic_alpha, cfg.synthetic_eta, cfg.seed)
    n_test = cfg.synthetic_docs // 6
    run.note(f"data: synthetic corpus drawn from LDA (seed {cfg.seed}): {cfg.synthetic_docs:,} documents "
             f"({n_test:,} held out), {cfg.synthetic_vocabulary:,} words, {cfg.synthetic_topics} true topics, "
             f"mean length {cfg.synthetic_length:g}, alpha {cfg.synthetic_alpha:g}, eta {cfg.synthetic_eta:g}")
    vocabulary = tuple(f"w{i:04d}" for i in range(cfg.synthetic_vocabulary))
    return Prepared(vocabulary, drawn.counts[n_test:], drawn.counts[:n_test], np.full(n_test, -1), (), None,
                    drawn.topics)


def dense_rows(counts: sparse.csr_matrix, rows: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The bag of words stays sparse until a batch is taken: [B, V] float32 on `device`."""
    return torch.from_numpy(counts[rows.cpu().numpy()].toarray()).to(device)


# ---------------------------------------------------------------- the model: S seeds trained as one (models.stacked)

class TopicVAE(nn.Module):
    """S independent topic models at once (seed s = index s of the leading dimension of every tensor).
    q(z|x) = N(mu, sigma^2) from a two-layer encoder; theta = softmax(z) [S, B, T]; the document's word
    distribution is softmax(theta B) [S, B, V] with B: T x V per seed and no bias, so topic k is row k of B.
    Each seed has its own weights, noise, dropout masks and batch statistics, and the loss is a sum of
    per-seed terms, so the seeds train exactly as separate models would (Adam is per element)."""

    def __init__(self, vocabulary: int, hidden: int, n_topics: int, activation: str = "relu",
                 batch_norm: bool = False, dropout: float = 0.0, seeds: int = 1, background: bool = False) -> None:
        super().__init__()
        act = {"relu": nn.ReLU, "softplus": nn.Softplus}[activation]
        self.encoder = nn.Sequential(StackedLinear(seeds, vocabulary, hidden), act(),
                                     StackedLinear(seeds, hidden, hidden),
                                     act(), nn.Dropout(dropout))
        self.mu, self.log_sigma = StackedLinear(seeds, hidden, n_topics), StackedLinear(seeds, hidden, n_topics)
        norm = (lambda size: StackedBatchNorm(seeds, size)) if batch_norm else (lambda size: nn.Identity())
        self.mu_norm, self.log_sigma_norm = norm(n_topics), norm(n_topics)
        self.logit_norm = StackedBatchNorm(seeds, vocabulary, shift=background) if batch_norm else nn.Identity()
        # ProdLDA normalises the log-variance: log sigma = BN(.) / 2. Without batch norm the head is log sigma.
        self.log_sigma_scale = 0.5 if batch_norm else 1.0
        self.theta_dropout = nn.Dropout(dropout)
        self.B = StackedLinear(seeds, n_topics, vocabulary, bias=False)

    @property
    def seeds(self) -> int:
        return self.B.weight.shape[0]

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return self.mu_norm(self.mu(h)), self.log_sigma_scale * self.log_sigma_norm(self.log_sigma(h))

    def decode(self, theta: torch.Tensor) -> torch.Tensor:
        """log eta [S, B, V]: log_softmax, not log(softmax), which is -inf (and NaN in x * log) on underflow."""
        return F.log_softmax(self.logit_norm(self.B(self.theta_dropout(theta))), dim=-1)

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        mu, log_sigma = self.encode(x)
        # Reparameterised sample: gradients reach mu and sigma (the source's torch.normal passes none).
        noise = torch.randn_like(mu) if noise is None else noise
        theta = F.softmax(mu + log_sigma.exp() * noise, dim=-1)
        return {"log_eta": self.decode(theta), "mu": mu, "log_sigma": log_sigma, "theta": theta}

    @torch.no_grad()
    def topic_word(self) -> np.ndarray:
        """[S, T, V] topic k's word distribution: what the decoder gives a document made of topic k alone
        (theta = e_k, eval mode). Without batch norm that is softmax(B[k]); with it the logits are first
        standardised by the batch statistics, and softmax(B[k]) alone is far from the topic (on the
        synthetic corpus it matches the true topics at cosine 0.28, the decoder's output at 0.95)."""
        was_training = self.training
        self.eval()
        one_topic = torch.eye(self.B.weight.shape[1], device=self.B.weight.device).expand(self.seeds, -1, -1)
        probabilities = self.decode(one_topic).exp()
        self.train(was_training)
        return probabilities.cpu().numpy()


def prior_variance(cfg: Config) -> float:
    """Variance of the prior on z. Dirichlet(alpha) symmetric over T topics, Laplace-approximated in the
    softmax basis (MacKay 1998; Srivastava & Sutton 2017, eq. 4): mean 0, variance (1 - 1/T) / alpha."""
    return (1 - 1 / cfg.topics) / cfg.alpha if cfg.prior == "dirichlet" else 1.0


def kl_divergence(mu: torch.Tensor, log_sigma: torch.Tensor, variance: float) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, variance I)) per document [B], in closed form."""
    sigma2 = torch.exp(2 * log_sigma)
    return 0.5 * ((sigma2 + mu.square()) / variance - 1 + np.log(variance) - 2 * log_sigma).sum(-1)


def negative_elbo(model: TopicVAE, x: torch.Tensor, variance: float, kl_weight: float = 1.0,
                  noise: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Per seed and document [S, B]: -sum_w x_w log eta_w + kl_weight * KL (the source's loss, its bugs fixed)."""
    out = model(x, noise)
    reconstruction = -(x * out["log_eta"]).sum(-1)
    kl = kl_divergence(out["mu"], out["log_sigma"], variance)
    return {"loss": reconstruction + kl_weight * kl, "kl": kl}


def kl_weight(step: int, warmup: int) -> float:
    """The source's LossFn: 0 at the first step, rising by 1/warmup per step, 1 from step `warmup` on."""
    return min(1.0, step / warmup) if warmup else 1.0


class AnnealedStep:
    """The `fit` step: the negative ELBO of a batch with the KL weight of this step, averaged over its
    documents and the seeds (each seed's gradient is its own model's, scaled by 1/S: Adam does not see the
    scale). `fit` draws one batch of rows; seed s reads them through its own fixed permutation, so every
    seed sees its own random batches. The rows are densified here."""

    def __init__(self, counts: sparse.csr_matrix, variance: float, warmup: int, seeds: int,
                 generator: torch.Generator, device: torch.device) -> None:
        self.counts, self.variance, self.warmup, self.device = counts, variance, warmup, device
        self.orders = torch.stack([torch.randperm(counts.shape[0], generator=generator) for _ in range(seeds)])
        self.steps = 0

    def __call__(self, model: TopicVAE, batch: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        weight = kl_weight(self.steps, self.warmup)
        self.steps += 1
        rows = self.orders[:, batch[0].cpu()]  # [S, B]
        x = dense_rows(self.counts, rows.reshape(-1), self.device).reshape(*rows.shape, -1)
        terms = negative_elbo(model, x, self.variance, weight)
        return {"loss": terms["loss"].mean(), "kl": terms["kl"].mean()}


@torch.no_grad()
def held_out_elbo(model: TopicVAE, counts: sparse.csr_matrix, variance: float, seed: int,
                  device: torch.device, batch_size: int = 2048) -> np.ndarray:
    """[S] per seed, the sum over documents of the negative ELBO (eval mode, one sample of fixed noise): an
    estimate of an upper bound on -log p(documents), so exp(it / words) estimates a bound on the perplexity."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    total = torch.zeros(model.seeds)
    for start in range(0, counts.shape[0], batch_size):
        rows = torch.arange(start, min(start + batch_size, counts.shape[0]))
        x = dense_rows(counts, rows, device).expand(model.seeds, -1, -1)
        noise = torch.randn(model.seeds, len(rows), model.B.weight.shape[1], generator=generator).to(device)
        total += negative_elbo(model, x, variance, noise=noise)["loss"].sum(1).cpu()
    return total.numpy().astype(np.float64)


# ---------------------------------------------------------------- training with early stopping on NPMI

def mean_npmi(topic_word: np.ndarray, presence: sparse.csc_matrix) -> np.ndarray:
    """[S] mean document NPMI of each seed's topics (topic_word [S, T, V]) on the documents of `presence`."""
    return np.array([topics.document_npmi(topics.top_words(seed), presence).mean() for seed in topic_word])


def training_epochs(cfg: Config, documents: int) -> int:
    """The epochs of the budget: enough for `steps` optimizer steps over `documents` (the last epoch may
    overshoot by less than one epoch's batches) but at most `epochs`, or `epochs` when `steps` is 0 (the
    source's budget). Counting steps makes a corpus 20 times larger cost about as much, not 20 times more."""
    if not cfg.steps:
        return cfg.epochs
    return min(cfg.epochs, math.ceil(cfg.steps / math.ceil(documents / cfg.batch_size)))


def train(cfg: Config, run: Run, data: Prepared) -> tuple[TopicVAE, list[dict]]:
    """`training_epochs` epochs of `run.fit` (the learning rate falling along a cosine to 0 by the last
    epoch when `cosine`), all of them with `patience` 0, else until for every seed the NPMI of its topics
    on the training documents has not improved for `patience` epochs after the KL warm-up; each seed keeps
    the weights of its own best epoch by that NPMI. The held-out documents decide nothing: their NPMI and
    loss are only recorded. Each epoch is one call of `fit` (the stopping rule is decided between them), so
    there is no checkpoint to resume from."""
    model = TopicVAE(len(data.vocabulary), cfg.hidden, cfg.topics, cfg.activation, cfg.batch_norm,
                     cfg.dropout, cfg.seeds, cfg.background).to(run.device)
    optimizer = make_optimizer("adam", model, cfg.lr)
    for group in optimizer.param_groups:
        group["betas"] = (cfg.beta1, group["betas"][1])
    epochs = training_epochs(cfg, data.train.shape[0])
    run.note(f"training budget: {f'{cfg.steps:,} steps, ' if cfg.steps else ''}{epochs:,} epochs of "
             f"{math.ceil(data.train.shape[0] / cfg.batch_size)} batches of {cfg.batch_size}")
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs) if cfg.cosine else None
    variance = prior_variance(cfg)
    step = AnnealedStep(data.train, variance, cfg.kl_warmup, cfg.seeds, run.generator, run.device)
    rows = torch.arange(data.train.shape[0])
    train_presence, test_presence = data.train.tocsc(), data.test.tocsc()
    history: list[dict[str, float]] = []
    best = np.full(cfg.seeds, -np.inf)
    best_state, since_best = copy.deepcopy(model.state_dict()), np.zeros(cfg.seeds, dtype=int)
    for epoch in range(1, epochs + 1):
        result = run.fit(model, (rows,), optimizer=optimizer, epochs=1, batch_size=cfg.batch_size, step=step,
                         scheduler=scheduler, checkpoint=None, desc=f"{run.experiment} epoch {epoch}")
        topic_word = model.topic_word()
        npmi_train = mean_npmi(topic_word, train_presence)
        history.append({**result.history[0], "epoch": epoch, "steps": step.steps,
                        "npmi_train": float(npmi_train.mean()),
                        "npmi_test": float(mean_npmi(topic_word, test_presence).mean()),
                        "test_loss": float(held_out_elbo(model, data.test, variance, cfg.seed, run.device).mean())
                        / data.test.shape[0]})
        improved = npmi_train > best
        best[improved], since_best[improved] = npmi_train[improved], 0
        for name, value in model.state_dict().items():  # every tensor has the seed as its first dimension
            best_state[name][torch.from_numpy(improved)] = value[torch.from_numpy(improved)]
        if cfg.patience and step.steps >= cfg.kl_warmup:  # patience counts once the objective stopped changing
            since_best[~improved] += 1
            if (since_best >= cfg.patience).all():
                break
    model.load_state_dict(best_state)
    return model.eval(), history


@torch.no_grad()
def document_topics(model: TopicVAE, counts: sparse.csr_matrix, device: torch.device) -> np.ndarray:
    """[S, N, T] topic proportions softmax(mu) of each document (the posterior mean in z, eval mode)."""
    x = dense_rows(counts, torch.arange(counts.shape[0]), device).expand(model.seeds, -1, -1)
    mu, _ = model.encode(x)
    return F.softmax(mu, dim=-1).cpu().numpy()


def fit_lda(cfg: Config, data: Prepared, seed: int) -> Any:
    """scikit-learn's batch variational LDA (Blei et al. 2003) on the same counts and number of topics."""
    from sklearn.decomposition import LatentDirichletAllocation

    lda = LatentDirichletAllocation(n_components=cfg.topics, learning_method="batch", max_iter=cfg.lda_iterations,
                                    random_state=seed)
    return lda.fit(data.train)


# ---------------------------------------------------------------- measuring both models

COMPARED = ("npmi_doc", "npmi_window", "topic_diversity")  # judged as topic-vae's mean minus LDA's mean
SCORES = (*COMPARED, "perplexity", "recovery")


def measure(topic_word: np.ndarray, data: Prepared, perplexity: float) -> dict[str, Any]:
    """NPMI (both conventions) on the held-out documents, diversity, recovery when the truth is known, and
    the top-words table; `topic_word` [T, V] are one model's topics' word distributions."""
    top = topics.top_words(topic_word)
    per_topic = topics.document_npmi(top, data.test.tocsc())
    result: dict[str, Any] = {"npmi_doc": float(per_topic.mean()), "topic_diversity": topics.topic_diversity(top),
                              "perplexity": perplexity, "table": topic_table(top, per_topic, data.vocabulary)}
    if data.test_tokens is not None:
        result["npmi_window"] = float(topics.window_npmi(top, *data.test_tokens).mean())
    if data.true_topics is not None:
        result["recovery"] = topics.topic_recovery(topic_word, data.true_topics).mean
    return result


def summarise(results: list[dict[str, Any]], prefix: str = "") -> dict[str, float]:
    """Each score's mean over the seeds, and its spread as `<score>_sd` (sample standard deviation; 0 for
    one seed)."""
    summary = {}
    for key in SCORES:
        values = [result[key] for result in results if key in result]
        if values:
            summary[prefix + key] = float(np.mean(values))
            summary[f"{prefix}{key}_sd"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return summary


def topic_table(top: np.ndarray, npmi: np.ndarray, vocabulary: tuple[str, ...]) -> str:
    """The top-10 words of every topic, most coherent first."""
    order = np.argsort(-npmi, kind="stable")
    return markdown_table([{"topic": int(k), "NPMI": round(float(npmi[k]), 3),
                            "top words": " ".join(vocabulary[w] for w in top[k])} for k in order])


def seed_table(cfg: Config, models: dict[str, list[dict[str, Any]]]) -> str:
    """Every seed's scores, both models."""
    return markdown_table([{"model": name, "seed": cfg.seed + index,
                            **{key: round(result[key], 4) for key in SCORES if key in result}}
                           for name, results in models.items() for index, result in enumerate(results)])


def run(cfg: Config, run: Run) -> dict[str, Any]:
    data = prepared_corpus(cfg, run)
    run.note("source bugs fixed: z = mu + sigma * eps (the source's torch.normal(mu, sigma) passes no gradient "
             "to mu and sigma) and log_softmax (the source's x * log(softmax) turns NaN on underflow)")

    with run.timer("train_time_s"):
        model, history = train(cfg, run, data)
    run.save_history(history)
    run.save_model(model)
    perplexities = np.exp(held_out_elbo(model, data.test, prior_variance(cfg), cfg.seed, run.device)
                          / data.test.sum())
    vae = [measure(topic_word, data, float(perplexity))
           for topic_word, perplexity in zip(model.topic_word(), perplexities)]

    with run.timer("lda_time_s"):
        ldas = [fit_lda(cfg, data, cfg.seed + index) for index in range(cfg.seeds)]
    baseline = [measure(lda.components_ / lda.components_.sum(axis=1, keepdims=True), data,
                        float(lda.perplexity(data.test))) for lda in ldas]

    models = {"topic-vae": vae, "LDA (scikit-learn)": baseline}
    run.add_section(f"Scores of each seed ({cfg.seeds} topic-vae models trained at once, {cfg.seeds} LDA fits)",
                    seed_table(cfg, models))
    for name, results in models.items():
        run.add_section(f"Topics of {name} (seed {cfg.seed}), most coherent first (NPMI on held-out documents)",
                        results[0]["table"])
    run.note("perplexity: exp(negative ELBO per held-out word) for topic-vae, scikit-learn's variational bound "
             "for LDA; both are upper bounds, so compare them with care")
    ours, lda = summarise(vae), summarise(baseline)
    save_figures(run, model, data, history, lda["npmi_doc"])
    margins = {f"{key}_minus_lda": ours[key] - lda[key] for key in COMPARED if key in ours}
    return {**ours, **{f"lda_{key}": value for key, value in lda.items()}, **margins,
            "epochs_trained": len(history), "steps_trained": history[-1]["steps"],
            "documents": data.train.shape[0], "held_out_documents": data.test.shape[0],
            "vocabulary": len(data.vocabulary)}


# ---------------------------------------------------------------- figures

def save_figures(run: Run, model: TopicVAE, data: Prepared, history: list[dict[str, float]],
                 lda_npmi: float) -> None:
    """Loss and NPMI per epoch (means over the seeds), and for the first seed's model: topic proportions of
    a few documents, documents in 2-D by label, and on synthetic data the similarity of learned to true topics."""
    import matplotlib.pyplot as plt

    run.save_figure(plots.curves(history, "epoch", {"train_loss": "train", "test_loss": "held-out (test)"},
                                 "Negative ELBO per document", "nats"), "loss", "Loss per epoch", rows=history)
    rows = [{**row, "lda": lda_npmi} for row in history]
    run.save_figure(plots.curves(rows, "epoch", {"npmi_train": "topic-vae, training documents",
                                                 "npmi_test": "topic-vae, held-out (test) documents",
                                                 "lda": "LDA, held-out (test) documents"},
                                 "NPMI of the topics' top-10 words (document co-occurrence), mean over the seeds",
                                 "NPMI"),
                    "npmi", "NPMI per epoch; training-document NPMI decides early stopping", rows=rows)
    theta = document_topics(model, data.test, run.device)[0]
    shown = theta[:8]
    figure, axes = plt.subplots(figsize=(7.0, 3.6))
    left = np.zeros(len(shown))
    for k in range(shown.shape[1]):
        axes.barh(range(len(shown)), shown[:, k], left=left, color=plt.cm.tab20(k % 20),
                  label=f"topic {k}" if k < 20 else None)
        left += shown[:, k]
    axes.set(title="Topic proportions of the first held-out documents", xlabel="proportion", ylabel="document",
             yticks=range(len(shown)), xlim=(0, 1))
    axes.legend(fontsize=6, ncol=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
    run.save_figure(figure, "proportions", "Topic proportions (softmax of the posterior mean) of eight held-out "
                    "documents", data={"theta": shown})
    if len(data.classes) > 1:
        save_document_map(run, theta, data)
    if data.true_topics is not None:
        recovery = topics.topic_recovery(model.topic_word()[0], data.true_topics)
        ordered = recovery.similarity[:, recovery.learned_of_true]
        figure, axes = plt.subplots(figsize=(5.5, 4.8))
        image = axes.imshow(ordered, vmin=0, vmax=1, cmap="viridis")
        axes.set(title=f"Cosine similarity, true vs matched learned topics (mean {recovery.mean:.3f})",
                 xlabel="learned topic (matched order)", ylabel="true topic")
        figure.colorbar(image, ax=axes, fraction=0.046)
        run.save_figure(figure, "recovery", "Similarity of the true topics to the learned ones, matched by the "
                        "Hungarian assignment (diagonal = matched pairs)", data={"similarity": ordered})


def save_document_map(run: Run, theta: np.ndarray, data: Prepared) -> None:
    """Held-out documents' topic proportions projected on their first two principal components, by label."""
    import matplotlib.pyplot as plt

    points = PCA(2).fit_transform(torch.from_numpy(theta)).numpy()
    figure, axes = plt.subplots(figsize=(6.4, 5.0))
    for index, label in enumerate(data.classes):
        mine = data.test_labels == index
        axes.scatter(points[mine, 0], points[mine, 1], s=6, alpha=0.7, color=plt.cm.tab20(index % 20), label=label)
    axes.set(title="Held-out documents by topic proportions (PCA), coloured by label", xlabel="PC 1", ylabel="PC 2")
    axes.legend(fontsize=7, markerscale=2, ncol=1 + len(data.classes) // 10)
    run.save_figure(figure, "documents_2d", "Document-topic vectors of the held-out documents in 2-D",
                    data={"points": points, "labels": data.test_labels})
