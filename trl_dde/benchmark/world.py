"""A small procedural text-to-image world: one shape per 32 px image, a caption that describes it, and a
checker that reads the attributes back from pixels.

A scene has five attributes (colour, shape, size, position, background). ``render`` draws it
deterministically (an optional ``noise`` adds background speckle, the stylistic axis of the
preference); ``check`` recovers every attribute from an image by plain pixel statistics, so a sample
from a model can be judged against its caption without any learned scorer.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

__all__ = ["ATTRIBUTES", "Scene", "all_scenes", "check", "fidelity", "parse_caption", "render", "split_scenes"]

IMAGE_SIZE = 32
COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 0.22, "large": 0.38}  # half-extent as a fraction of the image side
POSITIONS = {"left": 0.36, "right": 0.64}  # centre x as a fraction of the side
BACKGROUNDS = {"dark": 40, "light": 200}
ATTRIBUTES = ("color", "shape", "size", "position", "background")


@dataclass(frozen=True)
class Scene:
    color: str
    shape: str
    size: str
    position: str
    background: str

    @property
    def caption(self) -> str:
        return f"a {self.size} {self.color} {self.shape} on the {self.position}, {self.background} background"


def all_scenes() -> list[Scene]:
    """Every scene of the world (4 x 3 x 2 x 2 x 2 = 96), in a fixed order."""
    return [Scene(*values) for values in itertools.product(COLORS, SHAPES, SIZES, POSITIONS, BACKGROUNDS)]


def split_scenes(held_out_every: int = 7) -> tuple[list[Scene], list[Scene]]:
    """(train, held-out) scenes: every ``held_out_every``-th scene is held out, so both cover every attribute value."""
    scenes = all_scenes()
    return ([s for i, s in enumerate(scenes) if i % held_out_every != held_out_every - 1],
            [s for i, s in enumerate(scenes) if i % held_out_every == held_out_every - 1])


def parse_caption(caption: str) -> Scene:
    """The scene a caption describes; refuses a caption outside the world with the expected form."""
    words = caption.replace(",", "").split()
    try:
        _, size, color, shape, _, _, position, background, _ = words
        scene = Scene(color, shape, size, position, background)
    except ValueError:
        scene = None
    if scene is None or scene.color not in COLORS or scene.shape not in SHAPES or scene.size not in SIZES \
            or scene.position not in POSITIONS or scene.background not in BACKGROUNDS:
        raise ValueError(f"{caption!r} is not a caption of the benchmark world; expected e.g. "
                         f"{all_scenes()[0].caption!r}.")
    return scene


def _mask(scene: Scene, size: int) -> np.ndarray:
    yy, xx = (np.mgrid[0:size, 0:size] + 0.5) / size
    r, cx, cy = SIZES[scene.size], POSITIONS[scene.position], 0.5
    if scene.shape == "circle":
        return (xx - cx) ** 2 + (yy - cy) ** 2 <= r ** 2
    if scene.shape == "square":
        return (abs(xx - cx) <= r * 0.886) & (abs(yy - cy) <= r * 0.886)  # same area as the circle
    # an upward triangle, apex at the top, base at the bottom
    top, bottom = cy - r * 1.1, cy + r * 1.1
    half_width = r * 1.25 * (yy - top) / (bottom - top)
    return (yy >= top) & (yy <= bottom) & (abs(xx - cx) <= half_width)


def render(scene: Scene, noise: float = 0.0, seed: int = 0, size: int = IMAGE_SIZE) -> Image.Image:
    """The scene as an RGB image; ``noise`` is the std (0-255 scale) of Gaussian speckle, seeded by ``seed``."""
    canvas = np.full((size, size, 3), float(BACKGROUNDS[scene.background]))
    canvas[_mask(scene, size)] = COLORS[scene.color]
    if noise:
        canvas += np.random.default_rng(seed).normal(0.0, noise, canvas.shape)
    return Image.fromarray(np.clip(canvas, 0, 255).round().astype(np.uint8))


def check(image: Image.Image) -> dict[str, str | None]:
    """Read the five attributes back from an image by pixel statistics (``None`` where there is no shape).

    Background: the border's median brightness. Foreground: pixels far from it. Colour: the palette entry
    nearest the foreground's median. Size: foreground area. Position: centroid x. Shape: how much of its
    bounding box the foreground fills (square ~1, circle ~0.79, triangle ~0.5).
    """
    pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    size = pixels.shape[0]
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background_rgb = np.median(border, axis=0)
    level = background_rgb.mean()
    background = min(BACKGROUNDS, key=lambda name: abs(BACKGROUNDS[name] - level))
    foreground = np.linalg.norm(pixels - background_rgb, axis=-1) > 60
    result: dict[str, str | None] = dict.fromkeys(ATTRIBUTES)
    result["background"] = background
    if foreground.sum() < 4:
        return result
    median = np.median(pixels[foreground], axis=0)
    result["color"] = min(COLORS, key=lambda name: np.linalg.norm(np.asarray(COLORS[name]) - median))
    area = foreground.mean()
    small, large = (np.pi * SIZES[name] ** 2 for name in ("small", "large"))
    result["size"] = "small" if area < np.sqrt(small * large) else "large"
    ys, xs = np.nonzero(foreground)
    result["position"] = "left" if (xs.mean() + 0.5) / size < 0.5 else "right"
    box = (np.ptp(ys) + 1) * (np.ptp(xs) + 1)
    fill = foreground.sum() / box
    result["shape"] = "square" if fill > 0.9 else "circle" if fill > 0.64 else "triangle"
    return result


def fidelity(image: Image.Image, caption: str) -> float:
    """The share of the caption's five attributes the checker reads back from the image (0 to 1)."""
    wanted, seen = asdict(parse_caption(caption)), check(image)
    return sum(seen[name] == wanted[name] for name in ATTRIBUTES) / len(ATTRIBUTES)
