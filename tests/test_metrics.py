"""Metric maths: closed forms, invariances, parity with reference implementations."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from genlab.data.toys import make_toy, toy_modes
from genlab.metrics.fid import GaussianStats, frechet_distance, gaussian_stats
from genlab.metrics.inception_score import inception_score, inception_score_from_probs
from genlab.metrics.kid import kid
from genlab.metrics.likelihood import bits_per_dim, dequantization_offset, nats_from_bits_per_dim
from genlab.metrics.mode_coverage import class_coverage, toy_mode_coverage
from genlab.metrics.prdc import knn_radii, prdc


def _random_cov(rs, d):
    a = rs.randn(d, d)
    return a @ a.T / d + 0.1 * np.eye(d)


def test_fid_closed_form_for_diagonal_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    v1, v2 = np.array([1.0, 4.0, 0.25]), np.array([4.0, 1.0, 0.25])
    a, b = GaussianStats(10, mu1, np.diag(v1)), GaussianStats(10, mu2, np.diag(v2))
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-12)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-10)


def test_fid_agrees_with_scipy_sqrtm():
    rs = np.random.RandomState(0)
    for d in (5, 64):
        s1, s2 = _random_cov(rs, d), _random_cov(rs, d)
        m1, m2 = rs.randn(d), rs.randn(d)
        covmean = scipy.linalg.sqrtm(s1 @ s2).real
        ref = ((m1 - m2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
        ours = frechet_distance(GaussianStats(1, m1, s1), GaussianStats(1, m2, s2))
        assert ours == pytest.approx(ref, rel=1e-6)


def test_fid_never_nan_when_n_below_d():
    rs = np.random.RandomState(1)
    a, b = gaussian_stats(rs.randn(20, 64)), gaussian_stats(rs.randn(30, 64) + 0.5)
    value = frechet_distance(a, b)
    assert math.isfinite(value) and value > 0


def test_gaussian_stats_streaming_matches_numpy():
    rs = np.random.RandomState(2)
    x = rs.randn(1000, 7) * 3 + 100  # a large offset: naive sum-of-squares would lose precision
    s = gaussian_stats(x, chunk=128)
    assert np.allclose(s.mean, x.mean(0), rtol=0, atol=1e-10)
    assert np.allclose(s.cov, np.cov(x, rowvar=False), rtol=1e-10, atol=1e-10)
    s2 = gaussian_stats(x, chunk=1000)
    assert np.allclose(s.cov, s2.cov, atol=1e-10)


def test_fid_bad_inputs():
    with pytest.raises(ValueError, match=r"\(N, d\)"):
        gaussian_stats(np.zeros((3, 4, 5)))
    with pytest.raises(ValueError, match="NaN"):
        gaussian_stats(np.array([[0.0, np.nan], [1.0, 2.0]]))
    with pytest.raises(ValueError, match="floating point"):
        gaussian_stats(np.zeros((4, 3), np.uint8))
    with pytest.raises(ValueError, match="dimensions differ"):
        frechet_distance(gaussian_stats(np.random.randn(5, 3)), gaussian_stats(np.random.randn(5, 4)))


def test_kid_near_zero_for_iid_and_positive_for_shift():
    rs = np.random.RandomState(3)
    x, y = rs.randn(1200, 16), rs.randn(1200, 16)
    same = kid(x, y, subsets=20, subset_size=500)
    assert abs(same["kid"]) < 3 * same["kid_std"] + 1e-3
    shifted = kid(x, y + 0.5, subsets=20, subset_size=500)
    assert shifted["kid"] > 10 * abs(same["kid"]) and shifted["kid"] > 0
    assert kid(x, y, subsets=5, seed=7) == kid(x, y, subsets=5, seed=7)


def test_inception_score_bounds():
    n, c = 1000, 10
    assert inception_score(np.zeros((n, c)))["is"] == pytest.approx(1.0)
    onehot = np.eye(c)[np.arange(n) % c]
    assert inception_score_from_probs(onehot, splits=1)["is"] == pytest.approx(c, rel=1e-9)
    assert 9 < inception_score_from_probs(onehot)["is"] < c  # random splits are only nearly balanced
    # seeded shuffle: same seed, same answer; float64 throughout
    logits = np.random.RandomState(0).randn(500, c) * 3
    assert inception_score(logits, seed=1) == inception_score(logits, seed=1)
    with pytest.raises(ValueError, match="NaN"):
        inception_score(np.full((20, 3), np.nan))


def test_prdc_identical_sets_are_perfect():
    x = np.random.RandomState(4).randn(400, 8)
    out = prdc(x, x.copy(), k=5)
    assert out == {"precision": 1.0, "recall": 1.0, "density": 1.0, "coverage": 1.0}
    assert prdc(x, x.copy(), k=5, inclusive=True)["density"] > 1.0  # the k-th neighbour sits on the boundary


def test_coverage_of_iid_sets_is_about_1_minus_2_to_the_minus_k():
    rs = np.random.RandomState(5)
    for k in (2, 3):
        out = prdc(rs.randn(3000, 4), rs.randn(3000, 4), k=k, block=700)
        assert out["coverage"] == pytest.approx(1 - 2.0**-k, abs=0.03)
        assert out["density"] == pytest.approx(1.0, abs=0.1)


def test_prdc_matches_the_prdc_package_exactly():
    prdc_pkg = pytest.importorskip("prdc")
    rs = np.random.RandomState(6)
    real = rs.randn(700, 32).astype(np.float32)
    fake = (rs.randn(650, 32) * 1.2 + 0.2).astype(np.float32)
    for k in (3, 5):
        ref = prdc_pkg.compute_prdc(real, fake, nearest_k=k)
        ours = prdc(real, fake, k=k, block=256)
        for key in ref:
            assert ours[key] == float(ref[key]), (key, k)


def test_prdc_is_block_size_independent():
    rs = np.random.RandomState(7)
    real, fake = rs.randn(500, 6), rs.randn(480, 6) + 0.3
    assert prdc(real, fake, block=64) == prdc(real, fake, block=4096)


def test_knn_radii_match_brute_force():
    x = torch.from_numpy(np.random.RandomState(8).randn(300, 5))
    d = torch.cdist(x, x)
    ref = d.sort(1).values[:, 3]
    assert torch.allclose(knn_radii(x, 3, block=50), ref, atol=1e-10)


def test_toy_mode_coverage():
    means, std = toy_modes("grid25")
    good = toy_mode_coverage(make_toy("grid25", 2500, seed=9), means, std)
    assert good["modes"] == 25 and good["high_quality"] > 0.98 and good["reverse_kl"] < 0.05
    collapsed = torch.tensor([[2.0, 2.0]]).repeat(2500, 1)
    bad = toy_mode_coverage(collapsed, means, std)
    assert bad["modes"] == 1 and bad["reverse_kl"] == pytest.approx(math.log(25))
    far = toy_mode_coverage(torch.full((100, 2), 1.0), means, std)  # between modes: nothing high quality
    assert far["modes"] == 0 and far["high_quality"] == 0


def test_class_coverage():
    ref = np.arange(1000) % 10
    assert class_coverage(ref, ref, 10) == {"classes_covered": 10, "num_classes": 10, "class_reverse_kl": 0.0}
    out = class_coverage(np.zeros(100, int), ref, 10)
    assert out["classes_covered"] == 1 and out["class_reverse_kl"] == pytest.approx(math.log(10))


def test_bits_per_dim_round_trip():
    d = 784
    nats = torch.tensor([-1500.0, -2000.0])
    bpd = bits_per_dim(nats, d)
    assert torch.allclose(bpd, 1500 / (784 * math.log(2)) * torch.tensor([1.0, 4 / 3], dtype=torch.float64))
    assert torch.allclose(nats_from_bits_per_dim(bpd, d), nats.double())
    assert dequantization_offset(d) == pytest.approx(d * math.log(2 / 256))


def test_prdc_for_several_k_equals_separate_calls():
    from genlab.metrics.prdc import prdc_ks

    rs = np.random.RandomState(10)
    real, fake = rs.randn(600, 12).astype(np.float32), (rs.randn(550, 12) * 1.3).astype(np.float32)
    both = prdc_ks(real, fake, ks=(3, 5), block=200)
    assert both[3] == prdc(real, fake, k=3) and both[5] == prdc(real, fake, k=5)
