"""A tiny user reward for the pairs tests: mean brightness. With PAIRS_REWARD_DELAY set, each call first sleeps that
many seconds (so a test can SIGKILL a run between shards)."""

import os
import time

import numpy as np


def brightness(images, prompts):
    time.sleep(float(os.environ.get("PAIRS_REWARD_DELAY", 0)))
    return [float(np.asarray(image.convert("RGB"), dtype=np.float64).mean()) for image in images]


def redness(images, prompts):
    return [float(np.asarray(image.convert("RGB"), dtype=np.float64)[..., 0].mean()) for image in images]
