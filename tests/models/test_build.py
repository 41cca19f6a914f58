import pytest
import torch

from models.audio_encoder import VGGishEncoder
from models.avsac import AVSACModel
from models.build import FAMILIES, MOCA_MODELS, SIZES, build_model, model_registry
from models.combo import COMBO
from models.tpavi import TPAVIModel

torch.set_num_threads(1)

# parameter counts of timm's feature extractors (features_only=True) for these models
TIMM_FEATURE_PARAMS = {"resnet50": 23_508_032, "pvt_v2_b5": 81_443_008}
VGGISH_PARAMS = 72_141_184


def count(module):
    return sum(p.numel() for p in module.parameters())


def test_registry_names_are_families_times_sizes():
    assert FAMILIES == ("combo", "avsac", "tpavi") and SIZES == ("tiny", "r50", "pvt_b5")
    assert list(model_registry) == [f"{family}_{size}" for family in FAMILIES for size in SIZES] + list(MOCA_MODELS)
    assert all(builder.__name__ == f"build_{name}" for name, builder in model_registry.items())


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
    # COMBO's classes: background + 70 learned, plus "no object"
    assert model.decoder.class_embed.out_features == 72 and model.num_classes == 70
    ours = build_model("combo_tiny", num_classes=70, learn_background=False)
    assert ours.decoder.class_embed.out_features == 71 and ours.num_classes == 70
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
    # given pretrained weights, a tiny VGGish is kept fixed by default, as the papers keep theirs
    assert build_model("tpavi_tiny", vggish_weights=str(path)).audio_encoder.frozen
    assert not build_model("tpavi_tiny", vggish_weights=str(path), freeze_audio=False).audio_encoder.frozen
    # a no-audio ablation takes the same weights and builds no VGGish (make run's defaults give them)
    assert build_model("combo_tiny", use_audio=False, vggish_weights=str(path)).audio_encoder is None


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
    # COMBO's audio_mlp: 128 -> 4096 -> 4096 -> 256
    assert count(model.audio_proj) == (128 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * 256 + 256)
    assert 5_000_000 < rest < 45_000_000  # pixel decoder, fusion, SE blocks, decoder, audio MLP
    frames = torch.rand(1, 2, 3, 64, 64)
    with torch.no_grad():
        out = model(frames, torch.randn(1, 2, 96, 64), torch.rand(1, 2, 3, 64, 64))
    assert out["pred_logits"].shape == (2, 100, 3)  # background, foreground, no object
    assert out["pred_masks"].shape == (2, 100, 16, 16)
    assert len(out["aux_outputs"]) == 9


@pytest.mark.parametrize("family,cls", [("combo", COMBO), ("avsac", AVSACModel), ("tpavi", TPAVIModel)])
def test_every_family_takes_the_shared_model_config(family, cls, tmp_path):
    # what conf/model + infra hand every builder: the switches, the weight files, NHWC
    torch.manual_seed(0)
    source = VGGishEncoder(widths=(8, 16, 32, 32), fc_dims=(128, 128))
    path = tmp_path / "vggish_tiny.pth"
    torch.save(source.state_dict(), path)
    model = build_model(
        f"{family}_tiny", num_classes=1, use_maskige=True, fusion="bilateral", use_audio=True, freeze_audio=True,
        backbone_weights=None, vggish_weights=str(path), channels_last=True,
    )  # fmt: skip
    assert isinstance(model, cls) and model.channels_last
    assert all(torch.equal(p, q) for p, q in zip(model.audio_encoder.parameters(), source.parameters()))
    assert model.audio_encoder.frozen
    with pytest.raises(ValueError, match="tiny backbone"):
        build_model(f"{family}_tiny", backbone_weights=str(path))
    # a no-audio ablation takes the same weight files and builds no VGGish
    assert build_model(f"{family}_tiny", use_audio=False, vggish_weights=str(path)).audio_encoder is None
