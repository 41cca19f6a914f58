"""Image backbones: one interface, a tiny CNN for CPU work and timm wrappers for real runs.

Every backbone maps ``x: N x 3 x H x W`` (H, W divisible by 32) to a list of four feature
maps at strides 4, 8, 16 and 32, with ``channels[i]`` channels in map ``i``:

    [N x c0 x H/4 x W/4, N x c1 x H/8 x W/8, N x c2 x H/16 x W/16, N x c3 x H/32 x W/32]

Inputs in ``torch.channels_last`` memory format are accepted (outputs then follow it).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

STRIDES = (4, 8, 16, 32)
# The normalisation ImageNet-trained weights expect of RGB in [0, 1]; every model applies it.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def read_state_dict(source: str | os.PathLike | Mapping[str, Any], what: str) -> dict[str, torch.Tensor]:
    """A state dict from a local file path or an in-memory mapping.

    Files are read with ``weights_only=True`` so an untrusted checkpoint cannot run code.
    Wrappers of the form ``{"state_dict": ...}`` or ``{"model": ...}`` are unwrapped.
    s3:// URIs are the caller's business (resolve them to a local file first).
    """
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if "://" in path:
            raise ValueError(f"{what}: weights path {path!r} is a URI; resolve it to a local file first")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{what}: weights file {path!r} does not exist")
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    else:
        loaded = source
    if not isinstance(loaded, Mapping):
        raise TypeError(f"{what}: expected a state dict (mapping of name -> tensor), got {type(loaded).__name__}")
    for wrapper in ("state_dict", "model"):
        if wrapper in loaded and isinstance(loaded[wrapper], Mapping):
            loaded = loaded[wrapper]
    return dict(loaded)


def load_state_dict_checked(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    what: str,
    ignore_unexpected_prefixes: Sequence[str] = (),
) -> None:
    """Load ``state_dict`` into ``module``, failing with one message that lists every problem.

    Unlike ``load_state_dict(strict=True)``, shape mismatches are reported together with
    missing and unexpected keys, and keys under ``ignore_unexpected_prefixes`` (a classifier
    head the module does not have, say) are dropped silently.
    """
    own = module.state_dict()
    state_dict = {
        k: v for k, v in state_dict.items() if not (k not in own and k.startswith(tuple(ignore_unexpected_prefixes)))
    }
    missing = sorted(k for k in own if k not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in own)
    mismatched = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state_dict and tuple(state_dict[k].shape) != tuple(own[k].shape)
    )
    if missing or unexpected or mismatched:

        def show(items: list[str]) -> str:
            head = ", ".join(items[:8])
            return head + (f", ... ({len(items)} in all)" if len(items) > 8 else "")

        problems = []
        if missing:
            problems.append(f"missing keys: {show(missing)}")
        if unexpected:
            problems.append(f"unexpected keys: {show(unexpected)}")
        if mismatched:
            problems.append(f"shape mismatches: {show(mismatched)}")
        raise ValueError(f"{what}: checkpoint does not fit the architecture; " + "; ".join(problems))
    module.load_state_dict(state_dict, strict=True)


class Backbone(nn.Module):
    """Interface: ``forward(x: N x 3 x H x W) -> list of 4 maps at strides 4, 8, 16, 32``.

    Attributes:
        channels: channel count of each of the four maps.
    """

    channels: list[int]

    @staticmethod
    def check_input(x: torch.Tensor, in_chans: int) -> None:
        if x.dim() != 4 or x.shape[1] != in_chans:
            raise ValueError(f"backbone input must be N x {in_chans} x H x W, got {tuple(x.shape)}")
        if x.shape[-2] % 32 or x.shape[-1] % 32:
            raise ValueError(f"backbone input H and W must be divisible by 32, got {tuple(x.shape[-2:])}")


def conv_bn_relu(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class TinyCNN(Backbone):
    """Plain conv-BN-ReLU pyramid for CPU tests and small experiments.

    Stem: two stride-2 convs (stride 4); then one stride-2 conv + one stride-1 conv per stage.
    """

    def __init__(self, channels: Sequence[int] = (16, 32, 64, 128), in_chans: int = 3) -> None:
        super().__init__()
        if len(channels) != 4:
            raise ValueError(f"TinyCNN channels must have 4 entries, got {channels}")
        self.channels = [int(c) for c in channels]
        self.in_chans = in_chans
        c0 = self.channels[0]
        self.stem = nn.Sequential(conv_bn_relu(in_chans, c0 // 2 or 1, 2), conv_bn_relu(c0 // 2 or 1, c0, 2))
        self.stages = nn.ModuleList([conv_bn_relu(c0, c0, 1)])
        for c_in, c_out in zip(self.channels[:-1], self.channels[1:]):
            self.stages.append(nn.Sequential(conv_bn_relu(c_in, c_out, 2), conv_bn_relu(c_out, c_out, 1)))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.check_input(x, self.in_chans)
        x = self.stem(x)
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


# timm model name -> indices of its stride-4..32 feature maps in `feature_info`.
_TIMM_OUT_INDICES = {"resnet50": (1, 2, 3, 4), "pvt_v2_b5": (0, 1, 2, 3)}
# Feature-wrapper settings timm itself uses for these models under `features_only=True`.
_TIMM_FLATTEN_SEQUENTIAL = {"resnet50": False, "pvt_v2_b5": True}
# Keys a classification checkpoint carries that a feature extractor has no use for.
_TIMM_HEAD_PREFIXES = ("fc.", "head.", "classifier.", "head_drop.")


class TimmBackbone(Backbone):
    """A timm model cut to its four stride-4..32 stages (``features_only``-style wrapper).

    The full timm model is built with ``pretrained=False`` (nothing is downloaded); if
    ``pretrained_path`` is given, that file is loaded into it (timm key names, as in a timm or
    torchvision-style classification checkpoint; the classifier head is ignored) before it is
    cut, so a mismatch is reported in the checkpoint's own key names.
    """

    def __init__(self, name: str, pretrained_path: str | os.PathLike | None = None, in_chans: int = 3) -> None:
        super().__init__()
        import timm
        from timm.models import FeatureListNet

        if name not in _TIMM_OUT_INDICES:
            raise ValueError(f"timm backbone {name!r} is not supported; choose one of {sorted(_TIMM_OUT_INDICES)}")
        full = timm.create_model(name, pretrained=False, in_chans=in_chans)
        if pretrained_path is not None:
            state_dict = read_state_dict(pretrained_path, f"backbone {name}")
            load_state_dict_checked(full, state_dict, f"backbone {name} ({pretrained_path})", _TIMM_HEAD_PREFIXES)
        feature_kwargs: dict[str, Any] = {"out_indices": _TIMM_OUT_INDICES[name], "flatten_sequential": _TIMM_FLATTEN_SEQUENTIAL[name]}
        if getattr(full, "output_fmt", None) is not None:
            feature_kwargs["output_fmt"] = full.output_fmt
        self.body = FeatureListNet(full, **feature_kwargs)
        reductions = list(self.body.feature_info.reduction())
        if tuple(reductions) != STRIDES:
            raise RuntimeError(f"timm {name} gives strides {reductions}, expected {STRIDES}")
        self.name = name
        self.in_chans = in_chans
        self.channels = list(self.body.feature_info.channels())

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.check_input(x, self.in_chans)
        return list(self.body(x))


def timm_backbone(name: str, pretrained_path: str | os.PathLike | None = None, in_chans: int = 3) -> TimmBackbone:
    """``TimmBackbone(name, pretrained_path, in_chans)``; names: "resnet50", "pvt_v2_b5"."""
    return TimmBackbone(name, pretrained_path=pretrained_path, in_chans=in_chans)


def build_backbone(name: str, **kwargs: Any) -> Backbone:
    """Backbone by name: "tiny" (``TinyCNN(**kwargs)``), "resnet50", "pvt_v2_b5" (``timm_backbone``)."""
    if name == "tiny":
        return TinyCNN(**kwargs)
    if name in _TIMM_OUT_INDICES:
        return timm_backbone(name, **kwargs)
    raise ValueError(f"unknown backbone {name!r}; valid names: {['tiny', *sorted(_TIMM_OUT_INDICES)]}")
