"""Training objectives of the toy models: softmax contrastive, sigmoid, and SigLIP2's image side.

Shapes: ``N`` image-text pairs, ``D`` embedding width, ``P`` patches of ``p x p`` pixels, ``C``
channels, ``H`` the vision tower's hidden width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def softmax_contrastive_loss(
    image: torch.Tensor,
    text: torch.Tensor,
    scale: torch.Tensor | float,
    match: torch.Tensor | None = None,
) -> torch.Tensor:
    """CLIP's loss; without ``match`` computed by open_clip's ``ClipLoss``.

    With L2-normalised ``image`` x_i and ``text`` y_j [N, D] and logits z_ij = s <x_i, y_j>
    (``scale`` s = exp(t), already exponentiated),
    L = 1/2 [ CE(z, diag) + CE(z^T, diag) ], CE the mean over rows of -log softmax at the diagonal.

    ``match`` (bool [N, N], M_ij: caption j is true of image i, with M_ii true) makes it the
    multi-positive form: each image's target is uniform over the captions true of it, each
    caption's uniform over the images it is true of,

        L = 1/2 [ mean_i sum_j -P_ij log softmax_j(z_i.) + mean_j sum_i -Q_ij log softmax_i(z_.j) ],

    P_ij = M_ij / sum_j' M_ij', Q_ij = M_ij / sum_i' M_i'j; ``match`` = identity gives CLIP's loss.
    """
    if match is None:
        from open_clip.loss import ClipLoss

        return ClipLoss()(image, text, scale)
    m = match.to(image.dtype)
    if m.shape != (len(image), len(text)) or not bool(torch.diagonal(match).all()):
        raise ValueError(f"match must be [{len(image)}, {len(text)}] with a true diagonal")
    logits = scale * image @ text.T
    per_image = -(F.log_softmax(logits, 1) * (m / m.sum(1, keepdim=True))).sum(1).mean()
    per_text = -(F.log_softmax(logits.T, 1) * (m.T / m.T.sum(1, keepdim=True))).sum(1).mean()
    return (per_image + per_text) / 2


def caption_match(labels: torch.Tensor, named: torch.Tensor) -> torch.Tensor:
    """Which captions are true of which images: bool [N, N], M_ij = AND over factors f named by
    caption j (``named`` bool [N, F]) of labels_if = labels_jf (``labels`` int [N, F]; caption
    j was written for image j).  A caption naming every factor matches the images with all of
    its labels; one naming only the colour, every image of that colour."""
    eq = labels[:, None, :] == labels[None, :, :]  # [i, j, f]
    return (eq | ~named[None, :, :].bool()).all(-1)


def sigmoid_loss(
    image: torch.Tensor,
    text: torch.Tensor,
    scale: torch.Tensor | float,
    bias: torch.Tensor | float,
) -> torch.Tensor:
    """SigLIP's pairwise sigmoid loss (Zhai et al. 2023).

    With L2-normalised ``image`` x_i and ``text`` y_j [N, D], logits z_ij = s <x_i, y_j> + b
    (``scale`` s = exp(t') already exponentiated, ``bias`` b) and labels l_ij = +1 if i = j else -1:

        L = -(1/N) sum_i sum_j log sigmoid(l_ij z_ij)

    (the sum over all N^2 pairs divided by the batch size, as in big_vision and open_clip's
    ``SigLipLoss``).
    """
    logits = scale * image @ text.T + bias
    labels = 2 * torch.eye(len(image), device=logits.device, dtype=logits.dtype) - 1
    return -F.logsigmoid(labels * logits).sum() / len(image)


def patchify(pixels: torch.Tensor, patch: int) -> torch.Tensor:
    """[N, C, S, S] -> [N, P, p*p*C]: patches in the order of a ViT's token grid (row-major, as
    ``Conv2d(stride=p).flatten(2)`` lays them out), pixels inside a patch row-major with the
    channels last."""
    n, c, h, w = pixels.shape
    if h % patch or w % patch:
        raise ValueError(f"image {h}x{w} is not a multiple of the patch size {patch}")
    x = pixels.reshape(n, c, h // patch, patch, w // patch, patch).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(n, (h // patch) * (w // patch), patch * patch * c)


class PatchPixelObjective(nn.Module):
    """SigLIP2's image-side objective, toy version: predict each patch's pixels from the vision
    tower's final patch tokens.

    ``kind="pixel"``: the tokens h_k [N, P, H] (``last_hidden_state``, after the post-LayerNorm,
    i.e. what the attention-pooling head reads) of the contrastive forward pass are mapped by a
    head g (a linear map, or a one-hidden-layer GELU MLP if ``hidden > 0``) to the pixels x_k of
    the patch (in the image processor's normalised space):

        L_img = mean_{n,k,d} (g(h_nk) - x_nk)_d^2

    ``kind="masked"``: a second forward pass in which a fraction ``mask_ratio`` of patch
    embeddings (chosen at random per image) is replaced by a learned mask token (position
    embeddings kept); L_img is the same mean squared error over the masked patches only, so the
    tokens must carry what their neighbours look like (masked-patch prediction, as SigLIP2's
    TIPS-style objective).

    In both the gradient flows into every block of the vision tower through the patch tokens.
    The head (and mask token) are not part of the saved model; they are saved beside it.
    """

    def __init__(
        self,
        hidden_size: int,
        patch_size: int,
        channels: int = 3,
        kind: str = "pixel",
        hidden: int = 0,
        mask_ratio: float = 0.5,
    ):
        super().__init__()
        if kind not in ("pixel", "masked"):
            raise ValueError(f"image objective kind {kind!r} is not 'pixel' or 'masked'")
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"image objective mask_ratio must lie in (0, 1), got {mask_ratio}")
        self.kind, self.patch_size, self.mask_ratio = kind, int(patch_size), float(mask_ratio)
        out = self.patch_size**2 * channels
        if hidden > 0:
            self.head = nn.Sequential(nn.Linear(hidden_size, hidden), nn.GELU(), nn.Linear(hidden, out))
        else:
            self.head = nn.Linear(hidden_size, out)
        self.mask_token = nn.Parameter(torch.zeros(hidden_size)) if kind == "masked" else None
        if self.mask_token is not None:
            nn.init.normal_(self.mask_token, std=1.0 / math.sqrt(hidden_size))

    def reconstruction_loss(
        self, tokens: torch.Tensor, pixels: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """MSE between head(tokens) [N, P, p*p*C] and the patches of ``pixels`` [N, C, S, S],
        over the patches where ``mask`` [N, P] is true (all if None)."""
        pred = self.head(tokens)
        target = patchify(pixels, self.patch_size).to(pred.dtype)
        err = (pred - target).pow(2).mean(-1)  # [N, P]
        if mask is None:
            return err.mean()
        m = mask.to(err.dtype)
        return (err * m).sum() / m.sum().clamp_min(1.0)

    def sample_mask(self, n: int, num_patches: int, generator: torch.Generator | None = None,
                    device=None) -> torch.Tensor:
        """Boolean [n, P]: exactly max(1, round(mask_ratio * P)) patches per image, uniformly."""
        k = max(1, int(round(self.mask_ratio * num_patches)))
        noise = torch.rand(n, num_patches, generator=generator)
        idx = noise.argsort(dim=1)[:, :k]
        mask = torch.zeros(n, num_patches, dtype=torch.bool)
        mask.scatter_(1, idx, True)
        return mask.to(device) if device is not None else mask

    def masked_tokens(self, vision_model: nn.Module, pixels: torch.Tensor,
                      mask: torch.Tensor) -> torch.Tensor:
        """Final patch tokens [N, P, H] of a transformers SigLIP vision tower
        (``SiglipModel.vision_model``) when the patch embeddings where ``mask`` is true are
        replaced by the mask token: embeddings -> encoder -> post_layernorm, as its forward."""
        emb = vision_model.embeddings
        x = emb(pixels.to(emb.patch_embedding.weight.dtype))  # patch + position embeddings
        pos = emb.position_embedding(emb.position_ids)  # [1, P, H]
        x = torch.where(mask[..., None], self.mask_token.to(x.dtype) + pos, x)
        h = vision_model.encoder(inputs_embeds=x).last_hidden_state
        return vision_model.post_layernorm(h)

    def forward(
        self,
        vision_model: nn.Module,
        pixels: torch.Tensor,
        tokens: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """L_img for a batch.  ``tokens``: the contrastive pass's ``last_hidden_state`` (used by
        ``kind="pixel"``; computed if None); ``generator`` draws the masks of ``kind="masked"``."""
        if self.kind == "pixel":
            if tokens is None:
                tokens = vision_model(pixel_values=pixels).last_hidden_state
            return self.reconstruction_loss(tokens, pixels)
        n = pixels.shape[0]
        num_patches = (pixels.shape[-1] // self.patch_size) ** 2
        mask = self.sample_mask(n, num_patches, generator, device=pixels.device)
        return self.reconstruction_loss(self.masked_tokens(vision_model, pixels, mask), pixels, mask)
