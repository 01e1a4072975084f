"""ImageReward (Xu et al., NeurIPS 2023) through its own package, ``image-reward``, when it can run.

``image-reward`` 1.5 (2023) ships copied BLIP/BERT code that imports ``apply_chunking_to_forward``,
``find_pruneable_heads_and_indices`` and ``prune_linear_layer`` from ``transformers.modeling_utils``,
which transformers 5 (required by trl-dde) no longer has; it also imports torchvision (through timm
0.6.13) and OpenAI's ``clip`` package without declaring the latter. So it is not in ``trl-dde[eval]``:
loading this scorer says what is missing or what conflicts, and a newer, compatible release will work
unchanged. Scores are standardised ImageReward logits (mean 0, std 1 on the authors' benchmark).
"""

from __future__ import annotations

import torch

from ..loading import default_device, quiet_libraries
from ..rewards import register_reward

__all__ = ["ImageRewardScorer"]

INSTALL = "pip install image-reward"


def _import_image_reward():
    try:
        import ImageReward
    except ModuleNotFoundError as error:
        if error.name == "ImageReward":
            raise ImportError(f"The imagereward scorer needs the image-reward package: {INSTALL}. Note that image-reward "
                              "1.5 does not import with transformers 5 (it uses helpers transformers removed); score "
                              "with pickscore, hpsv2, clip or aesthetic, or pass your own reward callable.") from error
        raise ImportError(f"image-reward is installed but cannot be imported: it needs the module {error.name!r}, which "
                          "is not installed (image-reward 1.5 imports torchvision and OpenAI's clip package).") from error
    except ImportError as error:  # a name it imports no longer exists: the transformers 5 conflict
        raise ImportError(f"image-reward is installed but does not work with this environment: {error}. image-reward "
                          "1.5 was written for transformers 4 and imports helpers that transformers 5 removed; trl-dde "
                          "needs transformers 5. Run it in a separate environment or use another scorer.") from error
    return ImageReward


@register_reward("imagereward")
class ImageRewardScorer:
    """ImageReward as a reward ``f(images, prompts) -> Tensor[N]``.

    Args:
        model: a name ``image-reward`` knows (default ``"ImageReward-v1.0"``) or a local checkpoint path.
        device: where it runs (default: CUDA if available).
        batch_size: images scored per call of the package's ``score``.
    """

    name = "imagereward"

    def __init__(self, model: str = "ImageReward-v1.0", device: str | None = None, batch_size: int = 16):
        image_reward = _import_image_reward()
        with quiet_libraries():
            self.model = image_reward.load(model, device=device or default_device())
        self.batch_size = batch_size
        self.description = f"ImageReward ({model}, image-reward package): standardised reward logits"

    @torch.no_grad()
    def __call__(self, images, prompts) -> torch.Tensor:
        scores = torch.empty(len(images))
        for prompt in dict.fromkeys(prompts):  # the package scores one prompt against a list of images
            same = [i for i, p in enumerate(prompts) if p == prompt]
            for start in range(0, len(same), self.batch_size):
                where = same[start:start + self.batch_size]
                result = self.model.score(prompt, [images[i] for i in where])
                scores[where] = torch.as_tensor(result if isinstance(result, list) else [result], dtype=torch.float32)
        return scores
