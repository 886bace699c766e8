"""Rule tng_download: select IllustrisTNG subhalos, download their gas cutouts, write the manifest."""

sm = snakemake  # noqa: F821 (injected by snakemake)

from xmmsr.pipeline import logged_to
from xmmsr.sky.tng.client import download_selection, write_manifest

with logged_to(sm.log[0]):
    manifest = download_selection(dict(sm.params.tng), log=lambda message: print(message, flush=True))
    write_manifest(sm.output[0], manifest)
    print(f"{sm.output[0]}: {len(manifest['cutouts'])} cutouts ({manifest['source']})")
