"""IllustrisTNG web-API client: subhalo selection, resumable cutout downloads, and the cutout manifest.

The API key comes only from the environment variable ``TNG_API_KEY``; it is sent in the ``api-key``
header to the configured API host only (same scheme, host and port as ``api_url``), and never logged,
written to a file or put in an exception message. Redirects are followed by hand: the key is dropped as
soon as a redirect leaves the API host, and a redirect to plain ``http`` off the loopback is refused.
URLs that the server supplies (``url``, ``next``) are followed only when they lie under ``api_url``.
``api_url`` itself must be ``https`` unless its host is the loopback (local test servers).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

from ...errors import InputError, StorageError, TngApiError, storage_error
from ...io import atomic_path
from .cutout import REQUIRED_FIELDS, cutout_problem

API_KEY_ENV = "TNG_API_KEY"
SIMULATIONS = ("TNG50-1", "TNG100-1", "TNG300-1")
MANIFEST_FORMAT = "xmmsr-tng-manifest-1"
_KEY_FIX = (f"register at https://www.tng-project.org/users/register/ (the key is on your profile page), then "
            f"`export {API_KEY_ENV}=<your key>` before running; or set sources.tng.local_dir to a folder of "
            f"cutouts you already have")
_CHUNK = 1 << 16  # bytes per read: a broken connection loses at most one chunk of the part file
_REDIRECTS = (301, 302, 303, 307, 308)
_MAX_REDIRECTS = 5


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _origin(url: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of ``url``, with the scheme's default port made explicit."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or {"https": 443, "http": 80}.get(scheme)
    return scheme, (parts.hostname or "").lower(), port


def checked_api_url(api_url: str) -> str:
    """``api_url`` with a trailing slash; an :class:`InputError` unless it is https (or http on the loopback)."""
    parts = urlsplit(api_url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise InputError(None, "sources.tng.api_url", f"{api_url!r} is not an http(s) URL",
                         "set it to https://www.tng-project.org/api/")
    if parts.scheme != "https" and not _is_loopback(parts.hostname):
        raise InputError(None, "sources.tng.api_url", f"{api_url!r} is plain http: the API key would travel "
                         "unencrypted", "use https (plain http is accepted only for a server on the loopback)")
    return api_url if api_url.endswith("/") else api_url + "/"


def api_key_from_env() -> str:
    """The API key from ``TNG_API_KEY``; an :class:`InputError` that says how to get one when unset."""
    key = os.environ.get(API_KEY_ENV, "").strip()
    if not key:
        raise InputError(None, API_KEY_ENV, "the environment variable is not set (the IllustrisTNG API needs a key)",
                         _KEY_FIX)
    return key


@dataclass(frozen=True)
class RetryPolicy:
    """Retries on HTTP 429/5xx and broken connections, waiting backoff_s x 2^attempt (or Retry-After)."""

    retries: int = 5
    backoff_s: float = 2.0
    timeout_s: float = 120.0
    max_wait_s: float = 120.0
    max_bytes: int = 2000 * 1024 * 1024     # largest cutout accepted (sources.tng.max_cutout_mb)
    deadline_s: float = 3600.0              # whole download, all attempts (sources.tng.download_deadline_s)


class TngClient:
    """A small client of the TNG web API (https://www.tng-project.org/data/docs/api/)."""

    def __init__(self, api_url: str, api_key: str | None = None, policy: RetryPolicy | None = None,
                 log: Callable[[str], None] = print, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        import requests

        self.api_url = checked_api_url(api_url)
        self.policy = policy or RetryPolicy()
        self._log = log
        self._sleep = sleep
        self._clock = clock
        self._origin = _origin(self.api_url)
        self._key = api_key if api_key is not None else api_key_from_env()
        self._session = requests.Session()       # no key in the session headers: it is added per request
        self._session.headers["Accept"] = "application/json"

    def __repr__(self) -> str:  # never show the key
        return f"TngClient({self.api_url!r})"

    # ------------------------------------------------------------------ where the key may go

    def _under_api(self, url: str) -> bool:
        parts = urlsplit(url)
        return (_origin(url) == self._origin and not parts.username and not parts.password
                and parts.path.startswith(urlsplit(self.api_url).path))

    def check_server_url(self, url: str, field: str) -> str:
        """``url`` (a ``url``/``next`` field the server sent) if it lies under ``api_url``; else refuse."""
        if not isinstance(url, str) or not self._under_api(url):
            raise TngApiError(f"the TNG API sent a {field!r} that is not under {self.api_url} ({url!r}); refusing "
                              f"to follow it; check sources.tng.api_url")
        return url

    def _send(self, url: str, params: dict[str, Any] | None = None, headers: dict[str, str] | None = None,
              stream: bool = False) -> Any:
        """GET ``url`` following redirects by hand: the key goes only to the API's own origin."""
        self.check_server_url(url, "request URL")
        for _ in range(_MAX_REDIRECTS + 1):
            send_headers = dict(headers or {})
            if _origin(url) == self._origin:
                send_headers["api-key"] = self._key
            response = self._session.get(url, params=params, headers=send_headers, stream=stream,
                                         timeout=self.policy.timeout_s, allow_redirects=False)
            if response.status_code not in _REDIRECTS or "Location" not in response.headers:
                return response
            target = urljoin(response.url or url, response.headers["Location"])
            response.close()
            scheme, host, _ = _origin(target)
            if scheme not in ("https", "http") or (scheme == "http" and not _is_loopback(host)):
                raise TngApiError(f"{url}: redirected to a non-https URL ({scheme}://{host}); refusing to follow")
            if _origin(target) != self._origin:
                self._log(f"{url}: redirected to {scheme}://{host}; following without the API key")
            url, params = target, None           # the Location carries its own query
        raise TngApiError(f"{url}: more than {_MAX_REDIRECTS} redirects; check sources.tng.api_url")

    # ------------------------------------------------------------------ requests with retries

    def _wait(self, attempt: int, retry_after: str | None) -> None:
        wait = self.policy.backoff_s * 2.0**attempt
        if retry_after and retry_after.strip().isdigit():
            wait = float(retry_after)
        self._sleep(min(wait, self.policy.max_wait_s))

    def _check_auth(self, response: Any, url: str) -> None:
        if response.status_code in (401, 403):
            raise InputError(None, API_KEY_ENV, f"the TNG API rejected the key (HTTP {response.status_code} for {url})",
                             "check the key on your tng-project.org profile page and export it again; " + _KEY_FIX)

    def get_json(self, url: str, params: dict[str, Any] | None = None) -> Any:
        """GET ``url`` as JSON, retrying transient failures."""
        import requests

        last = ""
        for attempt in range(self.policy.retries + 1):
            try:
                response = self._send(url, params=params)
            except (requests.ConnectionError, requests.Timeout) as exc:
                last = f"{exc.__class__.__name__}"
            else:
                self._check_auth(response, url)
                if response.status_code == 429 or response.status_code >= 500:
                    last = f"HTTP {response.status_code}"
                    if attempt < self.policy.retries:
                        self._log(f"{url}: {last}, retrying ({attempt + 1}/{self.policy.retries})")
                        self._wait(attempt, response.headers.get("Retry-After"))
                    continue
                if response.status_code != 200:
                    raise TngApiError(f"{url}: HTTP {response.status_code}; check sources.tng.api_url, simulation "
                                      f"and snapshot")
                try:
                    return response.json()
                except ValueError as exc:
                    raise TngApiError(f"{url}: the response is not JSON; check sources.tng.api_url") from exc
            if attempt < self.policy.retries:
                self._log(f"{url}: {last}, retrying ({attempt + 1}/{self.policy.retries})")
                self._wait(attempt, None)
        raise TngApiError(f"{url}: failed after {self.policy.retries + 1} attempts ({last}); retry later or raise "
                          f"sources.tng.retries")

    # ------------------------------------------------------------------ selection

    def search_subhalos(self, simulation: str, snapshot: int, top_n: int, mass_log_msun: tuple[float, float],
                        centrals_only: bool = True) -> list[dict[str, Any]]:
        """The ``top_n`` most massive subhalos (API field ``mass_log_msun``) within the mass range."""
        if simulation not in SIMULATIONS:
            raise InputError(None, "sources.tng.simulation", f"{simulation!r} is not supported",
                             f"use one of {list(SIMULATIONS)}")
        url = f"{self.api_url}{simulation}/snapshots/{int(snapshot)}/subhalos/"
        params: dict[str, Any] = {"mass_log_msun__gte": mass_log_msun[0], "mass_log_msun__lte": mass_log_msun[1],
                                  "order_by": "-mass_log_msun", "limit": int(top_n)}
        if centrals_only:
            params["primary_flag"] = 1
        results: list[dict[str, Any]] = []
        page: str | None = url
        while page and len(results) < top_n:
            data = self.get_json(page, params if page == url else None)
            if not isinstance(data, dict) or "results" not in data:
                raise TngApiError(f"{page}: not a subhalo search response (no 'results'); check sources.tng.api_url")
            results.extend(data["results"])
            page = data.get("next")
            if page:
                page = self.check_server_url(page, "next")
        return results[:top_n]

    # ------------------------------------------------------------------ downloads

    def download(self, url: str, dest: Path, params: dict[str, Any] | None = None,
                 fields: tuple[str, ...] = REQUIRED_FIELDS) -> Path:
        """Download ``url`` to ``dest``: resumable (HTTP Range on a hidden ``.part`` file), atomic (renamed
        only when complete and the HDF5 opens with ``fields``), with retries, at most ``policy.max_bytes``
        and ``policy.deadline_s`` seconds in all. A body that outgrows the limit is deleted; a download
        that runs out of time keeps its partial file for the next run; a full disk deletes it."""
        import requests

        import urllib3

        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.parent / f".{dest.name}.part"
        started = self._clock()
        last = ""
        for attempt in range(self.policy.retries + 1):
            have = part.stat().st_size if part.exists() else 0
            headers = {"Range": f"bytes={have}-"} if have else {}
            try:
                with self._send(url, params=params, headers=headers, stream=True) as response:
                    self._check_auth(response, url)
                    status = response.status_code
                    if status == 416 and have:       # nothing left to send: the part file may be complete
                        complete = True
                    elif status in (200, 206):
                        mode = "ab" if status == 206 and have else "wb"
                        if status == 206 and have:
                            self._log(f"{url}: resuming at byte {have}")
                        length = response.headers.get("Content-Length")
                        expected = None if length is None else int(length) + (have if mode == "ab" else 0)
                        if expected is not None and expected > self.policy.max_bytes:
                            part.unlink(missing_ok=True)
                            raise TngApiError(f"{url}: the server announces {expected} bytes, more than "
                                              f"sources.tng.max_cutout_mb ({self.policy.max_bytes / 2**20:g} MB); "
                                              "nothing was kept; raise the limit if the cutout is really that large")
                        self._receive(response, part, mode, url, started)
                        complete = expected is None or part.stat().st_size == expected
                        if not complete:
                            last = f"short body ({part.stat().st_size} of {expected} bytes)"
                    elif status == 429 or status >= 500:
                        complete, last = False, f"HTTP {status}"
                        if attempt < self.policy.retries:
                            self._log(f"{url}: {last}, retrying ({attempt + 1}/{self.policy.retries})")
                            self._wait(attempt, response.headers.get("Retry-After"))
                        continue
                    else:
                        raise TngApiError(f"{url}: HTTP {status}; check the subhalo and sources.tng.gas_fields")
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                    urllib3.exceptions.HTTPError) as exc:
                complete, last = False, f"connection broken ({exc.__class__.__name__})"
            if complete:
                problem = cutout_problem(part, fields)
                if problem is None:
                    os.replace(part, dest)
                    return dest
                last = f"downloaded file is not a complete cutout: {problem}"
                part.unlink(missing_ok=True)   # start again from scratch
            if attempt < self.policy.retries:
                self._log(f"{url}: {last}, retrying ({attempt + 1}/{self.policy.retries})")
                self._wait(attempt, None)
        kept = (f"the partial file {part} ({part.stat().st_size} bytes) is kept and the next run resumes it"
                if part.exists() else "no partial file is kept")
        raise TngApiError(f"{url}: download failed after {self.policy.retries + 1} attempts ({last}); {kept}")

    def _receive(self, response: Any, part: Path, mode: str, url: str, started: float) -> None:
        """Append the body to ``part`` as it arrives (``read1``: a slow server cannot hold a read past the
        deadline), within the size limit and the deadline; a failing disk deletes the partial file."""
        try:
            with _open(part, mode) as fh:
                size = fh.tell()
                while True:
                    chunk = response.raw.read1(_CHUNK)
                    if not chunk:
                        return
                    fh.write(chunk)
                    size += len(chunk)
                    if size > self.policy.max_bytes:
                        fh.close()
                        part.unlink(missing_ok=True)
                        raise TngApiError(f"{url}: the body grew past sources.tng.max_cutout_mb "
                                          f"({self.policy.max_bytes / 2**20:g} MB); the partial file was deleted; "
                                          "raise the limit if the cutout is really that large")
                    if self._clock() - started > self.policy.deadline_s:
                        raise TngApiError(f"{url}: the download did not finish within sources.tng.download_deadline_s "
                                          f"({self.policy.deadline_s:g} s); the partial file {part} ({size} bytes) is "
                                          "kept and the next run resumes it")
        except OSError as exc:
            problem = storage_error(exc, part)
            if not isinstance(problem, StorageError):
                raise
            part.unlink(missing_ok=True)
            raise StorageError(problem.errno, f"{problem} (the partial download {part.name} was deleted)",
                               str(part)) from None


_open = open   # the file opener of downloads (tests inject a failing disk here)


# ---------------------------------------------------------------------- manifest


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(path: str | Path, manifest: dict[str, Any]) -> None:
    """Write the manifest JSON atomically (sorted keys: same selection, same bytes)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def read_manifest(path: str | Path) -> list[dict[str, Any]]:
    """The cutout entries of a manifest written by :func:`write_manifest`."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(p, "file", f"the TNG cutout manifest cannot be read ({exc.__class__.__name__})",
                         "rerun the tng_download rule") from exc
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT or not isinstance(data.get("cutouts"), list):
        raise InputError(p, "format", f"not a {MANIFEST_FORMAT} manifest", "rerun the tng_download rule")
    return data["cutouts"]


def _entry(path: Path, simulation: str, snapshot: int, subhalo_id: int, center: list[float] | None,
           mass_log_msun: float | None) -> dict[str, Any]:
    return {"file": str(path), "simulation": simulation, "snapshot": int(snapshot), "subhalo_id": int(subhalo_id),
            "center_ckpc_h": center, "mass_log_msun": mass_log_msun, "sha256": sha256_file(path),
            "bytes": path.stat().st_size}


def local_manifest(local_dir: str | Path, simulation: str, snapshot: int) -> dict[str, Any]:
    """A manifest of the user's own cutouts (``*.hdf5`` in ``local_dir``, sorted); no network.

    The subhalo id is the last number in a file name (``cutout_12345.hdf5``), -1 when there is none;
    the centre is found from the gas itself (shrinking sphere of the X-ray emission)."""
    folder = Path(local_dir)
    files = sorted(folder.glob("*.hdf5")) if folder.is_dir() else []
    if not files:
        raise InputError(folder, "sources.tng.local_dir", "is not a folder of cutout .hdf5 files",
                         "point sources.tng.local_dir at the folder of your cutouts, or set it to null to download")
    cutouts = []
    for path in files:
        problem = cutout_problem(path)
        if problem:
            raise InputError(path, "PartType0 / Header", problem,
                             f"export the cutout with Header attributes and the gas fields {list(REQUIRED_FIELDS)}")
        numbers = re.findall(r"\d+", path.stem)
        cutouts.append(_entry(path, simulation, snapshot, int(numbers[-1]) if numbers else -1, None, None))
    return {"format": MANIFEST_FORMAT, "source": "local", "simulation": simulation, "snapshot": int(snapshot),
            "cutouts": cutouts}


def cutout_file(cutout_dir: str | Path, simulation: str, snapshot: int, subhalo_id: int) -> Path:
    """Where the cutout of one subhalo is stored."""
    return Path(cutout_dir) / f"{simulation}_snap{int(snapshot):03d}_sub{int(subhalo_id)}.hdf5"


def download_selection(tng: dict[str, Any], client: TngClient | None = None,
                       log: Callable[[str], None] = print) -> dict[str, Any]:
    """Select the configured subhalos and download every missing or invalid cutout (at most
    ``max_concurrent_downloads`` at once); return the manifest. ``tng`` is the ``sources.tng`` section."""
    simulation, snapshot = tng["simulation"], int(tng["snapshot"])
    if tng.get("local_dir"):
        return local_manifest(tng["local_dir"], simulation, snapshot)
    fields = tuple(tng["gas_fields"])
    missing = [f for f in REQUIRED_FIELDS if f not in fields]
    if missing:
        raise InputError(None, "sources.tng.gas_fields", f"lacks {missing}",
                         f"list at least {list(REQUIRED_FIELDS)}")
    if client is None:
        client = TngClient(tng["api_url"], policy=RetryPolicy(
            int(tng["retries"]), float(tng["backoff_s"]), float(tng["timeout_s"]),
            max_bytes=int(float(tng["max_cutout_mb"]) * 2**20), deadline_s=float(tng["download_deadline_s"])), log=log)
    selection = tng["selection"]
    found = client.search_subhalos(simulation, snapshot, int(selection["top_n"]),
                                   tuple(selection["mass_log_msun"]), bool(selection["centrals_only"]))
    if not found:
        raise InputError(None, "sources.tng.selection", f"no subhalo of {simulation} snapshot {snapshot} in the mass "
                         f"range {selection['mass_log_msun']}", "widen sources.tng.selection.mass_log_msun")
    log(f"selected {len(found)} subhalos of {simulation} snapshot {snapshot}")

    def fetch(item: dict[str, Any]) -> dict[str, Any]:
        detail_url = (client.check_server_url(item["url"], "url") if item.get("url")
                      else f"{client.api_url}{simulation}/snapshots/{snapshot}/subhalos/{item['id']}/")
        subhalo_id = int(item["id"])
        dest = cutout_file(tng["cutout_dir"], simulation, snapshot, subhalo_id)
        sidecar = dest.with_suffix(".json")
        detail = json.loads(sidecar.read_text()) if sidecar.is_file() else None
        if detail is None:
            full = client.get_json(detail_url)
            detail = {k: full.get(k) for k in ("id", "pos_x", "pos_y", "pos_z", "mass_log_msun", "primary_flag")}
            with atomic_path(sidecar) as tmp:
                tmp.write_text(json.dumps(detail, sort_keys=True) + "\n")
        problem = cutout_problem(dest, fields) if dest.exists() else "missing"
        if problem:
            if dest.exists():
                log(f"{dest}: {problem}; downloading again")
                dest.unlink()
            log(f"downloading subhalo {subhalo_id} -> {dest}")
            client.download(detail_url.rstrip("/") + "/cutout.hdf5", dest, params={"gas": ",".join(fields)},
                            fields=fields)
        else:
            log(f"{dest}: present and valid, not downloaded again")
        center = [detail.get("pos_x"), detail.get("pos_y"), detail.get("pos_z")]
        return _entry(dest, simulation, snapshot, subhalo_id,
                      None if any(c is None for c in center) else [float(c) for c in center],
                      None if detail.get("mass_log_msun") is None else float(detail["mass_log_msun"]))

    with ThreadPoolExecutor(max_workers=max(1, int(tng["max_concurrent_downloads"]))) as pool:
        cutouts = list(pool.map(fetch, found))
    return {"format": MANIFEST_FORMAT, "source": "api", "simulation": simulation, "snapshot": snapshot,
            "cutouts": cutouts}
