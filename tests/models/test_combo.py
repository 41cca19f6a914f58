import pytest
import torch

from models.backbones import TinyCNN
from models.bilateral_fusion import BilateralFusion
from models.build import build_combo_tiny
from models.losses import targets_from_masks
from models.pixel_decoder import FPNPixelDecoder
from models.siam_encoder import SiamEncoder, SqueezeExcitation
from models.transformer_decoder import MaskedAttentionDecoder

torch.set_num_threads(1)


def clip(b=1, t=5, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.rand(b, t, 3, size, size, generator=g),
        torch.randn(b, t, 96, 64, generator=g),
        torch.rand(b, t, 3, size, size, generator=g),
    )


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return build_combo_tiny(**kw)


# ---- components --------------------------------------------------------------------------


def test_siam_encoder_adds_gated_maskige_features():
    torch.manual_seed(0)
    enc = SiamEncoder(TinyCNN(), TinyCNN()).eval()
    frames, maskige = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        fused = enc(frames, maskige)
        f, p = enc.backbone(frames), enc.maskige_backbone(maskige)
        for i in range(4):
            gate = enc.se_blocks[i](p[i])
            assert gate.shape == (2, enc.channels[i], 1, 1) and ((gate > 0) & (gate < 1)).all()
            torch.testing.assert_close(fused[i], f[i] + gate * p[i])
    with pytest.raises(ValueError, match="pass maskige"):
        enc(frames, None)


def test_squeeze_excitation_bottleneck():
    se = SqueezeExcitation(256)
    assert se.fc1.out_features == 16 and se.fc2.out_features == 256


def test_siam_encoder_without_maskige_is_the_frame_backbone():
    torch.manual_seed(0)
    backbone = TinyCNN().eval()
    enc = SiamEncoder(backbone, None)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(enc(x, torch.randn(1, 3, 64, 64)), backbone(x)):
            torch.testing.assert_close(a, b)
    assert not any(n.startswith(("maskige_backbone", "se_blocks")) for n, _ in enc.named_parameters())


def combo_bi_attention(fusion, visual, audio):
    """COMBO's fusion as fuse_helper.py's BiAttentionBlock computes it, head by head and frame by
    frame, in COMBO's roles: visual tokens are the queries, audio tokens the keys; both
    directions take the softmax over the pixel axis; residuals on the normalised inputs."""
    n, d, h, w = visual.shape
    dh = fusion.head_dim
    v = fusion.norm_visual(visual.flatten(2).transpose(1, 2) + fusion.level_embed)  # n x HW x D
    a = fusion.norm_audio(audio)  # n x Na x A
    pos_v = fusion.pos_visual(visual).flatten(2).transpose(1, 2)
    msg_v = torch.zeros_like(v)
    msg_a = torch.zeros(n, a.shape[1], d)
    for i in range(n):
        query = fusion.key_visual(v[i] + pos_v[i]) * dh**-0.5  # HW x D
        key = fusion.query_audio(a[i] + fusion.pos_audio)  # Na x D
        value_a, value_v = fusion.value_audio(a[i]), fusion.value_visual(v[i])
        for head in range(fusion.num_heads):
            c = slice(head * dh, (head + 1) * dh)
            weights = (query[:, c] @ key[:, c].T).clamp(-50000, 50000)  # HW x Na
            msg_v[i, :, c] = weights.softmax(dim=0) @ value_a[:, c]  # softmax over pixels
            msg_a[i, :, c] = weights.T.softmax(dim=-1) @ value_v[:, c]  # over pixels too
    v_out = v + fusion.gamma_visual * fusion.out_visual(msg_v)
    a_out = a + fusion.gamma_audio * fusion.out_audio(msg_a)
    return v_out.transpose(1, 2).reshape(n, d, h, w), a_out


@pytest.mark.parametrize("num_audio_tokens", [1, 2])
def test_bilateral_fusion_computes_combo_bi_attention(num_audio_tokens):
    torch.manual_seed(0)
    fusion = BilateralFusion(32, audio_dim=16, num_heads=4, num_audio_tokens=num_audio_tokens, layer_scale_init=0.7)
    fusion.eval()  # no attention dropout
    visual, audio = torch.randn(2, 32, 6, 5), torch.randn(2, num_audio_tokens, 16)
    with torch.no_grad():
        v, a = fusion(visual, audio)
        v_ref, a_ref = combo_bi_attention(fusion, visual, audio)
    torch.testing.assert_close(v, v_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a, a_ref, rtol=1e-5, atol=1e-5)


def test_bilateral_fusion_visual_update_varies_across_pixels_with_one_audio_token():
    torch.manual_seed(0)
    fusion = BilateralFusion(32, audio_dim=16, num_heads=4, layer_scale_init=1.0).eval()
    visual, audio = torch.randn(2, 32, 8, 8), torch.randn(2, 1, 16)
    with torch.no_grad():
        v, _ = fusion(visual, audio)
        fusion.gamma_visual.zero_()
        v_norm, _ = fusion(visual, audio)
        update = (v - v_norm).flatten(2)  # N x D x HW
        # a softmax over the pixels: a frame's updates sum to one whole audio message per head
        message = fusion.value_audio(fusion.norm_audio(audio))[:, 0]  # N x D
        expected_sum = message @ fusion.out_visual.weight.T + 64 * fusion.out_visual.bias
    spread = (update - update.mean(dim=2, keepdim=True)).abs().mean()
    assert spread > 0.05 * update.abs().mean()  # one audio token, yet the update differs per pixel
    torch.testing.assert_close(update.sum(dim=2), expected_sum, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["bilateral", "audio_to_visual"])
def test_every_fusion_parameter_receives_a_gradient(mode):
    torch.manual_seed(0)
    fusion = BilateralFusion(32, audio_dim=16, num_heads=4, mode=mode).train()
    visual, audio = torch.randn(2, 32, 8, 8), torch.randn(2, 1, 16)
    v, a = fusion(visual, audio)
    g = torch.Generator().manual_seed(1)
    loss = (v * torch.randn(v.shape, generator=g)).sum()
    if mode == "bilateral":
        loss = loss + (a * torch.randn(a.shape, generator=g)).sum()
    loss.backward()
    without = [n for n, p in fusion.named_parameters() if p.grad is None or not p.grad.any()]
    assert without == []
    # with the visual output alone, the shared logits still learn: the visual update reads them
    if mode == "audio_to_visual":
        assert fusion.query_audio.weight.grad.abs().sum() > 0 and fusion.key_visual.weight.grad.abs().sum() > 0


def test_bilateral_fusion_shares_one_attention_matrix():
    torch.manual_seed(0)
    kw = {"audio_dim": 16, "num_heads": 4, "num_audio_tokens": 2}
    bi = BilateralFusion(32, mode="bilateral", layer_scale_init=0.5, **kw).eval()
    one_way = BilateralFusion(32, mode="audio_to_visual", **kw).eval()
    result = one_way.load_state_dict(bi.state_dict(), strict=False)
    assert result.missing_keys == []
    assert sorted(result.unexpected_keys) == sorted(
        ["value_visual.weight", "value_visual.bias", "out_audio.weight", "out_audio.bias", "gamma_audio"]
    )
    visual, audio = torch.randn(2, 32, 8, 8), torch.randn(2, 2, 16)
    with torch.no_grad():
        v_bi, a_bi = bi(visual, audio)
        v_one, a_one = one_way(visual, audio)
        a_norm = bi.norm_audio(audio)
    assert v_bi.shape == visual.shape and a_bi.shape == audio.shape
    torch.testing.assert_close(v_bi, v_one)  # same visual update from the same weights
    assert torch.equal(a_one, a_norm)  # one-directional: audio leaves normalised, not updated
    assert not torch.allclose(a_bi, a_norm)
    # the audio update attends over pixels with the same logits the visual update uses
    bi.out_audio.weight.data.zero_()
    bi.out_audio.bias.data.zero_()
    with torch.no_grad():
        assert torch.equal(bi(visual, audio)[1], a_norm)


def test_bilateral_fusion_layer_scale_starts_near_identity_on_normalised_inputs():
    fusion = BilateralFusion(32, audio_dim=16, num_heads=4, layer_scale_init=0.0)
    visual, audio = torch.randn(1, 32, 4, 4), torch.randn(1, 1, 16)
    v, a = fusion(visual, audio)
    # as COMBO (and GLIP): the residual adds to LayerNorm(x), LayerNorm(a)
    v_norm = fusion.norm_visual(visual.flatten(2).transpose(1, 2) + fusion.level_embed)
    torch.testing.assert_close(v, v_norm.transpose(1, 2).reshape(1, 32, 4, 4))
    torch.testing.assert_close(a, fusion.norm_audio(audio))
    assert BilateralFusion(32, num_heads=4).gamma_visual.abs().max() <= 1e-3
    with pytest.raises(ValueError, match="fusion mode"):
        BilateralFusion(32, mode="sideways")


def test_fpn_pixel_decoder_scales():
    dec = FPNPixelDecoder([16, 32, 64, 128], hidden_dim=24)
    feats = [torch.randn(2, c, 96 // s, 64 // s) for c, s in zip([16, 32, 64, 128], [4, 8, 16, 32])]
    multi, mask = dec(feats)
    assert [tuple(m.shape) for m in multi] == [(2, 24, 3, 2), (2, 24, 6, 4), (2, 24, 12, 8)]
    assert mask.shape == (2, 24, 24, 16)


def test_masked_attention_decoder_deep_supervision_and_audio_queries():
    torch.manual_seed(0)
    dec = MaskedAttentionDecoder(32, num_classes=3, num_queries=7, num_layers=4, num_heads=4, ffn_dim=64).eval()
    multi = [torch.randn(2, 32, s, s) for s in (2, 4, 8)]
    mask_features = torch.randn(2, 32, 16, 16)
    with torch.no_grad():
        out = dec(multi, mask_features)
        out_audio = dec(multi, mask_features, torch.randn(2, 32))
    assert out["pred_logits"].shape == (2, 7, 4) and out["pred_masks"].shape == (2, 7, 16, 16)
    assert len(out["aux_outputs"]) == 4  # initial prediction + layers 1..3
    assert all(a["pred_masks"].shape == (2, 7, 16, 16) for a in out["aux_outputs"])
    assert not torch.allclose(out["pred_masks"], out_audio["pred_masks"])
    # the initial prediction already sees the audio query
    assert not torch.allclose(out["aux_outputs"][0]["pred_logits"], out_audio["aux_outputs"][0]["pred_logits"])


# ---- the assembled model ------------------------------------------------------------------


@pytest.mark.parametrize("b,t,size", [(2, 5, 64), (1, 10, 64), (1, 5, 96)])
def test_combo_tiny_output_shapes(b, t, size):
    model = tiny(num_classes=1).eval()
    frames, logmel, maskige = clip(b, t, size)
    with torch.no_grad():
        out = model(frames, logmel, maskige)
    n = b * t
    assert out["pred_logits"].shape == (n, 10, 3)  # background, foreground, no object
    assert out["pred_masks"].shape == (n, 10, size // 4, size // 4)
    assert len(out["aux_outputs"]) == 3 and out["num_frames"] == t
    assert model.segment(out, (size, size)).shape == (n, size, size)


def _semantic_scores(out, size=(64, 64)):
    """Mask2Former's semantic inference by hand: sum over queries of class prob x mask prob."""
    probs = out["pred_logits"].softmax(-1)[..., :-1]  # N x Q x K
    masks = torch.nn.functional.interpolate(out["pred_masks"], size=size, mode="bilinear").sigmoid()
    return (probs[..., None, None] * masks[:, :, None]).sum(1)  # N x K x H x W


def test_segment_binary_is_combos_foreground_against_background():
    model = tiny(num_classes=1).eval()
    assert model.learn_background and model.decoder.num_classes == 2
    with torch.no_grad():
        out = model(*clip())
        logit = model.segment(out, (64, 64))
    scores = _semantic_scores(out)  # N x 2 x H x W: background, foreground
    # COMBO's evaluator: softmax over the two scores, channel 1, > 0.5
    torch.testing.assert_close(torch.sigmoid(logit), scores.softmax(1)[:, 1], rtol=1e-4, atol=1e-6)
    assert torch.equal(torch.sigmoid(logit) > 0.5, logit > 0)
    decided = (scores[:, 1] - scores[:, 0]).abs() > 1e-5
    assert torch.equal((logit > 0)[decided], (scores[:, 1] > scores[:, 0])[decided])


def test_segment_semantic_scores_with_learned_background():
    model = tiny(num_classes=4).eval()
    with torch.no_grad():
        out = model(*clip(1, 10))
        scores = model.segment(out, (64, 64))
    assert out["pred_logits"].shape == (10, 10, 6)  # background + 4 classes + no object
    assert scores.shape == (10, 5, 64, 64)
    torch.testing.assert_close(scores, _semantic_scores(out), rtol=1e-4, atol=1e-6)


def test_segment_ours_derives_background():
    binary = tiny(num_classes=1, learn_background=False).eval()
    semantic = tiny(num_classes=4, learn_background=False).eval()
    assert binary.decoder.num_classes == 1 and semantic.decoder.num_classes == 4
    with torch.no_grad():
        out = binary(*clip())
        logit = binary.segment(out, (64, 64))
        out4 = semantic(*clip(1, 10))
        scores = semantic.segment(out4, (64, 64))
    score = _semantic_scores(out)[:, 0].clamp(1e-6, 1 - 1e-6)
    torch.testing.assert_close(torch.sigmoid(logit), score, rtol=1e-4, atol=1e-5)
    assert scores.shape == (10, 5, 64, 64)
    torch.testing.assert_close(scores[:, 0], (1 - scores[:, 1:].sum(1)).clamp(0, 1))


def test_combo_loss_and_model_agree_on_the_classes():
    model = tiny(num_classes=1, learn_background=False)
    assert model.criterion.hungarian.num_classes == 1 and not model.criterion.learn_background
    assert tiny(num_classes=1).criterion.hungarian.num_classes == 2
    _full_loss(model)["loss"].backward()  # foreground-only targets reach a foreground-only head


def test_each_frame_s_queries_get_that_frame_s_audio():
    # COMBO's decoder hands query q of frame n the audio of frame (q * N + n) // Q; ours does not
    model = tiny().eval()
    frames, logmel, maskige = clip(1, 5)
    other = logmel.clone()
    other[0, 2] = torch.randn(96, 64, generator=torch.Generator().manual_seed(5)) * 10
    with torch.no_grad():
        a = model(frames, logmel, maskige)["pred_logits"]
        b = model(frames, other, maskige)["pred_logits"]
    changed = [(a[i] - b[i]).abs().max() > 1e-6 for i in range(5)]
    assert changed == [False, False, True, False, False]


def test_combo_frames_are_clip_major():
    model = tiny().eval()
    frames, logmel, maskige = clip(2, 5)
    with torch.no_grad():
        both = model(frames, logmel, maskige)
        second = model(frames[1:], logmel[1:], maskige[1:])
    torch.testing.assert_close(both["pred_masks"][5:], second["pred_masks"], rtol=1e-4, atol=1e-5)


def _full_loss(model, b=2, t=5):
    torch.manual_seed(0)  # the same fusion dropout for every model
    frames, logmel, maskige = clip(b, t)
    gt = torch.zeros(b * t, 64, 64, dtype=torch.long)
    gt[:, 16:40, 20:44] = 1
    gt[2] = 0
    targets = targets_from_masks(gt, 1, has_gt=[i % t != 4 for i in range(b * t)])
    return model.loss(model(frames, logmel, maskige), targets)


def test_gradients_reach_every_trainable_parameter():
    model = tiny(lambda_ada=10.0).train()
    _full_loss(model)["loss"].backward()
    without = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert without == []
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_frozen_audio_encoder_gets_no_gradient():
    model = tiny(freeze_audio=True).train()
    assert not model.audio_encoder.training
    _full_loss(model)["loss"].backward()
    assert all(p.grad is None for p in model.audio_encoder.parameters())
    assert model.audio_proj.layers[0].weight.grad.any()  # what follows it still learns


def _names(model):
    return {n for n, _ in model.named_parameters()}


def test_ablation_use_maskige_removes_only_the_siam_branch():
    full, ablated = tiny(), tiny(use_maskige=False)
    removed = _names(full) - _names(ablated)
    assert _names(ablated) <= _names(full)
    assert removed and all(n.startswith(("encoder.maskige_backbone.", "encoder.se_blocks.")) for n in removed)
    frames, logmel, maskige = clip()
    full.eval(), ablated.eval()
    with torch.no_grad():
        a = ablated(frames, logmel, maskige)["pred_masks"]
        b = ablated(frames, logmel, torch.rand_like(maskige))["pred_masks"]
        c = ablated(frames, logmel, None)["pred_masks"]
        d = full(frames, logmel, maskige)["pred_masks"]
        e = full(frames, logmel, torch.rand_like(maskige))["pred_masks"]
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c)
    assert not torch.allclose(d, e)  # with the Siam-Encoder the Maskige matters
    with pytest.raises(ValueError, match="pass maskige"):
        full(frames, logmel, None)


def test_ablation_use_audio_removes_every_audio_path():
    full, ablated = tiny(), tiny(use_audio=False)
    removed = _names(full) - _names(ablated)
    assert _names(ablated) <= _names(full)
    assert removed and all(n.startswith(("audio_encoder.", "audio_proj.", "fusion.")) for n in removed)
    assert {n.split(".")[0] for n in removed} == {"audio_encoder", "audio_proj", "fusion"}
    frames, logmel, maskige = clip()
    full.eval(), ablated.eval()
    with torch.no_grad():
        a = ablated(frames, logmel, maskige)["pred_masks"]
        b = ablated(frames, torch.randn_like(logmel), maskige)["pred_masks"]
        d = full(frames, logmel, maskige)["pred_masks"]
        e = full(frames, torch.randn_like(logmel), maskige)["pred_masks"]
    torch.testing.assert_close(a, b)
    assert not torch.allclose(d, e)


def test_ablation_fusion_direction_removes_only_the_audio_update():
    bi, one_way = tiny(fusion="bilateral"), tiny(fusion="audio_to_visual")
    removed = _names(bi) - _names(one_way)
    assert _names(one_way) <= _names(bi)
    assert removed == {
        "fusion.value_visual.weight", "fusion.value_visual.bias", "fusion.out_audio.weight", "fusion.out_audio.bias",
        "fusion.gamma_audio",
    }  # fmt: skip
    # with the shared weights, only the audio tokens (hence the queries) differ
    one_way.load_state_dict(bi.state_dict(), strict=False)
    bi.fusion.gamma_audio.data.fill_(0.5)
    bi.eval(), one_way.eval()
    frames, logmel, maskige = clip()
    with torch.no_grad():
        out_bi, out_one = bi(frames, logmel, maskige), one_way(frames, logmel, maskige)
        bi.fusion.gamma_audio.data.zero_()  # no audio update: the two models agree
        out_bi0 = bi(frames, logmel, maskige)
    assert not torch.allclose(out_bi["pred_masks"], out_one["pred_masks"])
    torch.testing.assert_close(out_bi0["pred_masks"], out_one["pred_masks"])


def test_ablation_lambda_ada_changes_only_the_loss():
    on, off = tiny(lambda_ada=10.0), tiny(lambda_ada=0.0)
    assert _names(on) == _names(off)
    for (n, p), (_, q) in zip(on.named_parameters(), off.named_parameters()):
        assert torch.equal(p, q), n
    on.train(), off.train()
    loss_on, loss_off = _full_loss(on), _full_loss(off)
    assert "loss_ada" in loss_on and "loss_ada" not in loss_off
    shared = set(loss_off) - {"loss"}
    assert shared == {k for k in loss_on if not k.startswith("loss_ada")} - {"loss"}
    for k in shared:
        torch.testing.assert_close(loss_on[k], loss_off[k])
    torch.testing.assert_close(loss_on["loss"], loss_off["loss"] + 10.0 * loss_on["loss_ada"])


def test_channels_last_gives_the_same_outputs():
    model = tiny().eval()
    cl = tiny(channels_last=True).eval().to(memory_format=torch.channels_last)
    frames, logmel, maskige = clip()
    with torch.no_grad():
        a, b = model(frames, logmel, maskige), cl(frames, logmel, maskige)
    torch.testing.assert_close(a["pred_masks"], b["pred_masks"], rtol=1e-3, atol=1e-4)


def test_combo_rejects_mismatched_inputs():
    model = tiny()
    frames, logmel, maskige = clip(2, 5)
    with pytest.raises(ValueError, match="logmel must be B x T"):
        model(frames, logmel[:, :4], maskige)
    with pytest.raises(ValueError, match="maskige must be"):
        model(frames, logmel, maskige[:, :4])
