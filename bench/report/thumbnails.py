"""Thumbnails of classification test images, by test index, for the HTML page's images a
strategy fixes and breaks (per_image.py).

The runs store which test images they got right (predictions.npz), not the pixels: the test
set is rebuilt here from a run's own data config, exactly as the run built it (the datamodule's
test split is fixed by data.split_seed, and predictions.npz's `index` is its order). That needs
torch, so this module is imported only by `report --html`, and only when there are images to
draw; `report` alone stays torch-free. A dataset that cannot be rebuilt here (files absent on
this machine) gets no thumbnails and the page says why.
"""
from __future__ import annotations

import base64
import io

import numpy as np

SIDE = 56  # px of a thumbnail's longer side, upscaled with nearest neighbours (no blur)
MIN_SIDE = 24  # px of its shorter side at least


class Thumbnails:
    """The test split of one run's data config; `png(index)` -> a data: URI."""

    def __init__(self, config: dict):
        from bench.data import build_datamodule

        module = build_datamodule(config["data"], config["seed"])
        module.setup("test")
        self.test_set = module.test_set

    def pixels(self, index: int) -> np.ndarray:
        """(H, W) or (H, W, 3) uint8 of one test image, as stored before normalising."""
        data = self.test_set
        if hasattr(data, "images"):  # images held in memory (digits, probes, CIFAR)
            x = data.images[index].detach().cpu().float().numpy()
            x = x / 255.0 if x.max() > 1.0 else x
        elif hasattr(data, "samples"):  # files (imagefolder)
            from PIL import Image

            with Image.open(data.samples[index][0]) as image:
                return np.asarray(image.convert("RGB"))
        else:  # any other dataset: its evaluation transform, rescaled for display
            from bench.data.base import BatchKey

            x = data[BatchKey([index], 0)][0][0].detach().cpu().float().numpy()
            x = (x - x.min()) / max(float(x.max() - x.min()), 1e-12)
        x = np.clip(x, 0, 1)
        x = x[0] if x.shape[0] == 1 else np.moveaxis(x, 0, -1)
        return (255 * x).round().astype(np.uint8)

    def png(self, index: int) -> str:
        from PIL import Image

        image = Image.fromarray(self.pixels(index))
        # at least SIDE px long or MIN_SIDE px high, whichever needs more (8 x 48 strips)
        scale = min(8, max(1, SIDE // max(image.size), -(-MIN_SIDE // min(image.size))))
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def thumbnails_for(config: dict) -> tuple[Thumbnails | None, str]:
    """The test images of a run's config, or None and why not."""
    try:
        return Thumbnails(config), ""
    except Exception as err:  # any dataset, a plugin's too: the page says why, never fails
        return None, f"the test images cannot be rebuilt here ({type(err).__name__}: {err})"


__all__ = ["SIDE", "Thumbnails", "thumbnails_for"]
