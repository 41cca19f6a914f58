"""MoCA and its baselines: shapes, frozen encoders and which parameters learn, the pixel matching
aggregation, the contrastive loss and proposal matching on hand-made cases, the baselines on
hand-made inputs, no masks anywhere, and the errors for what is not supported."""

import inspect
import math

import numpy as np
import pytest
import torch
from torch import nn

from models.build import MOCA_MODELS, build_model, model_registry
from models.moca import (
    MASKIGE_UNCOVERED_RGB,
    AudioPixelMap,
    MoCA,
    SaliencyBaseline,
    SimilarityBaseline,
    contrastive_loss,
    image_score,
    margin_ranking,
    maskige_proposals,
    match_proposals,
    pair_scores,
    pick_salient_proposal,
    pixel_matching_aggregation,
    pixel_saliency,
)

torch.set_num_threads(1)

UNCOVERED = MASKIGE_UNCOVERED_RGB
RED, CYAN = (180, 120, 120), (6, 230, 230)  # palette indices 1 and 2


def clip(b=1, t=2, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, t, 3, size, size, generator=g), torch.randn(b, t, 96, 64, generator=g)


def paint(*rows):
    """Maskige RGB in [0, 1], 1 x 3 x H x W, from rows of colour tuples (0..255)."""
    return torch.tensor(rows, dtype=torch.float32).div(255).permute(2, 0, 1)[None]


def wake_adapters(model):
    """The adapters' output projections start at zero (identity), which hides every other adapter
    parameter's gradient; give them weights for the gradient checks."""
    for adapter in model.adapters:
        for layer in (adapter.out, adapter.up):
            nn.init.normal_(layer.weight, std=0.1)


class StubBackbone(nn.Module):
    """Hand-made frozen features: every stage returns ``features`` (N x C x h x w), whatever the input."""

    def __init__(self, features):
        super().__init__()
        self.channels = [features.shape[1]] * 4
        self.register_buffer("features", features)

    def forward(self, x):
        return [self.features] * 4


class StubAudio(nn.Module):
    """Hand-made audio embedding: the first ``out_dim`` bands of each second's first log-mel row."""

    out_dim = 2
    frozen = True

    def forward_clip(self, logmel):
        return logmel[..., 0, : self.out_dim]


# ---- shapes and the shared interface ----------------------------------------------------------


@pytest.mark.parametrize("name", ["moca_tiny", "moca_baseline_similarity_tiny", "moca_baseline_saliency_tiny"])
def test_forward_and_segment_shapes(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=1).eval()
    frames, logmel = clip(b=2, t=3)
    ids = torch.randint(0, 4, (2, 3, 64, 64))
    maskige = torch.tensor([UNCOVERED, RED, CYAN, (4, 200, 3)]).float().div(255)[ids].permute(0, 1, 4, 2, 3)
    with torch.no_grad():
        out = model(frames, logmel, maskige)
    assert out["masks"].shape == (6, 1, 64, 64) and out["num_frames"] == 3
    assert model.segment(out, (32, 48)).shape == (6, 32, 48)
    if name != "moca_baseline_saliency_tiny":
        assert out["score_map"].shape == (6, 4, 4)  # the stride-16 map of a 64-pixel frame
        assert out["score_map"].abs().max() <= 1 + 1e-5  # cosines
        with torch.no_grad():
            without = model(frames, logmel, None)  # no Maskige: the map thresholded per pixel
        assert without["masks"].shape == (6, 1, 64, 64)


def test_forward_takes_the_shared_inputs_and_never_masks():
    from tasks.evaluate.scoring import model_inputs, predict

    params = inspect.signature(MoCA.forward).parameters
    assert list(params)[:4] == ["self", "frames", "logmel", "maskige"]
    assert all(p.kind is p.KEYWORD_ONLY for p in list(params.values())[4:])  # the training step's partners
    for method in (MoCA.forward, MoCA.training_loss):
        assert not any("mask" in p and p != "maskige" for p in inspect.signature(method).parameters)
    torch.manual_seed(0)
    model = build_model("moca_tiny").eval()
    frames, logmel = clip(b=2, t=2)
    ids = torch.randint(0, 3, (2, 2, 64, 64))
    maskige = torch.tensor([UNCOVERED, RED, CYAN]).float().div(255)[ids].permute(0, 1, 4, 2, 3)
    batch = {"frames": frames, "logmel": logmel, "maskige": maskige, "has_maskige": torch.tensor([True, True])}
    with torch.no_grad():
        out = model(**model_inputs(batch))  # a batch without masks at all
    # what evaluation does with it: B x T x H x W logits at the masks' size
    pred = predict(model, out, {**batch, "masks": torch.zeros(2, 2, 32, 32, dtype=torch.long)})
    assert pred.shape == (2, 2, 32, 32)
    with pytest.raises(RuntimeError, match="unsupervised and never sees masks"):
        model.loss(out, [None] * 4)


# ---- frozen encoders, trainable adapter ----------------------------------------------------------


def test_adapter_starts_as_the_identity():
    torch.manual_seed(0)
    model = build_model("moca_tiny").eval()
    frames, logmel = clip()
    with torch.no_grad():
        with_adapter = model(frames, logmel)["score_map"]
        model.adapters = nn.ModuleList()
        without = model(frames, logmel)["score_map"]
    torch.testing.assert_close(with_adapter, without)


def test_only_the_adapters_and_heads_learn_from_the_contrastive_loss():
    torch.manual_seed(0)
    model = build_model("moca_tiny").train()
    wake_adapters(model)
    assert not model.backbone.training and not model.audio_encoder.training  # frozen: eval through train()
    stats = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    out = model.training_loss(
        torch.rand(2, 3, 64, 64, generator=g),
        torch.randn(2, 96, 64, generator=g),
        torch.rand(2, 2, 3, 64, 64, generator=g),
        torch.rand(2, 3, 3, 64, 64, generator=g),
    )
    assert out["loss"] > 0
    out["loss"].backward()
    for name, p in model.named_parameters():
        if name.startswith(("backbone.", "audio_encoder.")):
            assert not p.requires_grad and p.grad is None, name
        else:
            assert name.startswith(("adapters.", "visual_head.", "audio_head.")), name
            assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, stats[k]), k  # BatchNorm statistics never move


def test_few_trainable_parameters():
    torch.manual_seed(0)
    model = build_model("moca_tiny")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    assert trainable < frozen / 5
    baseline = build_model("moca_baseline_similarity_tiny")
    # one linear layer: the stride-16 TinyCNN map (64 channels) -> VGGish's 128
    trainable = [n for n, p in baseline.named_parameters() if p.requires_grad]
    assert trainable == ["visual_head.1.weight", "visual_head.1.bias"]
    assert sum(p.numel() for p in baseline.parameters() if p.requires_grad) == 64 * 128 + 128
    assert not any(p.requires_grad for p in build_model("moca_baseline_saliency_tiny").parameters())


def test_a_training_step_goes_through_forward():
    torch.manual_seed(0)
    model = build_model("moca_tiny").train()
    g = torch.Generator().manual_seed(3)
    frames, logmel = torch.rand(2, 3, 64, 64, generator=g), torch.randn(2, 96, 64, generator=g)
    pos, neg = torch.rand(2, 1, 3, 64, 64, generator=g), torch.rand(2, 2, 3, 64, 64, generator=g)
    with torch.no_grad():
        direct = model.training_loss(frames, logmel, pos, neg)
        through = model(frames=frames, logmel=logmel, positive_frames=pos, negative_frames=neg)
    assert direct.keys() == through.keys()
    for key in direct:
        torch.testing.assert_close(direct[key], through[key])
    with pytest.raises(ValueError, match="together"):
        model(frames=frames, logmel=logmel, positive_frames=pos)


def test_padding_partners_do_not_count():
    torch.manual_seed(0)
    model = build_model("moca_tiny").eval()
    g = torch.Generator().manual_seed(2)
    frames, logmel = torch.rand(2, 3, 64, 64, generator=g), torch.randn(2, 96, 64, generator=g)
    pos, neg = torch.rand(2, 2, 3, 64, 64, generator=g), torch.rand(2, 2, 3, 64, 64, generator=g)
    junk = torch.rand(2, 1, 3, 64, 64, generator=g)
    with torch.no_grad():
        plain = model.training_loss(frames, logmel, pos, neg)["loss"]
        padded = model.training_loss(
            frames, logmel, torch.cat([pos, junk], 1), torch.cat([neg, junk], 1),
            positive_valid=torch.tensor([[True, True, False]] * 2),
            negative_valid=torch.tensor([[True, True, False]] * 2),
        )["loss"]  # fmt: skip
    torch.testing.assert_close(plain, padded)
    # anchors of any leading shape: B x T anchors give the same loss as the flattened batch
    with torch.no_grad():
        clipwise = model.training_loss(frames[None], logmel[None], pos[None], neg[None])["loss"]
    torch.testing.assert_close(plain, clipwise)


# ---- pixel matching aggregation and the loss, by hand ----------------------------------------------


def test_pixel_matching_aggregation_by_hand():
    z = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # 1 image, 2 pixels, D = 2
    s = torch.tensor([[0.5, -0.2]])
    pair_z = torch.tensor([[[[0.6, 0.8], [1.0, 0.0], [0.0, -1.0]],  # paired image 1: 3 pixels
                            [[0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]]])  # paired image 2
    pair_s = torch.tensor([[[0.9, 0.1, -0.5], [0.4, 0.7, 0.3]]])  # fmt: skip
    # one paired image. pixel 0 = (1, 0): best match its pixel 1 (cos 1) with score 0.1:
    #   (0.5 + 1 * 0.1) / (1 + 1) = 0.3
    # pixel 1 = (0, 1): best match its pixel 0 (cos 0.8) with score 0.9:
    #   (-0.2 + 0.8 * 0.9) / (1 + 0.8) = 0.52 / 1.8
    one = pixel_matching_aggregation(z, s, pair_z[:, :1], pair_s[:, :1])
    torch.testing.assert_close(one, torch.tensor([[0.3, 0.52 / 1.8]]))
    # both. pixel 0 in image 2: best cos is 0 (its pixels 0 and 2) -> weight 0, nothing added;
    # pixel 1 in image 2: its pixel 0 (cos 1), score 0.4: (-0.2 + 0.72 + 0.4) / (1 + 0.8 + 1)
    both = pixel_matching_aggregation(z, s, pair_z, pair_s)
    torch.testing.assert_close(both, torch.tensor([[0.3, 0.92 / 2.8]]))
    # an image paired with itself keeps its map
    torch.testing.assert_close(pixel_matching_aggregation(z, s, z[:, None], s[:, None]), s)


def test_image_score_and_margin_ranking_by_hand():
    e = math.e
    torch.testing.assert_close(image_score(torch.tensor([0.0, 1.0]), 1.0), torch.tensor(e / (1 + e)))
    torch.testing.assert_close(image_score(torch.tensor([0.2, 0.2]), 0.1), torch.tensor(0.2))
    pos, neg = torch.tensor([[0.8, 0.2]]), torch.tensor([[0.1, 0.5]])
    # hinges 0.5 - pos + neg: (0.8, 0.1) -> 0, (0.8, 0.5) -> 0.2, (0.2, 0.1) -> 0.4, (0.2, 0.5) -> 0.8
    torch.testing.assert_close(margin_ranking(pos, neg, 0.5), torch.tensor(1.4 / 4))
    torch.testing.assert_close(margin_ranking(pos, neg, 0.5, negative_valid=torch.tensor([[True, False]])),
                               torch.tensor(0.4 / 2))


def test_contrastive_loss_counts_the_anchor_as_a_positive_and_uses_pma():
    torch.manual_seed(0)
    z = nn.functional.normalize(torch.randn(2, 5, 3), dim=-1)
    unit = lambda *shape: nn.functional.normalize(torch.randn(*shape, 3), dim=-1)  # noqa: E731
    anchor = AudioPixelMap(z, torch.rand(2, 5))
    positives = AudioPixelMap(unit(2, 2, 5), torch.rand(2, 2, 5))
    negatives = AudioPixelMap(unit(2, 3, 5), torch.rand(2, 3, 5) - 0.5)
    out = contrastive_loss(anchor, positives, negatives, margin=0.3, temperature=0.2)
    own = image_score(anchor.scores, 0.2)[:, None]
    pos = torch.cat([own, pair_scores(anchor, positives, 0.2)], 1)
    neg = pair_scores(anchor, negatives, 0.2)
    torch.testing.assert_close(out["loss"], margin_ranking(pos, neg, 0.3))
    # the partners' maps are aggregated with their anchor's before pooling
    aggregated = pixel_matching_aggregation(
        negatives.pixels[1, 2][None], negatives.scores[1, 2][None], z[1][None, None], anchor.scores[1][None, None]
    )
    torch.testing.assert_close(neg[1, 2], image_score(aggregated, 0.2)[0])
    torch.testing.assert_close(pair_scores(anchor, negatives, 0.2, aggregate=False), image_score(negatives.scores, 0.2))


# ---- proposals, by hand -------------------------------------------------------------------------


def test_maskige_colours_become_proposals():
    from tasks.enrich.maskige import ADE20K_PALETTE, maskige_rgb
    from tasks.shards.loader import maskige_lut

    assert tuple(ADE20K_PALETTE[0]) == MASKIGE_UNCOVERED_RGB
    index = np.array([[0, 1, 1], [2, 2, 0]], dtype=np.uint8)
    rgb = torch.from_numpy(maskige_rgb(index)).float().div(255).permute(2, 0, 1)[None]
    loader_rgb = maskige_lut().float().div(255)[torch.from_numpy(index).long()].permute(2, 0, 1)[None]
    torch.testing.assert_close(rgb, loader_rgb)  # the colours the loader hands the model
    ids = maskige_proposals(torch.cat([rgb, rgb]))
    assert (ids[:, index == 0] == 0).all()
    for frame in range(2):
        a, b = ids[frame, 0, 1], ids[frame, 1, 0]
        assert a > 0 and b > 0 and a != b
        assert (ids[frame][index == 1] == a).all() and (ids[frame][index == 2] == b).all()
    assert ids[0, 0, 1] != ids[1, 0, 1]  # ids are unique across the batch


def test_proposal_matching_by_hand():
    # 2 x 4 frame: proposal A (left half), proposal B (top right), no proposal (bottom right)
    proposals = torch.tensor([[[1, 1, 2, 2], [1, 1, 0, 0]]])
    scores = torch.tensor([[[0.6, 0.2, 0.3, -0.1], [0.5, 0.3, 0.9, 0.9]]])
    # A: mean (0.6 + 0.2 + 0.5 + 0.3) / 4 = 0.4 > 0.3: marked, logit (0.4 - 0.3) * 10 = 1
    # B: mean 0.1 < 0.3: not marked, (0.1 - 0.3) * 10 = -2; outside: (-1 - 0.3) * 10 = -13
    logits = match_proposals(scores, proposals, threshold=0.3, logit_scale=10.0)
    torch.testing.assert_close(logits, torch.tensor([[[1.0, 1.0, -2.0, -2.0], [1.0, 1.0, -13.0, -13.0]]]))


def test_similarity_baseline_by_hand_with_and_without_proposals():
    # features C = 2 on a 2 x 3 grid: LayerNorm over two channels sends (a, b) to +-(1, -1), so a
    # pixel's unit embedding (identity head) is (1, -1)/sqrt(2) where a > b, else (-1, 1)/sqrt(2)
    a = torch.tensor([[3.0, 0.0, 2.0], [1.0, 5.0, 0.0]])
    b = torch.tensor([[1.0, 2.0, 0.0], [4.0, 1.0, 3.0]])
    model = SimilarityBaseline(StubBackbone(torch.stack([a, b])[None]), StubAudio(), threshold=0.1, logit_scale=10.0)
    with torch.no_grad():
        model.visual_head[1].weight.copy_(torch.eye(2))
        model.visual_head[1].bias.zero_()
    logmel = torch.zeros(1, 1, 96, 64)
    logmel[..., 0, 0] = 2.0  # audio embedding (2, 0) -> unit (1, 0)
    frames = torch.rand(1, 1, 3, 2, 3)
    r = 1 / math.sqrt(2)
    expected = torch.where(a > b, r, -r)
    with torch.no_grad():
        out = model(frames, logmel)
    torch.testing.assert_close(out["score_map"][0], expected)
    torch.testing.assert_close(out["masks"][0, 0], (expected - 0.1) * 10)  # per pixel
    # with proposals: the left two columns one proposal (mean of r, -r, -r, r = 0), the right column
    # another (r, -r: 0), threshold 0.1 -> neither marked
    model.use_proposals = True
    maskige = paint([RED, RED, CYAN], [RED, RED, CYAN])[:, None]
    with torch.no_grad():
        out = model(frames, logmel, maskige)
    torch.testing.assert_close(out["masks"][0, 0], torch.full((2, 3), -1.0))
    model.threshold = -0.1
    with torch.no_grad():
        out = model(frames, logmel, maskige)
    torch.testing.assert_close(out["masks"][0, 0], torch.full((2, 3), 1.0))


def test_saliency_by_hand():
    f = torch.tensor([[[[0.0, 0.0, 3.0]], [[0.0, 0.0, 0.0]]]])  # 1 x 2 x 1 x 3: pixels (0,0), (0,0), (3,0)
    # mean (1, 0); distances 1, 1, 2; their mean 4/3
    torch.testing.assert_close(pixel_saliency(f), torch.tensor([[[0.75, 0.75, 1.5]]]))
    saliency = torch.tensor([[[2.0, 2.0, 2.0, 2.0], [1.0, 3.0, 2.0, 2.0], [1.5, 1.5, 9.0, 0.0], [1.5, 1.5, 0.0, 0.0]]])
    proposals = torch.tensor([[[1, 1, 1, 1], [1, 1, 1, 1], [2, 2, 3, 0], [2, 2, 0, 0]]])
    # proposal 1: area 8, saliency 2; proposal 2: area 4, saliency 1.5; proposal 3: area 1 < 0.1 * 16,
    # not a candidate despite saliency 9. Logits: 1 -> (2 - 1.5) * 10 = 5, 2 -> (1.5 - 2) * 10 = -5,
    # everything else -2 * 10
    logits = pick_salient_proposal(saliency, proposals, min_area=0.1, logit_scale=10.0)
    expected = torch.tensor([[[5.0] * 4, [5.0] * 4, [-5.0, -5.0, -20.0, -20.0], [-5.0, -5.0, -20.0, -20.0]]])
    torch.testing.assert_close(logits, expected)
    # a frame without candidates marks nothing
    none = pick_salient_proposal(saliency, torch.zeros_like(proposals), min_area=0.1, logit_scale=10.0)
    assert (none <= 0).all()


def test_saliency_baseline_ignores_audio_and_needs_the_maskige():
    # pixel (0, 2) stands out: its proposal (the right column) is picked
    f = torch.tensor([[[0.0, 0.0, 3.0], [0.0, 0.0, 3.0]], [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])[None]
    model = SaliencyBaseline(StubBackbone(f), min_area=0.0)
    frames = torch.rand(1, 1, 3, 2, 3)
    maskige = paint([RED, RED, CYAN], [RED, RED, CYAN])[:, None]
    with torch.no_grad():
        quiet = model(frames, None, maskige)
        loud = model(frames, torch.randn(1, 1, 96, 64), maskige)
    torch.testing.assert_close(quiet["masks"], loud["masks"])
    marked = quiet["masks"][0, 0] > 0
    assert marked.tolist() == [[False, False, True], [False, False, True]]
    with pytest.raises(ValueError, match="pass maskige"):
        model(frames, None, None)


# ---- the registry and what is not supported ---------------------------------------------------------


def test_registry_builds_every_tiny_moca_model():
    assert set(MOCA_MODELS) <= set(model_registry)
    kinds = {"moca_tiny": MoCA, "moca_baseline_similarity_tiny": SimilarityBaseline,
             "moca_baseline_saliency_tiny": SaliencyBaseline}  # fmt: skip
    for name, cls in kinds.items():
        model = build_model(name, num_classes=1, use_maskige=True, fusion="bilateral", channels_last=False)
        assert type(model) is cls
    assert build_model("moca_tiny").audio_encoder.frozen  # every encoder frozen by default
    assert not build_model("moca_tiny", freeze_audio=False).audio_encoder.frozen
    assert build_model("moca_tiny", use_maskige=False).use_proposals is False
    assert build_model("moca_tiny", threshold=0.2, margin=0.3).threshold == 0.2
    with pytest.raises(TypeError):
        build_model("moca_tiny", lambda_ada=1.0)


@pytest.mark.parametrize("name", ["moca_tiny", "moca_baseline_similarity_tiny", "moca_baseline_saliency_tiny"])
def test_semantic_use_is_a_clear_error(name):
    with pytest.raises(ValueError, match=r"num_classes=1 \(S4 / MS3\) only.*AVSS is not supported"):
        build_model(name, num_classes=71)


def test_unsupported_switches_are_clear_errors():
    with pytest.raises(ValueError, match="audio-visual"):
        build_model("moca_tiny", use_audio=False)
    with pytest.raises(ValueError, match="use_maskige=False"):
        build_model("moca_baseline_saliency_tiny", use_maskige=False)
    with pytest.raises(ValueError, match="threshold"):
        build_model("moca_tiny", threshold=1.5)
