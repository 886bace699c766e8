"""Learning: the RRDB generator, normalisation, the HDF5 training set, its Dataset, training and resume."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import REPO
from torch.utils.data import DataLoader

from xmmsr.config import ConfigError, check_config, load_config
from xmmsr.instrument.model import PnInstrument
from xmmsr.learn.checkpoint import load_model
from xmmsr.learn.data import EpochSampler, PairDataset, source_share
from xmmsr.learn.model import Architecture, build_generator, count_parameters
from xmmsr.learn.normalise import Normalisation
from xmmsr.instrument.geometry import FrameLayout
from xmmsr.learn.pack import SPLITS, ShardFiles, pack_dataset, split_counts
from xmmsr.learn.train import Restoration, TrainingRun, run_from_config, train

TINY_ARCH = {"features": 8, "growth": 8, "blocks": 1, "dense_blocks": 1, "residual_scale": 0.2}


def dataset_path(tiny_run: Path) -> Path:
    return tiny_run / "results" / "dataset" / "xmmsr_dataset.h5"


# --- model and normalisation -------------------------------------------------------------------------


def test_reference_configuration_has_the_reference_parameter_count():
    paper = load_config(REPO / "config" / "paper.yaml")
    assert count_parameters(build_generator(Architecture.from_config("sr", paper["model"]))) == 325_985
    assert count_parameters(build_generator(Architecture.from_config("dn", paper["model"]))) == 316_705


@pytest.mark.parametrize(("task", "scale"), [("dn", 1), ("sr", 2)])
def test_output_shapes(task, scale):
    model = build_generator(Architecture(task, **TINY_ARCH))
    out = model(torch.rand(2, 1, 36, 52))
    assert out.shape == (2, 1, 36 * scale, 52 * scale)


def test_dn_head_starts_near_the_identity():
    torch.manual_seed(0)
    x = torch.rand(1, 1, 32, 32) * 5
    model = build_generator(Architecture("dn", **TINY_ARCH))
    assert (model(x) - x).abs().mean() < 0.2 * x.abs().mean()  # residual on the input


@pytest.mark.parametrize("method", ["asinh", "log", "sqrt_clamp"])
@pytest.mark.parametrize("upscale", [1, 2])
def test_normalisation_round_trips(method, upscale):
    norm = Normalisation(method, scale=1e-3 if method == "sqrt_clamp" else 5e-5)
    exposure = torch.tensor([2.0e4, 1.0e5])
    counts = torch.tensor([0.0, 0.3, 1.0, 7.0, 40.0]).repeat(2, 1, 1, 1)
    if method == "sqrt_clamp":  # clips above scale (counts/s per 1x pixel): stay below it
        counts = counts * 1e-3
    back = norm.inverse(norm.forward(counts, exposure, upscale), exposure, upscale)
    assert torch.allclose(back, counts, rtol=1e-5, atol=1e-6)


def test_asinh_does_not_clip_bright_sources_but_the_reference_does():
    counts = torch.tensor([1e2, 1e3, 1e4])
    asinh = Normalisation("asinh", 5e-5).forward(counts, 2e4)
    clamp = Normalisation("sqrt_clamp", 2.23e-3).forward(counts, 2e4)
    assert torch.all(torch.diff(asinh) > 0)
    assert torch.all(clamp == 1.0)


def test_poisson_loss_recovers_the_mean_where_l1_recovers_the_median():
    from xmmsr.learn.losses import poisson_nll

    counts = torch.poisson(torch.full((1, 1, 200, 200), 0.3), torch.Generator().manual_seed(1))
    mask = torch.ones_like(counts)
    fits = {}
    for name in ("poisson", "l1"):
        mu = torch.tensor(1.0, requires_grad=True)
        optimizer = torch.optim.Adam([mu], lr=0.02)
        for _ in range(400):
            pred = mu.expand_as(counts)
            loss = poisson_nll(pred, counts, mask) if name == "poisson" else (pred - counts).abs().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        fits[name] = float(mu)
    assert fits["poisson"] == pytest.approx(float(counts.mean()), rel=0.05)  # unbiased flux
    assert fits["l1"] < 0.05  # the median of Poisson(0.3) is 0: L1 alone loses faint flux


def test_poisson_loss_stays_finite_far_from_the_data():
    from xmmsr.metrics import poisson_deviance
    from xmmsr.learn.losses import poisson_nll

    counts = torch.tensor([[[[0.0, 3.0, 50.0]]]])
    mu = torch.tensor([[[[-1e6, -1e3, 1e30]]]], requires_grad=True)
    loss = poisson_nll(mu, counts, torch.ones_like(counts))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(mu.grad).all()
    assert np.isfinite(poisson_deviance(mu.detach().numpy()[0, 0], counts.numpy()[0, 0], np.ones((1, 3))))
    values = torch.tensor([-1e4, 0.0, 1e4])
    assert torch.isfinite(Normalisation("asinh").inverse(values, 1e5)).all()


# --- the HDF5 training set ---------------------------------------------------------------------------


@pytest.mark.parametrize("n", range(12))
def test_split_counts(n):
    counts = split_counts(n, {"train": 0.7, "val": 0.15, "test": 0.15})
    assert sum(counts.values()) == n and min(counts.values()) >= 0
    assert counts["train"] >= min(n, 1)
    assert counts["val"] >= (1 if n >= 2 else 0) and counts["test"] >= (1 if n >= 3 else 0)


def test_pack_splits_are_disjoint_by_source(tiny_run):
    with h5py.File(dataset_path(tiny_run)) as h5:
        meta = h5["meta"][:]
        sources = {s: {(m["kind"], m["source_id"]) for m in meta[h5[f"splits/{s}"][:]]} for s in SPLITS}
        assert sum(len(h5[f"splits/{s}"]) for s in SPLITS) == len(meta) == 5
        assert all(m["split"].decode() == s for s in SPLITS for m in meta[h5[f"splits/{s}"][:]])
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            assert not sources[a] & sources[b]
        assert len(sources["val"]) >= 1 and len(sources["test"]) >= 1
        # frames are padded consistently: HR offset = 2 x LR offset, and the data sit inside the masks
        lr_off, hr_off = h5.attrs["lr_offset"], h5.attrs["hr_offset"]
        assert list(hr_off) == [2 * o for o in lr_off] and h5["lr"].shape[1:] == (416, 416)
        assert h5["sr_target"].shape[1:] == (832, 832) and h5["lr"].chunks == (1, 416, 416)
        for name, mask in (("lr", "mask_1x"), ("dn_target", "mask_1x"), ("sr_target", "mask_2x")):
            counts = h5[name][:]  # the masks keep pixels more than half active: few counts fall outside
            outside = (counts * (1 - h5[mask][:])).sum()
            assert outside < 0.02 * counts.sum() and not counts[:, :lr_off[0] * (2 if "sr" in name else 1)].any()
        counts = h5["dn_target"][:].sum() / h5["lr"][:].sum()
        assert 4.0 < counts < 6.0  # 10 ks / 2 ks
        assert len(h5.attrs["config_hash"]) == 64 and h5.attrs["software"].startswith("xmmsr")


def test_the_frame_layout_is_where_packing_put_the_image_grid(tiny_run):
    """The detector positions that the pair renderer and the evaluation give frame pixels
    (:class:`FrameLayout`) are where packing put the image: the recorded padding, the grid's own pixel
    centres at both resolutions inside it, and no active mask pixel outside it."""
    with h5py.File(dataset_path(tiny_run)) as h5:
        instrument = PnInstrument.from_config(json.loads(h5.attrs["config"])["instrument"])
        offset, masks = tuple(int(v) for v in h5.attrs["lr_offset"]), {s: h5[f"mask_{s}x"][:] for s in (1, 2)}
    layout = FrameLayout.centred(instrument.geometry.image_grid(1), masks[1].shape)
    assert layout.offset_1x == offset and offset != (0, 0)
    for s, mask in masks.items():
        grid = instrument.geometry.image_grid(s)
        x, y = layout.pixel_centres(s, mask.shape)
        (y0, x0), (ny, nx) = (s * offset[0], s * offset[1]), grid.shape
        np.testing.assert_allclose(x[x0:x0 + nx], grid.centers()[0], rtol=0, atol=1e-9)
        np.testing.assert_allclose(y[y0:y0 + ny], grid.centers()[1], rtol=0, atol=1e-9)
        inside = np.zeros(mask.shape, dtype=bool)
        inside[y0:y0 + ny, x0:x0 + nx] = True
        assert mask[inside].any() and not mask[~inside].any()


def _shards(run: Path) -> list[ShardFiles]:
    out = run / "results"
    return [ShardFiles(kind, out / "sky" / kind / "shard0000", out / "images" / kind / "shard0000" / "2ks_1x.fits",
                       out / "images" / kind / "shard0000" / "10ks_1x.fits",
                       out / "images" / kind / "shard0000" / "10ks_2x.fits",
                       out / "expected" / kind / "shard0000" / "1x.fits", out / "expected" / kind / "shard0000" / "2x.fits")
            for kind in ("extended", "agn", "background")]


def test_pack_is_deterministic_and_the_split_depends_on_the_seed(tiny_run, tmp_path):
    out = tiny_run / "results"
    masks = (out / "masks" / "detmask_1x.fits", out / "masks" / "detmask_2x.fits")
    split = {"train": 0.5, "val": 0.5, "test": 0.0}
    args = (_shards(tiny_run), *masks, 2e3, 1e4, split, 32, 1)
    pack_dataset(*args, seed=1, dataset_config={"a": 1}, output=tmp_path / "a.h5")
    pack_dataset(*args, seed=1, dataset_config={"a": 1}, output=tmp_path / "b.h5")
    assert (tmp_path / "a.h5").read_bytes() == (tmp_path / "b.h5").read_bytes()
    assigned = set()
    for seed in range(8):
        pack_dataset(*args, seed=seed, dataset_config={"a": 1}, output=tmp_path / "c.h5")
        with h5py.File(tmp_path / "c.h5") as h5:
            assigned.add(tuple(h5["meta"]["split"]))
    assert len(assigned) > 1


def test_dataset_crops_are_aligned_and_augmentations_shared(tiny_run):
    path = dataset_path(tiny_run)
    plain = PairDataset(path, "sr", "train", crop=24)
    augmented = PairDataset(path, "sr", "train", crop=24, augment=True)
    with h5py.File(path) as h5:
        lr_all, sr_all = h5["lr"][:], h5["sr_target"][:]
    transforms = [lambda a, k=k, f=f: np.rot90(a, k)[:, ::-1] if f else np.rot90(a, k) for k in range(4) for f in (0, 1)]
    for draw in range(6):
        item = plain[(draw % len(plain), 1000 + draw)]
        lr, sr = item["input"][0].numpy(), item["target"][0].numpy()
        assert lr.shape == (24, 24) and sr.shape == (48, 48)
        sample, (y0, x0) = int(item["index"]), item["origin"].tolist()
        assert np.array_equal(lr_all[sample, y0:y0 + 24, x0:x0 + 24], lr)
        assert np.array_equal(sr_all[sample, 2 * y0:2 * y0 + 48, 2 * x0:2 * x0 + 48], sr)  # 2x offset
        aug = augmented[(draw % len(plain), 1000 + draw)]
        matches = [t for t in transforms if np.array_equal(t(lr), aug["input"][0].numpy())
                   and np.array_equal(t(sr), aug["target"][0].numpy())
                   and np.array_equal(t(item["mask_target"][0].numpy()), aug["mask_target"][0].numpy())]
        assert matches, "input, target and mask must share one flip/rotation"
        assert item["mask_input"][0].numpy().sum() > 0  # crops are centred on the detector


def test_source_share_is_the_sources_fraction_of_the_expected_counts():
    expected, background = np.array([0.0, 1.0, 4.0, 2.0]), np.array([0.0, 1.0, 1.0, 3.0])
    assert np.allclose(source_share(expected, background), [0.0, 0.0, 0.75, 0.0])


def test_source_crops_centre_crops_where_sources_outshine_the_background(tiny_run):
    path = dataset_path(tiny_run)
    uniform = PairDataset(path, "dn", "train", crop=16)
    assert all(torch.equal(uniform[(i % len(uniform), 7 + i)]["input"],
                           PairDataset(path, "dn", "train", crop=16, source_crops=0.0)[(i % len(uniform), 7 + i)]["input"])
               for i in range(4))  # off: the draws of earlier runs
    sourced = PairDataset(path, "dn", "train", crop=16, source_crops=1.0)
    with h5py.File(path) as h5:
        shares = {int(s): source_share(h5["expected_rate_1x"][s], h5["background_rate_1x"][s]) for s in sourced.indices}
    centre_share = {}
    for name, ds in (("uniform", uniform), ("sourced", sourced)):
        values = []
        for draw in range(60):
            item = ds[(draw % len(ds), 500 + draw)]
            y0, x0 = item["origin"].tolist()
            values.append(shares[int(item["index"])][y0 + 8, x0 + 8])  # the centre (crops this small are not clipped)
        centre_share[name] = np.mean(values)
    assert centre_share["sourced"] > 3 * centre_share["uniform"], centre_share  # 0.40 against 0.07
    with pytest.raises(ValueError, match="source_crops"):
        PairDataset(path, "dn", "train", crop=16, source_crops=1.5)


def test_brightened_crops_are_poisson_draws_of_brighter_sources_over_the_same_background(tiny_run):
    path = dataset_path(tiny_run)
    plain = PairDataset(path, "sr", "train", crop=16)
    off = PairDataset(path, "sr", "train", crop=16, brighten=0.0, max_factor=30.0)
    assert all(torch.equal(plain[(i % len(plain), 7 + i)]["target"], off[(i % len(off), 7 + i)]["target"])
               and float(off[(i % len(off), 7 + i)]["brightening"]) == 1.0 for i in range(4))  # off: earlier draws
    bright = PairDataset(path, "sr", "train", crop=16, source_crops=1.0, brighten=1.0, max_factor=30.0)
    assert np.all(bright.max_brightening >= 1.0)
    with h5py.File(path) as h5:
        cap = json.loads(h5.attrs["config"])["sources"]["extended"]["max_count_rate"]
        for i, sample in enumerate(bright.indices):  # the cap holds for every field
            rate = float(np.sum(h5["expected_rate_1x"][sample] - h5["background_rate_1x"][sample], dtype=np.float64))
            assert rate * bright.max_brightening[i] <= cap * (1 + 1e-9) or bright.max_brightening[i] == 1.0
        factors, pulls = [], []
        for draw in range(40):
            item = bright[(draw % len(bright), 900 + draw)]
            factor, sample = float(item["brightening"]), int(item["index"])
            assert 1.0 <= factor <= 30.0
            factors.append(factor)
            y0, x0 = item["origin"].tolist()
            window = (sample, slice(2 * y0, 2 * y0 + 32), slice(2 * x0, 2 * x0 + 32))
            e, b = h5["expected_rate_2x"][window].astype(float), h5["background_rate_2x"][window].astype(float)
            exposure = float(h5["exposure_target"][sample])
            expected = (b + factor * (e - b)) * exposure  # sources brightened, the background as it was
            assert np.isclose(float(item["expected"].sum()), expected.sum(), rtol=1e-4)
            pulls.append((float(item["target"].sum()) - expected.sum()) / np.sqrt(expected.sum()))
    assert len(set(factors)) > 10 and np.median(factors) > 2.0  # log-uniform in [1, 30]: median ~5.5
    assert abs(np.mean(pulls)) < 4 / np.sqrt(len(pulls)) and 0.5 < np.std(pulls) < 1.6  # Poisson counts
    for bad in ({"brighten": 1.5}, {"brighten": 0.5, "max_factor": 0.5}):
        with pytest.raises(ValueError, match="brighten"):
            PairDataset(path, "dn", "train", crop=16, **bad)


def test_thinned_inputs_are_binomial_thinnings_with_their_exposure(tiny_run):
    """train.thin_inputs: the input's counts thinned binomially and its exposure scaled with them, the
    target as it was; off, the draws of earlier runs."""
    path = dataset_path(tiny_run)
    plain = PairDataset(path, "dn", "train", crop=16)
    off = PairDataset(path, "dn", "train", crop=16, thin_inputs=0.0, min_exposure_fraction=0.5)
    assert all(torch.equal(plain[(i % len(plain), 7 + i)]["input"], off[(i % len(off), 7 + i)]["input"])
               for i in range(4))
    thin = PairDataset(path, "dn", "train", crop=16, thin_inputs=1.0, min_exposure_fraction=0.25)
    kept, pulls = [], []
    for draw in range(60):
        a, b = thin[(draw % len(thin), 300 + draw)], plain[(draw % len(plain), 300 + draw)]
        f = float(a["exposure_input"] / b["exposure_input"])
        assert 0.25 - 1e-6 <= f <= 1.0 and float(a["target"].sum()) == float(b["target"].sum())
        n, k = float(b["input"].sum()), float(a["input"].sum())
        assert k <= n
        kept.append(f)
        if n > 0:
            pulls.append((k - f * n) / np.sqrt(max(n * f * (1 - f), 1e-9)))
    assert np.min(kept) < 0.4 and np.max(kept) > 0.8 and 0.35 < np.median(kept) < 0.65   # log-uniform: median 0.5
    assert abs(np.mean(pulls)) < 4 / np.sqrt(len(pulls)) and 0.5 < np.std(pulls) < 1.6   # binomial counts
    for bad in ({"thin_inputs": 1.5}, {"thin_inputs": 0.5, "min_exposure_fraction": 0.0}):
        with pytest.raises(ValueError, match="thin_inputs"):
            PairDataset(path, "dn", "train", crop=16, **bad)


def test_injected_pairs_are_poisson_counts_of_the_psf_added_to_input_target_and_expected(tiny_run):
    from xmmsr.learn.injection import PairInjection

    path = dataset_path(tiny_run)
    plain = PairDataset(path, "sr", "train", crop=16)
    off = PairDataset(path, "sr", "train", crop=16, pairs=PairInjection(fraction=0.0))
    assert all(torch.equal(plain[(i % len(plain), 7 + i)]["input"], off[(i % len(off), 7 + i)]["input"])
               and not bool(off[(i % len(off), 7 + i)]["paired"]) for i in range(4))  # off: earlier draws
    paired = PairDataset(path, "sr", "train", crop=16, pairs=PairInjection(fraction=1.0, counts=(300.0, 300.0)))
    added_in, pulls = [], []
    for draw in range(24):
        key = (draw % len(plain), 500 + draw)
        a, b = plain[key], paired[key]
        assert bool(b["paired"]) and torch.equal(a["origin"], b["origin"])
        d_in, d_target = b["input"] - a["input"], b["target"] - a["target"]
        d_expected = (b["expected"] - a["expected"]).double()
        assert d_in.min() >= 0 and d_target.min() >= 0 and d_expected.min() >= -1e-3   # counts are only added
        assert torch.all(d_target[b["mask_target"] == 0] == 0)                          # none in the gaps
        ratio = float(b["exposure_target"] / b["exposure_input"])
        added_in.append(float(d_in.sum()))
        pulls.append((float(d_target.sum()) - float(d_expected.sum())) / np.sqrt(float(d_expected.sum())))
        assert float(d_expected.sum()) <= 600.0 * ratio * 1.001    # two sources of at most 300 counts each
    # on active pixels, away from the crop's edge, most of the pair's counts land in the 16 x 16 crop
    assert 350 < np.median(added_in) <= 600 and abs(np.mean(pulls)) < 4 / np.sqrt(len(pulls))
    assert 0.5 < np.std(pulls) < 1.6                                           # Poisson counts of the target
    with pytest.raises(ValueError, match="flux_ratio"):
        PairDataset(path, "sr", "train", crop=16, pairs=PairInjection(fraction=0.5, flux_ratio=(0.5, 2.0)))


def test_injected_pairs_follow_the_psf_of_each_resolution_at_the_same_positions(instrument):
    from xmmsr.learn.injection import PairInjection, PairRenderer

    settings = PairInjection(fraction=1.0, counts=(1000.0, 1000.0), separation_arcsec=(12.0, 12.0),
                             flux_ratio=(1.0, 1.0))
    renderer = PairRenderer(instrument, (0, 0), settings, 1.9, 3e20)
    g, grid = instrument.geometry, instrument.geometry.image_grid(1)
    # a 64-pixel crop centred near the optical axis (round PSF) and one 12' away (elongated tangentially)
    on_axis = (int((g.axis_y_arcsec - grid.y0_arcsec) / 4.0) - 32, int((g.axis_x_arcsec - grid.x0_arcsec) / 4.0) - 32)
    for origin in (on_axis, (on_axis[0], on_axis[1] - 180)):
        pair = renderer.draw(np.random.default_rng(3), origin, 64, 2)
        assert np.allclose(pair.positions[2], (pair.positions[1] + 0.5) * 2 - 0.5)
        assert np.hypot(*(pair.positions[1][1] - pair.positions[1][0])) == pytest.approx(12.0 / 4.0)
        for r in (1, 2):
            image = pair.counts[r]
            assert 0.85 * 2000 < image.sum() <= 2000    # the PSF beyond the crop and the truncation are lost
            yy, xx = np.mgrid[: image.shape[0], : image.shape[1]]
            centroid = np.array([(xx * image).sum(), (yy * image).sum()]) / image.sum()
            assert np.allclose(centroid, pair.positions[r].mean(axis=0), atol=0.3 * r)
        # the 2x PSF is half as wide: its brightest pixel holds a larger share of the pair's counts
        assert pair.counts[2].max() * 4 > pair.counts[1].max()


def test_an_injected_source_has_its_readout_streak_along_its_ccd_column(instrument):
    """The out-of-time fraction f of a source's counts leaves its image and lies spread along its CCD's
    column: every crop row that the CCD covers gets the source's column profile times f / (the CCD's
    rows); rows beyond the CCD get none."""
    import dataclasses

    from xmmsr.learn.injection import PairInjection, PairRenderer

    f = instrument.out_of_time_fraction
    assert f > 0
    renderer = PairRenderer(instrument, (0, 0), PairInjection(), 1.9, 3e20)
    in_time = PairRenderer(dataclasses.replace(instrument, out_of_time_fraction=0.0), (0, 0), PairInjection(), 1.9, 3e20)
    g, grid = instrument.geometry, instrument.geometry.image_grid(1)
    top = g.ccd_origin(0, 0)[1] + g.ccd_height          # the upper edge of CCD row 0
    row0 = int((top - grid.y0_arcsec) / grid.pixel_arcsec) - 40       # a 64-row crop across the gap above it
    col0 = int((g.axis_x_arcsec - grid.x0_arcsec) / grid.pixel_arcsec) - 32
    for r in (1, 2):
        args = ((row0, col0), 64, np.array([[31.5, 12.0]]), np.array([1000.0]), r)
        image, psf = renderer.render(*args), in_time.render(*args)
        rows_per_ccd = g.ccd_height / (grid.pixel_arcsec / r)
        edges = grid.y0_arcsec + row0 * grid.pixel_arcsec + np.arange(64 * r + 1) * grid.pixel_arcsec / r
        on_ccd = np.clip((top - edges[:-1]) / (edges[1:] - edges[:-1]), 0.0, 1.0)   # share of each row on CCD 0
        expected = (1 - f) * psf + f * on_ccd[:, None] * psf.sum(axis=0)[None, :] / rows_per_ccd
        np.testing.assert_allclose(image, expected, rtol=1e-9, atol=1e-12)
        assert on_ccd[0] == 1.0 and on_ccd[-1] == 0.0 and image[-1].sum() == 0.0   # no streak beyond the CCD


def test_an_injected_source_looks_like_the_simulators_expected_image_of_it(instrument):
    """The renderer's point source and the built-in simulator's expected image of the same AGN at the aim
    point (the de-blending evaluation's cutouts) agree pixel by pixel at 1x and 2x."""
    from xmmsr.evaluate.deblend import CUTOUT_HALF_PX, pair_images
    from xmmsr.learn.injection import PairInjection, PairRenderer

    (images,) = pair_images(instrument, np.array([20.0]))
    renderer = PairRenderer(instrument, (0, 0), PairInjection(), 1.9, 3e20)
    grid = instrument.geometry.image_grid(1)
    g = instrument.geometry
    mid = np.array([g.aim_x_arcsec - grid.x0_arcsec, g.aim_y_arcsec - grid.y0_arcsec])
    for r in (1, 2):
        simulated = images.primary[r]
        crop = 2 * CUTOUT_HALF_PX
        xy = images.positions[1][0]                      # the primary, in 1x pixels of the cutout
        # the cutout's corner on the image grid: where the primary's cutout position meets its image position
        corner = np.round(mid / grid.pixel_arcsec - 0.5 - xy).astype(int)
        rendered = renderer.render((int(corner[1]), int(corner[0])), crop, xy[None, :], np.array([1.0]), r)
        rendered *= simulated.sum() / rendered.sum()
        core = simulated > 0.05 * simulated.max()
        np.testing.assert_allclose(rendered[core], simulated[core], rtol=0.06, atol=0.005 * simulated.max())
        peak = np.unravel_index(np.argmax(simulated), simulated.shape)
        assert np.unravel_index(np.argmax(rendered), rendered.shape) == peak


def test_dataset_works_with_worker_processes(tiny_run):
    ds = PairDataset(dataset_path(tiny_run), "dn", "train", crop=16, augment=True)
    sampler = EpochSampler(len(ds), 8, seed=3)
    batches = [torch.cat([b["input"] for b in DataLoader(ds, batch_size=4, sampler=sampler, num_workers=w)])
               for w in (0, 2)]
    assert torch.equal(batches[0], batches[1])
    sampler.set_epoch(1)
    again = torch.cat([b["input"] for b in DataLoader(ds, batch_size=4, sampler=sampler)])
    assert not torch.equal(again, batches[0])


def test_full_frames_for_evaluation(tiny_run):
    item = PairDataset(dataset_path(tiny_run), "sr", "val")[0]
    assert item["input"].shape == (1, 416, 416) and item["target"].shape == (1, 832, 832)
    assert item["expected"].sum() > 0 and float(item["exposure_target"]) == 1e4


# --- training ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", ["dn", "sr"])
def test_a_tiny_model_overfits_a_handful_of_crops(tiny_run, task):
    """200 Adam steps on 4 fixed crops with the noise-free target drive the L1 loss down >= 10x."""
    torch.manual_seed(0)
    ds = PairDataset(dataset_path(tiny_run), task, "train", crop=32)
    batch = next(iter(DataLoader([ds[(i % len(ds), i)] for i in range(4)], batch_size=4)))
    batch["target"] = batch["expected"]
    module = Restoration(Architecture(task, **TINY_ARCH), Normalisation(), {"l1": 1.0}, 3e-3, 0.0, 0, 200, 1.0)
    optimizer = torch.optim.Adam(module.parameters(), lr=3e-3)
    losses = []
    for _ in range(200):
        loss = module._step(batch)[0]["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 10


def _run(tiny_run: Path, ckpt: Path, **train_overrides) -> TrainingRun:
    cfg = load_config(REPO / "tests" / "data" / "tiny.yaml")
    cfg["train"].update(epochs=3, steps_per_epoch=2, batch_size=2, crop=16, loss={"l1": 1.0, "poisson": 0.1,
                                                                                  "ssim": 0.1, "ms_ssim": 0.0})
    cfg["train"].update(train_overrides)
    return run_from_config(cfg, "sr", dataset_path(tiny_run), ckpt, seed=7)


class Kill(RuntimeError):
    pass


class KillAtEpoch:
    """A callback that stops training (as a kill would) when an epoch starts."""

    def __new__(cls, epoch: int):
        import lightning.pytorch as pl

        class _Kill(pl.Callback):
            def on_train_epoch_start(self, trainer, module):
                if trainer.current_epoch == epoch:
                    raise Kill(f"killed at epoch {epoch}")

        return _Kill()


def test_resume_after_a_kill_reaches_the_uninterrupted_weights(tiny_run, tmp_path):
    full = train(_run(tiny_run, tmp_path / "full"), tmp_path / "full.pt", tmp_path / "full.csv", threads=1)

    with pytest.raises(Kill):
        train(_run(tiny_run, tmp_path / "ckpt"), tmp_path / "m.pt", tmp_path / "h.csv", threads=1,
              callbacks=[KillAtEpoch(2)])
    assert not (tmp_path / "m.pt").exists()  # no finished-looking model after a kill
    assert (tmp_path / "ckpt" / "last.ckpt").exists()
    resumed = train(_run(tiny_run, tmp_path / "ckpt"), tmp_path / "m.pt", tmp_path / "h.csv", threads=1)

    for (name, a), b in zip(full.generator.state_dict().items(), resumed.generator.state_dict().values()):
        assert torch.equal(a, b), name
    assert (tmp_path / "h.csv").read_text() == (tmp_path / "full.csv").read_text()
    assert len((tmp_path / "h.csv").read_text().splitlines()) == 1 + 3

    loaded = load_model(tmp_path / "m.pt")  # weights_only=True inside
    assert loaded.task == "sr" and loaded.target_exposure_s == 1e4 and loaded.input_exposure_s == 2e3
    assert loaded.provenance["steps"] == 6 and loaded.train_config["train"]["crop"] == 16
    x = torch.rand(1, 1, 16, 16)
    assert torch.equal(loaded.generator(x), resumed.generator.eval()(x))


def test_checkpoints_of_another_configuration_are_not_resumed(tiny_run, tmp_path, capsys):
    train(_run(tiny_run, tmp_path / "ckpt", epochs=1), tmp_path / "m.pt", tmp_path / "h.csv", threads=1)
    train(_run(tiny_run, tmp_path / "ckpt", epochs=1, lr=1e-3), tmp_path / "m.pt", tmp_path / "h.csv", threads=1)
    out = capsys.readouterr().out
    assert "another configuration" in out and "resuming" not in out


def test_training_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="pack.input_exposure_ks"):
        check_config({"pack": {"input_exposure_ks": 30}})
    with pytest.raises(ConfigError, match="train.crop"):
        check_config({"train": {"crop": 4}})
    with pytest.raises(ConfigError, match="train.loss.ms_ssim.*gives 96 for sr"):
        check_config({"train": {"tasks": ["sr"], "loss": {"l1": 0.0, "ms_ssim": 1.0}, "crop": 48}})
    assert check_config({"train": {"tasks": ["sr"], "loss": {"ms_ssim": 1.0}, "crop": 96}})["train"]["crop"] == 96
    with pytest.raises(ConfigError, match="every pixel-loss weight is 0"):
        check_config({"train": {"loss": {"l1": 0.0, "poisson": 0.0}}})


def test_config_is_validated_once_with_defaults_filled_and_keys_sorted():
    raw = {"train": {"lr": 1e-3}, "seed": 3}
    cfg = check_config(raw)
    assert cfg is raw and list(cfg) == sorted(cfg) and list(cfg["train"]) == sorted(cfg["train"])
    assert cfg["train"]["lr"] == 1e-3 and cfg["train"]["loss"]["l1"] == 1.0  # nested defaults filled
    again = check_config({"seed": 3, "train": {"lr": 1e-3}})
    assert repr(again) == repr(cfg)  # the order of the given keys does not matter
    assert check_config({}) is not check_config({})  # defaults are copies, never the schema's own objects
    first = check_config({})
    first["train"]["loss"]["l1"] = 7.0
    assert check_config({})["train"]["loss"]["l1"] == 1.0


def test_paper_config_is_a_valid_overlay():
    raw = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    cfg = check_config(raw)
    assert cfg["train"]["crop"] is None or cfg["train"]["crop"] >= 64
    assert cfg["sources"]["extended"]["n"] >= 1000


def test_real_fine_tuning_config_is_a_valid_overlay_holding_out_observations():
    raw = yaml.safe_load((REPO / "config" / "pretrained.yaml").read_text())
    raw.update(yaml.safe_load((REPO / "config" / "finetune_real.yaml").read_text()))
    real = check_config(raw)["real"]
    splits = [image["split"] for image in real["images"]]
    assert splits.count("train") >= 1 and splits.count("val") + splits.count("test") >= 2


def test_deblending_overlays_stack_on_the_pretrained_config():
    from snakemake.utils import update_config  # merged as --configfile merges them

    raw: dict = {}
    for name in ("pretrained", "deblend_pairs", "source_crops"):
        update_config(raw, yaml.safe_load((REPO / "config" / f"{name}.yaml").read_text()))
    cfg = check_config(raw)
    assert cfg["outdir"] == "results/pairs_crops" and cfg["train"]["tasks"] == ["sr"]
    assert cfg["train"]["source_crops"] == 0.5 and cfg["sources"]["agn"]["pair_fraction"] == 0.5
    assert cfg["model"]["blocks"] == 2 and cfg["train"]["epochs"] == 15  # the pretrained settings underneath


@pytest.mark.parametrize("overlay, outdir, setting", [
    ("bright_targets", "results/bright", ("brighten", {"fraction": 0.5, "max_factor": 100.0})),
    ("shallow_inputs", "results/shallow_inputs", ("thin_inputs", {"fraction": 0.5, "min_exposure_fraction": 0.25})),
    ("injected_pairs", "results/injected_pairs", ("pairs", {"fraction": 0.75, "counts": [20.0, 2000.0],
                                                            "separation_arcsec": [2.0, 20.0], "flux_ratio": [1.0, 5.0]})),
])
def test_training_overlays_keep_the_pretrained_training_set(overlay, outdir, setting):
    from snakemake.utils import update_config

    raw: dict = {}
    for name in ("pretrained", overlay):
        update_config(raw, yaml.safe_load((REPO / "config" / f"{name}.yaml").read_text()))
    cfg = check_config(raw)
    pretrained = check_config(yaml.safe_load((REPO / "config" / "pretrained.yaml").read_text()))
    assert cfg["outdir"] == outdir and cfg["train"][setting[0]] == setting[1]
    assert all(cfg[k] == pretrained[k] for k in ("seed", "sources", "instrument", "simulate", "pack", "model"))


def test_workflow_models_predict_and_export(tiny_run, tmp_path):
    """The train rule's outputs: a model file that predicts on a simulated 1x image, the same
    generator in ONNX, and one history row per epoch."""
    import csv

    from astropy.io import fits

    from xmmsr.cli import main
    from xmmsr.cube import cube_wcs, read_cube

    out = tiny_run / "results"
    counts, rows, header = read_cube(out / "images" / "agn" / "shard0000" / "2ks_1x.fits")
    image = tmp_path / "agn_2ks.fits"
    h = cube_wcs(rows[0]).to_header()
    h["EXPOSURE"] = header["EXPOSURE"]
    fits.PrimaryHDU(counts[0], header=h).writeto(image)
    for task, scale in (("dn", 1), ("sr", 2)):
        model_dir = out / "models" / task
        history = list(csv.DictReader((model_dir / "history.csv").open()))
        assert [int(r["epoch"]) for r in history] == [0, 1] and all(np.isfinite(float(r["val_loss"])) for r in history)
        assert main(["predict", "--model", str(model_dir / "model.pt"), "--input", str(image),
                     "--output", str(tmp_path / f"{task}.fits")]) == 0
        with fits.open(tmp_path / f"{task}.fits") as hdul:
            pred = hdul[0].data
            assert pred.shape == (411 * scale, 403 * scale) and hdul[0].header["EXPOSURE"] == 1e4
            assert np.isfinite(pred).all() and pred.min() >= 0
            if task == "dn":  # barely trained, the residual head keeps the flux: ~5x the 2 ks counts
                assert 0.5 * 5 * counts[0].sum() < pred.sum() < 2 * 5 * counts[0].sum()

        ort = pytest.importorskip("onnxruntime")
        model = load_model(model_dir / "model.pt")
        x = model.normalisation.forward(torch.from_numpy(counts[0][:64, :80].astype(np.float32)), 2e3)[None, None]
        session = ort.InferenceSession(str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
        y = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        with torch.no_grad():
            np.testing.assert_allclose(y, model.generator(x).numpy(), atol=1e-4)


# --- the model file: digest and bytes ------------------------------------------------------------------


def _small_model():
    from xmmsr.learn.checkpoint import TrainedModel

    torch.manual_seed(0)
    arch = Architecture("dn", features=8, growth=8, blocks=1, dense_blocks=1)
    return TrainedModel(build_generator(arch), arch, Normalisation("asinh", 5.0e-5), 20_000.0, 100_000.0,
                        {"train": {"lr": 1e-3}}, {"seed": 1, "steps": 3})


def test_model_file_bytes_depend_only_on_the_content(tmp_path):
    from xmmsr.learn.checkpoint import save_model

    model = _small_model()
    save_model(tmp_path / "a.pt", model)
    save_model(tmp_path / "other_name.pt", model)
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "other_name.pt").read_bytes()
    assert b"other_name" not in (tmp_path / "other_name.pt").read_bytes() and b".tmp" not in (tmp_path / "a.pt").read_bytes()


def test_a_damaged_model_file_is_refused(tmp_path):
    from xmmsr.errors import InputError
    from xmmsr.learn.checkpoint import save_model

    path = tmp_path / "dn.pt"
    save_model(path, _small_model())
    load_model(path)  # intact: loads
    data = bytearray(path.read_bytes())
    raw = torch.load(path, weights_only=True)
    # flip bytes inside the stored weights (located through the tensor's bytes), keeping the zip readable
    weights = raw["state_dict"]["head.weight" if "head.weight" in raw["state_dict"] else next(iter(raw["state_dict"]))]
    start = bytes(data).find(weights.reshape(-1).view(torch.uint8).numpy().tobytes()[:64])
    assert start > 0
    for i in range(start, start + 200, 7):
        data[i] ^= 0xFF
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(bytes(data))
    with pytest.raises(InputError, match="digest.*damaged"):
        load_model(damaged)
    # an edited entry (not the weights) is caught too
    raw["target_exposure_s"] = 50_000.0
    torch.save(raw, tmp_path / "edited.pt")
    with pytest.raises(InputError, match="digest"):
        load_model(tmp_path / "edited.pt")


def test_version_1_model_files_load_with_a_warning(tmp_path):
    from xmmsr.learn.checkpoint import save_model

    path = tmp_path / "v1.pt"
    save_model(path, _small_model())
    raw = torch.load(path, weights_only=True)
    raw["format_version"] = 1
    del raw["digest"]
    torch.save(raw, path)
    with pytest.warns(UserWarning, match="no digest"):
        model = load_model(path)
    assert model.target_exposure_s == 100_000.0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine whose torch sees no GPU")
def test_training_refuses_the_cpu_when_a_gpu_was_asked_for_or_given():
    from xmmsr.errors import InputError
    from xmmsr.learn.device import training_device

    assert training_device("auto", {}) in ("cpu", "mps")
    assert training_device("cpu", {"CUDA_VISIBLE_DEVICES": "0"}) == "cpu"   # deliberately on the CPU
    assert training_device("auto", {"CUDA_VISIBLE_DEVICES": "", "SLURM_GPUS_ON_NODE": "0"}) in ("cpu", "mps")
    with pytest.raises(InputError, match="train.accelerator"):
        training_device("gpu", {})
    for env in ({"CUDA_VISIBLE_DEVICES": "0"}, {"SLURM_JOB_GPUS": "1"}, {"SLURM_GPUS_ON_NODE": "2"}):
        with pytest.raises(InputError, match="given GPUs") as err:
            training_device("auto", env)
        assert "train.accelerator: cpu" in str(err.value)


def test_relativistic_losses_reward_the_side_that_wins():
    from xmmsr.learn.adversarial import relativistic_losses

    confident = relativistic_losses(torch.full((2, 1, 4, 4), 10.0), torch.full((2, 1, 4, 4), -10.0))
    fooled = relativistic_losses(torch.full((2, 1, 4, 4), -10.0), torch.full((2, 1, 4, 4), 10.0))
    assert confident[1] < 1e-3 and confident[0] > 10.0   # the discriminator wins: the generator loses
    assert fooled[0] < 1e-3 and fooled[1] > 10.0
    even = relativistic_losses(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4))
    assert float(even[0]) == pytest.approx(np.log(2)) and float(even[1]) == pytest.approx(np.log(2))


def test_adversarial_training_continues_the_pixel_model_deterministically_and_resumes(tiny_run, tmp_path):
    from xmmsr.errors import InputError
    from xmmsr.learn.adversarial import AdversarialRun, train_adversarial

    start = train(_run(tiny_run, tmp_path / "pixel", epochs=1), tmp_path / "pixel.pt", tmp_path / "p.csv", threads=1)
    cfg = load_config(REPO / "tests" / "data" / "tiny.yaml")["train"]
    cfg.update(steps_per_epoch=2, batch_size=2, crop=16)
    cfg["loss"]["adversarial"] = 0.05
    cfg["adversarial"].update(epochs=3, discriminator_features=4)

    def run(directory: str, callbacks=()):
        return train_adversarial(AdversarialRun("sr", tmp_path / "pixel.pt", dataset_path(tiny_run), cfg, 3,
                                                tmp_path / directory), tmp_path / f"{directory}.pt",
                                 tmp_path / f"{directory}.csv", threads=1, callbacks=callbacks)

    full = run("full")
    changed = sum(float((a - b).abs().sum()) for a, b in zip(start.generator.state_dict().values(),
                                                              full.generator.state_dict().values()))
    assert changed > 0  # warm-started from the pixel model, then moved
    history = pd.read_csv(tmp_path / "full.csv")
    assert list(history["step"]) == [2, 4, 6] and history["train_adversarial"].notna().all()
    assert full.provenance["adversarial_from"] == "pixel.pt" and full.provenance["adversarial_steps"] == 6
    assert full.train_config["adversarial"]["weight"] == 0.05

    with pytest.raises(Kill):
        run("ckpt", [KillAtEpoch(2)])
    assert not (tmp_path / "ckpt.pt").exists()
    resumed = run("ckpt")
    for (name, a), b in zip(full.generator.state_dict().items(), resumed.generator.state_dict().values()):
        assert torch.equal(a, b), name
    assert (tmp_path / "ckpt.csv").read_text() == (tmp_path / "full.csv").read_text()
    cfg["loss"]["adversarial"] = 0.0
    with pytest.raises(InputError, match="train.loss.adversarial"):
        run("none")
