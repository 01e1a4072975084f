"""Silence four third-party log messages a trl-dde user cannot act on; every other warning still shows.

Imported first by ``trl_dde/__init__.py``, before any of the libraries that emit them. Each filter sits on
the one logger that emits its message and drops only records matching it:

* bitsandbytes (imported by peft, which transformers imports) warns on CPUs with AVX512-BF16 that it could
  not fetch a 4-bit CPU matmul kernel from the Hub (``kernels`` package). trl-dde never runs 4-bit matmuls;
  its 8-bit optimizers do not use that kernel. In offline mode (``HF_HUB_OFFLINE=1``) the same attempt logs,
  from ``kernels``, that it skips the publisher trust check of that kernel's repository instead.
* transformers says ``CLIPImageProcessor`` / ``SiglipImageProcessor`` "requires torchvision (not
  installed); falling back to ``...Pil``" when diffusers imports those names. trl-dde never uses an image
  processor, and no torchvision CPU build exists for every platform.
* diffusers' ``ModelMixin.to(dtype)`` warns that "modules ... should be kept in float32: []" for every model
  even when that list is empty (nothing is kept in float32). The warning with a non-empty list is kept.
"""

from __future__ import annotations

import logging
import re

__all__ = ["install"]

NOISE = {
    "bitsandbytes.backends.cpu.ops": re.compile(r"Failed to load CPU gemm_4bit_forward from kernels-community"),
    "kernels._internals.hf_hub": re.compile(
        r"Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes'"
    ),
    "transformers.utils.import_utils": re.compile(
        r"`\w+ImageProcessor` requires torchvision \(not installed\); falling back to `\w+ImageProcessorPil`"
    ),
    "diffusers.models.modeling_utils": re.compile(r"should be kept in float32: \[\]\."),
}


class _DropMatching(logging.Filter):
    """Drop the records whose message matches ``pattern``."""

    def __init__(self, pattern: re.Pattern):
        super().__init__()
        self.pattern = pattern

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


def install() -> None:
    """Attach the filters (idempotent)."""
    for logger_name, pattern in NOISE.items():
        logger = logging.getLogger(logger_name)
        if not any(isinstance(f, _DropMatching) and f.pattern is pattern for f in logger.filters):
            logger.addFilter(_DropMatching(pattern))


install()
