"""minidiff.metrics: closed forms for the Fréchet distance, k-NN precision/recall on sets with known
answers, the feature classifier (accuracy, determinism, cache), evaluate() end to end, and a smoke
run of benchmarks/quality_vs_steps.py."""

import importlib.util
import json
import math
import os
import sys
import time

import numpy as np
import pytest
import torch
from torch import nn

import minidiff as md
from minidiff import checkpoint as ckpt
from minidiff.metrics import (
    ClassifierConfig,
    FeatureClassifier,
    class_accuracy,
    clear_memory_cache,
    diversity,
    evaluate,
    evaluate_checkpoint,
    feature_extractor,
    format_report,
    frechet_distance,
    frechet_distance_from_stats,
    gaussian_stats,
    measure,
    precision_recall,
    procedural_data,
    sqrtm_psd,
)
from minidiff.metrics import features as features_module

# Small enough to train in a few seconds on one core, still >= 0.97 held-out accuracy on sprites.
SMALL = ClassifierConfig(dataset="sprites", train_images=4000, epochs=3, widths=(16, 32, 64), batch_size=32,
                         lr=3e-3, heldout_images=1000)
TINY = ClassifierConfig(dataset="sprites", train_images=256, epochs=1, widths=(8, 8), batch_size=64,
                        heldout_images=100)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def small_classifier(tmp_path_factory):
    clear_memory_cache()
    cache = tmp_path_factory.mktemp("metrics_cache")
    start = time.perf_counter()
    classifier = feature_extractor("sprites", cache_dir=str(cache), config=SMALL, progress=False)
    classifier.info["fixture_seconds"] = time.perf_counter() - start
    return classifier


def _exact_gaussian_sample(n, mean, std, generator):
    """n points in 1-D whose sample mean and (unbiased) std are exactly `mean` and `std`: [n, 1]."""
    z = torch.randn(n, 1, generator=generator, dtype=torch.float64)
    z = (z - z.mean()) / z.std()
    return mean + std * z


# ---------------------------------------------------------------------------------- Fréchet distance
def test_frechet_identical_sets_is_zero():
    x = torch.randn(300, 16, generator=torch.Generator().manual_seed(0))
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(x.numpy(), x.numpy().copy()) == pytest.approx(0.0, abs=1e-9)


def test_frechet_one_dimensional_closed_form():
    g = torch.Generator().manual_seed(1)
    a = _exact_gaussian_sample(500, mean=0.3, std=1.7, generator=g)
    b = _exact_gaussian_sample(800, mean=-1.2, std=0.4, generator=g)
    expected = (0.3 + 1.2) ** 2 + (1.7 - 0.4) ** 2             # (mu1 - mu2)^2 + (sigma1 - sigma2)^2
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-10)
    assert frechet_distance(b, a) == pytest.approx(expected, rel=1e-10)


def test_frechet_diagonal_covariances_closed_form():
    f64 = dict(dtype=torch.float64)
    mu_a, mu_b = torch.tensor([0.0, 1.0, -2.0, 0.5], **f64), torch.tensor([1.0, 1.0, 0.0, 0.0], **f64)
    var_a, var_b = torch.tensor([1.0, 4.0, 0.25, 9.0], **f64), torch.tensor([2.0, 1.0, 0.25, 0.01], **f64)
    expected = float((mu_a - mu_b).square().sum() + (var_a.sqrt() - var_b.sqrt()).square().sum())
    got = frechet_distance_from_stats(mu_a, torch.diag(var_a), mu_b, torch.diag(var_b))
    assert got == pytest.approx(expected, rel=1e-12)


def test_frechet_general_covariances_match_eigenvalues_of_the_product():
    """tr sqrt(A B) = sum sqrt(eig(A B)) for PSD A, B, though A B is not symmetric."""
    g = torch.Generator().manual_seed(2)
    m_a, m_b = torch.randn(6, 6, generator=g, dtype=torch.float64), torch.randn(6, 6, generator=g, dtype=torch.float64)
    cov_a, cov_b = m_a @ m_a.T + 0.1 * torch.eye(6), m_b @ m_b.T + 0.1 * torch.eye(6)
    mu_a, mu_b = torch.randn(6, generator=g, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    eig = np.linalg.eigvals((cov_a @ cov_b).numpy())
    trace_sqrt = np.sqrt(eig.real).sum()
    expected = float((mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace()) - 2 * trace_sqrt
    assert frechet_distance_from_stats(mu_a, cov_a, mu_b, cov_b) == pytest.approx(expected, rel=1e-9)


def test_sqrtm_psd_squares_back_and_stays_finite_when_singular():
    g = torch.Generator().manual_seed(3)
    m = torch.randn(8, 3, generator=g, dtype=torch.float64)
    a = m @ m.T                                                   # rank 3 of 8: singular
    root = sqrtm_psd(a)
    assert torch.isfinite(root).all()
    torch.testing.assert_close(root @ root, a, atol=1e-10, rtol=0)
    x = torch.randn(40, 64, generator=g)                          # N < D: singular covariance
    mu, cov = gaussian_stats(x)
    assert frechet_distance(x, x) <= 1e-8 * float(cov.trace())


# ---------------------------------------------------------------------------------- precision / recall, diversity
def test_precision_recall_known_sets():
    g = torch.Generator().manual_seed(4)
    real = torch.randn(200, 8, generator=g)
    assert precision_recall(real, real, k=3) == (1.0, 1.0)
    far = torch.randn(150, 8, generator=g) + 100.0
    assert precision_recall(real, far, k=3) == (0.0, 0.0)
    # real = two clusters, fake = only one of them: every fake is realistic, half the data is missed
    left, right = torch.randn(100, 2, generator=g) - 50, torch.randn(100, 2, generator=g) + 50
    fake = torch.randn(100, 2, generator=g) - 50
    precision, recall = precision_recall(torch.cat([left, right]), fake, k=3)
    assert precision >= 0.9                                       # k-NN balls cover most of the same cluster
    assert 0.45 <= recall <= 0.5


def test_diversity_is_the_mean_pairwise_distance():
    points = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0]])  # distances 5, 0, 5
    assert diversity(points) == pytest.approx(10 / 3)
    assert diversity(torch.ones(10, 4)) == 0.0
    x = torch.randn(50, 4, generator=torch.Generator().manual_seed(5))
    assert diversity(3 * x) == pytest.approx(3 * diversity(x))


def test_class_accuracy_accepts_ids_and_one_hot():
    class Fixed:
        def predict(self, images):
            return torch.tensor([0, 1, 2, 2])
    images = torch.zeros(4, 3, 16, 16)
    assert class_accuracy(Fixed(), images, torch.tensor([0, 1, 2, 3])) == 0.75
    assert class_accuracy(Fixed(), images, torch.eye(5)[[0, 1, 1, 3]]) == 0.5


# ---------------------------------------------------------------------------------- the feature classifier
def test_small_classifier_accuracy(small_classifier):
    info = small_classifier.info
    assert info["heldout_accuracy"] >= 0.97
    assert info["heldout_accuracy_heads"]["color"] >= 0.85        # the auxiliary heads learn too
    assert small_classifier.feature_dim == 64
    x = procedural_data("sprites", 7, seed=5)[0]
    assert small_classifier.features(x).shape == (7, 64)
    assert small_classifier.predict(x).dtype == torch.int64


def test_fd_separates_real_from_noise(small_classifier):
    real_a, _, _ = procedural_data("sprites", 400, seed=11)
    real_b, _, _ = procedural_data("sprites", 400, seed=12)
    noise = torch.rand(400, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    blurred = torch.nn.functional.avg_pool2d(real_b, 3, 1, 1)      # a subtler defect
    feats = {name: small_classifier.features(x) for name, x in
             (("a", real_a), ("b", real_b), ("noise", noise), ("blur", blurred))}
    fd_real = frechet_distance(feats["a"], feats["b"])
    fd_blur = frechet_distance(feats["a"], feats["blur"])
    fd_noise = frechet_distance(feats["a"], feats["noise"])
    assert fd_real < 0.1 * fd_noise
    assert fd_real < fd_blur < fd_noise


def test_cache_hit_returns_identical_weights_without_training(tmp_path, monkeypatch):
    clear_memory_cache()
    first = feature_extractor("sprites", cache_dir=str(tmp_path), config=TINY, progress=False)
    files = list((tmp_path / "metrics").iterdir())
    assert len(files) == 1 and files[0].name.startswith("classifier-sprites-")

    def no_training(*args, **kwargs):
        raise AssertionError("the cache should have been used")
    monkeypatch.setattr(features_module, "train_classifier", no_training)
    clear_memory_cache()
    second = feature_extractor("sprites", cache_dir=str(tmp_path), config=TINY, progress=False)
    assert second is not first
    assert list(first.state_dict()) == list(second.state_dict())
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items()):
        assert torch.equal(a, b), name
    assert second.info["heldout_accuracy"] == first.info["heldout_accuracy"]
    # MINIDIFF_CACHE is the default location
    monkeypatch.setenv("MINIDIFF_CACHE", str(tmp_path))
    clear_memory_cache()
    assert feature_extractor("sprites", config=TINY, progress=False).info["cache_path"] == str(files[0])
    # another config is another file: training would be needed
    with pytest.raises(AssertionError, match="cache should have been used"):
        feature_extractor("sprites", cache_dir=str(tmp_path), config=ClassifierConfig(**{**TINY.to_dict(), "seed": 1}),
                          progress=False)


def test_training_is_deterministic_and_a_corrupt_cache_is_retrained(tmp_path, capsys):
    clear_memory_cache()
    a = feature_extractor("sprites", cache_dir=str(tmp_path / "a"), config=TINY, progress=False)
    path = a.info["cache_path"]
    with open(path, "wb") as f:
        f.write(b"not a torch file")
    clear_memory_cache()
    with pytest.warns(UserWarning, match="unreadable"):
        b = feature_extractor("sprites", cache_dir=str(tmp_path / "a"), config=TINY, progress=True)
    assert "held-out accuracy" in capsys.readouterr().out
    assert list(a.state_dict()) == list(b.state_dict())
    for (name, wa), (_, wb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(wa, wb), name
    assert torch.load(path, weights_only=True)["format"] == features_module.CACHE_FORMAT   # rewritten, safely
    assert not [p for p in os.listdir(os.path.dirname(path)) if p.endswith(".tmp")]


def test_classifier_rejects_wrong_images():
    clf = FeatureClassifier(3, (8, 8), {"class": 5})
    with pytest.raises(ValueError, match="expected images"):
        clf.features(torch.zeros(2, 1, 16, 16))
    with pytest.raises(ValueError, match="dataset must be one of"):
        ClassifierConfig(dataset="faces")


# ---------------------------------------------------------------------------------- evaluate
class DataOracle(nn.Module):
    """A 'perfect model' for DDIM: predicts the eps that makes x0_pred exactly the given images."""

    in_channels, n_cfeat, height = 3, 5, 16

    def __init__(self, images, schedule):
        super().__init__()
        self.images, self.schedule = images, schedule
        self.unused = nn.Parameter(torch.zeros(()))              # gives the sampler a device and dtype

    def forward(self, x, t, context=None):
        i = (t[0] * self.schedule.T).round().long() - 1           # t = (i + 1) / T
        alpha_bar = float(self.schedule.alphas_cumprod[i])
        x0 = self.images.repeat(len(x) // len(self.images), 1, 1, 1)   # guidance doubles the batch
        return (x - math.sqrt(alpha_bar) * x0) / math.sqrt(1 - alpha_bar)


def test_evaluate_a_perfect_model_scores_like_real_data(small_classifier):
    schedule = md.NoiseSchedule.linear(T=100)
    n = 60
    real, class_ids, _ = procedural_data("sprites", n, seed=7)
    assert torch.equal(class_ids, torch.arange(n) % 5)            # evaluate asks for class k % 5 too
    results = evaluate(DataOracle(real, schedule), schedule, n=n, sampler="ddim", steps=10, guidance_scale=2.0,
                       classifier=small_classifier, batch_size=n)
    assert results["nfe"] == 10
    assert results["class_accuracy"] >= 0.95
    assert [results[f"structure_{name}"] for name in ("palette", "uniform_border", "symmetric", "all")] == [1.0] * 4
    assert results["fd"] < 2 * results["fd_real"]
    assert results["precision"] > 0.8 and results["recall"] > 0.8
    json.dumps(results)                                           # plain numbers only
    assert "Fréchet distance" in format_report(results)


def test_evaluate_untrained_model_and_checkpoint(small_classifier, tmp_path):
    torch.manual_seed(0)
    model = ckpt.build_model("ContextUnet", n_feat=8, n_cfeat=5, height=16)
    schedule = md.NoiseSchedule.linear(T=20)
    path = str(tmp_path / "tiny.pt")
    ckpt.save_checkpoint(path, model, schedule=schedule)
    kwargs = dict(n=16, sampler="ddpm", classifier=small_classifier, batch_size=8, progress=False)
    a = evaluate_checkpoint(path, **kwargs)
    b = evaluate_checkpoint(path, **kwargs)
    assert a["fd"] == b["fd"] and a["nfe"] == 20 and a["steps"] == 20   # fixed seeds: same numbers
    assert a["checkpoint"] == path
    assert a["fd"] > 3 * a["fd_real"]                             # an untrained model is far from the data
    assert a["structure_all"] == 0.0
    heun = evaluate(model, schedule, n=16, sampler="heun", steps=3, spacing="karras", classifier=small_classifier)
    assert heun["nfe"] == 5                                       # 2 * steps - 1
    with pytest.raises(ValueError, match="n must be at least"):
        evaluate(model, schedule, n=4, classifier=small_classifier)


def test_eval_command(small_classifier, tmp_path, monkeypatch, capsys):
    """`python -m minidiff eval --checkpoint X ...` goes through minidiff.metrics.main."""
    from minidiff import cli
    from minidiff.metrics import evaluation as evaluation_module
    monkeypatch.setattr(evaluation_module, "feature_extractor", lambda *args, **kwargs: small_classifier)
    torch.manual_seed(0)
    path = str(tmp_path / "tiny.pt")
    ckpt.save_checkpoint(path, ckpt.build_model("ContextUnet", n_feat=8, n_cfeat=5, height=16),
                         schedule=md.NoiseSchedule.linear(T=20))
    code = cli.main(["eval", "--checkpoint", path, "--sampler", "dpmpp_2m", "--steps", "4", "--guidance", "2",
                     "--n", "10", "--device", "cpu", "--json", str(tmp_path / "eval.json")])
    assert code == 0
    printed = capsys.readouterr().out
    assert "dpmpp_2m 4 steps" in printed and "Fréchet distance" in printed and "sprite structure" in printed
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["nfe"] == 4 and saved["guidance_scale"] == 2.0 and saved["n"] == 10


def test_evaluate_with_a_reference_data_set(small_classifier):
    from minidiff.data import ProceduralSprites
    torch.manual_seed(0)
    model = ckpt.build_model("ContextUnet", n_feat=8, n_cfeat=5, height=16)
    results = evaluate(model, md.NoiseSchedule.linear(T=20), n=10, steps=2, classifier=small_classifier,
                       reference=ProceduralSprites(50, seed=3))
    assert results["fd_real"] is None and math.isfinite(results["fd"])
    with pytest.raises(ValueError, match="conditional model"):
        evaluate(_Unconditional(), md.NoiseSchedule.linear(T=20), n=10,
                 guidance_scale=2.0, classifier=small_classifier, dataset="sprites")


class _Unconditional(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x, t, context=None):
        return self.conv(x)


def test_knn_statistics_in_chunks_match_the_full_matrix():
    from minidiff.metrics import statistics
    x = torch.randn(1100, 3, generator=torch.Generator().manual_seed(6), dtype=torch.float64)  # > one 512 chunk
    full = torch.cdist(x, x)
    torch.testing.assert_close(statistics.knn_radii(x, 3), full.kthvalue(4, dim=1).values)
    assert diversity(x) == pytest.approx(float(full.sum() / (1100 * 1099)), rel=1e-12)


def test_measure_real_sprites_pass_structure_checks(small_classifier):
    a, ids, _ = procedural_data("sprites", 100, seed=21)
    b, _, _ = procedural_data("sprites", 100, seed=22)
    results = measure(a, ids, b, small_classifier, "sprites")
    assert results["structure_all"] == 1.0
    assert results["diversity"] == pytest.approx(results["diversity_real"], rel=0.15)


# ---------------------------------------------------------------------------------- the benchmark script
def _load_benchmark():
    spec = importlib.util.spec_from_file_location("quality_vs_steps", os.path.join(ROOT, "benchmarks",
                                                                                 "quality_vs_steps.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["quality_vs_steps"] = module                      # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_benchmark_targets_and_run_parsing():
    q = _load_benchmark()
    runs = q.parse_runs("ddpm, ddim:25, heun:10:karras", spacing="trailing")
    assert [(r.name, r.spacing) for r in runs] == [("ddpm", "trailing"), ("ddim-25", "trailing"), ("heun-10", "karras")]
    with pytest.raises(ValueError, match="bad run"):
        q.parse_runs("plms:10")

    def row(name, sampler, fd, acc, spacing="trailing"):
        return {"name": name, "sampler": sampler, "fd": fd, "class_accuracy": acc, "guidance_scale": 2.0,
                "spacing": spacing}
    results = [row("ddpm", "ddpm", 1.0, 0.97, "leading"), row("ddim-25", "ddim", 5.0, 0.5, "leading"),
               row("ddim-25", "ddim", 1.09, 0.96), row("dpmpp_2m-20", "dpmpp_2m", 1.2, 0.9),
               row("dpmpp_2m-10", "dpmpp_2m", 1.24, 0.9)]
    checks = q.check_targets(results)                             # the targets read the trailing ddim-25 row
    assert [c["ok"] for c in checks] == [True, False, True, True, True]
    assert checks[0]["value"] == 1.09 and "trailing" in checks[0]["target"]


def test_benchmark_smoke(small_classifier, tmp_path, monkeypatch):
    """The whole script on an untrained tiny model: n=8, two samplers, the three files written."""
    q = _load_benchmark()
    torch.manual_seed(0)
    path = str(tmp_path / "tiny.pt")
    ckpt.save_checkpoint(path, ckpt.build_model("ContextUnet", n_feat=8, n_cfeat=5, height=16),
                         schedule=md.NoiseSchedule.linear(T=20))
    monkeypatch.setattr(q, "feature_extractor", lambda *args, **kwargs: small_classifier)
    code = q.main(["--checkpoint", path, "--n", "8", "--runs", "ddim:3,dpmpp_2m:3", "--device", "cpu",
                   "--out", str(tmp_path / "out")])
    assert code == 0                                              # no target was run, so none failed
    report = json.loads((tmp_path / "out" / "quality_vs_steps.json").read_text())
    assert [r["name"] for r in report["results"]] == ["ddim-3", "dpmpp_2m-3"]
    assert all(c["ok"] is None for c in report["targets"])
    assert "| ddim-3 |" in (tmp_path / "out" / "quality_vs_steps.md").read_text()
    assert (tmp_path / "out" / "quality_vs_steps.png").stat().st_size > 1000


def test_benchmark_plot(tmp_path):
    q = _load_benchmark()
    rows = [{"name": f"{s}-{nfe}", "sampler": s, "spacing": "trailing", "nfe": nfe, "fd": fd, "class_accuracy": acc,
             "fd_real": 0.5} for s, nfe, fd, acc in
            (("ddim", 10, 3.0, 0.9), ("ddim", 25, 2.0, 0.95), ("dpmpp_2m", 5, 2.5, 0.93), ("ddpm", 500, 1.9, 0.97))]
    path = q.plot(rows, str(tmp_path / "plot.png"))
    from PIL import Image
    image = Image.open(path).convert("RGB")
    assert image.width > image.height > 300                        # two panels side by side
    pixels = np.asarray(image).astype(int)
    for colour in q.PALETTE[:3]:                                   # one line per sampler
        assert (np.abs(pixels - colour).sum(-1) < 10).sum() > 20


# ---------------------------------------------------------------------------------- the shipped configs (slow)
@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["sprites", "digits"])
def test_default_classifier_accuracy_and_time(dataset, tmp_path):
    clear_memory_cache()
    classifier = feature_extractor(dataset, cache_dir=str(tmp_path), progress=False)
    assert classifier.info["heldout_accuracy"] >= 0.99
    assert classifier.info["train_seconds"] < 120


# ---------------------------------------------------------------------------------- Fréchet distance: a mean shift
def test_frechet_grows_monotonically_with_a_mean_shift_and_equals_its_square():
    """Shifting a set by a vector of length s leaves its covariance exactly as it was, so FD = s^2."""
    x = torch.randn(2000, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    direction = torch.ones(8, dtype=torch.float64) / math.sqrt(8)             # unit length
    shifts = (0.0, 0.1, 0.2, 0.5, 1.0)
    distances = [frechet_distance(x, x + s * direction) for s in shifts]
    assert distances[0] < 1e-8
    assert all(a < b for a, b in zip(distances, distances[1:]))
    for s, d in zip(shifts, distances):
        assert d == pytest.approx(s**2, abs=1e-9)


def test_frechet_mismatched_feature_sizes_name_both_sizes():
    with pytest.raises(ValueError, match=r"feature dimensions differ: 4 vs 3"):
        frechet_distance(torch.randn(5, 4), torch.randn(6, 3))
    with pytest.raises(ValueError, match=r"feature dimensions differ: 2 vs 5"):
        frechet_distance(np.zeros((3, 2)) + np.arange(3)[:, None], np.random.default_rng(0).normal(size=(4, 5)))
