"""The one model factory: DeepLabv3+ (segmentation-models-pytorch) wrapped to take [0, 1] RGB
images of any size and return logits in the same coordinates."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from torch import nn

from s4al.errors import S4alError
from s4al.text import first_line
from s4al.config import ModelConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
STRIDE = 16  # smp's DeepLabV3Plus needs sides divisible by its output stride's decoder grid


class SegmentationNet(nn.Module):
    """Normalises, pads to a multiple of 16 and crops the logits back, so that regions, labels and
    metrics stay in original image coordinates (CamVid's 360 rows are padded to 368)."""

    def __init__(self, net: smp.DeepLabV3Plus):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def encoder(self) -> nn.Module:
        return self.net.encoder

    def _input(self, images: torch.Tensor, reflect: bool) -> torch.Tensor:
        """Normalised and padded right and bottom to a multiple of the output stride: reflected
        where the image is large enough to reflect, else its edge replicated."""
        h, w = images.shape[-2:]
        pad_h, pad_w = -h % STRIDE, -w % STRIDE
        x = (images - self.mean) / self.std
        if not (pad_h or pad_w):
            return x
        reflectable = reflect and min(h, w) > max(pad_h, pad_w)
        return F.pad(x, (0, pad_w, 0, pad_h), mode="reflect" if reflectable else "replicate")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """fp32 logits, under bf16 autocast too: the head (a 1x1 conv and the upsampling) runs in fp32, since
        bf16 logits tie where the top two are close and argmax gives a tie to the lower class id, which
        takes boundary pixels from the thin classes (higher ids in CamVid's order)."""
        h, w = images.shape[-2:]
        decoded = self.net.decoder(self.net.encoder(self._input(images, reflect=True)))
        with torch.autocast(decoded.device.type, enabled=False):
            return self.net.segmentation_head(decoded.float())[..., :h, :w]

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Deepest encoder feature map, for Core-Set."""
        return self.net.encoder(self._input(images, reflect=False))[-1]


def _load_local_encoder_weights(encoder: nn.Module, path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model.weights file not found (a relative path is read from the current "
                                f"folder, {Path.cwd()})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and weights-only refusals have no common base
        raise S4alError(f"{path}: model.weights is not a readable PyTorch weights file "
                        f"({type(err).__name__}: {first_line(err)})") from None
    if not isinstance(state, Mapping):
        raise S4alError(f"{path}: model.weights holds a {type(state).__name__}, not a state dict of the encoder")
    try:
        # smp's encoders drop torchvision's classifier keys themselves, then load strictly.
        encoder.load_state_dict(state, strict=True)
    except RuntimeError as err:  # its lines name every missing, unexpected or misshapen key
        details = "; ".join(_shortened(line.strip()) for line in str(err).splitlines()[1:] if line.strip())
        raise S4alError(f"{path}: not a torchvision-layout state dict of MobileNetV2: {details}") from None


def _shortened(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + " ..."


def build_model(cfg: ModelConfig, num_classes: int) -> SegmentationNet:
    online = cfg.weights == "imagenet"
    try:
        net = smp.DeepLabV3Plus(
            encoder_name="mobilenet_v2",
            encoder_weights="imagenet" if online else None,
            encoder_output_stride=STRIDE,
            classes=num_classes,
        )
    except OSError as err:  # only the download reads a file or the network here
        raise S4alError(f"model.weights 'imagenet': the ImageNet weights could not be downloaded ({first_line(err)}); "
                        "give a local file in torchvision layout: --set model.weights=PATH.pth") from None
    if cfg.weights and not online:
        _load_local_encoder_weights(net.encoder, Path(cfg.weights).expanduser())
    # the inputs are channels_last (s4al/data/batches.py): convolutions then keep that layout throughout
    return SegmentationNet(net).to(memory_format=torch.channels_last)
