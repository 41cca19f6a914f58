import importlib.util

import pytest
import torch

from models.audio_encoder import VGGishEncoder
from models.build import build_model, model_registry
from models.combo import COMBO

torch.set_num_threads(1)

# parameter counts of timm's feature extractors (features_only=True) for these models
TIMM_FEATURE_PARAMS = {"resnet50": 23_508_032, "pvt_v2_b5": 81_443_008}
VGGISH_PARAMS = 72_141_184


def count(module):
    return sum(p.numel() for p in module.parameters())


def test_registry_names():
    assert {"combo_tiny", "combo_r50", "combo_pvt_b5"} <= set(model_registry)
    assert {f"{m}_{s}" for m in ("avsac", "tpavi") for s in ("tiny", "r50", "pvt_b5")} <= set(model_registry)


def test_unknown_name_lists_valid_ones():
    with pytest.raises(KeyError, match="valid names: .*combo_pvt_b5.*combo_r50.*combo_tiny"):
        build_model("combo_huge")


def test_builder_rejects_bad_arguments():
    with pytest.raises(ValueError, match="fusion must be one of"):
        build_model("combo_tiny", fusion="sideways")
    with pytest.raises(ValueError, match="num_classes must be >= 1"):
        build_model("combo_tiny", num_classes=0)
    with pytest.raises(TypeError):
        build_model("combo_tiny", no_such_flag=True)


def test_tiny_sizes_and_overrides():
    model = build_model("combo_tiny", num_classes=70, lambda_ada=3.0)
    assert isinstance(model, COMBO)
    assert model.decoder.num_queries == 10 and model.decoder.num_layers == 3
    assert model.pixel_decoder.hidden_dim == 64
    assert model.decoder.class_embed.out_features == 71
    assert model.criterion.lambda_ada == 3.0
    assert model.criterion.hungarian.weight_class == 2.0 and model.criterion.hungarian.weight_dice == 5.0
    assert not model.audio_encoder.frozen  # tiny: no pretrained VGGish to keep
    assert count(model) < 3_000_000


def test_tiny_loads_vggish_weights_from_a_path(tmp_path):
    torch.manual_seed(0)
    source = VGGishEncoder(widths=(8, 16, 32, 32), fc_dims=(128, 128))
    path = tmp_path / "vggish_tiny.pth"
    torch.save(source.state_dict(), path)
    model = build_model("combo_tiny", vggish_weights=str(path), freeze_audio=True)
    for (name, p), q in zip(model.audio_encoder.named_parameters(), source.parameters()):
        assert torch.equal(p, q), name
        assert not p.requires_grad


@pytest.mark.slow
@pytest.mark.parametrize("name,backbone", [("combo_r50", "resnet50"), ("combo_pvt_b5", "pvt_v2_b5")])
def test_real_sizes_build_count_and_run_once(name, backbone):
    torch.manual_seed(0)
    model = build_model(name, num_classes=1).eval()
    assert model.decoder.num_queries == 100 and model.decoder.num_layers == 9
    assert model.pixel_decoder.hidden_dim == 256
    assert count(model.encoder.backbone) == TIMM_FEATURE_PARAMS[backbone]
    assert count(model.encoder.maskige_backbone) == TIMM_FEATURE_PARAMS[backbone]
    assert count(model.audio_encoder) == VGGISH_PARAMS
    assert model.audio_encoder.frozen  # COMBO keeps the pretrained VGGish fixed
    rest = count(model) - 2 * TIMM_FEATURE_PARAMS[backbone] - VGGISH_PARAMS
    assert 5_000_000 < rest < 40_000_000  # pixel decoder, fusion, SE blocks, decoder, audio MLP
    frames = torch.rand(1, 2, 3, 64, 64)
    with torch.no_grad():
        out = model(frames, torch.randn(1, 2, 96, 64), torch.rand(1, 2, 3, 64, 64))
    assert out["pred_logits"].shape == (2, 100, 2)
    assert out["pred_masks"].shape == (2, 100, 16, 16)
    assert len(out["aux_outputs"]) == 9


@pytest.mark.parametrize("family", ["avsac", "tpavi"])
def test_other_families_resolve_lazily(family):
    if importlib.util.find_spec(f"models.{family}") is None:
        pytest.skip(f"models/{family}.py not written yet")
    model = build_model(f"{family}_tiny", num_classes=1)
    assert isinstance(model, torch.nn.Module)
