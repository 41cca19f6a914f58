import math
import os
import socket
import subprocess
import sys

import pytest
import torch
from torch import nn

from models.losses import (
    ComboLoss,
    HungarianLoss,
    adaptive_consistency_loss,
    foreground_targets,
    targets_from_masks,
)
from models.matcher import HungarianMatcher

torch.set_num_threads(1)


def test_targets_from_binary_masks_make_background_an_instance():
    # as COMBO's S4/MS3 mappers: ids 0 (background) and 1 (foreground), both mask targets
    masks = torch.zeros(3, 8, 8, dtype=torch.long)
    masks[0, 2:5, 2:5] = 1
    masks[2, 0, 0] = 1
    targets = targets_from_masks(masks, num_classes=1)
    assert targets[0]["labels"].tolist() == [0, 1]
    assert targets[0]["masks"].shape == (2, 8, 8) and targets[0]["masks"].sum(dim=(1, 2)).tolist() == [55, 9]
    assert targets[1]["labels"].tolist() == [0] and targets[1]["masks"].all()  # empty frame: background only
    assert targets[2]["masks"][1, 0, 0] and targets[2]["masks"][1].sum() == 1 and not targets[2]["masks"][0, 0, 0]


def test_targets_from_semantic_masks_keep_background_and_skip_ignore():
    masks = torch.zeros(1, 6, 6, dtype=torch.long)
    masks[0, :2] = 3
    masks[0, 4:] = 5
    masks[0, 3] = 255
    (target,) = targets_from_masks(masks, num_classes=70)
    assert target["labels"].tolist() == [0, 3, 5]  # the class ids themselves, background 0
    assert target["masks"].sum(dim=(1, 2)).tolist() == [6, 12, 12]
    assert not target["masks"][:, 3].any()  # ignored pixels belong to no instance


def test_foreground_targets_drop_background_and_shift_labels():
    masks = torch.zeros(2, 6, 6, dtype=torch.long)
    masks[0, :2] = 3
    targets = foreground_targets(targets_from_masks(masks, 70, has_gt=[True, True]) + [None])
    assert targets[0]["labels"].tolist() == [2] and targets[0]["masks"].sum() == 12  # id k -> label k - 1
    assert targets[1]["labels"].numel() == 0 and targets[1]["masks"].shape == (0, 6, 6)
    assert targets[2] is None


def test_targets_from_masks_flags_and_errors():
    masks = torch.ones(2, 4, 4, dtype=torch.long)
    targets = targets_from_masks(masks, 1, has_gt=[True, False])
    assert targets[1] is None and targets[0]["labels"].tolist() == [1]
    with pytest.raises(ValueError, match=r"class ids \[2\] outside 0..1"):
        targets_from_masks(masks * 2, 1)
    with pytest.raises(ValueError, match="integer tensor"):
        targets_from_masks(masks.float(), 1)


def _random_outputs(n, q, c, h, w, layers=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    def one():
        return {"pred_logits": torch.randn(n, q, c + 1, generator=g), "pred_masks": torch.randn(n, q, h, w, generator=g)}
    out = one()
    out["aux_outputs"] = [one() for _ in range(layers)]
    return out


def _semantic_targets(n, h, w, num_classes, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, num_classes + 1, (n, h // 4, w // 4), generator=g)
    ids = ids.repeat_interleave(4, 1).repeat_interleave(4, 2)
    return targets_from_masks(ids, num_classes)


def test_matcher_finds_the_query_that_fits():
    target_mask = torch.zeros(8, 8)
    target_mask[2:6, 2:6] = 1
    masks = torch.full((1, 5, 8, 8), -6.0)
    masks[0, 3] = target_mask * 12 - 6  # query 3 predicts the mask
    logits = torch.zeros(1, 5, 3)
    logits[0, 3, 1] = 5.0  # ... and its class
    targets = [{"labels": torch.tensor([1]), "masks": target_mask.bool()[None]}]
    (q_idx, t_idx), = HungarianMatcher()({"pred_logits": logits, "pred_masks": masks}, targets)
    assert q_idx.tolist() == [3] and t_idx.tolist() == [0]


def test_hungarian_loss_invariant_to_query_order():
    n, q, c, h, w = 3, 6, 4, 8, 8
    outputs = _random_outputs(n, q, c + 1, h, w)  # background learned: C + 1 classes
    targets = _semantic_targets(n, 16, 16, c)
    loss = HungarianLoss(c + 1)
    base = loss(outputs, targets)
    perm = torch.randperm(q, generator=torch.Generator().manual_seed(3))
    def permute(o):
        return {"pred_logits": o["pred_logits"][:, perm], "pred_masks": o["pred_masks"][:, perm]}
    permuted = permute(outputs)
    permuted["aux_outputs"] = [permute(a) for a in outputs["aux_outputs"]]
    again = loss(permuted, targets)
    assert set(base) == set(again)
    for key in base:
        torch.testing.assert_close(base[key], again[key], rtol=1e-5, atol=1e-6)


def test_hungarian_loss_parts_and_deep_supervision():
    outputs = _random_outputs(2, 5, 2, 8, 8, layers=3)
    targets = targets_from_masks((torch.rand(2, 16, 16) > 0.5).long(), 1)
    losses = HungarianLoss(2, weight_class=2.0, weight_mask=5.0, weight_dice=5.0)(outputs, targets)
    expected = 0.0
    for suffix in ["", "_0", "_1", "_2"]:
        expected += 2 * losses["loss_ce" + suffix] + 5 * losses["loss_mask" + suffix] + 5 * losses["loss_dice" + suffix]
    torch.testing.assert_close(losses["loss"], expected)


def test_hungarian_loss_lower_for_a_correct_prediction():
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[0, 2:6, 2:6] = 1
    targets = targets_from_masks(target, 1)  # background (0) and foreground (1)
    good_masks = torch.full((1, 3, 8, 8), -8.0)
    good_masks[0, 0] = target[0].float() * 16 - 8
    good_masks[0, 1] = (1 - target[0].float()) * 16 - 8
    # query 0: foreground, query 1: background, query 2: no object
    good_logits = torch.tensor([[[-8.0, 8.0, -8.0], [8.0, -8.0, -8.0], [-8.0, -8.0, 8.0]]])
    good = HungarianLoss(2)({"pred_logits": good_logits, "pred_masks": good_masks}, targets)["loss"]
    bad = HungarianLoss(2)({"pred_logits": -good_logits, "pred_masks": -good_masks}, targets)["loss"]
    assert good < 0.1 < bad
    with pytest.raises(ValueError, match=r"labels must be in 0..0"):
        HungarianLoss(1)({"pred_logits": good_logits[..., 1:], "pred_masks": good_masks}, targets)


def test_hungarian_loss_skips_frames_without_ground_truth():
    outputs = _random_outputs(3, 4, 2, 8, 8, layers=1)
    targets = targets_from_masks((torch.rand(3, 8, 8) > 0.5).long(), 1)
    with_none = HungarianLoss(2)(outputs, [targets[0], None, targets[2]])
    subset = {
        "pred_logits": outputs["pred_logits"][[0, 2]],
        "pred_masks": outputs["pred_masks"][[0, 2]],
        "aux_outputs": [{k: a[k][[0, 2]] for k in a} for a in outputs["aux_outputs"]],
    }
    only = HungarianLoss(2)(subset, [targets[0], targets[2]])
    torch.testing.assert_close(with_none["loss"], only["loss"])
    none_at_all = HungarianLoss(2)(outputs, [None, None, None])
    assert float(none_at_all["loss"]) == 0.0
    assert set(none_at_all) == set(with_none)  # the same keys whatever the batch holds


def test_hungarian_loss_with_point_sampling_has_gradients():
    torch.manual_seed(0)
    outputs = _random_outputs(2, 4, 4, 8, 8, layers=1)
    outputs["pred_masks"].requires_grad_(True)
    targets = _semantic_targets(2, 16, 16, 3)
    losses = HungarianLoss(4, num_points=20)(outputs, targets)
    losses["loss"].backward()
    assert torch.isfinite(losses["loss"]) and outputs["pred_masks"].grad.abs().sum() > 0


def test_batched_matching_and_mask_losses_equal_the_per_frame_loop(monkeypatch):
    """One target size (every loader batch) takes the batched paths; forcing the per-frame loop
    (as for frames of different sizes) must give the same assignment, losses and gradients."""
    import models.losses
    import models.matcher

    outputs = _random_outputs(6, 5, 4, 8, 8, layers=2, seed=3)
    targets = _semantic_targets(6, 16, 16, 3)
    targets[2] = {"labels": torch.zeros(0, dtype=torch.long), "masks": torch.zeros(0, 16, 16, dtype=torch.bool)}
    targets[4] = None  # a frame without ground truth

    def run():
        out = {k: (v.clone().requires_grad_(True) if torch.is_tensor(v) else v) for k, v in outputs.items()}
        losses = HungarianLoss(4)(out, targets)
        losses["loss"].backward()
        kept = [t for t in targets if t is not None]
        matched = HungarianMatcher(2.0, 5.0, 5.0)({k: out[k].detach()[[0, 1, 2, 3, 5]] for k in ("pred_logits", "pred_masks")}, kept)
        return losses, out["pred_masks"].grad, matched

    batched, grad_batched, match_batched = run()
    monkeypatch.setattr(models.matcher, "same_target_size", lambda targets: False)
    monkeypatch.setattr(models.losses, "same_target_size", lambda targets: False)
    looped, grad_looped, match_looped = run()
    assert set(batched) == set(looped)
    for key in batched:
        torch.testing.assert_close(batched[key], looped[key], rtol=1e-5, atol=1e-6, msg=key)
    torch.testing.assert_close(grad_batched, grad_looped, rtol=1e-5, atol=1e-7)
    for (q1, t1), (q2, t2) in zip(match_batched, match_looped):
        assert q1.tolist() == q2.tolist() and t1.tolist() == t2.tolist()
    assert len(match_batched[2][0]) == 0  # the frame without instances matches nothing


def test_pair_bce_cost_is_mask2formers_formula():
    """sum softplus(x) - x @ t equals softplus(-x) @ t + softplus(x) @ (1 - t), batched or not."""
    import torch.nn.functional as F

    from models.matcher import pair_bce_cost

    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(3, 7, 50, generator=g) * 4, (torch.rand(3, 2, 50, generator=g) > 0.5).float()
    by_formula = (F.softplus(-x) @ t.transpose(1, 2) + F.softplus(x) @ (1 - t).transpose(1, 2)) / 50
    torch.testing.assert_close(pair_bce_cost(x, t), by_formula, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pair_bce_cost(x[1], t[1]), by_formula[1], rtol=1e-5, atol=1e-6)


def _consistency_by_hand(x):
    """x: nested lists B x T x (flat values). Explicit loops, Python floats."""
    b, t = len(x), len(x[0])
    total = 0.0
    for i in range(b):
        for k in range(t - 1):
            u, v = x[i][k], x[i][k + 1]
            dot = sum(a * c for a, c in zip(u, v))
            cos = dot / (math.sqrt(sum(a * a for a in u)) * math.sqrt(sum(c * c for c in v)))
            d = 1.0 - cos
            total += d * math.exp(-d)
    return total / (b * (t - 1))


def test_adaptive_consistency_loss_matches_hand_computation():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 3, 2, 2, generator=g, dtype=torch.float64)  # B x T x Q x h x w
    by_hand = _consistency_by_hand(logits.reshape(2, 4, -1).tolist())
    assert adaptive_consistency_loss(logits).item() == pytest.approx(by_hand, rel=1e-6)
    # the (B*T) x ... layout with num_frames gives the same
    flat = logits.reshape(8, 3, 2, 2)
    assert adaptive_consistency_loss(flat, num_frames=4).item() == pytest.approx(by_hand, rel=1e-6)


def test_adaptive_consistency_loss_small_example():
    # frame 0 -> 1: orthogonal (d = 1); frame 1 -> 2: identical (d = 0)
    logits = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.0, 2.0]]])  # B=1, T=3, 2 values
    expected = (1.0 * math.exp(-1.0) + 0.0) / (1 * 2)
    assert adaptive_consistency_loss(logits).item() == pytest.approx(expected, rel=1e-6)


def test_adaptive_consistency_loss_zero_for_identical_frames():
    frame = torch.randn(1, 1, 4, 5, 5)
    logits = frame.expand(3, 5, 4, 5, 5).clone()
    assert adaptive_consistency_loss(logits).item() == pytest.approx(0.0, abs=1e-6)
    assert adaptive_consistency_loss(torch.randn(2, 1, 4, 5, 5)).item() == 0.0  # T = 1: no pairs
    with pytest.raises(ValueError, match="multiple of num_frames"):
        adaptive_consistency_loss(torch.randn(7, 4, 5, 5), num_frames=5)


def test_combo_loss_adds_lambda_ada_for_the_initial_prediction_and_layers_before_the_last():
    outputs = _random_outputs(6, 4, 2, 8, 8, layers=3)  # aux: initial prediction, layers 1 and 2; final: layer 3
    outputs["num_frames"] = 3
    targets = targets_from_masks((torch.rand(6, 8, 8) > 0.5).long(), 1)
    off = ComboLoss(1, lambda_ada=0.0)(outputs, targets)
    on = ComboLoss(1, lambda_ada=10.0)(outputs, targets)
    assert not any(k.startswith("loss_ada") for k in off)
    per_layer = [adaptive_consistency_loss(o["pred_masks"], 3) for o in outputs["aux_outputs"]]
    assert [k for k in on if k.startswith("loss_ada_")] == ["loss_ada_0", "loss_ada_1", "loss_ada_2"]
    torch.testing.assert_close(on["loss_ada"], sum(per_layer))
    torch.testing.assert_close(on["loss"], off["loss"] + 10.0 * sum(per_layer))
    assert {k: v for k, v in on.items() if not k.startswith("loss_ada") and k != "loss"}.keys() == {
        k for k in off if k != "loss"
    }
    # the final layer's masks are not part of it, as in COMBO
    changed = dict(outputs, pred_masks=torch.randn_like(outputs["pred_masks"]))
    torch.testing.assert_close(ComboLoss(1, lambda_ada=10.0)(changed, targets)["loss_ada"], on["loss_ada"])
    final = adaptive_consistency_loss(outputs["pred_masks"], 3)
    assert not torch.allclose(on["loss_ada"], on["loss_ada"] + final)  # it would have counted


def test_combo_loss_classes_learned_background_or_foreground_only():
    outputs = _random_outputs(2, 5, 2, 8, 8, layers=1)
    outputs["num_frames"] = 2
    targets = targets_from_masks((torch.rand(2, 16, 16) > 0.5).long(), 1)
    learned = ComboLoss(1, lambda_ada=0.0)(outputs, targets)
    torch.testing.assert_close(learned["loss"], HungarianLoss(2)(outputs, targets)["loss"])
    fg_outputs = _random_outputs(2, 5, 1, 8, 8, layers=1)
    fg_outputs["num_frames"] = 2
    ours = ComboLoss(1, learn_background=False, lambda_ada=0.0)(fg_outputs, targets)
    torch.testing.assert_close(ours["loss"], HungarianLoss(1)(fg_outputs, foreground_targets(targets))["loss"])


# ---- every rank joins every collective (two processes, gloo) --------------------------------------

DDP_FRAMES, DDP_QUERIES, DDP_CLASSES = 4, 5, 2  # 2 classes: background learned, foreground


class _PredictionHead(nn.Module):
    """Stands in for COMBO's decoder: its parameters ARE the predictions (final + one aux)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.logits = nn.Parameter(torch.randn(DDP_FRAMES, DDP_QUERIES, DDP_CLASSES + 1, generator=g))
        self.masks = nn.Parameter(torch.randn(DDP_FRAMES, DDP_QUERIES, 8, 8, generator=g))

    def forward(self) -> dict:
        aux = {"pred_logits": 0.5 * self.logits, "pred_masks": 0.5 * self.masks}
        return {"pred_logits": self.logits, "pred_masks": self.masks, "aux_outputs": [aux]}


def _rank_targets(rank: int) -> list:
    """Rank 0: no frame annotated. Rank 1: three of four frames annotated."""
    if rank == 0:
        return [None] * DDP_FRAMES
    ids = (torch.rand(DDP_FRAMES, 16, 16, generator=torch.Generator().manual_seed(1)) > 0.6).long()
    return targets_from_masks(ids, 1, has_gt=[True, False, True, True])


def ddp_steps(rank: int, out_path: str) -> None:
    """Two DDP steps of HungarianLoss on this rank's batch; saves losses and reduced gradients."""
    torch.set_num_threads(1)
    head = _PredictionHead()
    model = nn.parallel.DistributedDataParallel(head)
    criterion = HungarianLoss(DDP_CLASSES)
    record = []
    for _ in range(2):  # a second step fails if DDP did not finish reducing the first
        model.zero_grad(set_to_none=True)
        losses = criterion(model(), _rank_targets(rank))
        losses["loss"].backward()
        record.append({
            "losses": {k: v.detach() for k, v in losses.items()},
            "grads": {n: p.grad.clone() for n, p in head.named_parameters()},
        })  # fmt: skip
    torch.save(record, out_path)


_DDP_WORKER = """
import datetime, importlib.util, sys
import torch.distributed as dist
rank, port, test_file, out_path = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
spec = importlib.util.spec_from_file_location("losses_test", test_file)
test = importlib.util.module_from_spec(spec)
spec.loader.exec_module(test)
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                        timeout=datetime.timedelta(seconds=60))
test.ddp_steps(rank, out_path)
dist.destroy_process_group()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # two fresh processes importing torch and DDP: about 15 s on two cores
def test_hungarian_loss_under_ddp_when_one_rank_has_no_ground_truth(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": root, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    port = _free_port()
    outs = [tmp_path / f"rank{r}.pt" for r in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _DDP_WORKER, str(r), str(port), os.path.abspath(__file__), str(outs[r])],
            cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        for r in range(2)
    ]
    logs = []
    try:
        for proc in procs:
            logs.append(proc.communicate(timeout=120)[0])
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
        pytest.fail("the two ranks did not finish: a collective was left waiting")
    assert all(proc.returncode == 0 for proc in procs), "\n".join(logs)
    empty, full = (torch.load(path) for path in outs)

    # reference in one process: rank 1's batch, its mask losses normalised by the mean number of
    # masks per rank (rank 0 has none), and DDP's gradient: the mean of the ranks' gradients
    head = _PredictionHead()
    targets = _rank_targets(1)
    alone = HungarianLoss(DDP_CLASSES)(head(), targets)
    num_masks = sum(len(t["labels"]) for t in targets if t is not None)
    scale = num_masks / max(num_masks / 2, 1.0)
    expected = {}
    for suffix in ("", "_0"):
        expected["loss_ce" + suffix] = alone["loss_ce" + suffix]
        expected["loss_mask" + suffix] = alone["loss_mask" + suffix] * scale
        expected["loss_dice" + suffix] = alone["loss_dice" + suffix] * scale
    expected["loss"] = sum(
        2 * expected["loss_ce" + s] + 5 * expected["loss_mask" + s] + 5 * expected["loss_dice" + s] for s in ("", "_0")
    )
    grads = torch.autograd.grad(expected["loss"], [head.logits, head.masks])
    for step in range(2):
        assert set(empty[step]["losses"]) == set(full[step]["losses"]) == set(expected)
        assert all(float(v) == 0.0 for v in empty[step]["losses"].values())
        for key, value in expected.items():
            torch.testing.assert_close(full[step]["losses"][key], value.detach(), rtol=1e-5, atol=1e-6)
        for rank_record in (empty, full):
            torch.testing.assert_close(rank_record[step]["grads"]["logits"], grads[0] / 2, rtol=1e-5, atol=1e-7)
            torch.testing.assert_close(rank_record[step]["grads"]["masks"], grads[1] / 2, rtol=1e-5, atol=1e-7)
