"""Point-source recovery: detect sources in a prediction and in the truth with the same settings
(:func:`xmmsr.detection.detect_point_sources`, whose docstring gives the method), match them.

Matching (:func:`match_pairs`, :func:`match_sources`): greedy one-to-one nearest neighbours within
``max_sep_px`` (pairs taken in order of increasing separation), so each true source is recovered at
most once; unmatched detections are false (hallucinated) sources. :func:`point_source_metrics` uses
a maximum separation of one PSF FWHM (``MATCH_FWHM``); the evaluation widens it per source to the
source's error circle in the input (:func:`match_radii`, :mod:`xmmsr.evaluate.localisation`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.ndimage import median_filter
from scipy.spatial import cKDTree

from ..detection import NSIGMA, detect_point_sources
from .localisation import ERROR_CIRCLE_SIGMA

MATCH_FWHM = 1.0           # maximum separation of a matched pair, in PSF FWHM


@dataclass(frozen=True)
class MatchedPairs:
    """One-to-one matches: indices into the truth and detected tables, separations (pixels) and
    flux ratios (detected / true)."""

    truth_index: np.ndarray
    detected_index: np.ndarray
    separation_px: np.ndarray
    flux_ratio: np.ndarray
    n_true: int
    n_detected: int

    @property
    def n_matched(self) -> int:
        return int(self.truth_index.size)


def match_radii(position_error_px: np.ndarray, fwhm_px: float, max_px: float) -> np.ndarray:
    """Per true source, the radius within which a detection is that source: its error circle in the input
    (``ERROR_CIRCLE_SIGMA`` x its position error, :mod:`xmmsr.evaluate.localisation`) where that is wider
    than ``MATCH_FWHM`` x ``fwhm_px``, and no wider than ``max_px``."""
    fixed = MATCH_FWHM * float(fwhm_px)
    circle = ERROR_CIRCLE_SIGMA * np.asarray(position_error_px, dtype=np.float64)
    return np.clip(np.nan_to_num(circle, nan=fixed, posinf=max_px), fixed, max(float(max_px), fixed))


def match_pairs(truth: pd.DataFrame, detected: pd.DataFrame, max_sep_px: float | np.ndarray) -> MatchedPairs:
    """Greedy one-to-one nearest-neighbour matching within ``max_sep_px`` (closest pairs first): one radius
    for all, or one per row of ``truth`` (:func:`match_radii`).

    ``truth`` and ``detected`` need columns ``x``, ``y`` and ``flux`` (a DataFrame or an astropy Table)."""
    tx, ty, tf = (np.asarray(truth[c], dtype=np.float64) for c in ("x", "y", "flux"))
    dx, dy, df = (np.asarray(detected[c], dtype=np.float64) for c in ("x", "y", "flux"))
    n_true, n_det = tx.size, dx.size
    radius = np.broadcast_to(np.asarray(max_sep_px, dtype=np.float64), (n_true,))
    ti: list[int] = []
    di: list[int] = []
    sep: list[float] = []
    if n_true and n_det:
        pairs = cKDTree(np.column_stack([tx, ty])).sparse_distance_matrix(
            cKDTree(np.column_stack([dx, dy])), float(radius.max()), output_type="ndarray")
        pairs = pairs[pairs["v"] <= radius[pairs["i"]]]
        used_t: set[int] = set()
        used_d: set[int] = set()
        for i in np.argsort(pairs["v"], kind="stable"):
            a, b = int(pairs["i"][i]), int(pairs["j"][i])
            if a in used_t or b in used_d:
                continue
            used_t.add(a)
            used_d.add(b)
            ti.append(a)
            di.append(b)
            sep.append(float(pairs["v"][i]))
    t_idx = np.asarray(ti, dtype=np.int64)
    d_idx = np.asarray(di, dtype=np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = df[d_idx] / tf[t_idx]
    return MatchedPairs(t_idx, d_idx, np.asarray(sep, dtype=np.float64), ratio, n_true, n_det)


def match_sources(truth: pd.DataFrame, detected: pd.DataFrame, max_sep_px: float) -> dict[str, float]:
    """Summary of :func:`match_pairs`: ``n_true``, ``n_detected``, ``n_matched``, ``n_false`` (detections
    with no true source within ``max_sep_px``: hallucinated), ``completeness`` (n_matched / n_true, nan
    when there is no true source), ``median_flux_ratio`` (detected / true flux of the matched pairs)
    and ``median_offset_px`` (both nan when nothing matched)."""
    return summarise_pairs(match_pairs(truth, detected, max_sep_px))


def summarise_pairs(p: MatchedPairs) -> dict[str, float]:
    """The figures of :func:`match_sources` from already matched pairs."""
    return {
        "n_true": float(p.n_true),
        "n_detected": float(p.n_detected),
        "n_matched": float(p.n_matched),
        "n_false": float(p.n_detected - p.n_matched),
        "completeness": p.n_matched / p.n_true if p.n_true else float("nan"),
        "median_flux_ratio": float(np.median(p.flux_ratio)) if p.n_matched else float("nan"),
        "median_offset_px": float(np.median(p.separation_px)) if p.n_matched else float("nan"),
    }


def point_source_metrics(pred: np.ndarray, truth_expected: np.ndarray, mask: np.ndarray,
                         background: np.ndarray | float, psf_fwhm_px: float, pixel_arcsec: float,
                         nsigma: float = NSIGMA) -> dict[str, float]:
    """Detect point sources in the prediction and in the noise-free truth with the same settings and
    match them within ``MATCH_FWHM`` x FWHM. Keys: ``n_true``, ``n_detected``, ``n_matched``,
    ``n_false``, ``completeness``, ``median_flux_ratio``, ``median_offset_arcsec``."""
    truth = detect_point_sources(truth_expected, mask, background, psf_fwhm_px, nsigma)
    return score_against_truth(truth, pred, mask, background, psf_fwhm_px, pixel_arcsec, nsigma)


def score_against_truth(truth: pd.DataFrame, pred: np.ndarray, mask: np.ndarray, background: np.ndarray | float,
                        psf_fwhm_px: float, pixel_arcsec: float, nsigma: float = NSIGMA) -> dict[str, float]:
    """:func:`point_source_metrics` with the truth's detections given (detect them once per image when
    several predictions are scored against the same truth)."""
    return score_and_list(truth, pred, mask, background, psf_fwhm_px, pixel_arcsec, nsigma)[0]


SOURCE_COLUMNS = ("source", "x", "y", "flux", "significance", "offaxis_arcmin", "found", "detected_significance",
                  "match_radius_arcsec", "cause")

# Why a detection has no true source (:func:`false_causes`), in the order they are tested, with what each
# means; the report and the model card explain the classes by these words.
FALSE_CAUSE_MEANINGS = {
    "mislocated": "within twice the 1x PSF FWHM of a true source that the method did not find "
                  "(one detection per source: the source, placed beyond its match radius)",
    "fragment": "near a true source that was found (a second peak of it)",
    "streak": "where the out-of-time streaks of the field's sources outshine the background "
              "(a streak drawn wider or narrower than the truth's leaves ridges)",
    "extended": "where the truth's extended emission (a median over five PSF FWHM) outshines the background",
    "isolated": "on the background alone: a source invented from nothing",
}
FALSE_CAUSES = tuple(FALSE_CAUSE_MEANINGS)


def describe_false_causes(quote: str = "'") -> str:
    """The false-detection classes and their meanings as one sentence fragment, names within ``quote``."""
    return "; ".join(f"{quote}{name}{quote}, {meaning}" for name, meaning in FALSE_CAUSE_MEANINGS.items())


def score_and_list(truth: pd.DataFrame, pred: np.ndarray, mask: np.ndarray, background: np.ndarray | float,
                   psf_fwhm_px: float, pixel_arcsec: float, nsigma: float = NSIGMA,
                   offaxis_arcmin: np.ndarray | None = None,
                   edge_truth: pd.DataFrame | None = None,
                   match_radius_px: np.ndarray | None = None,
                   detected: pd.DataFrame | None = None) -> tuple[dict[str, float], pd.DataFrame]:
    """:func:`score_against_truth` and the sources behind it, one row each (:data:`SOURCE_COLUMNS`): every
    true source (``source`` = ``true_source``; its flux and significance in the truth; ``found`` when
    matched; ``detected_significance`` that of its match in the prediction) and every detection without a
    true source (``false_detection``: hallucinated; its own flux and significance, also as
    ``detected_significance``).
    ``offaxis_arcmin``: a map of the off-axis angle on this grid (NaN without it).
    ``edge_truth``: the truth's sources found anywhere in the mask (``edge_fwhm=0``): a detection that
    matches none of ``truth`` but lies within the match radius of a true source that ``truth`` leaves out
    for being near the mask's edge is neither found nor false (the prediction's peak of an edge source
    may lie a pixel further in than the truth's and pass the edge cut that the truth's did not).
    ``match_radius_px``: one match radius per row of ``truth`` (:func:`match_radii`; default
    ``MATCH_FWHM`` x FWHM for all), listed as ``match_radius_arcsec``.
    ``detected``: the prediction's sources, when :func:`detect_point_sources` already found them with these
    arguments (a caller that scores one prediction against several radii finds them once)."""
    if detected is None:
        detected = detect_point_sources(pred, mask, background, psf_fwhm_px, nsigma)
    fixed = MATCH_FWHM * float(psf_fwhm_px)
    radius = np.full(len(truth), fixed) if match_radius_px is None else np.asarray(match_radius_px, dtype=np.float64)
    if radius.shape != (len(truth),):
        raise ValueError(f"match_radius_px has shape {radius.shape}, not one radius per true source ({len(truth)})")
    if edge_truth is not None:
        detected = without_edge_sources(truth, edge_truth, detected, fixed, radius)
    pairs = match_pairs(truth, detected, radius)
    out = summarise_pairs(pairs)
    out["median_offset_arcsec"] = out.pop("median_offset_px") * float(pixel_arcsec)
    found = np.zeros(len(truth), dtype=bool)
    found[pairs.truth_index] = True
    matched_significance = np.full(len(truth), np.nan)
    matched_significance[pairs.truth_index] = detected["significance"].to_numpy()[pairs.detected_index]
    false = np.ones(len(detected), dtype=bool)
    false[pairs.detected_index] = False
    rows = pd.concat([truth.assign(source="true_source", found=found, detected_significance=matched_significance,
                                   match_radius_arcsec=radius * float(pixel_arcsec)),
                      detected[false].assign(source="false_detection", found=False,
                                             detected_significance=detected["significance"][false])],
                     ignore_index=True)
    if offaxis_arcmin is None or rows.empty:
        rows["offaxis_arcmin"] = np.nan
    else:
        ny, nx = offaxis_arcmin.shape
        iy = np.clip(np.round(rows["y"].to_numpy()).astype(int), 0, ny - 1)
        ix = np.clip(np.round(rows["x"].to_numpy()).astype(int), 0, nx - 1)
        rows["offaxis_arcmin"] = offaxis_arcmin[iy, ix]
    return out, rows.reindex(columns=list(SOURCE_COLUMNS))


def false_causes(rows: pd.DataFrame, near_px: float, streak: np.ndarray, extended: np.ndarray,
                 background: np.ndarray | float) -> pd.DataFrame:
    """``rows`` (:func:`score_and_list`'s list of one image) with ``cause`` set for each false detection,
    the first that applies of :data:`FALSE_CAUSES`:

    * ``mislocated``: within ``near_px`` of a true source that was not found (one-to-one, closest first):
      the source, placed further from its true position than the match radius;
    * ``fragment``: within ``near_px`` of a true source that was found: a second peak of it;
    * ``streak``: where the out-of-time streaks (``streak``, counts per pixel) outshine the ``background``;
    * ``extended``: where the extended emission (``extended``: the truth's source counts without its point
      sources) outshines the ``background``;
    * ``isolated``: none of these, a source invented on the background alone.

    ``near_px`` is meant to be twice the 1x PSF FWHM on this grid (what the input's counts can place),
    so that SR, matched within the 2x FWHM, and DN are read alike."""
    rows = rows.copy()
    rows["cause"] = pd.Series([None] * len(rows), index=rows.index, dtype=object)
    false = rows.index[rows["source"] == "false_detection"]
    if false.empty:
        return rows
    xy = rows.loc[false, ["x", "y"]].to_numpy(dtype=np.float64)
    cause = np.full(false.size, "", dtype=object)
    true = rows[rows["source"] == "true_source"]
    lost, found = true[~true["found"].astype(bool)], true[true["found"].astype(bool)]
    if not lost.empty:   # one detection per lost source, the closest first
        pairs = match_pairs(lost.assign(flux=1.0), pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "flux": 1.0}), near_px)
        cause[pairs.detected_index] = "mislocated"
    if not found.empty:  # any number of fragments per found source
        d, _ = cKDTree(found[["x", "y"]].to_numpy(dtype=np.float64)).query(xy)
        cause[(cause == "") & (d <= near_px)] = "fragment"
    ny, nx = streak.shape
    iy = np.clip(np.round(xy[:, 1]).astype(int), 0, ny - 1)
    ix = np.clip(np.round(xy[:, 0]).astype(int), 0, nx - 1)
    level = np.broadcast_to(np.asarray(background, dtype=np.float64), streak.shape)[iy, ix]
    for name, image in (("streak", streak), ("extended", extended)):
        cause[(cause == "") & (image[iy, ix] > level)] = name
    cause[cause == ""] = "isolated"
    rows.loc[false, "cause"] = cause
    return rows


def false_cause_table(sources: pd.DataFrame) -> pd.DataFrame:
    """False detections per field of each method (rows, in ``sources``' order) by cause (columns
    :data:`FALSE_CAUSES`, then ``all``), over the fields of ``sources`` (an evaluation's ``sources.csv``)."""
    fields = max(int(sources["sample"].nunique()), 1)
    false = sources[sources["source"] == "false_detection"]
    counts = pd.crosstab(false["method"], false["cause"]).reindex(
        index=list(dict.fromkeys(sources["method"])), columns=list(FALSE_CAUSES), fill_value=0)
    table = counts / fields
    table["all"] = counts.sum(axis=1) / fields
    return table


def extended_emission(source_counts: np.ndarray, psf_fwhm_px: float) -> np.ndarray:
    """The extended part of a noise-free image of source counts (no background): a median over a box of
    five PSF FWHM, in which a point source's core fills too few pixels to count."""
    size = int(2 * np.ceil(2.5 * psf_fwhm_px) + 1)
    return median_filter(np.asarray(source_counts, dtype=np.float64), size=size, mode="nearest")


PURITY_COLUMNS = ("fields", "method", "n_fields", "false_per_field_goal", "threshold", "false_per_field", "completeness",
                  "false_per_field_at_nsigma", "completeness_at_nsigma")


def purity_table(sources: pd.DataFrame, n_fields: int, nsigma: float = NSIGMA,
                 false_per_field: float = 0.1, fields: str = "all") -> pd.DataFrame:
    """Completeness of every method at the same purity: the lowest detection threshold (>= ``nsigma``,
    the significance in the prediction) at which the method has at most ``false_per_field`` false
    detections per field over the ``n_fields`` fields of ``sources`` (:func:`score_and_list`'s rows with a
    ``method`` column), and the fraction of the true sources it then finds. A method that invents
    sources must raise its threshold and loses the faint true ones with them: this compares methods,
    the input included, on equal terms (one row per method, :data:`PURITY_COLUMNS`; ``fields`` names the
    fields the rows count)."""
    rows = []
    allowed = int(np.floor(false_per_field * n_fields + 1e-9))
    for method, part in sources.groupby("method", sort=False):
        false_sig = np.sort(part.loc[part["source"] == "false_detection", "detected_significance"].to_numpy())[::-1]
        true = part[part["source"] == "true_source"]
        threshold = float(nsigma)
        if false_sig.size > allowed:
            threshold = max(threshold, float(np.nextafter(false_sig[allowed], np.inf)))
        found = true["detected_significance"].to_numpy(dtype=np.float64)
        n_true = len(true)
        rows.append({"fields": fields, "method": method, "n_fields": int(n_fields), "false_per_field_goal": float(false_per_field),
                     "threshold": threshold,
                     "false_per_field": float(np.sum(false_sig >= threshold)) / n_fields if n_fields else np.nan,
                     "completeness": float(np.sum(found >= threshold)) / n_true if n_true else np.nan,
                     "false_per_field_at_nsigma": float(false_sig.size) / n_fields if n_fields else np.nan,
                     "completeness_at_nsigma": float(np.sum(found >= nsigma)) / n_true if n_true else np.nan})
    return pd.DataFrame(rows, columns=list(PURITY_COLUMNS))


def without_edge_sources(truth: pd.DataFrame, edge_truth: pd.DataFrame, detected: pd.DataFrame,
                          edge_radius_px: float, truth_radius_px: np.ndarray) -> pd.DataFrame:
    """``detected`` without the detections of true sources near the mask's edge (see :func:`score_and_list`):
    those within ``edge_radius_px`` of an edge source that match no true source (within ``truth_radius_px``,
    one radius per row of ``truth``)."""
    if edge_truth.empty or detected.empty:
        return detected
    edge_xy = np.column_stack([edge_truth["x"], edge_truth["y"]]).astype(np.float64)
    if not truth.empty:   # the edge sources: those of edge_truth that truth does not hold
        d, _ = cKDTree(np.column_stack([truth["x"], truth["y"]]).astype(np.float64)).query(edge_xy)
        edge_xy = edge_xy[d > 0.5]
    if edge_xy.size == 0:
        return detected
    pairs = match_pairs(truth, detected, truth_radius_px)
    unmatched = np.ones(len(detected), dtype=bool)
    unmatched[pairs.detected_index] = False
    d, _ = cKDTree(edge_xy).query(np.column_stack([detected["x"], detected["y"]]).astype(np.float64))
    return detected[~(unmatched & (d <= edge_radius_px))].reset_index(drop=True)
