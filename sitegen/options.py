"""What a build is asked for: channel mode, precision, pixel selection, tile side, size limit."""

from __future__ import annotations

from dataclasses import dataclass

from sitegen.tiles import MODES, PRECISIONS
from sitegen.util import BuildError


@dataclass
class Options:
    mode: str = "full"  # channel mode, see tiles.MODES
    precision: str = "float16"
    region: tuple[int, int, int, int] | None = None  # input pixels: top, left, height, width
    stride: int = 1
    tile: int | None = None  # site tile side in pixels; None: auto (tile scripts of ~1 MB)
    max_bytes: int | None = 2 * 1024 ** 3
    progress: bool = True

    def check(self) -> None:
        if self.mode not in MODES:
            raise BuildError(f"unknown channel mode '{self.mode}' (choose from {', '.join(MODES)})")
        if self.precision not in PRECISIONS:
            raise BuildError(f"unknown precision '{self.precision}' "
                             f"(choose from {', '.join(PRECISIONS)})")
        if self.stride < 1:
            raise BuildError("stride must be at least 1")
        if self.tile is not None and self.tile < 1:
            raise BuildError("tile must be at least 1")
        if self.region is not None and (len(self.region) != 4 or self.region[2] < 1
                                        or self.region[3] < 1 or min(self.region[:2]) < 0):
            raise BuildError("region must be TOP,LEFT,HEIGHT,WIDTH with positive height and width")
