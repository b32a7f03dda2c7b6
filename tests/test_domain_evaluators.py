"""The domain evaluators of the derived datasets: fmnist-color-net (class + colour heads), scenes-cell-net (the
object-level check of scenes), their records, and the fmnist-color protocol."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from genlab.metrics.evaluators import extract, load_evaluator, read_record, sha256_file, weights_paths
from genlab.metrics.protocols import (
    EvalWarning,
    compute_metrics,
    evaluate,
    get_protocol,
    protocol_for_dataset,
)
from genlab.metrics.scenes import EMPTY, cell_crops, cell_targets, object_accuracy, predict_cells

# The subsets below give the accuracy of ~1,000 test images (or cells); its binomial standard error at
# p ~ 0.9 is ~0.01, so 0.03 is three standard errors.
TOL = 0.03


def _data(name, split, **kw):
    from genlab.data import load_dataset

    return load_dataset(name, split, **kw)  # scripts/setup.sh installs Fashion-MNIST: a failure here is real


@pytest.mark.parametrize("name", ["fmnist-color-net", "scenes-cell-net"])
def test_record_sha256_matches_weights(name):
    tensors, _ = weights_paths(name)
    meta = read_record(name)
    assert sha256_file(tensors) == meta["sha256"]
    assert meta["arch"]["num_colors"] == 8 and "command" in meta
    assert 0.0 < meta["test_accuracy"] <= 1.0 and 0.0 < meta["test_color_accuracy"] <= 1.0


def test_fmnist_color_net_reproduces_recorded_accuracy():
    test = _data("fmnist-color", "test")
    ev = load_evaluator("fmnist-color-net")
    idx = torch.arange(0, len(test), 10)  # 1,000 images, every 10th
    out = extract(ev, test.x[idx])
    assert set(out) == {"features", "logits", "color_logits"}
    assert out["features"].shape == (1000, 256) and out["color_logits"].shape == (1000, 8)
    meta = ev.meta
    acc = (out["logits"].argmax(1) == test.y[idx]).double().mean().item()
    color_acc = (out["color_logits"].argmax(1) == test.extra["color"][idx]).double().mean().item()
    assert abs(acc - meta["test_accuracy"]) < TOL, (acc, meta["test_accuracy"])
    assert abs(color_acc - meta["test_color_accuracy"]) < TOL, (color_acc, meta["test_color_accuracy"])


def test_fmnist_color_protocol_end_to_end_small_n():
    assert protocol_for_dataset("fmnist-color") == "fmnist-color"
    assert get_protocol("fmnist-color").extractor == "fmnist-color-net"
    test, train = _data("fmnist-color", "test"), _data("fmnist-color", "train")
    n = 300
    cond = {"y": test.y[:n], "color": test.extra["color"][:n]}
    with pytest.warns(EvalWarning, match="only 300 images"):
        res = evaluate(
            test.x[:n],
            train.x[:n],
            protocol="fmnist-color",
            metrics=("fid", "pr", "acc", "color_acc"),
            labels=cond["y"],
            conditions=cond,
        )
    assert res["fid"] > 0 and 0 <= res["precision"] <= 1
    assert res["cond_acc"] > 0.8 and res["color_acc"] > 0.95
    assert res["protocol"]["extractor"] == "fmnist-color-net" and res["protocol"]["n_fake"] == n
    # requested colours that the images do not have: the colour accuracy drops to chance level
    wrong = {"color": (cond["color"] + 1) % 8}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EvalWarning)
        res = evaluate(
            test.x[:n], train.x[:n], protocol="fmnist-color", metrics=("color_acc",), conditions=wrong
        )
    assert res["color_acc"] < 0.1


def test_color_acc_metric_reads_requested_colours():
    p = get_protocol("fmnist-color")
    color_logits = np.eye(8)[[0, 1, 2, 3, 4, 5, 6, 7, 0, 0]]  # predicted colours
    fake = {"features": np.zeros((10, 2)), "logits": np.zeros((10, 10)), "color_logits": color_logits}
    requested = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 1, 1])
    assert compute_metrics(fake, fake, p, ("color_acc",), conditions={"color": requested}) == {
        "color_acc": 0.8
    }
    assert compute_metrics(fake, fake, p, ("color_acc",)) == {}  # no requested colours: skipped
    no_head = {k: v for k, v in fake.items() if k != "color_logits"}  # an evaluator without a colour head
    assert compute_metrics(no_head, fake, p, ("color_acc",), conditions={"color": requested}) == {}
    with pytest.raises(ValueError, match="requested colours"):
        compute_metrics(fake, fake, p, ("color_acc",), conditions={"color": requested[:5]})


def test_cell_crops_and_targets():
    x = torch.zeros(2, 3, 64, 64, dtype=torch.uint8)
    x[1, :, 32:, :32] = 7  # scene 1, bottom-left cell (index 2)
    cells = cell_crops(x)
    assert cells.shape == (8, 3, 32, 32)
    assert cells[4 + 2].eq(7).all() and cells[:6].sum() == 0 and cells[7].sum() == 0
    assert cell_crops(torch.full((1, 3, 32, 32), 9, dtype=torch.uint8)).shape == (4, 3, 32, 32)  # resized up
    cls, col = cell_targets(
        torch.tensor([[3, 5, -1]]), torch.tensor([[1, 2, -1]]), torch.tensor([[0, 3, -1]])
    )
    assert cls.tolist() == [[3, EMPTY, EMPTY, 5]] and col.tolist() == [[1, -1, -1, 2]]


def test_object_accuracy_pure():
    layout = (torch.tensor([[3, 5, -1]]), torch.tensor([[1, 2, -1]]), torch.tensor([[0, 3, -1]]))
    perfect = object_accuracy([[3, EMPTY, EMPTY, 5]], [[1, 0, 0, 2]], *layout)
    assert perfect == {"obj_class_acc": 1.0, "obj_color_acc": 1.0, "obj_acc": 1.0, "empty_acc": 1.0}
    r = object_accuracy([[3, 4, EMPTY, 6]], [[1, 0, 0, 7]], *layout)  # a wrong object; a cell not left empty
    assert r == {"obj_class_acc": 0.5, "obj_color_acc": 0.5, "obj_acc": 0.5, "empty_acc": 0.5}


def test_scene_object_accuracy_near_record_and_drops_for_shuffled_layouts():
    test = _data("scenes", "test")
    ev = load_evaluator("scenes-cell-net")
    idx = torch.arange(0, len(test), 4)  # 500 scenes = 2,000 cells (about 1,000 objects)
    layout = [test.extra[k][idx] for k in ("obj_classes", "obj_colors", "obj_cells")]
    pc, pk = predict_cells(ev, test.x[idx])
    r = object_accuracy(pc, pk, *layout)
    meta = ev.meta
    # per-object class accuracy against the record's accuracy on occupied cells (seen and held-out together)
    n_seen, n_held = meta["n_test_seen"], meta["n_test_heldout"]
    rec_cls = (meta["test_accuracy_seen"] * n_seen + meta["test_accuracy_heldout"] * n_held) / (
        n_seen + n_held
    )
    n_obj = int((layout[2] >= 0).sum())
    tol = 3 * (rec_cls * (1 - rec_cls) / n_obj) ** 0.5  # three binomial standard errors at this many objects
    assert abs(r["obj_class_acc"] - rec_cls) < tol, (r, rec_cls, tol)
    assert abs(r["obj_color_acc"] - meta["test_color_accuracy"]) < TOL, (r, meta["test_color_accuracy"])
    assert abs(r["empty_acc"] - meta["test_accuracy_empty"]) < TOL, (r, meta["test_accuracy_empty"])
    # the same scenes against other scenes' layouts: objects and empty cells no longer match
    perm = torch.roll(torch.arange(len(idx)), 1)
    s = object_accuracy(pc, pk, *(t[perm] for t in layout))
    assert s["obj_acc"] < r["obj_acc"] - 0.3 and s["empty_acc"] < r["empty_acc"] - 0.2, (r, s)


def _text_encoder():
    from genlab.errors import GenlabError
    from genlab.text import load_text_encoder

    try:
        return load_text_encoder("all-minilm-l6-v2")
    except GenlabError as e:  # the [text] extra is not installed
        pytest.skip(str(e))


def test_scenes_clip_record_and_retrieval_on_200_test_scenes():
    from genlab.metrics.scenes import load_scenes_clip

    tensors, _ = weights_paths("scenes-clip")
    meta = read_record("scenes-clip")
    assert sha256_file(tensors) == meta["sha256"] and meta["arch"]["embedding"] is True
    _text_encoder()
    test = _data("scenes", "test")
    clip = load_scenes_clip()
    img = clip.encode_image(test.x[:200])
    txt = clip.encode_text(test.extra_text["text"][:200])
    assert torch.allclose(img.norm(dim=1), torch.ones(200), atol=1e-5)
    sim = img.double() @ txt.double().T
    own = sim.diagonal()
    i2t_r5 = ((sim >= own[:, None]).sum(1) <= 5).double().mean().item()
    t2i_r5 = ((sim >= own[None, :]).sum(0) <= 5).double().mean().item()
    rec = meta["retrieval_test"]["first200"]
    # the same 200 images and captions as the record: equal up to float summation order (a tie at most)
    assert abs(i2t_r5 - rec["i2t_R@5"]) <= 0.01 and abs(t2i_r5 - rec["t2i_R@5"]) <= 0.01, (
        i2t_r5,
        t2i_r5,
        rec,
    )


def test_scenes_protocol_end_to_end_small_n():
    _text_encoder()
    assert protocol_for_dataset("scenes") == "scenes"
    test, train = _data("scenes", "test"), _data("scenes", "train")
    n = 200
    cond = {k: test.extra[k][:n] for k in ("obj_classes", "obj_colors", "obj_cells")}
    cond["text"] = test.extra_text["text"][:n]
    with pytest.warns(EvalWarning, match="only 200 images"):
        res = evaluate(
            test.x[:n], train.x[:n], protocol="scenes", metrics=("fid", "objects", "clip"), conditions=cond
        )
    assert res["fid"] > 0 and res["obj_acc"] > 0.7 and res["empty_acc"] > 0.9
    assert res["protocol"]["extractor"] == "scenes-clip" and len(res["protocol"]["objects_sha256"]) == 64
    # captions of other scenes: the CLIP score drops
    wrong = {**cond, "text": cond["text"][1:] + cond["text"][:1]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EvalWarning)
        res_wrong = evaluate(test.x[:n], train.x[:n], protocol="scenes", metrics=("clip",), conditions=wrong)
    assert res_wrong["clip_score"] < res["clip_score"] - 0.1, (res, res_wrong)
