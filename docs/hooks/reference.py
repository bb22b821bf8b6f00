"""mkdocs hook: generate the CLI reference (from the Typer app) and the settings reference (from the config
dataclasses) at build time, so neither can fall behind the code."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import typer
from typer.cli import get_docs_for_click

from medlens.cli import app
from medlens.config import TrainConfig
from medlens.detect.train import DetectConfig
from medlens.pretrain.stage import PretrainConfig
from medlens.segment.pretrain import SegPretrainConfig
from medlens.segment.train import SegTrainConfig
from medlens.survival.train import SurvivalConfig

SECTIONS = [
    ("train", "medlens train DATA (classification)", TrainConfig),
    ("segment", "medlens train DATA --task segment", SegTrainConfig),
    ("detect", "medlens train DATA --task detect", DetectConfig),
    ("survival", "medlens train DATA --task survival", SurvivalConfig),
    ("pretrain", "medlens pretrain DATA (classification encoders)", PretrainConfig),
    ("pretrain", "medlens pretrain DATA --task segment (U-Net encoders)", SegPretrainConfig),
]


def _default(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        value: Any = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return "(required)"
    return f"`{value!r}`"


def settings_markdown() -> str:
    lines = [
        "# Settings reference",
        "",
        "Every setting a command takes with `--set key=value`, or from a TOML file with `--config FILE` "
        "(under the section named below), with its default. An unknown key is an error that suggests the "
        "nearest one.",
        "",
    ]
    for section, command, cls in SECTIONS:
        lines += [f"## `{command}`", "", f"TOML section `[{section}]`.", "", "| key | default |", "|---|---|"]
        for field in dataclasses.fields(cls):
            lines.append(f"| `{field.name}` | {_default(field)} |")
        lines.append("")
    return "\n".join(lines)


def cli_markdown() -> str:
    command = typer.main.get_command(app)
    ctx = typer.Context(command, info_name="medlens")
    return (
        "# CLI reference\n\nGenerated from the command itself (`medlens COMMAND --help` prints the same).\n\n"
        + get_docs_for_click(obj=command, ctx=ctx, name="medlens", title="medlens").split("\n", 1)[1]
    )


def on_pre_build(config: Any) -> None:
    docs = Path(config["docs_dir"])
    for name, text in (("cli.md", cli_markdown()), ("settings.md", settings_markdown())):
        target = docs / name
        if not target.is_file() or target.read_text() != text:
            target.write_text(text)
