"""topic-vae: NPMI against hand-computed values and the course's pairwise loop, topic recovery, the model's
fixes of the source's bugs, and --quick runs on generated corpora in the official layouts."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_quick
from scipy import sparse
from text_files import unchecked_news, write_text_data
from torch.nn import functional as F

from dlclassics.cli import main
from dlclassics.data import registry
from dlclassics.experiments import topic_vae
from dlclassics.methods import topics
from dlclassics.models.stacked import StackedBatchNorm
from dlclassics.runs import Run

VOCABULARY = {"a": 0, "b": 1, "c": 2, "d": 3}


def _load_benchmark():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_topic_vae.py"
    spec = importlib.util.spec_from_file_location("bench_topic_vae", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BENCH = _load_benchmark()


def _presence(documents: list[str]) -> sparse.csc_matrix:
    rows = [[1.0 if word in doc.split() else 0.0 for word in VOCABULARY] for doc in documents]
    return sparse.csc_matrix(np.array(rows))


# ---------------------------------------------------------------- NPMI

def test_document_npmi_matches_hand_computed_values():
    presence = _presence(["a b", "a b c", "a", "c d"])  # N = 4; a:3 b:2 c:2 d:1; ab:2 ac:1 bc:1 ad,bd:0
    top = np.array([[0, 1, 2], [0, 3, 1]])
    ab = math.log(2 * 4 / (3 * 2)) / -math.log(2 / 4)
    ac = math.log(1 * 4 / (3 * 2)) / -math.log(1 / 4)
    bc = 0.0  # log(1 * 4 / (2 * 2)) = 0
    expected = [(ab + ac + bc) / 3, (0.0 + ab + 0.0) / 3]  # pairs that never co-occur score 0
    assert topics.document_npmi(top, presence) == pytest.approx(expected, abs=1e-12)
    assert expected[0] == pytest.approx(0.0408530, abs=1e-6)


def test_a_pair_in_every_document_scores_one():
    assert topics.document_npmi(np.array([[0, 1]]), _presence(["a b", "a b c"])) == pytest.approx([1.0])


def test_vectorised_document_npmi_equals_the_course_loop():
    rng = np.random.default_rng(0)
    counts = sparse.csc_matrix(rng.poisson(0.08, size=(300, 80)).astype(np.float32))
    top = np.stack([rng.permutation(80)[:10] for _ in range(6)])
    expected = BENCH.course_compute_npmi(top.tolist(), counts)  # the course helper's pairwise loop
    assert topics.document_npmi(top, counts).mean() == pytest.approx(expected, abs=1e-9)


def test_window_npmi_matches_hand_computed_values():
    # doc 0 "a x b a" -> windows of 2: [a x] [x b] [b a]; doc 1 "c" (short: one window); doc 2 "d x" holds
    # none of the topic's words, so (as gensim) its window is not counted: 4 windows in all.
    ids = np.array([0, -1, 1, 0, 2, 3, -1])
    offsets = np.array([0, 4, 5, 7])
    ab = math.log((1 / 4 + topics.EPSILON) / (2 / 4 * 2 / 4)) / -math.log(1 / 4 + topics.EPSILON)  # 0
    never = math.log(topics.EPSILON / (2 / 4 * 1 / 4)) / -math.log(topics.EPSILON)  # about -0.92
    result = topics.window_npmi(np.array([[0, 1, 2]]), ids, offsets, window=2)
    assert result == pytest.approx([(ab + 2 * never) / 3], abs=1e-9)
    assert result[0] == pytest.approx(-0.616495, abs=1e-5)


def test_window_npmi_scores_a_word_absent_from_the_reference_minus_one():
    ids, offsets = np.array([0, 1, 0]), np.array([0, 3])
    assert topics.window_npmi(np.array([[0, 3]]), ids, offsets, window=2) == pytest.approx([-1.0])


# ---------------------------------------------------------------- recovery, diversity, synthetic corpus

def test_recovery_matches_permuted_topics_and_scores_mismatch_low():
    true = np.eye(4, 12) * 0.7 + 0.025
    learned = true[[2, 0, 3, 1]] + np.random.default_rng(1).uniform(0, 0.01, true.shape)
    recovery = topics.topic_recovery(learned, true)
    assert recovery.mean > 0.99 and recovery.learned_of_true.tolist() == [1, 3, 0, 2]
    unrelated = np.roll(np.eye(12)[:4] * 0.7 + 0.025, 6, axis=1)
    assert topics.topic_recovery(unrelated, true).mean < 0.2


def test_topic_diversity_detects_collapse():
    assert topics.topic_diversity(np.array([[0, 1], [2, 3]])) == 1.0
    assert topics.topic_diversity(np.array([[0, 1], [0, 1], [0, 1]])) == pytest.approx(2 / 6)


def test_lda_corpus_is_reproducible_and_follows_its_topics():
    first = topics.lda_corpus(400, 50, 3, 40.0, 0.1, 0.05, seed=3)
    again = topics.lda_corpus(400, 50, 3, 40.0, 0.1, 0.05, seed=3)
    assert (first.counts != again.counts).nnz == 0 and first.counts.shape == (400, 50)
    assert np.allclose(first.topics.sum(1), 1) and np.allclose(first.proportions.sum(1), 1)
    # Documents dominated by one topic use its words: the empirical word frequencies recover the topic.
    dominant = first.proportions.argmax(1)
    frequencies = np.asarray(first.counts[(dominant == 0) & (first.proportions.max(1) > 0.95)].sum(0)).ravel()
    assert np.dot(frequencies / np.linalg.norm(frequencies), first.topics[0] / np.linalg.norm(first.topics[0])) > 0.9


# ---------------------------------------------------------------- the model and the source's bugs

def _model(**options) -> topic_vae.TopicVAE:
    torch.manual_seed(0)
    return topic_vae.TopicVAE(vocabulary=30, hidden=8, n_topics=4, **options)


def test_reconstruction_gradient_reaches_mu_and_sigma():
    model, x = _model(), torch.poisson(torch.full((1, 5, 30), 2.0))
    topic_vae.negative_elbo(model, x, 1.0, kl_weight=0.0)["loss"].sum().backward()
    assert model.mu.weight.grad.abs().sum() > 0 and model.log_sigma.weight.grad.abs().sum() > 0
    mu = torch.zeros(3, requires_grad=True)
    sigma = torch.ones(3, requires_grad=True)
    torch.normal(mu, sigma).square().sum().backward()  # the source's sample
    assert mu.grad.abs().sum() == 0 and sigma.grad.abs().sum() == 0  # passes exactly zero gradient


def test_log_softmax_stays_finite_where_log_of_softmax_is_nan():
    model = _model()
    with torch.no_grad():
        model.B.weight.mul_(1e4)  # probabilities underflow to 0
    x = torch.ones(1, 3, 30)
    out = model(x)
    assert torch.isfinite(topic_vae.negative_elbo(model, x, 1.0)["loss"]).all()
    logits = model.B(out["theta"])
    assert not torch.isfinite((x * torch.log(F.softmax(logits, dim=-1))).sum(-1)).all()


def test_stacked_batch_norm_is_batch_norm_per_copy():
    x = torch.randn(3, 16, 5) * torch.tensor([1.0, 4.0, 0.5])[:, None, None] + 2.0
    norm = StackedBatchNorm(3, 5)
    out = norm(x)
    for seed in range(3):
        reference = torch.nn.BatchNorm1d(5, affine=False)
        assert torch.allclose(out[seed], reference(x[seed]), atol=1e-5)
        assert torch.allclose(norm.running_mean[seed, 0], reference.running_mean, atol=1e-6)
        assert torch.allclose(norm.running_var[seed, 0], reference.running_var, atol=1e-5)
    norm.eval()
    reference.eval()
    assert torch.allclose(norm(x)[2], reference(x[2]), atol=1e-5)


def test_seeds_trained_at_once_are_separate_models():
    """Seed s of the batched model computes what a one-seed model holding its weights computes, and its
    gradient is that model's: the seeds do not interact."""
    batched = _model(batch_norm=True, background=True, activation="softplus", seeds=3)
    x = torch.poisson(torch.full((3, 6, 30), 1.5))
    noise = torch.randn(3, 6, 4)
    topic_vae.negative_elbo(batched, x, 2.0, noise=noise)["loss"].mean(1).sum().backward()
    for seed in range(3):
        single = _model(batch_norm=True, background=True, activation="softplus")
        single.load_state_dict({name: value[seed:seed + 1] for name, value in batched.state_dict().items()})
        loss = topic_vae.negative_elbo(single, x[seed:seed + 1], 2.0, noise=noise[seed:seed + 1])["loss"]
        loss.mean().backward()
        for (name, mine), theirs in zip(batched.named_parameters(), single.parameters()):
            assert torch.allclose(mine.grad[seed:seed + 1], theirs.grad, rtol=1e-4, atol=1e-4), name


def test_summary_is_the_mean_and_sample_spread_over_the_seeds():
    results = [{"npmi_doc": 0.1, "perplexity": 10.0}, {"npmi_doc": 0.3, "perplexity": 30.0}]
    summary = topic_vae.summarise(results, "lda_")
    assert summary == pytest.approx({"lda_npmi_doc": 0.2, "lda_npmi_doc_sd": math.sqrt(0.02),
                                     "lda_perplexity": 20.0, "lda_perplexity_sd": math.sqrt(200.0)})
    assert topic_vae.summarise(results[:1])["npmi_doc_sd"] == 0.0


def test_kl_matches_torch_distributions():
    mu, log_sigma = torch.randn(6, 4), torch.randn(6, 4) * 0.3
    expected = torch.distributions.kl_divergence(torch.distributions.Normal(mu, log_sigma.exp()),
                                                 torch.distributions.Normal(0.0, math.sqrt(2.5))).sum(-1)
    assert torch.allclose(topic_vae.kl_divergence(mu, log_sigma, 2.5), expected, atol=1e-5)


def test_laplace_prior_variance_is_the_prodlda_formula():
    cfg = topic_vae.Config(topics=4, alpha=0.5)
    # Srivastava & Sutton eq. 4: (1/alpha)(1 - 2/K) + (1/K^2) sum_k 1/alpha = 2 * 0.5 + 8 / 16
    assert topic_vae.prior_variance(cfg) == pytest.approx(1.5)
    assert topic_vae.prior_variance(dataclasses.replace(cfg, prior="normal")) == 1.0


def test_kl_weight_rises_linearly_then_stays_at_one():
    assert [topic_vae.kl_weight(step, 4) for step in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert topic_vae.kl_weight(0, 0) == 1.0


def test_seed_recipe_is_the_source_model():
    seed = topic_vae.Config(**topic_vae.RECIPES["seed"])
    assert (seed.topics, seed.hidden, seed.lr, seed.batch_size, seed.kl_warmup) == (81, 81, 0.01, 64, 1000)
    assert (seed.steps, seed.epochs, seed.patience) == (0, 200, 10)  # a budget in epochs, stopped by patience
    model = topic_vae.TopicVAE(50, seed.hidden, seed.topics, seed.activation, seed.batch_norm, seed.dropout)
    assert model.B.weight.shape == (1, 81, 50) and model.B.bias is None
    assert not any(isinstance(m, StackedBatchNorm) for m in model.modules())


# ---------------------------------------------------------------- runs

@pytest.fixture
def text_data_dir(tmp_path, monkeypatch):
    """Generated man pages and a 20news-bydate archive (its checksum switched off) under one data dir."""
    monkeypatch.setattr(registry, "SYSTEM_DIRS", ())
    monkeypatch.setattr(registry, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.setitem(registry.DATASETS, "20newsgroups", unchecked_news())
    return write_text_data(tmp_path / "data")


def _metrics(folder) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def test_quick_run_on_man_pages_reports_both_models(text_data_dir, tmp_path):
    folder = run_quick("topic-vae", text_data_dir, tmp_path / "runs")
    metrics = _metrics(folder)
    for key in ("npmi_doc", "npmi_window", "lda_npmi_doc", "lda_npmi_window", "topic_diversity", "perplexity",
                "npmi_window_sd", "lda_topic_diversity_sd"):
        assert np.isfinite(metrics[key]), key
    for key in topic_vae.COMPARED:  # the goal rows compare the means over the seeds
        assert metrics[f"{key}_minus_lda"] == pytest.approx(metrics[key] - metrics[f"lda_{key}"])
    report = (folder / "report.md").read_text()
    assert "Topics of topic-vae" in report and "Topics of LDA" in report and "torch.normal" in report
    assert "Scores of each seed (3 topic-vae models" in report and "npmi_window_minus_lda" in report
    for figure in ("loss", "npmi", "proportions", "documents_2d"):
        assert (folder / "figures" / f"{figure}.png").is_file(), figure


def test_quick_run_on_20newsgroups_uses_the_published_test_split(text_data_dir, tmp_path):
    folder = run_quick("topic-vae", text_data_dir, tmp_path / "runs", "--dataset", "20newsgroups")
    assert _metrics(folder)["held_out_documents"] == 24  # the archive's test posts, not a carved fraction


def test_quick_run_on_a_folder(tmp_path):
    for group, words in (("space", "orbit rocket launch"), ("cars", "engine wheel brake")):
        (tmp_path / "texts" / group).mkdir(parents=True)
        for i in range(15):
            (tmp_path / "texts" / group / f"{i}.txt").write_text(f"{words} {words} number{i % 3}")
    folder = run_quick("topic-vae", tmp_path / "texts", tmp_path / "runs", "--dataset", "folder", "--set", "max_df=1")
    assert _metrics(folder)["held_out_documents"] == 6 and (folder / "figures" / "documents_2d.png").is_file()


def test_synthetic_quick_run_reports_recovery_and_is_reproducible(tmp_path):
    first = _metrics(run_quick("topic-vae", tmp_path, tmp_path / "a", "--dataset", "synthetic"))
    again = _metrics(run_quick("topic-vae", tmp_path, tmp_path / "b", "--corpus", "synthetic"))
    assert 0 < first["recovery"] <= 1 and "npmi_window" not in first
    assert first["lda_recovery"] > 0.6  # at quick size LDA already finds most true topics (0.74 measured)
    timing = ("train_time_s", "lda_time_s", "wall_time_s")
    assert {k: v for k, v in first.items() if k not in timing} == {k: v for k, v in again.items() if k not in timing}


def test_training_recovers_known_topics(tmp_path):
    """On a corpus drawn from LDA, LDA itself finds the true topics (the generator and the matching are
    right), and ten epochs of the tuned topic-vae (at batch 64: more steps) move its topics from chance
    towards them."""
    from sklearn.decomposition import LatentDirichletAllocation

    cfg = topic_vae.Config(dataset="synthetic", synthetic_docs=1200, synthetic_vocabulary=100, synthetic_topics=5,
                           topics=5, epochs=10, batch_size=64, kl_warmup=50)
    run = Run("topic-vae", tmp_path, cfg, torch.device("cpu"), quiet=True, generator=torch.Generator().manual_seed(0))
    data = topic_vae.synthetic_corpus(cfg, run)
    lda = LatentDirichletAllocation(5, learning_method="batch", max_iter=10, random_state=0).fit(data.train)
    assert topics.topic_recovery(lda.components_, data.true_topics).mean > 0.99
    torch.manual_seed(0)
    untrained = topic_vae.TopicVAE(100, cfg.hidden, cfg.topics, cfg.activation, cfg.batch_norm, cfg.dropout)
    model, _ = topic_vae.train(cfg, run, data)
    before = topics.topic_recovery(untrained.topic_word()[0], data.true_topics).mean
    after = np.mean([topics.topic_recovery(seed, data.true_topics).mean for seed in model.topic_word()])
    assert before < 0.35 and after > 0.75 and after - before > 0.4  # measured: 0.30 -> 0.86 (mean of 3 seeds)



@pytest.mark.parametrize(("documents", "steps", "epochs", "expected_epochs", "expected_steps"), [
    (120, 8, 1000, 4, 8),  # 100 training documents: 2 batches of 50 per epoch
    (360, 8, 1000, 2, 12),  # 300: 6 batches; the last epoch is finished (12 steps, less than one epoch over)
    (120, 8, 3, 3, 6),  # `epochs` caps the budget
    (360, 0, 2, 2, 12),  # steps 0: the source's budget in epochs
])
def test_training_budget_is_counted_in_steps(tmp_path, monkeypatch, documents, steps, epochs, expected_epochs,
                                             expected_steps):
    """The tuned budget is optimizer steps whatever the corpus size (epochs = ceil(steps / batches per epoch),
    at most `epochs`), and the cosine reaches 0 at the end of the epochs actually trained."""
    optimizers, make_optimizer = [], topic_vae.make_optimizer

    def recorded_optimizer(*args):
        optimizers.append(make_optimizer(*args))
        return optimizers[-1]

    monkeypatch.setattr(topic_vae, "make_optimizer", recorded_optimizer)
    cfg = topic_vae.Config(dataset="synthetic", synthetic_docs=documents, synthetic_vocabulary=30,
                           synthetic_topics=3, topics=3, hidden=8, seeds=2, batch_size=50, steps=steps,
                           epochs=epochs, kl_warmup=4)
    run = Run("topic-vae", tmp_path, cfg, torch.device("cpu"), quiet=True, generator=torch.Generator().manual_seed(0))
    data = topic_vae.synthetic_corpus(cfg, run)
    assert topic_vae.training_epochs(cfg, data.train.shape[0]) == expected_epochs
    _, history = topic_vae.train(cfg, run, data)
    assert len(history) == expected_epochs and history[-1]["steps"] == expected_steps
    assert optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


@pytest.mark.parametrize("args, code, message", [
    (["--dataset", "folder"], 1, "holds no documents"),
    (["--set", "min_df=1000"], 1, "vocabulary is empty"),
    (["--dataset", "folder", "--data-dir", "MISSING"], 2, "is not a folder"),
])
def test_bad_corpora_are_one_line_and_leave_no_run(text_data_dir, tmp_path, capsys, args, code, message):
    empty = tmp_path / "empty"
    empty.mkdir()
    data_dir = [] if "--data-dir" in args else ["--data-dir", str(empty if "folder" in args else text_data_dir)]
    args = [str(tmp_path / "missing") if arg == "MISSING" else arg for arg in args]
    assert main(["run", "topic-vae", "--quick", "--quiet", "--out", str(tmp_path / "runs"), *data_dir, *args]) == code
    assert message in _one_line(capsys)
    assert not (tmp_path / "runs" / "topic-vae").exists()


def test_benchmark_runs_at_a_small_size(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["bench", "--documents", "300", "--reference", "200", "--words", "400",
                                      "--topics", "4"])
    BENCH.main()
    out = capsys.readouterr().out
    assert "tuned  recipe: one epoch of 3 seeds" in out and "seed   recipe" in out and "course loop" in out
    assert "its budget here: at most 200 epochs" in out  # the seed's budget is epochs, the tuned one steps


@pytest.mark.slow
@pytest.mark.xfail(reason="issue 21, missed: sliding-window NPMI behind LDA's (2 threads: -0.029, with document "
                   "NPMI +0.003 and diversity +0.002; 1 thread: -0.015, +0.002 and -0.04)", strict=False)
def test_topic_vae_is_ahead_of_lda_on_the_man_pages(tmp_path):
    """The raised goal (issue 21): on the held-out man pages, the mean over 3 seeds of topic-vae's NPMI in
    both conventions and its topic diversity are at least LDA's means over the same seeds (about 4 minutes
    on one loaded core)."""
    from dlclassics.data.registry import find_folder

    if find_folder(registry.dataset("manpages-dev"), None) is None:
        pytest.skip("manpages-dev is not installed (apt-get install manpages-dev)")
    assert main(["run", "topic-vae", "--quiet", "--no-site", "--out", str(tmp_path)]) == 0
    (folder,) = (tmp_path / "topic-vae").iterdir()
    metrics = _metrics(folder)
    for key in topic_vae.COMPARED:
        assert metrics[f"{key}_minus_lda"] >= 0, (key, metrics[key], metrics[f"lda_{key}"])
