"""``nptrack analyze``: static (ANTEMA-style) analysis of single images and stacks, pooled.

Files in, tables and figures out: read every image, segment it (U-Net or the classical
fallback, passed in), separate and measure the particles, and write ``particles.csv``,
``summary.csv``, ``summary.json``, ``overlays/<image>.png``, ``histograms.png`` and optionally
``masks/<image>.png`` (16-bit labels) and ``particles.xlsx``. All file I/O of nptrack.measure
lives in these analyze modules; the algorithms are in `nptrack.measure.split` / `props`.

Units: lengths are in nm when the images are calibrated (or ``--pixel-size-nm`` is given) and
in px when none is; a run never mixes them. When some images are calibrated and others not,
the uncalibrated ones are reported and left out of the pooled tables.

Tables and their writers are in `nptrack.measure.analyze_outputs`, overlays and histograms in
`nptrack.measure.analyze_figures`; the names this module has always exported
(`NM_COLUMNS`, `particle_rows`, `render_overlay`, ...) are re-exported here.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from nptrack.config import DEFAULT_CONFIG_PATH, Config, SegmentConfig
from nptrack.frames import Frame
from nptrack.measure import Particles, detect_particles
from nptrack.measure.analyze_figures import render_overlay, write_histograms, write_png
from nptrack.measure.analyze_outputs import (
    NM_COLUMNS,
    PX_COLUMNS,
    json_default,
    particle_rows,
    summary_rows,
    write_csv,
    write_xlsx,
)
from nptrack.measure.classic import ClassicSegmenter

__all__ = [
    "NM_COLUMNS",
    "PX_COLUMNS",
    "AnalyzeError",
    "AnalyzeResult",
    "SegmenterLike",
    "analyze",
    "analyze_frame",
    "expand_inputs",
    "find_model",
    "load_segmenter",
    "particle_rows",
    "render_overlay",
    "summary_rows",
]

log = logging.getLogger(__name__)
REPO_ROOT = DEFAULT_CONFIG_PATH.parents[1]


class AnalyzeError(ValueError):
    """A problem the user can fix; the message is one line."""


class SegmenterLike(Protocol):
    """What `analyze` needs of a segmenter (the U-Net `Segmenter`, `ClassicSegmenter`)."""

    threshold: float

    def predict(
        self,
        image: np.ndarray,
        *,
        pixel_size_nm: tuple[float, float] | None = ...,
        contrast: str = ...,
    ) -> np.ndarray: ...


def find_model(config: SegmentConfig, root: Path = REPO_ROOT) -> Path | None:
    """The U-Net model file: ``config.model_path`` (relative to `root`), else the newest
    particle model ``models/nptrack-unet-vN.onnx`` (not a column model, not an int8 copy:
    :meth:`Segmenter.from_config` picks that one itself on CPU)."""
    path = Path(config.model_path)
    path = path if path.is_absolute() else root / path
    if path.is_file():
        return path
    versions = {}
    for candidate in (root / "models").glob("nptrack-unet-v*.onnx"):
        number = candidate.stem.removeprefix("nptrack-unet-v")
        if number.isdigit():
            versions[int(number)] = candidate
    return versions[max(versions)] if versions else None


def load_segmenter(
    kind: Literal["unet", "classic"] | None,
    config: Config,
    *,
    notify: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr),
    root: Path = REPO_ROOT,
) -> tuple[SegmenterLike, str]:
    """The segmenter to use and a one-line description of it.

    Parameters
    ----------
    kind : {'unet', 'classic'} or None
        None: the U-Net when a model file exists, else the classic segmenter with a notice
        through `notify`. 'unet' without a usable model is an `AnalyzeError`.
    config : Config
        ``segment`` settings for the U-Net, ``measure.classic_*`` for the classic one.
    """
    if kind not in (None, "unet", "classic"):
        raise AnalyzeError(f"unknown segmenter {kind!r} (unet or classic)")
    if kind in (None, "unet"):
        model = find_model(config.segment, root)
        reason = None
        if model is None:
            reason = f"no U-Net model ({config.segment.model_path} or models/*.onnx)"
        else:
            try:
                from nptrack.segment.infer import Segmenter
            except ImportError as exc:  # onnxruntime missing or broken
                reason = f"U-Net inference unavailable ({exc})"
            else:
                seg_cfg = config.segment.model_copy(update={"model_path": str(model)})
                segmenter = Segmenter.from_config(seg_cfg, root=root)
                return segmenter, f"unet {model.name} (threshold {segmenter.threshold:g})"
        if kind == "unet":
            raise AnalyzeError(f"--segmenter unet: {reason}")
        notify(f"nptrack analyze: {reason}: using the classic threshold segmenter")
    m = config.measure
    classic = ClassicSegmenter(method=m.classic_threshold, smooth_px=m.classic_smooth_px)
    return classic, f"classic ({m.classic_threshold}, background-corrected)"


def expand_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Files as given and the supported files of folders (natural order, no ``.emi``)."""
    from nptrack.io.complete import SUPPORTED_SUFFIXES
    from nptrack.io.read import natural_key

    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = [
                p
                for p in item.iterdir()
                if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES and p.suffix != ".emi"
            ]
            if not found:
                raise AnalyzeError(f"{item}: folder holds no supported image files")
            paths.extend(sorted(found, key=natural_key))
        else:
            paths.append(item)
    return paths


def _used_contrast(segmenter: SegmenterLike, requested: str) -> str:
    if requested in ("bright", "dark"):
        return requested
    used = getattr(segmenter, "last_contrast", None)
    if used is None:
        used = getattr(segmenter, "last_info", {}).get("contrast")
    return used if used in ("bright", "dark") else "auto"


def analyze_frame(
    frame: Frame,
    segmenter: SegmenterLike,
    *,
    config: Config,
    contrast: str = "auto",
) -> tuple[Particles, str]:
    """Segment and measure one frame; returns the particles and the contrast used."""
    centres = None
    if getattr(segmenter, "has_centres", False):
        prob, centres = segmenter.predict_maps(
            frame.data, pixel_size_nm=frame.pixel_size_nm, contrast=contrast
        )
    else:
        prob = segmenter.predict(frame.data, pixel_size_nm=frame.pixel_size_nm, contrast=contrast)
    # The U-Net segmenter already carries config.segment.threshold when one is set; the
    # classical one maps its own threshold to 0.5.
    threshold = segmenter.threshold
    used = _used_contrast(segmenter, contrast)
    particles = detect_particles(
        prob,
        frame.data,
        threshold=threshold,
        pixel_size_nm=frame.pixel_size_nm,
        contrast=used,  # type: ignore[arg-type]
        config=config.measure,
        separation_px=getattr(segmenter, "input_separation_px", 0),
        centres=centres,
        centre_threshold=getattr(segmenter, "centre_threshold", None),
        centre_dynamic=getattr(segmenter, "centre_dynamic", None),
    )
    return particles, used


@dataclass
class _Done:
    name: str
    source: str
    pixel_size_nm: tuple[float, float] | None
    columns: dict[str, np.ndarray]
    contrast: str
    seconds: float


@dataclass
class AnalyzeResult:
    """What `analyze` did.

    Attributes
    ----------
    analysed : int
        Images (frames) in the tables.
    failed : list of (str, str)
        (image, reason) of every image that was skipped.
    particles : int
        Rows of ``particles.csv``.
    unit : {'nm', 'px'}
        Length unit of the tables.
    files : list of Path
        Everything written.
    """

    analysed: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    particles: int = 0
    unit: str = "nm"
    files: list[Path] = field(default_factory=list)


def _unique_name(stem: str, taken: set[str]) -> str:
    name, k = stem, 2
    while name in taken:
        name, k = f"{stem}-{k}", k + 1
    taken.add(name)
    return name


def _check_xlsx() -> None:
    try:
        import openpyxl  # noqa: F401
    except ImportError:
        raise AnalyzeError("--xlsx needs openpyxl (pip install openpyxl)") from None


def analyze(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    segmenter: SegmenterLike,
    config: Config | None = None,
    pixel_size_nm: float | None = None,
    contrast: Literal["bright", "dark", "auto"] | None = None,
    masks: bool = False,
    xlsx: bool = False,
    progress: bool | None = None,
    report: Callable[[str], None] | None = None,
    debug: bool = False,
    segmenter_name: str = "",
) -> AnalyzeResult:
    """Analyse images and stacks and write the pooled tables and figures to `out_dir`.

    Parameters
    ----------
    inputs : sequence of path-like
        Image files, stacks and folders.
    out_dir : path-like
        Created if needed.
    segmenter : SegmenterLike
        See `load_segmenter`.
    config : Config, optional
        ``measure`` settings (defaults when None).
    pixel_size_nm : float, optional
        Pixel size in nm for every image, overriding the files' own calibration.
    contrast : {'bright', 'dark', 'auto'}, optional
        Particle contrast (default: ``config.segment.contrast``).
    masks : bool
        Also write ``masks/<image>.png`` (uint16 labels, 0 = background; label k is
        ``particle_id`` k of that image).
    xlsx : bool
        Also write ``particles.xlsx`` (needs openpyxl).
    progress : bool or None
        Show a progress bar over the input files (None: only on a terminal).
    report : callable, optional
        Receives one line per skipped image (default: stderr).
    debug : bool
        Re-raise unexpected errors instead of skipping the image.

    Raises
    ------
    AnalyzeError
        When no image could be analysed (every failure was reported first).
    """
    from tqdm import tqdm

    from nptrack.io.errors import ReadError
    from nptrack.io.read import read_frames

    config = config or Config()
    contrast = contrast or config.segment.contrast
    if xlsx:
        _check_xlsx()
    out = Path(out_dir)
    paths = expand_inputs(inputs)
    out.mkdir(parents=True, exist_ok=True)
    (out / "overlays").mkdir(exist_ok=True)
    if masks:
        (out / "masks").mkdir(exist_ok=True)
    say = report or (lambda msg: tqdm.write(msg, file=sys.stderr))
    result = AnalyzeResult()
    done: list[_Done] = []
    taken: set[str] = set()
    started = time.perf_counter()
    bar = tqdm(
        paths,
        disable=None if progress is None else not progress,
        unit="file",
        desc="analyze",
        file=sys.stderr,
    )
    for path in bar:
        try:
            frames = read_frames(path)
        except Exception as exc:
            if debug and not isinstance(exc, ReadError):
                raise
            reason = exc.reason if isinstance(exc, ReadError) else _one_line(exc)
            result.failed.append((str(path), reason))
            say(f"nptrack analyze: skipped {path}: {reason}")
            continue
        for frame in frames:
            if pixel_size_nm is not None:
                frame = Frame(
                    frame.data,
                    (pixel_size_nm, pixel_size_nm),
                    frame.index,
                    frame.time_s,
                    frame.source,
                    frame.meta,
                )
            stem = path.stem if len(frames) == 1 else f"{path.stem}_{frame.index}"
            name = _unique_name(stem, taken)
            t0 = time.perf_counter()
            try:
                particles, used = analyze_frame(frame, segmenter, config=config, contrast=contrast)
                image_rgb = render_overlay(
                    frame.data,
                    particles.labels,
                    particles.columns,
                    pixel_size_nm=frame.pixel_size_nm,
                )
                result.files.append(write_png(out / "overlays" / f"{name}.png", image_rgb))
                if masks:
                    if particles.count > np.iinfo(np.uint16).max:
                        raise AnalyzeError(f"{particles.count} particles do not fit 16 bits")
                    labels16 = particles.labels.astype(np.uint16)
                    result.files.append(write_png(out / "masks" / f"{name}.png", labels16))
            except Exception as exc:
                if debug:
                    raise
                reason = _one_line(exc)
                result.failed.append((frame.source, reason))
                say(f"nptrack analyze: skipped {frame.source}: {reason}")
                continue
            done.append(
                _Done(
                    name,
                    frame.source,
                    frame.pixel_size_nm,
                    particles.columns,
                    used,
                    time.perf_counter() - t0,
                )
            )

    calibrated = [d for d in done if d.pixel_size_nm is not None]
    result.unit = "nm" if calibrated else "px"
    if calibrated and len(calibrated) < len(done):
        for d in done:
            if d.pixel_size_nm is None:
                reason = "no pixel size (pass --pixel-size-nm): left out of the nm tables"
                result.failed.append((d.source, reason))
                say(f"nptrack analyze: {d.source}: {reason}")
        done = calibrated
    if not done:
        raise AnalyzeError(f"no image could be analysed ({len(result.failed)} failed)")

    tables = [(d.source, d.columns) for d in done]
    header, rows = particle_rows(tables, unit=result.unit)
    result.files.append(write_csv(out / "particles.csv", header, rows))
    s_header, s_rows = summary_rows(tables, unit=result.unit)
    result.files.append(write_csv(out / "summary.csv", s_header, s_rows))
    result.files.append(write_histograms(out / "histograms.png", tables, unit=result.unit))
    if xlsx:
        result.files.append(
            write_xlsx(
                out / "particles.xlsx", {"particles": (header, rows), "summary": (s_header, s_rows)}
            )
        )
    result.analysed = len(done)
    result.particles = len(rows)
    info: dict[str, Any] = {
        "images_analysed": result.analysed,
        "images_failed": len(result.failed),
        "failed": [{"image": s, "reason": r} for s, r in result.failed],
        "particles": result.particles,
        "particles_off_border": int(sum(int((d.columns["border"] == 0).sum()) for d in done)),
        "unit": result.unit,
        "segmenter": segmenter_name or type(segmenter).__name__,
        "threshold": segmenter.threshold,
        "contrast": {d.source: d.contrast for d in done},
        "pixel_size_nm": {d.source: d.pixel_size_nm for d in done},
        "seconds_per_image": {d.source: round(d.seconds, 3) for d in done},
        "seconds_total": round(time.perf_counter() - started, 3),
        "measure": config.measure.model_dump(),
    }
    summary_json = out / "summary.json"
    summary_json.write_text(json.dumps(info, indent=2, default=json_default) + "\n")
    result.files.append(summary_json)
    return result


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
