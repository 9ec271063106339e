"""`deeplabv2 predict`: segment image files, write palette PNG masks and overlays."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from deeplabv2.config import Config
from deeplabv2.data.common import read_image
from deeplabv2.evaluate import predict_log_probs, refine_with_crf
from deeplabv2.visualize import overlay, save_mask


@dataclass(frozen=True)
class Prediction:
    """The files written for one input image."""

    image: Path
    mask: Path
    overlay: Path


def predict_files(
    model: nn.Module,
    image_paths: Sequence[Path],
    config: Config,
    palette: np.ndarray,
    output_dir: Path,
    device: torch.device,
    crf: bool,
) -> list[Prediction]:
    """Segments each image (the config's eval scales/flip; DenseCRF with `crf`) and writes
    `<stem>_mask.png` (palette PNG of class ids) and `<stem>_overlay.png` into `output_dir`."""
    output_dir.mkdir(parents=True, exist_ok=True)
    model.to(device).eval()
    written = []
    for path in image_paths:
        rgb = read_image(path)  # DatasetError / DatasetNotFoundError naming the file
        images = torch.from_numpy(rgb.copy()).permute(2, 0, 1).unsqueeze(0).to(device)
        log_probs = predict_log_probs(
            model, images, config.model.preprocessing, config.eval.scales, config.eval.flip
        )
        scores = refine_with_crf(log_probs, images, config.crf) if crf else log_probs
        label = scores.argmax(1)[0].cpu().numpy().astype(np.uint8)
        mask_path = output_dir / f"{path.stem}_mask.png"
        overlay_path = output_dir / f"{path.stem}_overlay.png"
        save_mask(label, palette, mask_path)
        Image.fromarray(overlay(rgb, label, palette)).save(overlay_path)
        written.append(Prediction(path, mask_path, overlay_path))
    return written
