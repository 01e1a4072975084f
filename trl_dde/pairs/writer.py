"""Generated pairs on disk: Parquet shards written atomically, so a killed run resumes without losing or
doubling a prompt.

Prompts are cut into fixed blocks of ``prompts_per_shard``; shard ``i`` holds every pair of block ``i`` and
nothing else. A shard is written to a temporary file under ``.tmp/`` and renamed into
``data/train-IIIII-of-NNNNN.parquet`` (a rename is atomic on one filesystem): a shard file that exists is
complete, one that does not is (re)generated from scratch. ``pairs_config.json`` records what the run
generates; resuming with other settings is refused instead of mixing two datasets. Block ``i`` belongs to
process ``i % world_size``, so processes never write the same file.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

from datasets import Dataset, Features, Image, Value, concatenate_datasets

__all__ = ["PAIR_FEATURES", "PairShards", "is_generated_dataset", "load_generated_pairs"]

CONFIG = "pairs_config.json"
SCORES_KEY = b"trl_dde_image_scores"  # Parquet metadata: every generated image's score, paired or not
PAIR_FEATURES = Features({
    "prompt": Value("string"), "chosen": Image(), "rejected": Image(),
    "chosen_score": Value("float64"), "rejected_score": Value("float64"), "margin": Value("float64"), "tie": Value("bool"),
    "prompt_index": Value("int64"), "chosen_index": Value("int32"), "rejected_index": Value("int32"),
    "chosen_seed": Value("int64"), "rejected_seed": Value("int64"),
    "num_inference_steps": Value("int32"), "guidance_scale": Value("float64"), "height": Value("int32"),
    "width": Value("int32"),
})


def png_bytes(image) -> dict:
    """A PIL image as a ``datasets.Image`` cell holding PNG bytes (lossless)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: a reader (or a killed writer) never sees
    half a file."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


class PairShards:
    """The shards of one generated dataset in ``output_dir``: which exist, writing one, loading them all."""

    def __init__(self, output_dir: str | os.PathLike, num_prompts: int, prompts_per_shard: int):
        if prompts_per_shard < 1:
            raise ValueError(f"prompts_per_shard must be at least 1, got {prompts_per_shard}.")
        self.output_dir = Path(output_dir)
        self.num_prompts, self.prompts_per_shard = num_prompts, prompts_per_shard
        self.num_shards = -(-num_prompts // prompts_per_shard)

    def prompt_range(self, shard: int) -> range:
        """The prompt indices of shard ``shard`` (the last shard may hold fewer)."""
        return range(shard * self.prompts_per_shard, min(self.num_prompts, (shard + 1) * self.prompts_per_shard))

    def path(self, shard: int) -> Path:
        """Where shard ``shard`` lives once complete."""
        return self.output_dir / "data" / f"train-{shard:05d}-of-{self.num_shards:05d}.parquet"

    def missing(self, rank: int = 0, world_size: int = 1) -> list[int]:
        """Shards of process ``rank`` not written yet (all processes' with ``world_size=1``)."""
        return [shard for shard in range(rank, self.num_shards, world_size) if not self.path(shard).is_file()]

    def claim(self, config: dict) -> None:
        """Record ``config`` for this output folder, or refuse when an earlier run there generated something else."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        path = self.output_dir / CONFIG
        if path.is_file():
            previous = json.loads(path.read_text(encoding="utf-8"))
            if previous != config:
                changed = sorted(k for k in set(previous) | set(config) if previous.get(k) != config.get(k))
                raise ValueError(f"{self.output_dir} holds pairs generated with other settings (differing: {changed}). "
                                 "Resume with the same options, or choose a new --output_dir.")
            return
        atomic_write_text(path, json.dumps(config, indent=2, ensure_ascii=False) + "\n")

    def clear_temporary(self, shards: list[int]) -> None:
        """Remove what killed runs left half-written for ``shards`` (this process's own, so no other writes them)."""
        for shard in shards:
            for stale in (self.output_dir / ".tmp").glob(f"{self.path(shard).name}.*"):
                stale.unlink(missing_ok=True)

    def write(self, shard: int, rows: dict[str, list], image_scores: list[list[float]]) -> None:
        """Write shard ``shard`` atomically: a temporary file, flushed, then renamed into ``data/``. The scores of
        all its images (one list per prompt, paired or not) go into the file's metadata, so they are written
        exactly when the rows are."""
        temporary = self.output_dir / ".tmp" / f"{self.path(shard).name}.{os.getpid()}"
        temporary.parent.mkdir(parents=True, exist_ok=True)
        self.path(shard).parent.mkdir(parents=True, exist_ok=True)
        import pyarrow.parquet as pq

        table = Dataset.from_dict(rows, features=PAIR_FEATURES).data.table  # the features travel in its metadata
        table = table.replace_schema_metadata({**table.schema.metadata, SCORES_KEY: json.dumps(image_scores).encode()})
        pq.write_table(table, temporary)
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, self.path(shard))

    def image_scores(self) -> list[float]:
        """The score of every generated image of every written shard (in prompt, then image, order)."""
        import pyarrow.parquet as pq

        return [score for shard in range(self.num_shards) if self.path(shard).is_file()
                for prompt in json.loads(pq.read_schema(self.path(shard)).metadata[SCORES_KEY]) for score in prompt]

    def load(self) -> Dataset:
        """Every shard, in prompt order, as one ``Dataset`` (all shards must be written)."""
        missing = self.missing()
        if missing:
            raise FileNotFoundError(f"{len(missing)} of {self.num_shards} shards in {self.output_dir} are not written yet, "
                                    f"e.g. {self.path(missing[0])}; run the same command again to finish them.")
        import pyarrow.parquet as pq

        return concatenate_datasets([Dataset(pq.read_table(self.path(s))) for s in range(self.num_shards)])


def is_generated_dataset(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` was written by ``generate_pairs`` / ``trl-dde pairs``."""
    return (Path(folder) / CONFIG).is_file()


def load_generated_pairs(folder: str | os.PathLike) -> Dataset:
    """A generated dataset, read from its shards directly (no ``datasets`` cache: two generated folders can have
    the same name, shard names and modification times, which the cache would take for the same data)."""
    config = json.loads((Path(folder) / CONFIG).read_text(encoding="utf-8"))
    return PairShards(folder, config["num_prompts"], config["prompts_per_shard"]).load()
