"""EPIC-pn focal-plane geometry: 12 CCDs with gaps, raw pixels, flags, dead pixels, image grids and masks.

Detector coordinates are SAS DETX/DETY in arcsec (the event lists' DETX/DETY are the same in units
of 0.05"). Image grids are the SAS ``evselect`` grid of DETX/DETY binned by 80 units (4") at 1x, 403 x
411 pixels whose lower-left edge is DETX = -18283.5, DETY = -17527.5 (``CRVAL1L = -18243.5``,
``CDELT1L = 80`` in the images), and the same area in 40-unit (2") bins at 2x (806 x 822). The CCD
array, the optical axis (vignetting and PSF centre), the aim point (where the pointing direction
lands) and the field-of-view circle are placed where they are on real pn images; the dead rows at
the readout nodes, the gaps, bad columns and dead pixels come from a table measured on real SAS
exposure maps and images (``resources/instrument/pn_dead_pixels_1x.csv``).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import InputError

DET_UNIT_ARCSEC = 0.05
FLAG_CCD_BORDER = 0x1
FLAG_BAD_COLUMN = 0x2
FLAG_DEAD_PIXEL = 0x4
DeadRegion = tuple[int, int, int, int]   # row_min, row_max, col_min, col_max (1x image pixels, inclusive)


def read_dead_pixels(path: str | Path) -> tuple[DeadRegion, ...]:
    """Dead-pixel rectangles from a CSV with columns row_min,row_max,col_min,col_max (``#`` comments)."""
    p = Path(path)
    try:
        lines = [line for line in p.read_text().splitlines() if line.strip() and not line.startswith("#")]
    except OSError as exc:
        raise InputError(p, "file", f"cannot be read ({exc.strerror})",
                         "point instrument.geometry.dead_pixels_file at a dead-pixel CSV, or set it to null") from exc
    reader = csv.DictReader(lines)
    need = ("row_min", "row_max", "col_min", "col_max")
    if reader.fieldnames is None or any(k not in reader.fieldnames for k in need):
        raise InputError(p, "header", f"needs the columns {list(need)}", "write a CSV header line with those names")
    regions = []
    for n, row in enumerate(reader, start=2):
        try:
            r0, r1, c0, c1 = (int(row[k]) for k in need)
        except (TypeError, ValueError) as exc:
            raise InputError(p, f"line {n}", "is not four integers", "fix or remove the line") from exc
        if r0 > r1 or c0 > c1 or min(r0, c0) < 0:
            raise InputError(p, f"line {n}", f"({r0}, {r1}, {c0}, {c1}) is not a valid rectangle",
                             "give row_min <= row_max and col_min <= col_max, all >= 0")
        regions.append((r0, r1, c0, c1))
    return tuple(regions)


@dataclass(frozen=True)
class ImageGrid:
    """A regular image grid in detector coordinates."""

    nx: int
    ny: int
    pixel_arcsec: float
    x0_arcsec: float  # left edge of pixel column 0
    y0_arcsec: float  # lower edge of pixel row 0

    @property
    def shape(self) -> tuple[int, int]:
        """numpy shape (ny, nx)."""
        return (self.ny, self.nx)

    @property
    def bin_det_units(self) -> int:
        """Bin size in DETX/DETY units of 0.05"."""
        return int(round(self.pixel_arcsec / DET_UNIT_ARCSEC))

    def edges(self) -> tuple[np.ndarray, np.ndarray]:
        """Pixel edges along x and y (arcsec)."""
        return (self.x0_arcsec + self.pixel_arcsec * np.arange(self.nx + 1),
                self.y0_arcsec + self.pixel_arcsec * np.arange(self.ny + 1))

    def centers(self) -> tuple[np.ndarray, np.ndarray]:
        """Pixel centres along x and y (arcsec)."""
        ex, ey = self.edges()
        return 0.5 * (ex[1:] + ex[:-1]), 0.5 * (ey[1:] + ey[:-1])

    def refine(self, factor: int, margin_pixels: int = 0) -> "ImageGrid":
        """A grid ``factor`` times finer, extended by ``margin_pixels`` fine pixels on every side."""
        p = self.pixel_arcsec / factor
        return ImageGrid(self.nx * factor + 2 * margin_pixels, self.ny * factor + 2 * margin_pixels, p,
                         self.x0_arcsec - margin_pixels * p, self.y0_arcsec - margin_pixels * p)


def centred_offset(frame_shape: tuple[int, int], image_shape: tuple[int, int]) -> tuple[int, int]:
    """Rows and columns of zero padding before an image centred in a larger 1x frame (rounded down)."""
    return ((frame_shape[0] - image_shape[0]) // 2, (frame_shape[1] - image_shape[1]) // 2)


@dataclass(frozen=True)
class FrameLayout:
    """Where the detector's 1x image grid sits in a training set's zero-padded frames: after ``offset_1x``
    (rows, columns) of padding; the 2x frames hold the 2x grid at twice the offset, and the padding
    continues the grid's pixels."""

    grid: ImageGrid                  # the 1x image grid
    offset_1x: tuple[int, int]

    @classmethod
    def centred(cls, grid: ImageGrid, frame_shape_1x: tuple[int, int]) -> FrameLayout:
        """The layout of frames of ``frame_shape_1x`` that hold ``grid`` centred, as packing pads them."""
        return cls(grid, centred_offset(frame_shape_1x, grid.shape))

    def detector_arcsec(self, u_x: np.ndarray | float, u_y: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Detector position (arcsec) of frame coordinates in 1x pixels from the frame's lower-left corner."""
        p = self.grid.pixel_arcsec
        return (self.grid.x0_arcsec + (np.asarray(u_x, dtype=np.float64) - self.offset_1x[1]) * p,
                self.grid.y0_arcsec + (np.asarray(u_y, dtype=np.float64) - self.offset_1x[0]) * p)

    def pixel_centres(self, resolution: int, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Detector x (per column) and y (per row) of the pixel centres of a frame of ``shape`` at
        ``resolution``."""
        return self.detector_arcsec((np.arange(shape[1]) + 0.5) / resolution, (np.arange(shape[0]) + 0.5) / resolution)


@dataclass(frozen=True)
class EdgeMargins:
    """Inactive strips (arcsec, detector frame) beyond the layout's gaps and dead pixels: at both x edges
    of every CCD, at the y edges that face the gap between CCD rows (below it: the lower row's top edge;
    above it: the upper row's bottom edge), and beside the dead pixels. None by default: the simulated
    layout."""

    x_arcsec: float = 0.0
    below_gap_arcsec: float = 0.0
    above_gap_arcsec: float = 0.0
    dead_arcsec: float = 0.0   # beside every dead pixel, on each side that touches a live one


@dataclass(frozen=True)
class PnGeometry:
    """CCD layout of the pn camera in DETX/DETY arcsec (defaults: measured on real SAS pn images)."""

    pixel_arcsec: float = 4.1
    ccd_columns: int = 64
    ccd_rows: int = 200
    ccds_x: int = 6
    ccds_y: int = 2
    gap_x_arcsec: float = 7.6
    gap_y_arcsec: float = 8.0
    array_center_x_arcsec: float = -110.175
    array_center_y_arcsec: float = -56.375
    aim_x_arcsec: float = 5.6
    aim_y_arcsec: float = -7.4
    axis_x_arcsec: float = 61.2
    axis_y_arcsec: float = 21.5
    fov_center_x_arcsec: float = -112.2
    fov_center_y_arcsec: float = -56.4
    fov_radius_arcmin: float = 15.0
    image_nx: int = 403
    image_ny: int = 411
    image_pixel_arcsec: float = 4.0
    image_origin_det: tuple[float, float] = (-18283.5, -17527.5)
    bad_columns: tuple[tuple[int, int], ...] = ()
    flag_ccd_border: bool = False
    dead_pixels: tuple[DeadRegion, ...] = ()

    @property
    def ccd_width(self) -> float:
        return self.ccd_columns * self.pixel_arcsec

    @property
    def ccd_height(self) -> float:
        return self.ccd_rows * self.pixel_arcsec

    @property
    def array_width(self) -> float:
        return self.ccds_x * self.ccd_width + (self.ccds_x - 1) * self.gap_x_arcsec

    @property
    def array_height(self) -> float:
        return self.ccds_y * self.ccd_height + (self.ccds_y - 1) * self.gap_y_arcsec

    @property
    def array_x0(self) -> float:
        """Left edge (arcsec) of the CCD array."""
        return self.array_center_x_arcsec - self.array_width / 2

    @property
    def array_y0(self) -> float:
        """Lower edge (arcsec) of the CCD array."""
        return self.array_center_y_arcsec - self.array_height / 2

    def ccd_origin(self, ix: int, iy: int) -> tuple[float, float]:
        """Lower-left corner (arcsec) of CCD column ``ix``, row ``iy``."""
        return (self.array_x0 + ix * (self.ccd_width + self.gap_x_arcsec),
                self.array_y0 + iy * (self.ccd_height + self.gap_y_arcsec))

    def ccd_row(self, dy: np.ndarray) -> np.ndarray:
        """Index of the row of CCDs (from the array's lower edge, unclipped) whose pitch holds detector
        y ``dy`` (arcsec), computed in ``dy``'s floating type."""
        dy = np.asarray(dy)
        real = dy.dtype.type if np.issubdtype(dy.dtype, np.floating) else np.float64
        return np.floor((dy - real(self.array_y0)) / real(self.ccd_height + self.gap_y_arcsec))

    def image_grid(self, resolution: int) -> ImageGrid:
        """The binned-image grid at resolution multiplier 1 or 2 (the evselect DETX/DETY grid)."""
        p = self.image_pixel_arcsec / resolution
        nx, ny = self.image_nx * resolution, self.image_ny * resolution
        return ImageGrid(nx, ny, p, self.image_origin_det[0] * DET_UNIT_ARCSEC,
                         self.image_origin_det[1] * DET_UNIT_ARCSEC)

    def dead_map(self) -> np.ndarray:
        """1 where a pixel of the 1x image grid is dead (the dead-pixel table), uint8 (ny, nx), read-only."""
        return _dead_map(self.dead_pixels, self.image_ny, self.image_nx)

    def dead_at(self, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
        """True for positions (arcsec) in a dead pixel of the 1x image grid."""
        if not self.dead_pixels:
            return np.zeros(np.shape(dx), dtype=bool)
        g = self.image_grid(1)
        inv = np.float32(1.0 / g.pixel_arcsec)
        ix = np.floor((dx - np.float32(g.x0_arcsec)) * inv).astype(np.int32)
        iy = np.floor((dy - np.float32(g.y0_arcsec)) * inv).astype(np.int32)
        inside = (ix >= 0) & (ix < g.nx) & (iy >= 0) & (iy < g.ny)
        flat = np.where(inside, iy * g.nx + ix, 0)
        return inside & (self.dead_map().ravel()[flat] > 0)

    def locate(self, dx: np.ndarray, dy: np.ndarray, resolution: int) -> tuple[np.ndarray, ...]:
        """CCD number (1..12), RAWX, RAWY and FLAG of on-chip positions (arcsec, detector frame).

        Positions must be on a CCD (see :meth:`on_chip`). RAWX/RAWY count raw pixels of
        ``pixel_arcsec / resolution``; CCDs are numbered row by row from the lower left.
        """
        f32 = np.float32
        ux = dx - f32(self.array_x0)
        uy = dy - f32(self.array_y0)
        ix = (ux * f32(1.0 / (self.ccd_width + self.gap_x_arcsec))).astype(np.int16)
        iy = (uy * f32(1.0 / (self.ccd_height + self.gap_y_arcsec))).astype(np.int16)
        wx = ux - ix * f32(self.ccd_width + self.gap_x_arcsec)
        wy = uy - iy * f32(self.ccd_height + self.gap_y_arcsec)
        raw_scale = f32(resolution / self.pixel_arcsec)
        rawx = np.minimum((wx * raw_scale).astype(np.int16), self.ccd_columns * resolution - 1)
        rawy = np.minimum((wy * raw_scale).astype(np.int16), self.ccd_rows * resolution - 1)
        ccdnr = (iy * self.ccds_x + ix + 1).astype(np.uint8)
        flag = np.zeros(dx.shape, dtype=np.int32)
        if self.flag_ccd_border:
            border = (wx < f32(self.pixel_arcsec)) | (wx >= f32(self.ccd_width - self.pixel_arcsec))
            flag[border] = FLAG_CCD_BORDER
        if self.bad_columns:
            column_1x = (wx * f32(1.0 / self.pixel_arcsec)).astype(np.int16)
            for ccd, column in self.bad_columns:
                flag[(ccdnr == ccd) & (column_1x == column)] |= FLAG_BAD_COLUMN
        if self.dead_pixels:
            flag[self.dead_at(dx, dy)] |= FLAG_DEAD_PIXEL
        return ccdnr, rawx, rawy, flag

    def on_chip(self, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
        """True for positions (arcsec, detector frame) on a CCD (not in a gap or outside the array)."""
        pitch_x = np.float32(self.ccd_width + self.gap_x_arcsec)
        pitch_y = np.float32(self.ccd_height + self.gap_y_arcsec)
        ux = dx - np.float32(self.array_x0)
        uy = dy - np.float32(self.array_y0)
        on = (ux >= 0) & (ux < np.float32(self.array_width)) & (uy >= 0) & (uy < np.float32(self.array_height))
        on &= ux - np.floor(ux / pitch_x) * pitch_x < np.float32(self.ccd_width)
        on &= uy - np.floor(uy / pitch_y) * pitch_y < np.float32(self.ccd_height)
        return on

    def good_x_intervals(self, ix: int, iy: int) -> list[tuple[float, float]]:
        """Intervals (arcsec) along x of CCD (ix, iy) whose events are unflagged."""
        x0, _ = self.ccd_origin(ix, iy)
        ccd = iy * self.ccds_x + ix + 1
        bad = {c for k, c in self.bad_columns if k == ccd}
        if self.flag_ccd_border:
            bad |= {0, self.ccd_columns - 1}
        intervals: list[tuple[float, float]] = []
        start = None
        for c in range(self.ccd_columns + 1):
            good = c < self.ccd_columns and c not in bad
            if good and start is None:
                start = c
            elif not good and start is not None:
                intervals.append((x0 + start * self.pixel_arcsec, x0 + c * self.pixel_arcsec))
                start = None
        return intervals

    def acceptance(self, grid: ImageGrid, dead: bool = True, margins: EdgeMargins | None = None) -> np.ndarray:
        """Fraction of each pixel of ``grid`` covered by unflagged active CCD area (exact for the CCD
        layout), times :meth:`live` unless ``dead`` is False; ``margins``: inactive strips along the CCD
        edges and beside the dead pixels to leave out as well (those of real event lists)."""
        margins = margins or EdgeMargins()
        ccd = _acceptance(self, grid, margins)
        if not (dead and self.dead_pixels):
            return ccd
        live = self.live(grid)
        if margins.dead_arcsec > 0:
            live = live * _beside_dead(live, margins.dead_arcsec / grid.pixel_arcsec)
        return ccd * live

    def live(self, grid: ImageGrid) -> np.ndarray:
        """0 on the dead pixels of the 1x grid, 1 elsewhere, sampled at the pixel centres of ``grid``."""
        return _live(self, grid)

    def fov_fraction(self, grid: ImageGrid, supersample: int = 4) -> np.ndarray:
        """Fraction of each pixel of ``grid`` inside the telescope field of view (a circle on the array)."""
        return _fov_fraction(self, grid, supersample)

    def detector_mask(self, resolution: int) -> np.ndarray:
        """0/1 mask of active, unflagged pixels; the 2x mask is the 1x mask with every pixel split in four."""
        base = _detector_mask_1x(self)
        if resolution == 1:
            return base
        return np.kron(base, np.ones((resolution, resolution), dtype=np.uint8))


def coverage_1d(edges: np.ndarray, intervals: list[tuple[float, float]]) -> np.ndarray:
    lo, hi = edges[:-1], edges[1:]
    cover = np.zeros(lo.size)
    for a, b in intervals:
        cover += np.clip(np.minimum(hi, b) - np.maximum(lo, a), 0.0, None)
    return cover / (hi - lo)


@lru_cache(maxsize=4)
def _dead_map(regions: tuple[DeadRegion, ...], ny: int, nx: int) -> np.ndarray:
    dead = np.zeros((ny, nx), dtype=np.uint8)
    for r0, r1, c0, c1 in regions:
        dead[r0:r1 + 1, c0:c1 + 1] = 1
    dead.setflags(write=False)
    return dead


@lru_cache(maxsize=16)
def _acceptance(geom: PnGeometry, grid: ImageGrid, margins: EdgeMargins) -> np.ndarray:
    ex, ey = grid.edges()
    total = np.zeros(grid.shape)
    for iy in range(geom.ccds_y):
        _, y0 = geom.ccd_origin(0, iy)
        bottom = margins.above_gap_arcsec if iy > 0 else 0.0
        top = margins.below_gap_arcsec if iy < geom.ccds_y - 1 else 0.0
        cy = coverage_1d(ey, [(y0 + bottom, y0 + geom.ccd_height - top)])
        if not cy.any():
            continue
        for ix in range(geom.ccds_x):
            x0, _ = geom.ccd_origin(ix, iy)
            lo, hi = x0 + margins.x_arcsec, x0 + geom.ccd_width - margins.x_arcsec
            good = [(max(a, lo), min(b, hi)) for a, b in geom.good_x_intervals(ix, iy)]
            total += np.outer(cy, coverage_1d(ex, [(a, b) for a, b in good if b > a]))
    total.setflags(write=False)
    return total


def _beside_dead(live: np.ndarray, fraction: float) -> np.ndarray:
    """Area left to each pixel of a 0/1 ``live`` map when every dead pixel also takes ``fraction`` of the
    width (height) of each live neighbour beside (above, below) it."""
    dead = np.pad(live == 0, 1)   # nothing dead beyond the grid's border
    beside = dead[1:-1, :-2].astype(np.float64) + dead[1:-1, 2:]
    above_below = dead[:-2, 1:-1].astype(np.float64) + dead[2:, 1:-1]
    return np.clip(1.0 - fraction * beside, 0.0, 1.0) * np.clip(1.0 - fraction * above_below, 0.0, 1.0)


@lru_cache(maxsize=16)
def _live(geom: PnGeometry, grid: ImageGrid) -> np.ndarray:
    cx, cy = grid.centers()
    gx, gy = np.meshgrid(cx, cy)
    live = (~geom.dead_at(gx, gy)).astype(np.float64)
    live.setflags(write=False)
    return live


@lru_cache(maxsize=16)
def _fov_fraction(geom: PnGeometry, grid: ImageGrid, supersample: int) -> np.ndarray:
    offsets = (np.arange(supersample) + 0.5) / supersample * grid.pixel_arcsec
    ex, ey = grid.edges()
    r2max = (geom.fov_radius_arcmin * 60.0) ** 2
    frac = np.zeros(grid.shape)
    for oy in offsets:
        y2 = (ey[:-1] + oy - geom.fov_center_y_arcsec) ** 2
        for ox in offsets:
            x2 = (ex[:-1] + ox - geom.fov_center_x_arcsec) ** 2
            frac += (y2[:, None] + x2[None, :]) <= r2max
    frac /= supersample**2
    frac.setflags(write=False)
    return frac


@lru_cache(maxsize=4)
def _detector_mask_1x(geom: PnGeometry) -> np.ndarray:
    mask = (geom.acceptance(geom.image_grid(1)) > 0.5).astype(np.uint8)
    mask.setflags(write=False)
    return mask
