"""Configuration: the JSON schema (with defaults), validation with clear messages, seeds."""

from __future__ import annotations

import copy
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import yaml

PACKAGE_DATA = Path(str(files("xmmsr") / "data"))
SCHEMA_PATH = PACKAGE_DATA / "config.schema.yaml"
MS_SSIM_MIN_SIZE = 176   # MS-SSIM's five scales need output images of at least this many pixels a side


class ConfigError(ValueError):
    """The configuration violates the schema; the message names the key and the allowed values."""


# libyaml's safe loader where PyYAML has it (the same documents, parsed several times faster)
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_schema() -> dict[str, Any]:
    """The configuration JSON schema as a dict."""
    with open(SCHEMA_PATH) as fh:
        return yaml.load(fh, Loader=YAML_LOADER)


_SCHEMA = load_schema()


def _describe(error: jsonschema.ValidationError) -> str:
    key = ".".join(str(p) for p in error.absolute_path) or "(top level)"
    schema = error.schema if isinstance(error.schema, dict) else {}
    allowed = []
    if error.validator == "additionalProperties":
        names = sorted(error.schema.get("properties", {}))
        bad = sorted(set(error.instance) - set(names)) if isinstance(error.instance, dict) else []
        where = key if key != "(top level)" else "the top level"
        return f"unknown key(s) {bad} in {where}; allowed keys: {names}"
    if "enum" in schema:
        allowed.append(f"one of {schema['enum']}")
    for bound, word in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<")):
        if bound in schema:
            allowed.append(f"{word} {schema[bound]}")
    if "type" in schema:
        allowed.append(f"type {schema['type']}")
    hint = f" (allowed: {', '.join(allowed)})" if allowed else ""
    return f"config key '{key}': {error.message}{hint}"


def _filling_validator(schema: dict[str, Any]) -> jsonschema.protocols.Validator:
    """A Draft 2020-12 validator that also fills each missing property with a copy of its schema default
    (as snakemake's ``validate(..., set_default=True)`` does), in the same single pass."""
    base = jsonschema.Draft202012Validator
    check_properties = base.VALIDATORS["properties"]

    def properties(validator, props, instance, subschema):  # type: ignore[no-untyped-def]
        if isinstance(instance, dict):
            for name, prop in props.items():
                if "default" in prop and name not in instance:
                    instance[name] = copy.deepcopy(prop["default"])
        yield from check_properties(validator, props, instance, subschema)

    return jsonschema.validators.extend(base, {"properties": properties})(schema)


def _key_sorted(value: Any) -> Any:
    """Nested dicts with sorted keys (lists keep their order)."""
    if isinstance(value, dict):
        return {k: _key_sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_key_sorted(v) for v in value]
    return value


def check_config(config: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """Validate ``config`` once, where it enters, and normalise it in place: schema defaults filled, keys
    sorted (so that equal settings compare, hash and print alike whatever the order of the config files),
    then the checks the schema cannot express. Every later reader trusts it.

    Raises :class:`ConfigError` naming the offending key and the allowed values.
    """
    errors = sorted(_filling_validator(_SCHEMA).iter_errors(config),
                    key=lambda e: (len(e.absolute_path), str(e.absolute_path)))
    if errors:
        raise ConfigError(f"{source}: " + "; ".join(_describe(e) for e in errors[:5]))
    normalised = _key_sorted(config)
    config.clear()
    config.update(normalised)
    _check_consistency(config, source)
    return config


def range_keys(schema: dict[str, Any], path: tuple[str, ...] = (),
               defs: dict[str, Any] | None = None) -> list[tuple[str, ...]]:
    """The config keys whose values are [low, high] ranges (schema ``x-range: true``, also through ``$ref``)."""
    defs = schema.get("$defs", {}) if defs is None else defs
    out = []
    for key, sub in schema.get("properties", {}).items():
        target = defs[sub["$ref"].rsplit("/", 1)[-1]] if "$ref" in sub else sub
        if target.get("x-range"):
            out.append((*path, key))
        elif "properties" in target:
            out += range_keys(target, (*path, key), defs)
    return out


def _check_consistency(config: dict[str, Any], source: str) -> None:
    """What the schema cannot say: ranges ordered, probabilities summing to 1, pairs of keys ordered."""
    for keys in range_keys(_SCHEMA):
        value: Any = config
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        if value is not None and value[0] > value[1]:
            raise ConfigError(f"{source}: config key '{'.'.join(keys)}' ({value}) must be [low, high] with low <= high")
    mix = config["sources"]["extended"]["mix"]
    if abs(sum(mix.values()) - 1.0) > 1e-6:
        raise ConfigError(f"{source}: config key 'sources.extended.mix' ({mix}) must sum to 1")
    agn = config["sources"]["agn"]
    if agn["flux_min"] >= agn["flux_max"]:
        raise ConfigError(f"{source}: config key 'sources.agn.flux_min' ({agn['flux_min']}) must be below "
                          f"'sources.agn.flux_max' ({agn['flux_max']})")
    p = config["instrument"]["pattern_fractions"]
    if abs(p["single"] + p["double"] + p["triple_quadruple"] - 1.0) > 1e-6:
        raise ConfigError(f"{source}: config keys 'instrument.pattern_fractions' must sum to 1 (got {p})")
    exposures = config["simulate"]["exposures_ks"]
    for key in ("input_exposure_ks", "target_exposure_ks"):
        if not any(abs(config["pack"][key] - e) < 1e-9 for e in exposures):
            raise ConfigError(f"{source}: config key 'pack.{key}' ({config['pack'][key]}) is not one of the "
                              f"simulated exposures simulate.exposures_ks {exposures}; add it there or change it")
    if sorted(config["simulate"]["resolutions"]) != [1, 2]:
        raise ConfigError(f"{source}: config key 'simulate.resolutions' must be [1, 2]: the training set pairs 1x "
                          f"inputs with 1x (DN) and 2x (SR) targets")
    split = config["pack"]["split"]
    if split["train"] <= 0 or split["val"] <= 0:
        raise ConfigError(f"{source}: config keys 'pack.split.train' and 'pack.split.val' must be > 0 (got {split})")
    train = config["train"]
    if not any(weight > 0 for name, weight in train["loss"].items() if name != "adversarial"):
        raise ConfigError(f"{source}: config key 'train.loss': every pixel-loss weight is 0 (the adversarial model "
                          "continues a pixel-loss one); give at least one positive weight")
    crop = train["crop"]
    for task in train["tasks"]:
        out = None if crop is None else crop * (2 if task == "sr" else 1)
        if train["loss"]["ms_ssim"] > 0 and out is not None and out < MS_SSIM_MIN_SIZE:
            raise ConfigError(f"{source}: config key 'train.loss.ms_ssim' needs output crops >= {MS_SSIM_MIN_SIZE} "
                              f"pixels; train.crop = {crop} gives {out} for {task}: raise train.crop or set "
                              "train.loss.ms_ssim to 0")


# directories an output directory must never be, nor lie inside (system trees)
SYSTEM_DIRS = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib64", "/proc", "/run", "/sbin", "/sys", "/usr", "/var")


def check_outdir(outdir: str, workdir: str | Path | None = None, source: str = "config") -> Path:
    """The resolved output directory, or :class:`ConfigError` when it is empty, the file-system root, a
    system directory or the working directory or one of its parents (where results would mix with,
    or be written over, other files)."""
    key = f"{source}: config key 'outdir'"
    if not str(outdir).strip():
        raise ConfigError(f"{key} is empty; give a directory for the results, e.g. results")
    work = Path(workdir if workdir is not None else Path.cwd()).resolve()
    path = (work / Path(outdir).expanduser()).resolve()
    if path == Path(path.anchor):
        raise ConfigError(f"{key} ({outdir!r}) is the file-system root; give a directory of its own, e.g. results")
    for system in SYSTEM_DIRS:
        if path == Path(system) or Path(system) in path.parents:
            raise ConfigError(f"{key} ({outdir!r}) lies in the system directory {system}; give a directory you own")
    if path == work or path in work.parents:
        raise ConfigError(f"{key} ({outdir!r}) is the working directory or one of its parents, where the results "
                          "would mix with other files; give a directory of its own, e.g. results")
    return path


def default_config() -> dict[str, Any]:
    """The complete default configuration, from the schema defaults."""
    return check_config({})


def load_config(path: str | Path | None) -> dict[str, Any]:
    """Read a YAML config file (or the defaults when ``path`` is None) and validate it."""
    if path is None:
        return default_config()
    p = Path(path)
    try:
        with open(p) as fh:
            raw = yaml.load(fh, Loader=YAML_LOADER) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{p}: cannot read the configuration ({exc}); give a YAML file") from exc
    return check_config(copy.deepcopy(raw), str(p))


def derive_seed(root: int, *keys: int) -> int:
    """A 63-bit seed derived from the root seed and integer keys (stable across platforms and runs)."""
    return int(np.random.SeedSequence([int(root), *map(int, keys)]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


def resolve_resource(path: str | Path, base_dir: str | Path | None = None) -> Path:
    """Resolve a resource path of the config: absolute, else relative to ``base_dir`` (the workflow or
    config directory), else one of the resources shipped with the package (same relative path)."""
    p = Path(path)
    if p.is_absolute():
        return p
    for root in ([Path(base_dir)] if base_dir is not None else []) + [Path.cwd(), PACKAGE_DATA]:
        if (root / p).exists():
            return root / p
    return p
