"""The pretrain flow as a user runs it: a pretraining set of its own seed, the encoders pretrained on
Ray Train with per-epoch lines, the release (weights, card with sha256 and held-out figures) in the
run's folder and in pretrain.release_dir, loadable by the tiny models; a rerun reuses everything."""
from __future__ import annotations

import pytest
import torch

from flows.pretrain import pretrain
from infra.storage import Storage, join
from models.build import build_model
from tasks.pretrain.run import check_release

TINY = ["pretrain.num_train_clips=8", "pretrain.num_val_clips=4", "pretrain.clips_per_chunk=4", "train.epochs=1",
        "train.loader.batch_size=4", "train.loader.image_size=64", "data.synth.frame_height=64",
        "data.synth.frame_width=64", "cluster.num_cpus=2"]


@pytest.mark.slow
def test_pretrain_flow_releases_weights_with_a_card_that_the_tiny_models_load(tmp_path, flow_log):
    release_dir = tmp_path / "weights"
    summary = pretrain([*TINY, f"output={tmp_path}/out", f"pretrain.release_dir={release_dir}"])
    storage = Storage()

    run_release = join(summary["run"]["run_dir"], "release")
    assert summary["release"] == [run_release, str(release_dir)]
    card = check_release(str(release_dir), storage)  # every file's sha256 as the card says
    assert check_release(run_release, storage)["files"] == card["files"]  # the same weights in both places
    assert card["data"]["seed"] == 20261207 and card["data"]["train_clips"] == 8 and card["data"]["held_out_clips"] == 4
    assert card["training"]["steps"] == 2 and card["training"]["epochs"] == 1
    held = card["held_out"]
    assert 0.0 <= held["category_miou"] <= 1.0 and 0.0 <= held["audio_map"] <= 1.0
    assert set(held["category_iou"]) == set(card["data"]["categories"]) and len(card["data"]["categories"]) == 8
    assert "python -m flows.pretrain" in card["made_by"] and "pretrain.num_train_clips=8" in card["made_by"]
    assert "held out" in (release_dir / "card.md").read_text()
    scaling = card["files"]["vggish.pt"]["embedding_scale"]  # embeddings of RMS 1 on the held-out seconds
    assert scaling["norm_after"] == pytest.approx(128 ** 0.5, rel=1e-3) and scaling["scale"] > 0

    # the weights are the run's encoders, and every tiny model loads them
    model = build_model("combo_tiny", backbone_weights=str(release_dir / "backbone.pt"),
                        vggish_weights=str(release_dir / "vggish.pt"))
    saved = torch.load(release_dir / "vggish.pt", weights_only=True)
    assert all(torch.equal(v, saved[k]) for k, v in model.audio_encoder.state_dict().items())

    epoch_lines = [ln for ln in flow_log if ln.startswith("epoch 1/1 | loss ")]
    assert len(epoch_lines) == 1 and "held out: category mIoU" in epoch_lines[0] and "audio mAP" in epoch_lines[0]

    # a rerun finds the set and the finished run: nothing is generated or trained again
    flow_log.clear()
    again = pretrain([*TINY, f"output={tmp_path}/out", f"pretrain.release_dir={release_dir}"])
    assert again["run"]["checkpoint"] == summary["run"]["checkpoint"]
    assert any("found complete" in ln for ln in flow_log) and any("finished already" in ln for ln in flow_log)

    # a damaged release is caught by its card
    (release_dir / "vggish.pt").write_bytes(b"not weights")
    with pytest.raises(ValueError, match="vggish.pt: sha256 .* differs from its card"):
        check_release(str(release_dir), storage)
