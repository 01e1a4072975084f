"""Every ``bash`` and ``python`` block of README.md runs, offline, in order: a README that drifts from the code fails.

How a block runs (from one scratch folder shared by all blocks, so later blocks see earlier outputs):

* ``python`` blocks are executed in this process, in one shared namespace (like notebook cells), with the
  scratch folder as the current folder and on ``sys.path`` (as for a script run there);
* ``bash`` blocks run with ``bash -e``; ``trl-dde`` is this checkout's command line (``python -m trl_dde.cli``)
  and ``accelerate`` the one installed next to this Python;
* blocks in other languages (yaml, text, ...) are not run.

What is replaced everywhere: the network boundary only. ``HUB_STAND_INS`` maps each Hub id the README uses
to a tiny local stand-in in the same layout (a saved pipeline folder; a folder of Parquet files with
Pick-a-Pic's split names). The same map is applied to the copy of ``examples/`` the blocks read.

Anything else is said where it happens, in HTML comments right above the block, visible to whoever edits it:

    <!-- readme-test: skip (why this block cannot run here) -->
    <!-- readme-test: replace "OLD" "NEW" -->      OLD must occur in the block (e.g. fewer steps)
    <!-- readme-test: write FILENAME -->           save the block as FILENAME in the scratch folder instead of running it

Sections added later need nothing: their blocks are found and run like the others.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from trl_dde._quiet import NOISE
from trl_dde.credit import registry

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
RUNNABLE = {"python": "python", "py": "python", "bash": "bash", "sh": "bash", "shell": "bash"}
DIRECTIVE = re.compile(r"^\s*<!--\s*readme-test:\s*(?P<body>.*?)\s*-->\s*$")
FENCE = re.compile(r"^```(?P<language>[\w-]*)\s*$")


@dataclass
class Block:
    language: str  # "python", "bash" or anything else (not run)
    code: str
    line: int  # of the opening fence, 1-based
    skip: str | None = None
    write: str | None = None
    replacements: list[tuple[str, str]] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"README.md:{self.line}-{self.language or 'text'}"


def parse_directive(body: str, line: int) -> tuple[str, list[str]]:
    words = shlex.split(body)
    if not words:
        raise ValueError(f"README.md:{line}: empty readme-test directive.")
    kind, arguments = words[0], words[1:]
    if kind == "skip":
        if not re.fullmatch(r"skip\s*\(.+\)", body):
            raise ValueError(f"README.md:{line}: a skip says why: <!-- readme-test: skip (reason) -->")
        return kind, [body[body.index("(") + 1:body.rindex(")")]]
    expected = {"replace": 2, "write": 1}
    if kind not in expected:
        raise ValueError(f"README.md:{line}: unknown readme-test directive {kind!r}; use skip, replace or write.")
    if len(arguments) != expected[kind]:
        raise ValueError(f"README.md:{line}: {kind} takes {expected[kind]} quoted argument(s), got {arguments}.")
    return kind, arguments


def parse_blocks(text: str) -> list[Block]:
    """The fenced blocks of a Markdown text with the directives above them, checked."""
    blocks, pending, lines, index = [], [], text.splitlines(), 0
    while index < len(lines):
        line = lines[index]
        directive, fence = DIRECTIVE.match(line), FENCE.match(line)
        if directive:
            pending.append(parse_directive(directive["body"], index + 1))
        elif fence:
            end = next((j for j in range(index + 1, len(lines)) if lines[j].startswith("```")), None)
            if end is None:
                raise ValueError(f"README.md:{index + 1}: unclosed code block.")
            block = Block(RUNNABLE.get(fence["language"], fence["language"]), "\n".join(lines[index + 1:end]) + "\n",
                          index + 1)
            for kind, arguments in pending:
                if kind == "skip":
                    block.skip = arguments[0]
                elif kind == "write":
                    block.write = arguments[0]
                else:
                    if arguments[0] not in block.code:
                        raise ValueError(f"README.md:{index + 1}: replace {arguments[0]!r}: not in the block below.")
                    block.replacements.append((arguments[0], arguments[1]))
            if pending and block.language not in ("python", "bash"):
                raise ValueError(f"README.md:{index + 1}: readme-test directives above a block that is not run.")
            blocks.append(block)
            pending, index = [], end
        elif line.strip() and pending:
            raise ValueError(f"README.md:{index}: readme-test directive not followed by a code block.")
        index += 1
    return blocks


BLOCKS = [block for block in parse_blocks(README.read_text(encoding="utf-8")) if block.language in ("python", "bash")]


@dataclass
class Workspace:
    folder: Path
    environment: dict[str, str]
    stand_ins: dict[str, str]
    namespace: dict = field(default_factory=dict)


def _tiny_pickapic(folder: Path) -> None:
    """Pick-a-Pic v2's layout and split names, tiny: data/<split>-00000-of-00001.parquet."""
    from trl_dde.tiny import tiny_preference_dataset

    (folder / "data").mkdir(parents=True)
    tiny_preference_dataset(16, tie_every=4).to_parquet(str(folder / "data" / "train-00000-of-00001.parquet"))
    tiny_preference_dataset(4, seed=1).to_parquet(str(folder / "data" / "validation_unique-00000-of-00001.parquet"))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Workspace:
    from trl_dde.tiny import tiny_sd3_pipeline, tiny_sd15_pipeline

    root = tmp_path_factory.mktemp("readme")
    offline, folder, bin_folder = root / "offline", root / "work", root / "bin"
    folder.mkdir()
    bin_folder.mkdir()
    tiny_sd15_pipeline(seed=0).save_pretrained(offline / "stable-diffusion-v1-5")
    tiny_sd3_pipeline().save_pretrained(offline / "stable-diffusion-3-medium")
    _tiny_pickapic(offline / "pickapic_v2")
    stand_ins = {"stable-diffusion-v1-5/stable-diffusion-v1-5": str(offline / "stable-diffusion-v1-5"),
                 "stabilityai/stable-diffusion-3-medium-diffusers": str(offline / "stable-diffusion-3-medium"),
                 "yuvalkirstain/pickapic_v2": str(offline / "pickapic_v2")}
    shutil.copytree(REPO / "examples", folder / "examples")
    for config in (folder / "examples").rglob("*.yaml"):
        config.write_text(substitute(config.read_text(), stand_ins))
    command = bin_folder / "trl-dde"
    command.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m trl_dde.cli "$@"\n')
    command.chmod(command.stat().st_mode | stat.S_IEXEC)
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": str(REPO),
                   "PATH": os.pathsep.join([str(bin_folder), os.path.dirname(sys.executable), os.environ["PATH"]])}
    registered = dict(registry.CREDITS._classes)
    yield Workspace(folder, environment, stand_ins)
    registry.CREDITS._classes = registered  # forget the strategies the README registered
    for name, module in list(sys.modules.items()):  # modules the README imported from the scratch folder
        if str(getattr(module, "__file__", None) or "").startswith(str(folder)):
            del sys.modules[name]


def substitute(text: str, replacements) -> str:
    for old, new in dict(replacements).items():
        text = text.replace(old, new)
    return text


@pytest.mark.parametrize("block", BLOCKS, ids=[block.id for block in BLOCKS])
def test_readme_block(block: Block, workspace: Workspace, monkeypatch):
    if block.skip:
        pytest.skip(f"marked in README: {block.skip}")
    code = substitute(substitute(block.code, block.replacements), workspace.stand_ins)
    if block.write:
        (workspace.folder / block.write).write_text(code)
        return
    if block.language == "bash":
        result = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", code], cwd=workspace.folder,
                                env=workspace.environment, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, f"{block.id} failed:\n{code}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
        noise = [pattern.pattern for pattern in NOISE.values() if pattern.search(result.stderr)]
        assert not noise, f"{block.id} printed third-party notices trl_dde filters: {noise}"
        return
    monkeypatch.chdir(workspace.folder)
    monkeypatch.syspath_prepend(str(workspace.folder))
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(name, "1")
    exec(compile(code, block.id, "exec"), workspace.namespace)


def test_the_readme_has_runnable_blocks():
    assert any(b.language == "python" and not b.skip for b in BLOCKS)
    assert any(b.language == "bash" and not b.skip for b in BLOCKS)


def test_directives_are_checked():
    good = parse_blocks('<!-- readme-test: replace "a b" "c" -->\n```bash\necho a b\n```\n'
                        "<!-- readme-test: skip (needs a GPU) -->\n\n```python\nimport cuda\n```\n")
    assert good[0].replacements == [("a b", "c")] and good[1].skip == "needs a GPU"
    for text, message in [
        ("<!-- readme-test: skip -->\n```bash\nx\n```\n", "says why"),
        ("<!-- readme-test: skipp (x) -->\n```bash\nx\n```\n", "unknown readme-test directive 'skipp'"),
        ('<!-- readme-test: replace "zzz" "y" -->\n```bash\nx\n```\n', "'zzz': not in the block"),
        ("<!-- readme-test: write a.py -->\nSome text.\n```python\nx\n```\n", "not followed by a code block"),
        ("<!-- readme-test: skip (x) -->\n```yaml\nx: 1\n```\n", "not run"),
        ("```bash\nx\n", "unclosed"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_blocks(text)
