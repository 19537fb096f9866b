"""The settings of AverageConfig (`rmkit.warm`), importable without torch."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import setting


@dataclass
class AverageConfig:
    """Settings of ``rmkit average``."""

    models: list[str] = setting([], "the members: rmkit train output folders or model folders, trained from one "
                                    "initialisation (comma-separated on the command line)")
    output_dir: str = setting("runs/warm", "where the averaged model goes (OUTPUT_DIR/model)")
    allow_unknown_init: bool = setting(False, "average members whose initialisation was not recorded (models not "
                                              "trained by rmkit train); their basin is then your responsibility")

    def check(self) -> None:
        if len(self.models) < 2:
            raise ValueError("rmkit average needs at least two members (--models A,B or rmkit average A B ...)")
