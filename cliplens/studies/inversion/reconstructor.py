"""Study 000's reconstructor: patch tokens [B, P, D] -> image [B, 3, S, S] in [-1, 1].

Each token is L2-normalised (as published) and whitened with training statistics (an invertible
affine map: same function class, far faster optimisation), mapped linearly to the model width,
given learned position embeddings and passed through a pre-LayerNorm transformer; the grid is
reshaped to [B, width, gh, gw], then log2(S / gh) transposed-convolution x2 upsampling stages,
each followed by residual blocks, and a 3x3 convolution to RGB.  Saved as safetensors with a JSON
of its configuration and training record.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...core.io import atomic_path, write_json_atomic
from ...core.models.storage import DIGESTS, sha256_file, verify_digests
from ...core.settings import ReconstructorSettings
from ...core.stats import StreamingMoments

#: files of a trained reconstructor
WEIGHTS_FILE = "reconstructor.safetensors"
META_FILE = "reconstructor.json"
CHECKPOINT_FILE = "last.pt"

# ---------------------------------------------------------------------------------------------
# the reconstructor


def upsampling_stages(image_size: int, grid: int) -> int:
    """log2(image_size / grid): the number of x2 stages from the token grid to the image."""
    if grid < 1 or image_size % grid:
        raise ValueError(f"image size {image_size} is not a multiple of the grid side {grid}")
    scale = image_size // grid
    stages = int(round(math.log2(scale)))
    if 2 ** stages != scale:
        raise ValueError(f"image size / grid = {scale} is not a power of two; the reconstructor "
                         "upsamples by x2 stages")
    return stages


class ResBlock(nn.Module):
    """x + conv3x3(SiLU(conv3x3(SiLU(x)))) at constant width."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


class UpStage(nn.Module):
    """ConvTranspose2d(c_in, c_out, 4, stride 2, padding 1) (exactly x2), then residual blocks."""

    def __init__(self, c_in: int, c_out: int, res_blocks: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1)
        self.blocks = nn.Sequential(*[ResBlock(c_out) for _ in range(res_blocks)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(F.silu(self.up(x)))


class Reconstructor(nn.Module):
    """Patch tokens [B, P, D] -> image [B, 3, S, S] (target range [-1, 1]).

    ``grid`` (gh, gw) with P = gh * gw and S = gh * 2^k = gw * 2^k; k = log2(S / gh) upsampling
    stages use the *last* k entries of ``channels`` (so one config serves several patch sizes;
    the published model: width 768, depth 4, heads 12, channels 384, 192, 96, 48 for patch 16).

    Forward: x = normalize(t) (``normalize_tokens``); z = (x - mu) W (whitening buffers, the
    identity until :meth:`fit_token_stats`); h = Transformer(z A^T + a + pos) (no final
    LayerNorm: it slowed fitting on the toy world); grid [B, width, gh, gw]; per stage
    h = ResBlocks(SiLU(ConvTranspose(h))); image = Conv3x3(SiLU(h)).
    """

    def __init__(
        self,
        token_dim: int,
        grid: Sequence[int],
        image_size: int,
        *,
        width: int = 768,
        depth: int = 4,
        heads: int = 12,
        mlp_ratio: float = 4.0,
        channels: Sequence[int] = (384, 192, 96, 48),
        res_blocks: int = 1,
        normalize_tokens: bool = True,
        whiten_tokens: bool = True,
        whiten_eps: float = 1e-4,
    ):
        super().__init__()
        gh, gw = (int(grid[0]), int(grid[1]))
        stages = upsampling_stages(image_size, gh)
        if upsampling_stages(image_size, gw) != stages:
            raise ValueError(f"grid {gh}x{gw} does not scale to a square {image_size} image")
        if len(channels) < stages:
            raise ValueError(f"{stages} upsampling stages (image {image_size}, grid {gh}) need "
                             f"{stages} channel widths, config gives {list(channels)}")
        if width % heads:
            raise ValueError(f"heads {heads} does not divide width {width}")
        self.config = {
            "token_dim": int(token_dim), "grid": [gh, gw], "image_size": int(image_size),
            "width": int(width), "depth": int(depth), "heads": int(heads),
            "mlp_ratio": float(mlp_ratio), "channels": [int(c) for c in channels],
            "res_blocks": int(res_blocks), "normalize_tokens": bool(normalize_tokens),
            "whiten_tokens": bool(whiten_tokens), "whiten_eps": float(whiten_eps),
        }
        self.grid, self.image_size = (gh, gw), int(image_size)
        self.normalize_tokens, self.whiten_tokens = normalize_tokens, whiten_tokens
        self.whiten_eps = float(whiten_eps)
        # input whitening fitted on training tokens (fit_token_stats); the identity until then
        self.register_buffer("token_mean", torch.zeros(token_dim))
        self.register_buffer("token_whiten", torch.eye(token_dim))
        self.proj = nn.Linear(token_dim, width)
        self.pos = nn.Parameter(torch.randn(1, gh * gw, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, int(round(width * mlp_ratio)),
                                           dropout=0.0, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        chans = list(channels)[len(channels) - stages:] if stages else []
        c, ups = width, []
        for co in chans:
            ups.append(UpStage(c, int(co), res_blocks))
            c = int(co)
        self.up = nn.Sequential(*ups)
        self.to_rgb = nn.Conv2d(c, 3, 3, padding=1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, p, _ = tokens.shape
        gh, gw = self.grid
        if p != gh * gw:
            raise ValueError(f"got {p} tokens, the reconstructor expects {gh}x{gw}")
        x = F.normalize(tokens, dim=-1) if self.normalize_tokens else tokens
        x = self.proj((x - self.token_mean) @ self.token_whiten) + self.pos
        x = self.encoder(x)  # no final LayerNorm: token scale carries signal (faster to fit)
        x = x.transpose(1, 2).reshape(b, -1, gh, gw)
        return self.to_rgb(F.silu(self.up(x)))


    @torch.no_grad()
    def fit_token_stats(self, batches: Iterable[torch.Tensor] | torch.Tensor) -> None:
        """Fit the input whitening on sample tokens (a tensor [N, P, D] or an iterable of them,
        accumulated in float64; L2-normalised first if ``normalize_tokens``): with mean mu and
        covariance C = U diag(lambda) U^T of the tokens, the first layer sees z = (x - mu) W with
        the ZCA whitening W = U diag((lambda + eps * lambda_max)^(-1/2)) U^T.

        W is invertible, so proj(z) = x (W A^T) + c spans exactly the affine maps proj(x) can:
        the reconstructor's function class is unchanged, only its optimisation is conditioned.
        That matters: toy and real tokens share one dominant direction (lambda_max / lambda_min
        ~ 1e6 on the toy world), and Adam on raw tokens needs orders of magnitude more steps to
        reach what it reaches in a few hundred on whitened ones.  A no-op unless
        ``whiten_tokens``."""
        if not self.whiten_tokens:
            return
        if isinstance(batches, torch.Tensor):
            batches = [batches]
        moments = StreamingMoments()
        for tok in batches:
            x = tok.to(self.token_mean.device).double().reshape(-1, tok.shape[-1])
            moments.update(F.normalize(x, dim=-1) if self.normalize_tokens else x)
        if moments.n < 2:
            raise ValueError("need at least two tokens to fit the whitening")
        mu, cov = moments.mean, moments.cov
        lam, U = torch.linalg.eigh(cov)
        lam = lam.clamp_min(0) + self.whiten_eps * lam.max().clamp_min(1e-12)
        self.token_mean.copy_(mu.float())
        self.token_whiten.copy_(((U * lam.rsqrt()) @ U.T).float())


def build_reconstructor(token_dim: int, grid: Sequence[int], image_size: int,
                        cfg: ReconstructorSettings, seed: int = 0) -> Reconstructor:
    """A :class:`Reconstructor` from the ``inversion.reconstructor`` settings, initialised from
    ``seed`` (the global torch RNG is restored afterwards)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return Reconstructor(token_dim, grid, image_size, **cfg.to_dict())


# ---------------------------------------------------------------------------------------------
# saving, loading, reconstructing


def save_reconstructor(net: Reconstructor, meta: Mapping[str, Any], out_dir: str | os.PathLike
                       ) -> None:
    """``{out_dir}/reconstructor.safetensors`` (weights) and ``reconstructor.json`` (config and
    training record; written last)."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    with atomic_path(out_dir / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp))
    digests = {WEIGHTS_FILE: sha256_file(out_dir / WEIGHTS_FILE)}
    write_json_atomic(out_dir / META_FILE, {**meta, "config": net.config, DIGESTS: digests})


def load_reconstructor(out_dir: str | os.PathLike, device: str | torch.device = "cpu"
                       ) -> tuple[Reconstructor, dict[str, Any]]:
    """(reconstructor in eval mode, metadata) saved by :func:`save_reconstructor`; weights whose
    SHA-256 differs from the one recorded at save raise
    :class:`~cliplens.core.io.CorruptFileError`."""
    from safetensors.torch import load_file

    out_dir = Path(out_dir)
    meta = json.loads((out_dir / META_FILE).read_text())
    verify_digests(out_dir, meta.get(DIGESTS, {}), what="reconstructor")
    cfg = dict(meta["config"])
    net = Reconstructor(cfg.pop("token_dim"), cfg.pop("grid"), cfg.pop("image_size"), **cfg)
    net.load_state_dict(load_file(str(out_dir / WEIGHTS_FILE)))
    return net.to(device).eval(), meta


@torch.no_grad()
def reconstruct(net: Reconstructor, tokens: torch.Tensor | np.ndarray, batch_size: int = 64
                ) -> torch.Tensor:
    """Reconstructions [N, 3, S, S] (float32, CPU, clamped to [-1, 1]) of tokens [N, P, D]."""
    net.eval()
    device = next(net.parameters()).device
    tokens = torch.as_tensor(tokens)
    out = [net(tokens[a:a + batch_size].to(device).float()).float().clamp(-1, 1).cpu()
           for a in range(0, len(tokens), batch_size)]
    return torch.cat(out) if out else torch.empty(0, 3, net.image_size, net.image_size)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[N, 3, S, S] in [-1, 1] -> uint8 [N, S, S, 3]."""
    x = ((images.float().clamp(-1, 1) + 1) * 127.5).round()
    return x.permute(0, 2, 3, 1).to(torch.uint8).numpy()
