"""VQ-VAE: straight-through gradients, EMA codebook maths, dead-code restarts, index round trips, CLI end to end."""

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import FAST_TRAIN, plain_step, run_cli, spec_for

import genlab
from genlab.models import vqvae

TINY = ["model.channels=4", "model.code_dim=4", "model.codebook_size=16", "model.mlp_hidden=16"]


def _model(data_shape=(1, 8, 8), **kw):
    kw = {"channels": 4, "code_dim": 3, "codebook_size": 8, "mlp_hidden": 16, **kw}
    torch.manual_seed(0)
    return vqvae.build(vqvae.Config(**kw), spec_for(data_shape), {})


def test_model_exposes_its_data_spec():
    model = _model()
    assert model.data_shape == [1, 8, 8] and model.spec == spec_for([1, 8, 8])
    assert vqvae.needs(model.cfg) == ("x",)


@pytest.mark.parametrize("kw", [{}, {"codebook": "loss"}, {"data_shape": [2]}], ids=["ema", "loss", "points"])
def test_smoke_one_step_moves_parameters(kw):
    model = _model(**kw)
    opts = vqvae.make_optimizers(model, model.cfg)
    x = torch.rand(6, *model.data_shape) * 2 - 1
    before = [p.detach().clone() for p in model.parameters()]
    logs = plain_step(vqvae, model, {"x": x}, opts)
    assert set(logs) == {"loss", "rec", "commit", "perplexity", "usage"}
    assert all(math.isfinite(v) for v in logs.values()) and 0 < logs["usage"] <= 1
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters())), "a parameter did not move"
    with pytest.raises(ValueError, match="no prior over codes"):
        vqvae.sample(model, 2)


def test_straight_through_passes_the_reconstruction_gradient_to_the_encoder():
    model = _model()
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    x_rec, *_ = model(x)
    F.mse_loss(x_rec, x).backward()
    for name, p in model.encoder.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_ema_update_with_decay_0_sets_codes_to_the_mean_of_their_vectors():
    model = _model(data_shape=[2], code_dim=2, codebook_size=2, decay=0.0, eps=0.0)
    z = torch.tensor([[1.0, 1.0], [3.0, 1.0], [8.0, 10.0], [6.0, 12.0]])
    counts = vqvae.update_codebook(model, z, torch.tensor([0, 0, 1, 1]))
    assert counts.tolist() == [2, 2]
    assert torch.equal(model.codebook, torch.tensor([[2.0, 1.0], [7.0, 11.0]]))
    # with the default Laplace smoothing the codes are the means up to O(eps)
    model = _model(data_shape=[2], code_dim=2, codebook_size=2, decay=0.0)
    vqvae.update_codebook(model, z, torch.tensor([0, 0, 1, 1]))
    assert torch.allclose(model.codebook, torch.tensor([[2.0, 1.0], [7.0, 11.0]]), rtol=1e-4)


def test_ema_update_with_decay_half_matches_a_hand_computation():
    model = _model(data_shape=[2], code_dim=2, codebook_size=2, decay=0.5, eps=0.0)
    model.codebook.copy_(torch.tensor([[0.0, 0.0], [10.0, 10.0]]))
    model.embed_sum.copy_(model.codebook)  # N_i = 1, m_i = e_i
    z = torch.tensor([[1.0, 1.0], [3.0, 1.0], [8.0, 10.0]])
    vqvae.update_codebook(model, z, torch.tensor([0, 0, 1]))
    # N = 0.5 * 1 + 0.5 * [2, 1] = [1.5, 1];  m0 = 0.5 * (0, 0) + 0.5 * (4, 2) = (2, 1);  m1 = (5, 5) + (4, 5)
    assert torch.allclose(model.cluster_size, torch.tensor([1.5, 1.0]))
    assert torch.allclose(model.codebook, torch.tensor([[2 / 1.5, 1 / 1.5], [9.0, 10.0]]))
    # Laplace smoothing: N~_i = (N_i + eps) / (n + K eps) * n, n = sum N_i
    model = _model(data_shape=[2], code_dim=2, codebook_size=2, decay=0.5, eps=0.1)
    model.codebook.copy_(torch.tensor([[0.0, 0.0], [10.0, 10.0]]))
    model.embed_sum.copy_(model.codebook)
    vqvae.update_codebook(model, z, torch.tensor([0, 0, 1]))
    smoothed = torch.tensor([1.6, 1.1]) / 2.7 * 2.5
    assert torch.allclose(model.codebook, torch.tensor([[2.0, 1.0], [9.0, 10.0]]) / smoothed[:, None])


def test_dead_code_is_restarted_to_one_of_the_batch_encoder_outputs():
    model = _model(data_shape=[2], code_dim=2, codebook_size=4, restart_threshold=1.0)
    model.codebook.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    model.cluster_size.copy_(torch.tensor([5.0, 5.0, 0.5, 5.0]))
    candidates, keys = torch.tensor([[7.0, 7.0], [8.0, 8.0], [9.0, 9.0]]), torch.tensor([0.9, 0.1, 0.5])
    dead = vqvae.restart_dead_codes(model, candidates, keys)
    assert dead.tolist() == [2]
    assert model.codebook[2].tolist() == [8.0, 8.0]  # the candidate with the smallest key
    assert model.codebook[[0, 1, 3]].tolist() == [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]]
    assert model.cluster_size[2] == 1.0 and model.embed_sum[2].tolist() == [8.0, 8.0]


def test_train_step_restarts_an_unused_code_from_the_batch():
    model = _model(data_shape=[2], codebook_size=4, code_dim=2)
    model.codebook[3] = model.embed_sum[3] = 1e3  # far from every encoder output: never chosen
    x = torch.randn(6, 2)
    z_e = model.encoder(x).detach()
    plain_step(vqvae, model, {"x": x}, vqvae.make_optimizers(model, model.cfg))
    assert torch.isclose(model.codebook[3], z_e, atol=1e-6).all(1).any(), "code 3 is not one of the batch's z_e"
    model = _model(data_shape=[2], codebook_size=4, code_dim=2, restart_threshold=0.0)  # restarts disabled
    model.codebook[3] = model.embed_sum[3] = 1e3
    plain_step(vqvae, model, {"x": x}, vqvae.make_optimizers(model, model.cfg))
    assert torch.allclose(model.codebook[3], torch.tensor(1e3), rtol=1e-3)  # an unused code's average stays put


def test_codebook_loss_moves_codes_toward_encoder_outputs():
    model = _model(codebook="loss", restart_threshold=0.0)
    x = torch.rand(8, 1, 8, 8) * 2 - 1
    _, z_e, _, idx = model(x)
    z_e = z_e.detach()

    def distance():
        return (z_e - model.embed(idx)).pow(2).mean().item()

    before = distance()
    plain_step(vqvae, model, {"x": x}, vqvae.make_optimizers(model, model.cfg))
    assert distance() < before


def test_perplexity_is_k_for_uniform_usage_and_1_for_one_code():
    assert vqvae.perplexity(torch.full((16,), 3.0)) == pytest.approx(16)
    assert vqvae.perplexity(torch.tensor([0.0, 7.0, 0.0])) == pytest.approx(1)
    model = _model(data_shape=[2], code_dim=2, codebook_size=4)
    stats = vqvae.codebook_stats(model, torch.zeros(10, 2), chunk=3)  # every point has the same code
    assert stats == {"perplexity": pytest.approx(1), "usage": 0.25}


def test_indices_round_trip():
    model = _model().eval()
    x = torch.rand(5, 1, 8, 8) * 2 - 1
    idx = vqvae.encode_to_indices(model, x)
    assert idx.shape == (5, 2, 2) and idx.dtype == torch.long
    images = vqvae.decode_indices(model, idx)
    assert images.shape == (5, 1, 8, 8) and images.abs().max() <= 1
    assert torch.equal(images, vqvae.decode(model, vqvae.encode(model, x)))
    assert torch.equal(vqvae.encode(model, x)[:, :, 1, 0], model.codebook[idx[:, 1, 0]])
    rec = vqvae.report_images(model, {"x": x}, torch.Generator().manual_seed(0))["reconstructions"]
    assert rec.shape == (2, 5, 1, 8, 8) and torch.equal(rec[0], x) and torch.equal(rec[1], images)
    points = _model(data_shape=[2]).eval()
    assert vqvae.encode_to_indices(points, torch.randn(7, 2)).shape == (7,)
    assert vqvae.report_images(points, {"x": torch.randn(7, 2)}, torch.Generator()) == {}


def test_two_micro_batches_give_the_same_step_as_one_batch():
    """Codebook statistics and restarts use the whole step's batch, whatever the gradient accumulation."""
    x = torch.rand(8, 1, 8, 8) * 2 - 1
    models = [_model(), _model()]
    logs = [plain_step(vqvae, m, {"x": x}, vqvae.make_optimizers(m, m.cfg), micro_batches=k)
            for m, k in zip(models, (1, 2))]
    assert logs[0]["perplexity"] == pytest.approx(logs[1]["perplexity"]) and logs[0]["usage"] == logs[1]["usage"]
    assert logs[0]["loss"] == pytest.approx(logs[1]["loss"], rel=1e-5)
    for (name, a), b in zip(models[0].state_dict().items(), models[1].state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_cli_run_trains_loads_and_reports(tmp_path):
    out = tmp_path / "vq"
    assert run_cli("train", "vqvae", "--data", "digits", *TINY, *FAST_TRAIN, "train.steps=20", "--out", out) == 0
    assert (out / "report" / "reconstructions.png").exists() and not list(out.glob("samples/*.png"))
    run = genlab.load(out)
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    idx = run.family.encode_to_indices(run.model, x)
    assert idx.shape == (3, 2, 2) and int(idx.max()) < 16
    assert run.family.decode_indices(run.model, idx).shape == (3, 1, 8, 8)
    (out / "report.html").unlink()
    assert run_cli("report", out) == 0
    assert "Reconstructions" in (out / "report.html").read_text()
