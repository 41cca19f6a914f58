"""VGGish audio encoder: one 96 x 64 log-mel example (0.96 s) -> one 128-d embedding.

The layer layout and parameter names follow the common PyTorch port of VGGish
(``features.{0,3,6,8,11,13}`` convs, ``embeddings.{0,2,4}`` linears), so its released
state dict loads without renaming. The port flattens the last conv map in TensorFlow's
channels-last order (H, W, C); this module does the same so the first FC layer's weights
mean what they meant in TensorFlow.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from models.backbones import load_state_dict_checked, read_state_dict

LOGMEL_FRAMES = 96
LOGMEL_BANDS = 64


class VGGishEncoder(nn.Module):
    """VGGish: conv w0, pool, conv w1, pool, conv w2 x2, pool, conv w3 x2, pool, FC, FC, FC.

    Args:
        widths: conv widths of the four blocks (VGGish: 64, 128, 256, 512).
        fc_dims: widths of the two hidden FC layers (VGGish: 4096, 4096).
        out_dim: embedding size (VGGish: 128).
        freeze: if True, no parameter requires grad and the module stays in eval mode.

    ``forward``: ``logmel: N x 1 x 96 x 64`` (or ``N x 96 x 64``) -> ``N x out_dim``.
    ``forward_clip``: ``logmel: B x T x 96 x 64`` -> ``B x T x out_dim``.
    """

    def __init__(
        self,
        widths: Sequence[int] = (64, 128, 256, 512),
        fc_dims: Sequence[int] = (4096, 4096),
        out_dim: int = 128,
        freeze: bool = False,
    ) -> None:
        super().__init__()
        if len(widths) != 4 or len(fc_dims) != 2:
            raise ValueError(f"VGGish needs 4 conv widths and 2 FC dims, got {widths} and {fc_dims}")
        w0, w1, w2, w3 = (int(w) for w in widths)
        self.features = nn.Sequential(
            nn.Conv2d(1, w0, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
            nn.Conv2d(w0, w1, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
            nn.Conv2d(w1, w2, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(w2, w2, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
            nn.Conv2d(w2, w3, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(w3, w3, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2, 2),
        )  # fmt: skip
        flat = w3 * (LOGMEL_FRAMES // 16) * (LOGMEL_BANDS // 16)
        self.embeddings = nn.Sequential(
            nn.Linear(flat, fc_dims[0]), nn.ReLU(inplace=True),
            nn.Linear(fc_dims[0], fc_dims[1]), nn.ReLU(inplace=True),
            nn.Linear(fc_dims[1], out_dim), nn.ReLU(inplace=True),
        )  # fmt: skip
        self.out_dim = out_dim
        self.frozen = False
        self.reset_parameters()
        if freeze:
            self.freeze()

    def reset_parameters(self) -> None:
        """He initialisation (normal, fan-in, ReLU gain) of every conv and linear layer, zero biases.

        PyTorch's default (uniform, gain 1/sqrt(3) per layer, biases of the same size) shrinks the
        input's part of the activations by about half at every one of VGGish's ten layers while the
        biases keep their size: at initialisation the tiny encoder gave every log-mel nearly the
        same embedding (distances between the embeddings of different sounds about 1% of their norm),
        and trained from scratch its sound barely reached the model (a defect found by
        ``tests/models/test_encoders.py``'s embedding-spread test). Released VGGish weights replace
        all of this; it matters when the encoder is trained from scratch or pretrained here.
        """
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def freeze(self) -> None:
        """Stop training this encoder: no grads, and eval mode kept through ``train()``."""
        self.frozen = True
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "VGGishEncoder":
        return super().train(mode and not self.frozen)

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        if logmel.dim() == 3:
            logmel = logmel.unsqueeze(1)
        if logmel.dim() != 4 or tuple(logmel.shape[1:]) != (1, LOGMEL_FRAMES, LOGMEL_BANDS):
            raise ValueError(
                f"VGGish input must be N x 1 x {LOGMEL_FRAMES} x {LOGMEL_BANDS} log-mel, got {tuple(logmel.shape)}"
            )
        x = self.features(logmel)
        # TensorFlow order (N, H, W, C) before flattening, as the released weights expect.
        x = x.permute(0, 2, 3, 1).flatten(1)
        return self.embeddings(x)

    def forward_clip(self, logmel: torch.Tensor) -> torch.Tensor:
        """``logmel: B x T x 96 x 64`` -> ``B x T x out_dim`` (one embedding per second)."""
        if logmel.dim() != 4 or tuple(logmel.shape[2:]) != (LOGMEL_FRAMES, LOGMEL_BANDS):
            raise ValueError(
                f"clip log-mel must be B x T x {LOGMEL_FRAMES} x {LOGMEL_BANDS}, got {tuple(logmel.shape)}"
            )
        b, t = logmel.shape[:2]
        return self.forward(logmel.reshape(b * t, 1, LOGMEL_FRAMES, LOGMEL_BANDS)).reshape(b, t, self.out_dim)


def load_vggish_weights(module: VGGishEncoder, state_dict_or_path: str | os.PathLike | Mapping) -> VGGishEncoder:
    """Load VGGish weights (a state dict, or a local ``torch.save`` file of one) into ``module``.

    Raises ``ValueError`` listing missing, unexpected and wrongly shaped keys when the
    checkpoint does not fit (e.g. a full-size checkpoint into a tiny encoder). The PCA
    post-processing parameters some ports ship (``pproc.*``) are ignored: COMBO uses the raw
    embedding.
    """
    state_dict = read_state_dict(state_dict_or_path, "VGGish")
    load_state_dict_checked(module, state_dict, "VGGish", ignore_unexpected_prefixes=("pproc.",))
    if module.frozen:
        module.freeze()
    return module
