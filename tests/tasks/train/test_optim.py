"""COMBO's optimiser on our models: backbone lr multiplier, no decay on norms and embeddings,
frozen parameters left out, the poly schedule; and the per-epoch progress line."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from infra.config import compose
from models.build import build_model
from tasks.train.optim import build_optimizer, build_scheduler, lr_factor, param_groups
from tasks.train.run import epoch_line

torch.set_num_threads(1)


def test_defaults_are_combos_solver():
    t = compose([]).train
    assert (t.optimizer, t.lr, t.weight_decay, t.backbone_multiplier) == ("adamw", 1e-4, 0.05, 0.1)
    assert (t.lr_schedule, t.poly_power, t.warmup_steps, t.grad_clip) == ("poly", 0.9, 0, 0.01)
    assert (t.weight_decay_norm, t.weight_decay_embed) == (0.0, 0.0)
    m = compose(["model=combo_r50"]).model
    assert (m.lambda_ada, m.weight_class, m.weight_mask, m.weight_dice, m.no_object_weight, m.num_points) == \
        (10.0, 2.0, 5.0, 5.0, 0.1, 12544)


def test_param_groups_follow_combos_rules():
    cfg = compose([]).train
    model = build_model("combo_tiny", num_classes=1)
    groups = param_groups(model, cfg)
    params = [p for g in groups for p in g["params"]]
    assert len(params) == len({id(p) for p in params}) == len(list(model.parameters()))
    by_id = {id(p): g for g in groups for p in g["params"]}
    for module_name, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            g = by_id[id(p)]
            assert g["lr"] == pytest.approx(1e-5 if "backbone" in module_name else 1e-4), (module_name, name)
            no_decay = isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm2d, nn.Embedding))
            assert g["weight_decay"] == (0.0 if no_decay else 0.05), (module_name, name)
    names = {g["name"] for g in groups}
    assert names == {"backbone", "backbone+no_decay", "other", "other+no_decay"}
    # the maskige backbone is a backbone too; the (trained, tiny) VGGish is not
    assert any(id(p) in {id(q) for q in model.encoder.maskige_backbone.parameters()} for p in
               next(g for g in groups if g["name"] == "backbone")["params"])


def test_frozen_parameters_are_left_out_and_adam_is_offered():
    model = build_model("tpavi_tiny", num_classes=1, freeze_audio=True)
    frozen = {id(p) for p in model.parameters() if not p.requires_grad}
    assert frozen
    opt = build_optimizer(model, compose(["train.optimizer=adam"]).train)
    assert isinstance(opt, torch.optim.Adam) and not isinstance(opt, torch.optim.AdamW)
    assert not frozen & {id(p) for g in opt.param_groups for p in g["params"]}


def test_poly_schedule_warmup_and_resume():
    assert lr_factor(0, 100, 0.9, 0, 1.0, "poly") == 1.0
    assert lr_factor(50, 100, 0.9, 0, 1.0, "poly") == pytest.approx(0.5 ** 0.9)
    assert lr_factor(100, 100, 0.9, 0, 1.0, "poly") == 0.0 and lr_factor(150, 100, 0.9, 0, 1.0, "poly") == 0.0
    assert lr_factor(5, 100, 0.9, 10, 0.1, "constant") == pytest.approx(0.1 * 0.5 + 0.5)
    cfg = compose([]).train
    model = nn.Linear(2, 2)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, total_steps=10)
    for _ in range(4):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-4 * 0.6 ** 0.9)
    # a resumed run takes the schedule from its config, the step count from the state
    opt2 = build_optimizer(model, cfg)
    sched2 = build_scheduler(opt2, cfg, total_steps=20)
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    opt2.step()
    sched2.step()
    assert opt2.param_groups[0]["lr"] == pytest.approx(1e-4 * (1 - 5 / 20) ** 0.9)


def test_epoch_line_names_loss_validation_speed_and_eta():
    line = epoch_line({"epoch": 3, "train_loss": 1.5, "train_loss_ce": 0.25, "val_miou": 0.5, "val_fscore": 0.6,
                       "samples_per_s": 12.34, "epoch_s": 65.0, "eta_s": 3725.0}, epochs=5)
    assert line == ("epoch 3/5 | loss 1.5000 (ce 0.2500) | val mIoU 0.5000 F 0.6000 | 12.3 samples/s | "
                    "epoch 1m05s, ETA 1h02m")
