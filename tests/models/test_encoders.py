import pytest
import timm
import torch

from models.audio_encoder import VGGishEncoder, load_vggish_weights
from models.backbones import TinyCNN, build_backbone, timm_backbone

torch.set_num_threads(1)

TINY_VGGISH = {"widths": (8, 16, 32, 32), "fc_dims": (64, 64), "out_dim": 128}


def test_vggish_full_size_maps_logmel_to_128():
    torch.manual_seed(0)
    enc = VGGishEncoder()
    # the architecture, layer by layer
    convs = [m for m in enc.features if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 256, 512, 512]
    pools = [m for m in enc.features if isinstance(m, torch.nn.MaxPool2d)]
    assert len(pools) == 4
    linears = [m for m in enc.embeddings if isinstance(m, torch.nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(512 * 6 * 4, 4096), (4096, 4096), (4096, 128)]
    with torch.no_grad():
        out = enc(torch.randn(2, 1, 96, 64))
    assert out.shape == (2, 128)


def test_vggish_forward_clip_is_per_frame():
    torch.manual_seed(0)
    enc = VGGishEncoder(**TINY_VGGISH).eval()
    logmel = torch.randn(2, 5, 96, 64)
    with torch.no_grad():
        clip = enc.forward_clip(logmel)
        single = enc(logmel[1, 3][None, None])
    assert clip.shape == (2, 5, 128)
    torch.testing.assert_close(clip[1, 3], single[0])


@pytest.mark.parametrize("size", [{"widths": (8, 16, 32, 32), "fc_dims": (128, 128)}, {}], ids=["tiny", "full"])
def test_vggish_at_initialisation_tells_sounds_apart(size):
    """Different log-mels must give clearly different embeddings before any training, or a model
    trained from scratch hears nothing: with PyTorch's default initialisation the tiny encoder's
    embeddings of eight different sounds were within about 1% of their norm of each other (the
    input's signal shrank at every layer while the biases kept their size)."""
    torch.manual_seed(0)
    enc = VGGishEncoder(**size).eval()
    logmel = torch.full((8, 96, 64), -2.0)
    for c in range(8):  # sound c: loud in mel bands 8c .. 8c+7, quiet elsewhere
        logmel[c, :, 8 * c:8 * c + 8] = 3.0
    with torch.no_grad():
        emb = enc(logmel)
    spread = torch.pdist(emb).mean() / emb.norm(dim=1).mean()
    assert spread > 0.2, f"embeddings of different sounds differ by {float(spread):.1%} of their norm"


def test_vggish_rejects_wrong_shape():
    enc = VGGishEncoder(**TINY_VGGISH)
    with pytest.raises(ValueError, match="96 x 64"):
        enc(torch.randn(2, 1, 64, 96))
    with pytest.raises(ValueError, match="B x T x 96 x 64"):
        enc.forward_clip(torch.randn(2, 96, 64))


def test_vggish_weights_round_trip(tmp_path):
    torch.manual_seed(0)
    source = VGGishEncoder(**TINY_VGGISH)
    path = tmp_path / "vggish.pth"
    torch.save(source.state_dict(), path)
    torch.manual_seed(1)
    target = VGGishEncoder(**TINY_VGGISH)
    x = torch.randn(3, 1, 96, 64)
    assert not torch.allclose(source(x), target(x))
    load_vggish_weights(target, str(path))
    torch.testing.assert_close(source(x), target(x))
    # a PCA block some ports ship beside the weights is ignored, not an error
    with_pca = dict(source.state_dict(), **{"pproc._pca_matrix": torch.zeros(128, 128)})
    load_vggish_weights(target, with_pca)


def test_vggish_mismatched_weights_fail_clearly(tmp_path):
    path = tmp_path / "other.pth"
    torch.save(VGGishEncoder(widths=(8, 16, 32, 64), fc_dims=(64, 64)).state_dict(), path)
    with pytest.raises(ValueError, match=r"VGGish.*shape mismatches: .*features\.11\.weight: checkpoint \(64, 32, 3, 3\) vs model \(32, 32, 3, 3\)"):
        load_vggish_weights(VGGishEncoder(**TINY_VGGISH), path)
    partial = {k: v for k, v in VGGishEncoder(**TINY_VGGISH).state_dict().items() if not k.startswith("embeddings.4")}
    with pytest.raises(ValueError, match=r"missing keys: embeddings\.4\.bias, embeddings\.4\.weight"):
        load_vggish_weights(VGGishEncoder(**TINY_VGGISH), partial)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_vggish_weights(VGGishEncoder(**TINY_VGGISH), tmp_path / "absent.pth")
    with pytest.raises(ValueError, match="resolve it to a local file"):
        load_vggish_weights(VGGishEncoder(**TINY_VGGISH), "s3://bucket/vggish.pth")


def test_vggish_freeze_keeps_eval_and_no_grad():
    enc = VGGishEncoder(**TINY_VGGISH, freeze=True)
    assert not any(p.requires_grad for p in enc.parameters())
    enc.train()
    assert not enc.training


@pytest.mark.parametrize("name", ["tiny", "resnet50", pytest.param("pvt_v2_b5", marks=pytest.mark.slow)])
def test_backbones_give_strides_4_to_32(name):
    torch.manual_seed(0)
    backbone = build_backbone(name).eval()
    expected = {"tiny": [16, 32, 64, 128], "resnet50": [256, 512, 1024, 2048], "pvt_v2_b5": [64, 128, 320, 512]}[name]
    assert backbone.channels == expected
    for size in (128, 224):
        with torch.no_grad():
            feats = backbone(torch.randn(1, 3, size, size))
        assert [tuple(f.shape) for f in feats] == [(1, c, size // s, size // s) for c, s in zip(expected, (4, 8, 16, 32))]


def test_tiny_backbone_accepts_channels_last():
    torch.manual_seed(0)
    backbone = TinyCNN().eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        ref = backbone(x)
        backbone_cl = backbone.to(memory_format=torch.channels_last)
        out = backbone_cl(x.contiguous(memory_format=torch.channels_last))
    for a, b in zip(ref, out):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_backbone_rejects_bad_input_and_names():
    with pytest.raises(ValueError, match="divisible by 32"):
        TinyCNN()(torch.randn(1, 3, 100, 64))
    with pytest.raises(ValueError, match="N x 3 x H x W"):
        TinyCNN()(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="valid names.*pvt_v2_b5"):
        build_backbone("vit_huge")


def test_timm_backbone_loads_a_classification_checkpoint(tmp_path):
    torch.manual_seed(0)
    source = timm.create_model("resnet50", pretrained=False).eval()
    path = tmp_path / "resnet50.pth"
    torch.save(source.state_dict(), path)  # includes the fc head, which the backbone ignores
    backbone = timm_backbone("resnet50", pretrained_path=path).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = source.layer4(source.layer3(source.layer2(source.layer1(source.maxpool(source.act1(source.bn1(source.conv1(x))))))))
        got = backbone(x)[-1]
    torch.testing.assert_close(got, expected)


def test_timm_backbone_mismatched_checkpoint_fails_clearly(tmp_path):
    path = tmp_path / "tiny.pth"
    torch.save(TinyCNN().state_dict(), path)
    with pytest.raises(ValueError, match=r"backbone resnet50.*missing keys: .*unexpected keys: stages\.0"):
        timm_backbone("resnet50", pretrained_path=path)


def test_tiny_backbone_state_dict_round_trip(tmp_path):
    torch.manual_seed(0)
    a = TinyCNN().eval()
    torch.manual_seed(1)
    b = TinyCNN().eval()
    path = tmp_path / "tiny.pth"
    torch.save(a.state_dict(), path)
    from models.backbones import load_state_dict_checked, read_state_dict

    load_state_dict_checked(b, read_state_dict(path, "tiny"), "tiny")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(a(x)[2], b(x)[2])
