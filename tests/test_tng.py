"""IllustrisTNG sources: the web-API client against a local server, cutout reading, X-ray physics of the
projection, the command line and the workflow with sources.kind: tng."""

from __future__ import annotations

import json
import threading
from abc import ABC, abstractmethod
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest
import yaml
from astropy.io import fits
from conftest import TINY, snakemake
from scipy.integrate import trapezoid

from xmmsr.cli import main
from xmmsr.config import check_config
from xmmsr.errors import InputError
from xmmsr.sky.model import read_sky_model
from xmmsr.sky.tng.client import RetryPolicy, TngClient, download_selection, local_manifest, read_manifest
from xmmsr.sky.tng.cutout import GasCutout, read_cutout, write_cutout
from xmmsr.sky.tng.physics import (
    BOLTZMANN_ERG_K,
    GAMMA,
    KEV_K,
    KPC_CM,
    MSUN_G,
    PROTON_MASS_G,
    X_HYDROGEN,
    deposit,
    temperature_k,
)
from xmmsr.sky.tng.sky import distances_cm, project_cutout

KEY = "k3y-for-tests-7f9c2e"
H, OMEGA0 = 0.6774, 0.3089
X_E = 1.0 + 2.0 * (1.0 - X_HYDROGEN) / (4.0 * X_HYDROGEN)   # fully ionised H + He
LOG_T = 7.4
LAMBDA_05_2_AT_LOG_T = 1.251400e-23 - 5.121100e-24      # table row log T = 7.4: j(>0.5 keV) - j(>2 keV)


def internal_energy(temperature: float, xe: float = X_E) -> float:
    """TNG InternalEnergy ((km/s)^2) of gas at ``temperature`` K."""
    mu = 4.0 / (1.0 + 3.0 * X_HYDROGEN + 4.0 * X_HYDROGEN * xe)
    return temperature * BOLTZMANN_ERG_K / ((GAMMA - 1.0) * mu * PROTON_MASS_G) / 1e10


def blob(n: int = 20000, center: tuple[float, float, float] = (5000.0, 5000.0, 5000.0), radius: float = 100.0,
         n_star_forming: int = 0, n_cold: int = 0, seed: int = 0) -> GasCutout:
    """A uniform isothermal (10^7.4 K) sphere of gas, plus optional star-forming and cold cells at its centre
    (z = 0, a = 1, so ckpc/h = kpc / h)."""
    m = n + n_star_forming + n_cold

    def points(count: int, rng: np.random.Generator, scale: float) -> np.ndarray:
        direction = rng.normal(size=(count, 3))
        direction /= np.linalg.norm(direction, axis=1)[:, None]
        return np.asarray(center)[None, :] + direction * (scale * np.cbrt(rng.random(count)))[:, None]

    coords = np.concatenate([points(n, np.random.default_rng(seed), radius),
                             points(m - n, np.random.default_rng(seed + 1), radius / 4)])
    rho = np.full(m, 1e-5)                               # 1e10 Msun/h (ckpc/h)^-3
    volume = 4.0 / 3.0 * np.pi * radius**3
    masses = np.full(m, rho[0] * volume / n)            # cells fill the sphere exactly
    u = np.full(m, internal_energy(10.0**LOG_T))
    sfr = np.zeros(m)
    sfr[n:n + n_star_forming] = 0.5
    u[n + n_star_forming:] = internal_energy(2e4)
    rho[n:] *= 1e3                                       # dense: they would dominate if they emitted
    return GasCutout(coords, masses, rho, u, np.full(m, X_E), sfr, H, OMEGA0, 0.0, 1.0, 75000.0)


def blob_luminosity(cut: GasCutout, n: int) -> float:
    """n_e n_H Lambda V of the hot cells (analytic, erg/s)."""
    rho = cut.density[0] * 1e10 * MSUN_G * H**2 / KPC_CM**3
    n_h = X_HYDROGEN * rho / PROTON_MASS_G
    volume = cut.masses[:n].sum() / cut.density[0] * KPC_CM**3 / H**3
    return X_E * n_h * n_h * LAMBDA_05_2_AT_LOG_T * volume


def centroid(image: np.ndarray) -> tuple[float, float]:
    yy, xx = np.indices(image.shape)
    return float((xx * image).sum() / image.sum()), float((yy * image).sum() / image.sum())


# ----------------------------------------------------------------------------- physics


def test_temperature_from_internal_energy_and_electron_abundance():
    assert temperature_k(np.array([internal_energy(1e7)]), np.array([X_E]))[0] == pytest.approx(1e7, rel=1e-12)
    # neutral gas has a higher mean molecular weight: the same u is hotter
    assert temperature_k(np.array([100.0]), np.array([0.0]))[0] > temperature_k(np.array([100.0]), np.array([X_E]))[0]


def test_isothermal_blob_projects_to_the_expected_luminosity_flux_and_centroid():
    n, z = 20000, 1e-3
    cut = blob(n)
    proj = project_cutout(cut, "z", 600.0, z, npix=256, center_ckpc_h=np.array([5000.0, 5000.0, 5000.0]))
    expected_l = blob_luminosity(cut, n)
    # 0.3 %: the band at z = 0.001 is 0.5005-2.002 keV, interpolated in the table between its thresholds
    assert proj.luminosity_erg_s == pytest.approx(expected_l, rel=3e-3)
    # photon flux: L / <E> (1 + z) / (4 pi D_L^2), <E> of a 10^7.4 K bremsstrahlung continuum in the band
    kt = 10.0**LOG_T / KEV_K
    energies = np.geomspace(0.5 * (1 + z), 2.0 * (1 + z), 20001)
    boltz = np.exp(-energies / kt)
    mean_e = trapezoid(boltz, energies) / trapezoid(boltz / energies, energies)
    _, d_l = distances_cm(H, OMEGA0, z)
    expected_flux = expected_l / (mean_e * 1.602176634e-9) * (1 + z) / (4 * np.pi * d_l**2)
    assert proj.image.sum(dtype=np.float64) == pytest.approx(expected_flux, rel=3e-3)
    assert proj.kt_keV == pytest.approx(kt / (1 + z), rel=1e-6)
    cx, cy = centroid(proj.image.astype(np.float64))
    assert (cx, cy) == pytest.approx((127.5, 127.5), abs=0.3)


def test_star_forming_and_cold_gas_contribute_nothing():
    center = np.array([5000.0, 5000.0, 5000.0])
    plain = project_cutout(blob(5000), "z", 600.0, 0.05, npix=128, center_ckpc_h=center)
    with_sf = project_cutout(blob(5000, n_star_forming=500, n_cold=500), "z", 600.0, 0.05, npix=128,
                             center_ckpc_h=center)
    np.testing.assert_array_equal(plain.image, with_sf.image)
    assert with_sf.meta["TNGNCELL"] == 5000


def test_deposit_conserves_the_summed_emissivity():
    rng = np.random.default_rng(3)
    n, npix = 200000, 512
    x, y = rng.uniform(150, 360, n), rng.uniform(150, 360, n)
    sigma = 10.0 ** rng.uniform(-1.5, 1.3, n)           # 0.03 to 20 pixels: every footprint group
    w = rng.exponential(1.0, n)
    image = deposit(x, y, w, sigma, npix)
    assert image.sum() == pytest.approx(w.sum(), rel=1e-9)
    assert image.min() >= 0.0
    # one wide cell: a Gaussian of the requested width (second moment), centred where it was put
    single = deposit(np.array([200.3]), np.array([260.8]), np.array([1.0]), np.array([12.0]), npix)
    cx, cy = centroid(single)
    yy, xx = np.indices(single.shape)
    var_x = float(((xx - cx) ** 2 * single).sum())
    assert (cx, cy) == pytest.approx((200.3, 260.8), abs=1e-3)
    assert np.sqrt(var_x) == pytest.approx(12.0, rel=0.2)   # groups are a factor sqrt(2) wide


def test_axis_choice_rotates_the_image():
    center = np.array([5000.0, 5000.0, 5000.0])
    cut = blob(4000, center=(5000.0 + 150.0 * H, 5000.0, 5000.0), radius=40.0)   # 150 kpc along +x
    npix, width = 200, 600.0
    c = (npix - 1) / 2.0
    shift = 150.0 / width * npix
    images = {a: project_cutout(cut, a, width, 0.05, npix=npix, center_ckpc_h=center).image.astype(np.float64)
              for a in "xyz"}
    assert centroid(images["z"]) == pytest.approx((c + shift, c), abs=0.3)    # z: image (x, y)
    assert centroid(images["x"]) == pytest.approx((c, c), abs=0.3)            # x: along the line of sight
    assert centroid(images["y"]) == pytest.approx((c, c + shift), abs=0.3)    # y: image (z, x)
    assert images["z"].sum() == pytest.approx(images["x"].sum(), rel=1e-6)


def test_cutout_round_trip_and_bad_cutouts_name_the_file_and_field(tmp_path):
    path = tmp_path / "TNG100-1_snap099_sub7.hdf5"
    write_cutout(path, blob(500))
    back = read_cutout(path)
    assert len(back) == 500 and back.hubble == pytest.approx(H) and back.box_size == 75000.0
    import h5py

    broken = tmp_path / "no_density.hdf5"
    write_cutout(broken, blob(50))
    with h5py.File(broken, "a") as f:
        del f["PartType0/Density"]
    with pytest.raises(InputError, match="no_density.hdf5.*PartType0/Density.*missing"):
        read_cutout(broken)
    truncated = tmp_path / "truncated.hdf5"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(InputError, match="truncated.hdf5.*download it again"):
        read_cutout(truncated)


def test_tng_project_command_writes_an_unaugmented_sky_model(tmp_path, capsys):
    cutout = tmp_path / "TNG300-1_snap099_sub42.hdf5"
    write_cutout(cutout, blob(3000))
    out = tmp_path / "sky.fits"
    assert main(["tng-project", str(cutout), "--axis", "y", "--width-kpc", "500", "--redshift", "0.1",
                 "--npix", "128", "--output", str(out)]) == 0
    sky = read_sky_model(out)
    assert sky.image.shape == (128, 128) and sky.total_flux > 0 and sky.kind == "extended"
    assert sky.meta["TNGSIM"] == "TNG300-1" and sky.meta["TNGSUBID"] == 42 and sky.meta["TNGAXIS"] == "y"
    assert sky.meta["TNGWIDTH"] == 500.0 and sky.spectrum[0] == "bremss"
    assert sky.pixel_arcsec == pytest.approx(500.0 / 128 * KPC_CM / distances_cm(H, OMEGA0, 0.1)[0] * 206264.806,
                                             rel=1e-6)
    assert "ph cm-2 s-1" in capsys.readouterr().out
    assert main(["tng-project", str(tmp_path / "nope.hdf5"), "--axis", "x", "--width-kpc", "500",
                 "--redshift", "0.1", "--output", str(tmp_path / "x.fits")]) == 2
    assert "does not exist" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the web API


class LocalServer(ABC):
    """An HTTP server on 127.0.0.1 (a free port, a daemon thread) that passes every GET to ``handle``; a
    context manager. ``base`` is its API root."""

    def __init__(self) -> None:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep the test output clean
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                try:
                    server.handle(self)
                except (BrokenPipeError, ConnectionResetError):   # the client gave up on the body
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}/api/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    @abstractmethod
    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        """Answer one GET request."""


class FakeTng(LocalServer):
    """A TNG-API-shaped HTTP server on 127.0.0.1 with injected failures (one 503, one truncated body)."""

    def __init__(self, cutout_bytes: bytes, require_key: bool = True) -> None:
        self.cutout = cutout_bytes
        self.requests: list[dict] = []
        self.require_key = require_key  # False: a foreign host that serves anyone (and records what it got)
        self.redirects: dict[str, str] = {}   # path -> Location of a 302 answer
        self.search_fields: dict[str, object] = {}   # overrides of the search response's fields
        self.fail_503 = {"11"}          # the first cutout request of subhalo 11 gets a 503
        self.truncate = {"11"}          # the next one is cut in the middle
        self.down = False               # every request gets a 503
        self.lock = threading.Lock()
        super().__init__()

    def _json(self, handler: BaseHTTPRequestHandler, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        url = urlparse(handler.path)
        query = parse_qs(url.query)
        with self.lock:
            self.requests.append({"path": url.path, "query": query, "range": handler.headers.get("Range"),
                                  "key_ok": handler.headers.get("api-key") == KEY,
                                  "key": handler.headers.get("api-key")})
        if url.path in self.redirects:
            handler.send_response(302)
            handler.send_header("Location", self.redirects[url.path])
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return None
        if self.require_key and handler.headers.get("api-key") != KEY:
            return self._json(handler, 403, {"detail": "Invalid API key."})
        if self.down:
            return self._json(handler, 503, {"detail": "down"})
        parts = [p for p in url.path.split("/") if p]
        # /api/TNG100-1/snapshots/99/subhalos/[id/[cutout.hdf5]]
        if parts[:1] != ["api"] or len(parts) < 5 or parts[4] != "subhalos":
            return self._json(handler, 404, {"detail": "Not found."})
        base = f"{self.base}{parts[1]}/snapshots/{parts[3]}/subhalos/"
        if len(parts) == 5:
            subs = [{"id": 11, "mass_log_msun": 14.3, "url": f"{base}11/"},
                    {"id": 22, "mass_log_msun": 13.9, "url": f"{base}22/"}]
            limit = int(query.get("limit", ["100"])[0])
            body = {"count": 2, "next": None, "previous": None, "results": subs[:limit], **self.search_fields}
            return self._json(handler, 200, body)
        sub = parts[5]
        if len(parts) == 6:
            return self._json(handler, 200, {"id": int(sub), "pos_x": 5000.0, "pos_y": 5000.0, "pos_z": 5000.0,
                                             "mass_log_msun": 14.0, "primary_flag": 1})
        with self.lock:
            if sub in self.fail_503:
                self.fail_503.discard(sub)
                return self._json(handler, 503, {"detail": "busy"})
            cut_now = sub in self.truncate and handler.headers.get("Range") is None
            if cut_now:
                self.truncate.discard(sub)
        data = self.cutout
        start = 0
        if handler.headers.get("Range"):
            start = int(handler.headers["Range"].split("=")[1].split("-")[0])
            handler.send_response(206)
            handler.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            handler.send_response(200)
        handler.send_header("Content-Type", "application/x-hdf5")
        handler.send_header("Content-Length", str(len(data) - start))
        handler.end_headers()
        body = data[start:]
        if cut_now:
            handler.wfile.write(body[: len(body) // 2])
            handler.wfile.flush()
            handler.close_connection = True
            return
        handler.wfile.write(body)


@pytest.fixture()
def cutout_bytes(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("cut") / "c.hdf5"
    write_cutout(path, blob(20000))   # ~0.7 MB: a truncated response leaves several read chunks to resume from
    return path.read_bytes()


def tng_section(server: FakeTng, cutout_dir: Path, **extra) -> dict:
    cfg = check_config({"sources": {"kind": "tng", "tng": {"api_url": server.base, "cutout_dir": str(cutout_dir),
                                                          "selection": {"top_n": 2}, "backoff_s": 0.0, **extra}}})
    return cfg["sources"]["tng"]


def assert_no_key(folder: Path, *texts: str) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    for text in texts:
        assert KEY not in text


def test_client_selects_downloads_retries_resumes_and_never_writes_the_key(tmp_path, cutout_bytes, monkeypatch):
    monkeypatch.setenv("TNG_API_KEY", KEY)
    messages: list[str] = []
    with FakeTng(cutout_bytes) as server:
        tng = tng_section(server, tmp_path / "tng")
        manifest = download_selection(tng, log=messages.append)
        cutouts = manifest["cutouts"]
        assert [c["subhalo_id"] for c in cutouts] == [11, 22]
        assert all(Path(c["file"]).read_bytes() == cutout_bytes for c in cutouts)
        assert cutouts[0]["center_ckpc_h"] == [5000.0, 5000.0, 5000.0] and len(cutouts[0]["sha256"]) == 64
        requests = list(server.requests)
        assert all(r["key_ok"] for r in requests)
        search = requests[0]
        assert search["query"]["order_by"] == ["-mass_log_msun"] and search["query"]["limit"] == ["2"]
        fetches = [r for r in requests if r["path"].endswith("/11/cutout.hdf5")]
        assert len(fetches) == 3                                     # 503, truncated, resumed
        assert fetches[2]["range"] is not None and fetches[2]["range"].startswith("bytes=")
        assert int(fetches[2]["range"].split("=")[1].rstrip("-")) > 0
        assert fetches[0]["query"]["gas"] == [",".join(tng["gas_fields"])]
        assert any("HTTP 503" in m for m in messages) and any("resuming at byte" in m for m in messages)
        assert not list((tmp_path / "tng").glob(".*part"))             # no partial file left

        # present and valid: nothing is downloaded again
        before = len(server.requests)
        download_selection(tng, log=messages.append)
        assert not [r for r in server.requests[before:] if r["path"].endswith("cutout.hdf5")]

        # an invalid file under the final name is replaced
        Path(cutouts[1]["file"]).write_bytes(b"not hdf5")
        download_selection(tng, log=messages.append)
        assert Path(cutouts[1]["file"]).read_bytes() == cutout_bytes
    assert_no_key(tmp_path, *messages)


def test_bad_or_missing_key_gives_a_clear_error(tmp_path, cutout_bytes, monkeypatch):
    with FakeTng(cutout_bytes) as server:
        monkeypatch.setenv("TNG_API_KEY", "wrong-key")
        with pytest.raises(InputError) as exc:
            download_selection(tng_section(server, tmp_path / "tng"))
        assert "TNG_API_KEY" in str(exc.value) and "403" in str(exc.value) and "wrong-key" not in str(exc.value)
        monkeypatch.delenv("TNG_API_KEY")
        with pytest.raises(InputError) as exc:
            download_selection(tng_section(server, tmp_path / "tng"))
        assert "TNG_API_KEY" in str(exc.value) and "tng-project.org" in str(exc.value) and "export" in str(exc.value)
    assert not (tmp_path / "tng").exists() or not list((tmp_path / "tng").glob("*.hdf5"))


def test_persistent_server_errors_stop_after_the_configured_retries(tmp_path, cutout_bytes):
    from xmmsr.sky.tng.client import TngApiError

    waits: list[float] = []
    with FakeTng(cutout_bytes) as server:
        client = TngClient(server.base, api_key=KEY, policy=RetryPolicy(retries=2, backoff_s=1.0), log=lambda m: None,
                           sleep=waits.append)
        server.down = True
        with pytest.raises(TngApiError, match="after 3 attempts.*HTTP 503") as exc:
            client.get_json(server.base + "TNG100-1/snapshots/99/subhalos/")
        assert KEY not in str(exc.value) and waits == [1.0, 2.0]          # exponential backoff
        server.down = False
        waits.clear()
        with pytest.raises(TngApiError, match="HTTP 404"):
            client.get_json(server.base + "TNG100-1/snapshots/99/nothing/")
        assert waits == []                                                 # a 404 is not retried
        server.truncate = set()
        dest = client.download(server.base + "TNG100-1/snapshots/99/subhalos/11/cutout.hdf5", tmp_path / "c.hdf5")
        assert dest.read_bytes() == cutout_bytes and waits == [1.0]       # one 503, then the file


def test_the_key_never_leaves_the_api_host(tmp_path, cutout_bytes, monkeypatch):
    """Redirects to another host are followed without the key; server-supplied URLs outside api_url, plain
    http off the loopback and redirects to plain http are refused before anything is sent there."""
    from xmmsr.sky.tng.client import TngApiError

    monkeypatch.setenv("TNG_API_KEY", KEY)
    messages: list[str] = []
    with FakeTng(cutout_bytes) as api, FakeTng(cutout_bytes, require_key=False) as other:
        other.fail_503, other.truncate = set(), set()
        client = TngClient(api.base, policy=RetryPolicy(retries=0), log=messages.append, sleep=lambda s: None)
        search = "TNG100-1/snapshots/99/subhalos/"
        cutout = search + "11/cutout.hdf5"

        # a same-host redirect keeps the key
        api.redirects = {f"/api/moved/{search}": api.base + search}
        assert len(client.get_json(f"{api.base}moved/{search}")["results"]) == 2
        assert all(r["key_ok"] for r in api.requests)

        # a search and a cutout answered by a 302 to another host: followed, without the key
        api.redirects = {f"/api/{search}": other.base + search, f"/api/{cutout}": other.base + cutout}
        assert len(client.get_json(api.base + search)["results"]) == 2
        dest = client.download(api.base + cutout, tmp_path / "c.hdf5")
        assert dest.read_bytes() == cutout_bytes
        assert [r["path"] for r in other.requests] == [f"/api/{search}", f"/api/{cutout}"]
        assert all(r["key"] is None for r in other.requests)
        assert any("without the API key" in m for m in messages)

        # server-supplied url / next fields outside api_url are not followed
        api.redirects = {}
        other.requests.clear()
        api.search_fields = {"next": other.base + search + "?page=2", "results": []}
        with pytest.raises(TngApiError, match="'next' that is not under"):
            client.search_subhalos("TNG100-1", 99, 5, (13.0, 15.0))
        api.search_fields = {"results": [{"id": 11, "url": other.base + search + "11/"}]}
        with pytest.raises(TngApiError, match="'url' that is not under"):
            download_selection(tng_section(api, tmp_path / "tng"))
        assert other.requests == []

        # a redirect to plain http off the loopback is refused without being sent
        api.redirects = {f"/api/{search}": "http://tng.example.invalid/api/" + search}
        with pytest.raises(TngApiError, match="non-https"):
            client.get_json(api.base + search)

    # plain http is accepted for the loopback only
    with pytest.raises(InputError, match="sources.tng.api_url.*plain http"):
        TngClient("http://www.tng-project.org/api/", api_key=KEY)
    with pytest.raises(InputError, match="not an http"):
        TngClient("ftp://www.tng-project.org/api/", api_key=KEY)
    assert TngClient("https://www.tng-project.org/api", api_key=KEY).api_url == "https://www.tng-project.org/api/"
    assert_no_key(tmp_path, *messages)


def test_local_cutouts_need_no_network(tmp_path):
    folder = tmp_path / "mine"
    write_cutout(folder / "cutout_314.hdf5", blob(200))
    write_cutout(folder / "halo_2.hdf5", blob(200, seed=1))
    manifest = local_manifest(folder, "TNG50-1", 99)
    assert [c["subhalo_id"] for c in manifest["cutouts"]] == [314, 2]
    assert manifest["source"] == "local" and all(c["center_ckpc_h"] is None for c in manifest["cutouts"])
    (folder / "bad.hdf5").write_bytes(b"\x89HDF\r\n")
    with pytest.raises(InputError, match="bad.hdf5"):
        local_manifest(folder, "TNG50-1", 99)


def test_mixed_sources_keep_the_synthetic_draws_and_are_deterministic(tmp_path):
    from xmmsr.sky.generate import BrightnessReference, generate_source

    path = tmp_path / "TNG100-1_snap099_sub5.hdf5"
    write_cutout(path, blob(3000))
    cutouts = [{"file": str(path), "simulation": "TNG100-1", "snapshot": 99, "subhalo_id": 5,
                "center_ckpc_h": [5000.0, 5000.0, 5000.0]}]
    brightness = BrightnessReference(background_rate_arcsec2=1e-6, effective_area_cm2=1000.0)

    def sources(kind: str, fraction: float = 0.5) -> dict:
        cfg = check_config({"sources": {"sky": {"npix": 128, "pixel_arcsec": 2.0}, "kind": kind,
                                        "tng": {"npix": 128, "widths_kpc": [400.0], "mixed_fraction": fraction}}})
        return cfg["sources"]

    synthetic = [generate_source("extended", i, sources("synthetic"), brightness, 1) for i in range(6)]
    mixed = [generate_source("extended", i, sources("mixed"), brightness, 1, cutouts) for i in range(6)]
    origins = [m.meta["MODEL"] == "tng" for m in mixed]
    assert any(origins) and not all(origins)
    for syn, mix, from_tng in zip(synthetic, mixed, origins):
        if not from_tng:   # a synthetic source of a mixed run is the source of the synthetic run
            np.testing.assert_array_equal(syn.image, mix.image)
            assert syn.meta == mix.meta
        else:
            assert mix.meta["TNGSUBID"] == 5 and mix.meta["TNGSIM"] == "TNG100-1"
    again = generate_source("extended", 2, sources("mixed"), brightness, 1, cutouts)
    np.testing.assert_array_equal(again.image, mixed[2].image)
    assert all(generate_source("extended", i, sources("mixed", 1.0), brightness, 1, cutouts).meta["MODEL"] == "tng"
               for i in range(2))
    with pytest.raises(InputError, match="manifest"):
        generate_source("extended", 0, sources("tng"), brightness, 1)


# ----------------------------------------------------------------------------- workflow


@pytest.mark.workflow
def test_tiny_workflow_with_tng_sources_against_the_local_server(tmp_path, cutout_bytes, monkeypatch):
    monkeypatch.setenv("TNG_API_KEY", KEY)
    with FakeTng(cutout_bytes) as server:
        config = yaml.safe_load(TINY.read_text())
        config["sources"].update({"kind": "tng", "tng": {
            "api_url": server.base, "cutout_dir": str(tmp_path / "tng"), "selection": {"top_n": 2},
            "widths_kpc": [400.0], "redshift": [0.1, 0.2], "npix": 256, "backoff_s": 0.0}})
        path = tmp_path / "tng.yaml"
        path.write_text(yaml.safe_dump(config))
        work = tmp_path / "work"
        work.mkdir()
        result = snakemake(work, "results/dataset/xmmsr_dataset.h5", "--cores", "2", "--configfile", str(path))
    out = work / "results"
    manifest = read_manifest(out / "sky" / "tng_manifest.json")
    assert [c["subhalo_id"] for c in manifest] == [11, 22]
    skies = sorted((out / "sky" / "extended" / "shard0000").glob("*.fits"))
    assert len(skies) == 3
    for sky_path in skies:
        header = fits.getheader(sky_path)
        assert header["MODEL"] == "tng" and header["TNGSIM"] == "TNG100-1" and header["TNGSUBID"] in (11, 22)
        assert header["TNGAXIS"] in "xyz" and header["TNGWIDTH"] == 400.0 and 0.1 <= header["TNGZOBS"] <= 0.2
        assert "SIGMA_B" in header and "ZOOM" in header                   # the same augmentation as synthetic
        assert read_sky_model(sky_path).image.sum() > 0
    assert (out / "images" / "extended" / "shard0000" / "2ks_1x.fits").exists()
    assert (out / "dataset" / "xmmsr_dataset.h5").exists()
    assert_no_key(work, result.stdout, result.stderr)
    assert_no_key(tmp_path / "tng")


class BadBodies(LocalServer):
    """A local server whose cutout bodies misbehave: endless, announced as huge, or dripping slowly."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        super().__init__()

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        import time

        handler.send_response(200)
        handler.send_header("Content-Type", "application/x-hdf5")
        if self.mode == "huge":
            handler.send_header("Content-Length", str(50 * 2**30))
            handler.end_headers()
            handler.wfile.write(b"\0" * 1000)
            return
        handler.end_headers()
        block = b"\0" * 65536
        for _ in range(100_000):
            if self.mode == "drip":
                handler.wfile.write(b"\0")
                handler.wfile.flush()
                time.sleep(0.05)
            else:
                handler.wfile.write(block)


def test_downloads_are_bounded_in_size_and_time_and_say_what_they_kept(tmp_path, monkeypatch):
    import errno

    import xmmsr.sky.tng.client as client_module
    from xmmsr.errors import StorageError
    from xmmsr.sky.tng.client import TngApiError

    policy = RetryPolicy(retries=0, max_bytes=3 * 2**20, deadline_s=1.0)
    part = tmp_path / ".c.hdf5.part"
    # an endless body: stopped at the size limit, the partial file deleted, and the message says so
    with BadBodies("endless") as server:
        client = TngClient(server.base, api_key=KEY, policy=policy, log=lambda m: None)
        with pytest.raises(TngApiError, match="grew past sources.tng.max_cutout_mb.*deleted"):
            client.download(server.base + "TNG100-1/snapshots/99/subhalos/1/cutout.hdf5", tmp_path / "c.hdf5")
        assert not part.exists() and not (tmp_path / "c.hdf5").exists()
    # a body announced larger than the limit: refused before anything is written
    with BadBodies("huge") as server:
        client = TngClient(server.base, api_key=KEY, policy=policy, log=lambda m: None)
        with pytest.raises(TngApiError, match="announces .* bytes.*nothing was kept"):
            client.download(server.base + "TNG100-1/snapshots/99/subhalos/1/cutout.hdf5", tmp_path / "c.hdf5")
        assert not part.exists()
    # a server dripping a byte at a time: the deadline ends it (each read alone would never time out),
    # and the partial file is kept for the next run, as the message says
    with BadBodies("drip") as server:
        client = TngClient(server.base, api_key=KEY, policy=policy, log=lambda m: None)
        with pytest.raises(TngApiError, match="download_deadline_s .* is kept and the next run resumes it"):
            client.download(server.base + "TNG100-1/snapshots/99/subhalos/1/cutout.hdf5", tmp_path / "c.hdf5")
        assert part.exists() and part.stat().st_size > 0
    part.unlink()

    # a full disk: one clean storage error, the partial file deleted
    class FullDisk:
        def __init__(self, path, mode):
            self.fh = open(path, mode)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def tell(self):
            return self.fh.tell()

        def write(self, data):
            self.fh.write(data[:10])
            raise OSError(errno.ENOSPC, "No space left on device", str(part))

        def close(self):
            self.fh.close()

    monkeypatch.setattr(client_module, "_open", FullDisk)
    with BadBodies("endless") as server:
        client = TngClient(server.base, api_key=KEY, policy=policy, log=lambda m: None)
        with pytest.raises(StorageError, match="no space is left.*partial download .* was deleted"):
            client.download(server.base + "TNG100-1/snapshots/99/subhalos/1/cutout.hdf5", tmp_path / "c.hdf5")
    assert not part.exists()
