"""Configuration: one pydantic model per stage, loaded from TOML, overridable from the CLI.

Every model forbids unknown keys, so a misspelt key in a TOML file is an error naming the key
and the file instead of a silently ignored setting. Units are part of field names.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "Config",
    "ConfigError",
    "MeasureConfig",
    "PipelineConfig",
    "RegisterConfig",
    "SegmentConfig",
    "TrackConfig",
    "WatchConfig",
    "apply_overrides",
    "load_config",
]

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parents[2] / "configs" / "default.toml"


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message is one line for the user."""


class _Stage(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class WatchConfig(_Stage):
    """How the folder watcher decides that a new file is ready."""

    patterns: list[str] = Field(
        default=["*.dm3", "*.dm4", "*.ser", "*.emd", "*.mrc", "*.tif", "*.tiff", "*.png"],
        description="glob patterns of files to take",
    )
    poll: bool = Field(False, description="use polling instead of inotify (network shares)")
    poll_interval_s: float = Field(1.0, gt=0)
    stable_s: float = Field(1.0, ge=0, description="size must be unchanged this long")
    rescan_s: float = Field(5.0, gt=0, description="periodic full rescan of the folder")
    give_up_s: float = Field(120.0, gt=0, description="report a file that never completes")


class RegisterConfig(_Stage):
    """Affine registration of every frame to the reference frame."""

    enabled: bool = True
    model: Literal["translation", "euclidean", "affine"] = "affine"
    levels: int = Field(5, ge=1, le=8, description="pyramid levels of ECC")
    max_iterations: int = Field(50, ge=1)
    epsilon: float = Field(1e-5, gt=0)
    working_size_px: int = Field(512, ge=64, description="coarse work at most this size")
    mask_particles: bool = Field(True, description="leave segmented particles out of ECC")
    cc_ok: float = Field(0.8, ge=-1, le=1, description="correlation above which a frame is ok")
    cc_failed: float = Field(0.3, ge=-1, le=1, description="correlation below which it failed")


class SegmentConfig(_Stage):
    """U-Net inference through ONNX Runtime."""

    model_path: str = Field("models/nptrack-unet-v3.onnx", description="relative to the repo root")
    threshold: float | None = Field(None, gt=0, lt=1, description="None: from model metadata")
    providers: Literal["auto", "cpu", "cuda"] = "auto"
    int8_on_cpu: bool = Field(
        True,
        description="without CUDA, segment with the int8 copy <model>-int8.onnx beside "
        "model_path when it exists (nptrack export-model --int8); false: always model_path",
    )
    # One tile up to 2048² px: overlapping 1024² tiles cost ~30 % more U-Net time on a 2048²
    # frame; the price is memory (peak 1.37 GB for a 2048² frame with the int8 copy on CPU,
    # 0.49 GB tiled: `peak_rss_mib` of tools/bench_segment.py).
    tile_px: int = Field(2048, ge=64, description="larger frames run as overlapping tiles")
    # 128 px keeps tile seams below 0.03 in probability with the shipped model.
    tile_overlap_px: int = Field(128, ge=0)
    resample_to_model: bool = Field(True, description="rescale to the model's pixel size")
    contrast: Literal["auto", "bright", "dark"] = "auto"
    intra_op_threads: int | None = Field(None, ge=1, description="None: ONNX Runtime decides")
    intra_op_spinning: bool = Field(
        False,
        description="ONNX Runtime's threads spin-wait for work between operators "
        "(session.intra_op.allow_spinning); off, they leave the cores to the measurement and "
        "registration beside them (README, speed)",
    )
    tile_batch: int = Field(2, ge=1, description="tiles per inference run")
    expected_diameter_px: float | None = Field(
        None, gt=0, description="particle size when the pixel size is unknown; None: estimated"
    )


class MeasureConfig(_Stage):
    """From probability map to measured particles."""

    split: Literal["watershed", "uecs", "none"] = "watershed"
    min_diameter_nm: float = Field(0.5, ge=0, description="speckles below are removed")
    fill_holes_nm: float = Field(0.5, ge=0, description="holes below are filled")
    convexity_threshold: float = Field(0.95, gt=0, le=1)
    min_marker_px: int = Field(30, ge=1)
    min_marker_nm: float = Field(0.5, ge=0)
    background_ring_px: int = Field(4, ge=1)
    min_diameter_px: float = Field(6.0, ge=0, description="speckles below, pixel size unknown")
    fill_holes_px: float = Field(6.0, ge=0, description="holes below, pixel size unknown")
    watershed_h_px: float = Field(
        1.0, gt=0, description="distance maxima this far above their saddle seed a particle"
    )
    split_intensity_sigma: float = Field(
        4.0,
        ge=0,
        description="bright particles (ADF): a shallower distance maximum still seeds a "
        "particle when the smoothed image peaks there this many noise sigmas above its pass "
        "to the neighbour; 0: off",
    )
    use_centres: bool = Field(
        True,
        description="with a model that gives centre maps, touching particles are separated "
        "at its centre cores (the distance split only where a region has none)",
    )
    centre_threshold: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="centre-map level above which pixels form a core; None: the model's "
        "(its metadata, chosen on its validation set)",
    )
    centre_dynamic: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="split at the centre map's maxima that rise this far above their pass "
        "(a model that regresses centre domes) instead of at level cores; None: the model's "
        "(its metadata; level cores when it has none)",
    )
    intensity_margin_px: int = Field(
        2,
        ge=0,
        description="intensity integrated at most this far out; the frame's margin is chosen",
    )
    reject_opposite_contrast: bool = Field(
        True,
        description="drop regions darker (bright particles) or brighter (dark particles) than "
        "their local background: pores and holes found by a two-contrast model",
    )
    opposite_contrast_keep_sigma: float = Field(
        3.0,
        ge=0,
        description="a region that fails the polarity test is kept whole when it stands this "
        "many noise sigmas above its own 3 px ring of unmasked pixels (a particle sitting in "
        "a pore); 0: off",
    )
    fit_border_centres: bool = Field(
        True,
        description="a particle cut by the frame edge is placed at the centre of the circle "
        "through its visible outline (not the centroid of its visible part)",
    )
    refine_band_px: int = Field(
        0,
        ge=0,
        description="outlines move to each particle's edge level in the image (refine_level), "
        "at most this far in or out (px); 0: off, the thresholded mask as it is",
    )
    refine_level: float = Field(
        0.25,
        gt=0,
        lt=1,
        description="edge level between the local background (0) and the particle's core (1); "
        "0.5 (half contrast) suits flat-topped particles, ~0.25 ones thinning to their rim",
    )
    classic_threshold: Literal["otsu", "li"] = "otsu"
    classic_smooth_px: float = Field(2.0, ge=0, description="denoising before the threshold")


class TrackConfig(_Stage):
    """NP-Tracker (CEM) settings."""

    window_frames: int = Field(10, ge=2)
    commit_lag_frames: int = Field(
        5, ge=0, description="online: frame t − L is committed when frame t arrives (< window)"
    )
    reoptimize_every_frames: int = Field(50, ge=1)
    max_step_nm: float = Field(5.0, gt=0)
    max_gap_frames: int = Field(5, ge=0, description="missed detections bridged inside a track")
    mobility_exponent: float = Field(-2.0, description="step variance ∝ diameter^exponent")
    motion: Literal["brownian", "constant_velocity"] = "brownian"
    weight_detection: float = Field(2.0, ge=0)
    weight_dynamics: float = Field(0.5, ge=0)
    weight_intensity: float = Field(0.25, ge=0)
    weight_exclusion: float = Field(2.0, ge=0)
    weight_persistence: float = Field(0.5, ge=0)
    weight_regularisation: float = Field(0.5, ge=0)
    min_detection_score: float = Field(
        0.4, ge=0, le=1, description="detections of lower mean probability are not tracked"
    )
    min_detection_diameter_px: float = Field(
        3.0, ge=0, description="smaller detections are below the frame's resolution: not tracked"
    )
    cg_iterations: int = Field(30, ge=1, description="conjugate-gradient iterations per round")
    max_epochs: int = Field(15, ge=1, description="rounds of jump moves (global optimisation)")
    smooth_positions: bool = Field(
        True,
        description="tracks.csv positions from a Rauch–Tung–Striebel smoother of each track's "
        "own detections under the Brownian model (noise levels by maximum likelihood on the "
        "tracks); online, applied once to each frame as it is committed; brownian motion only",
    )


class PipelineConfig(_Stage):
    """Live pipeline plumbing."""

    detect_workers: int = Field(1, ge=1)
    high_water_mark: int = Field(4, ge=1)
    publish_address: str = "tcp://127.0.0.1:5557"
    malloc_arenas: int = Field(
        1,
        ge=0,
        description="glibc malloc arenas of the session process (0: glibc's default, 8 per "
        "core); one fragments less over long runs (README, memory over a long run)",
    )
    numpy_hugepages: bool = Field(
        False,
        description="let NumPy ask for transparent huge pages (NUMPY_MADVISE_HUGEPAGE); "
        "off, fewer steps in the session's memory over long runs (README)",
    )
    register_after_model: bool = Field(
        True,
        description="with one local detect worker, a frame's registration waits for its U-Net "
        "to have run and runs beside the measurement, instead of competing with the U-Net for "
        "the cores (README, speed)",
    )


with warnings.catch_warnings():
    # The section name "register" shadows ABCMeta.register, which nptrack never uses.
    warnings.filterwarnings("ignore", message='Field name "register"')

    class Config(BaseModel):
        """Everything nptrack can be told, grouped by stage."""

        model_config = ConfigDict(extra="forbid", validate_assignment=True)

        watch: WatchConfig = WatchConfig()
        register: RegisterConfig = RegisterConfig()
        segment: SegmentConfig = SegmentConfig()
        measure: MeasureConfig = MeasureConfig()
        track: TrackConfig = TrackConfig()
        pipeline: PipelineConfig = PipelineConfig()


def _first_error(exc: ValidationError, origin: str) -> ConfigError:
    err = exc.errors()[0]
    key = ".".join(str(p) for p in err["loc"]) or "<root>"
    if err["type"] == "extra_forbidden":
        msg = f"{origin}: unknown key '{key}'"
    else:
        msg = f"{origin}: key '{key}': {err['msg']} (got {err.get('input')!r})"
    more = len(exc.errors()) - 1
    return ConfigError(msg + (f" (+{more} more)" if more else ""))


def _parse_value(text: str) -> Any:
    """A CLI override value, read as TOML (numbers, booleans, lists) or else as a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def add_override_argument(parser: argparse.ArgumentParser, *, help: str) -> None:
    """The tools' repeatable ``--set KEY=VALUE`` option, collected in ``args.overrides``
    (for `load_config`)."""
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=help
    )


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``stage.key=value`` overrides to a nested dict (in place) and return it."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item}: expected KEY=VALUE, e.g. register.levels=4")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item}: '{part}' is not a section")
        node[parts[-1]] = _parse_value(value.strip())
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a TOML config (defaults when `path` is None) and apply ``--set`` overrides.

    Raises
    ------
    ConfigError
        One line naming the file (or ``--set``) and the offending key.
    """
    data: dict[str, Any] = {}
    origin = "defaults"
    if path is not None:
        path = Path(path)
        origin = str(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    if overrides:
        apply_overrides(data, overrides)
        origin += " + --set " + " ".join(overrides)
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise _first_error(exc, origin) from None
