"""The geometry of one windowed analysis (``columns`` or ``rows``) of a store (docs/FORMAT.md).

Pure arithmetic on shapes, windows, tiles and the pixel selection (no zarr, no files): what a
store's tiled arrays look like, and where each probed pixel's window lies (paper eq. 5: a column
of F is the response to one input impulse, a row the gradient of one output value).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from precompute import probes as P


@dataclass(frozen=True)
class Layout:
    """Geometry of ``columns`` or ``rows``.

    ``probe_shape`` (C, H, W) is the domain whose pixels are probed (input for columns, output for
    rows), ``other_shape`` the domain the stored windows live in. ``window`` is (wh, ww).
    """

    name: str
    probe_shape: tuple[int, int, int]
    other_shape: tuple[int, int, int]
    window: tuple[int, int]
    full: bool
    tile: int
    selection: P.Selection
    scale: float
    offset: float

    @property
    def chunk(self) -> tuple[int, ...]:
        return (1, 1, self.probe_shape[0], self.other_shape[0], *self.window)

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.probe_shape[1], self.probe_shape[2], self.probe_shape[0], self.other_shape[0],
                *self.window)

    def bytes_per_pixel(self, itemsize: int) -> int:
        return math.prod(self.chunk) * itemsize

    def origin(self, i: int, j: int) -> tuple[int, int]:
        """Window origin (oy, ox) in the other domain for probed pixel (i, j) (FORMAT.md)."""
        rule = P.column_origin if self.name == "columns" else P.row_origin
        _, oh, ow = self.other_shape
        return (rule(i, self.scale, self.offset, self.window[0], oh),
                rule(j, self.scale, self.offset, self.window[1], ow))

    def selected_pixels(self) -> int:
        """How many pixels the selection holds (arithmetic, without listing tiles)."""
        top, left, h, w = self.selection.as_list(self.probe_shape[1], self.probe_shape[2])
        s = self.selection.stride
        return (-(-h // s)) * (-(-w // s))  # ceil(h/s)·ceil(w/s)

    def tiles(self) -> list[P.Tile]:
        return P.planned_tiles(self.probe_shape[1], self.probe_shape[2], self.tile, self.selection)

    def attrs(self, batch: int | None = None) -> dict:
        d = {
            "window": list(self.window),
            "full": self.full,
            "tile": self.tile,
            "region": self.selection.as_list(self.probe_shape[1], self.probe_shape[2]),
            "stride": self.selection.stride,
        }
        if batch is not None:
            d["batch"] = batch
        return d

    @classmethod
    def from_attrs(cls, name: str, a: dict, in_shape, out_shape, geometry: dict) -> "Layout":
        probe, other = (in_shape, out_shape) if name == "columns" else (out_shape, in_shape)
        region = tuple(a["region"])
        sel = P.Selection(None if region == (0, 0, probe[1], probe[2]) else region, a["stride"])
        return cls(name, tuple(probe), tuple(other), tuple(a["window"]), a["full"], a["tile"], sel,
                   geometry["scale"], geometry["offset"])


def selected_bytes(lay: Layout, itemsize: int) -> int:
    """Bytes of the windows of every selected pixel (before compression)."""
    return lay.selected_pixels() * lay.bytes_per_pixel(itemsize)


def make_layout(name: str, window: int | str, tile: int | str, sel: P.Selection,
                in_shape, out_shape, scale: float, offset: float, itemsize: int) -> Layout:
    probe, other = (in_shape, out_shape) if name == "columns" else (out_shape, in_shape)
    wh, ww = P.window_side(window, other[1]), P.window_side(window, other[2])
    full = (wh, ww) == (other[1], other[2])
    bpp = math.prod((probe[0], other[0], wh, ww)) * itemsize
    t = P.auto_tile(bpp, probe[1], probe[2]) if tile == "auto" else int(tile)
    return Layout(name, tuple(probe), tuple(other), (wh, ww), full, t, sel, scale, offset)
