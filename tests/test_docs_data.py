"""docs/data.md's examples are real: its Python block runs offline, and every `trl-dde` command line it shows
parses with the options the commands have (a renamed or removed flag fails here)."""

import argparse
import re
import shlex
from pathlib import Path

import pytest

DATA_MD = Path(__file__).resolve().parent.parent / "docs" / "data.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DATA_MD.read_text(encoding="utf-8"), flags=re.S)


def commands() -> list[list[str]]:
    lines = [line for block in blocks("bash") for line in block.replace("\\\n", " ").splitlines() if line.strip()]
    return [shlex.split(line, comments=True) for line in lines if "..." not in line]


def test_the_python_example_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (code,) = blocks("python")
    namespace = {}
    exec(compile(code, str(DATA_MD), "exec"), namespace)
    assert len(namespace["dataset"]) > 0 and (tmp_path / "tiny-pairs" / "README.md").is_file()


@pytest.mark.parametrize("argv", commands(), ids=lambda argv: " ".join(argv[1:3]))
def test_every_command_line_parses(argv):
    assert argv[0] == "trl-dde"
    command, arguments = argv[1], argv[2:]
    if command == "train":
        from trl import TrlParser

        from trl_dde.cli import ScriptArguments
        from trl_dde.config import DDEConfig
        from trl_dde.pairs import OnlineArguments

        parser = TrlParser((ScriptArguments, DDEConfig, OnlineArguments))
        parser.parse_args_into_dataclasses([*arguments, "--report_to", "none"])
        return
    from trl_dde.pairs.cli import add_data_arguments, add_pairs_arguments

    parser = argparse.ArgumentParser(exit_on_error=False)
    (add_pairs_arguments if command == "pairs" else add_data_arguments)(parser)
    parser.parse_args(arguments)
