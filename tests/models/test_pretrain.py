"""The encoder pretraining model: shapes, losses, clear errors, and what the release keeps."""
import pytest
import torch

from models.build import build_model, pretrain_registry
from models.pretrain import EncoderPretraining

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return pretrain_registry["encoders_tiny"](num_categories=8)


def test_outputs_a_category_map_per_frame_and_tags_per_second(model):
    out = model(torch.rand(2, 3, 3, 64, 64), torch.randn(2, 3, 96, 64))
    assert out["categories"].shape == (6, 9, 64, 64)  # K + 1 classes at the frame's size
    assert out["audio_tags"].shape == (2, 3, 8)


def test_loss_is_cross_entropy_plus_tagging_and_trains_both_encoders(model):
    out = model(torch.rand(1, 2, 3, 64, 64), torch.randn(1, 2, 96, 64))
    cats = torch.randint(0, 9, (1, 2, 64, 64))
    heard = torch.randint(0, 2, (1, 2, 8))
    losses = EncoderPretraining.loss(out, cats, heard)
    assert torch.allclose(losses["loss"], losses["loss_categories"] + losses["loss_audio"])
    model.zero_grad()
    losses["loss"].backward()
    for part in (model.backbone, model.audio_encoder):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())


def test_bad_inputs_are_named(model):
    with pytest.raises(ValueError, match="frames must be B x T x 3 x H x W"):
        model(torch.rand(2, 3, 64, 64), torch.randn(2, 1, 96, 64))
    with pytest.raises(ValueError, match="logmel must be B x T x 96 x 64"):
        model(torch.rand(2, 3, 3, 64, 64), torch.randn(2, 2, 96, 64))
    with pytest.raises(ValueError, match="num_categories"):
        pretrain_registry["encoders_tiny"](num_categories=0)


def test_its_encoders_load_into_every_tiny_model(model, tmp_path):
    """The release keeps the state dicts of `backbone` and `audio_encoder`: each loads as
    model.backbone_weights / model.vggish_weights into the models of the same size."""
    state = model.state_dict()
    for prefix, name in (("backbone", "backbone.pt"), ("audio_encoder", "vggish.pt")):
        torch.save({k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}, tmp_path / name)
    weights = {"backbone_weights": str(tmp_path / "backbone.pt"), "vggish_weights": str(tmp_path / "vggish.pt")}
    for name in ("combo_tiny", "avsac_tiny", "tpavi_tiny", "moca_tiny"):
        built = build_model(name, **weights)
        backbones = [m for n, m in built.named_modules() if n.endswith("backbone") and not n.endswith("audio_backbone")]
        assert backbones, name
        for b in backbones:
            for k, v in b.state_dict().items():
                assert torch.equal(v, state[f"backbone.{k}"]), f"{name}: {k}"
        for k, v in built.audio_encoder.state_dict().items():
            assert torch.equal(v, state[f"audio_encoder.{k}"]), f"{name}: audio {k}"


def test_tiny_backbone_weights_of_another_shape_fail_naming_the_keys(tmp_path):
    from models.backbones import TinyCNN

    torch.save(TinyCNN(channels=(8, 16, 32, 64)).state_dict(), tmp_path / "other.pt")
    with pytest.raises(ValueError, match="tiny backbone .*shape mismatches"):
        build_model("combo_tiny", backbone_weights=str(tmp_path / "other.pt"))
