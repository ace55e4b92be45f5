"""Particle segmentation with an exported U-Net through ONNX Runtime (no torch needed).

A :class:`Segmenter` owns one ONNX Runtime session. For every frame it

1. resamples the image to the pixel size the model was trained for (or, without a pixel size,
   to the particle scale it expects: given as ``expected_diameter_px`` or estimated by a coarse
   pass of the network),
2. normalises it as written in the model's metadata (robust percentiles of the whole frame, so
   that tiles agree), flips the contrast if the model wants the other polarity,
3. runs fixed-size overlapping tiles in batches and blends their logits with weights that fall
   to zero towards inner tile edges (no seams),
4. resamples the logits back and returns a float32 probability map at the input resolution.

The model file must carry ``nptrack.*`` metadata (written by :mod:`nptrack.segment.export`);
anything else is refused with a :class:`ModelFileError`.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort

__all__ = [
    "METADATA_PREFIX",
    "REQUIRED_METADATA",
    "ModelFileError",
    "Segmenter",
    "estimate_polarity",
    "int8_copy",
    "normalise",
    "open_session",
    "read_metadata",
    "robust_diameter_px",
    "select_providers",
    "tile_layout",
    "tile_weights",
    "tiled_logits",
]

log = logging.getLogger("nptrack.segment")

METADATA_PREFIX = "nptrack."
REQUIRED_METADATA = (
    "model_version",
    "pixel_size_nm",
    "contrast",
    "threshold",
    "normalisation",
    "input_multiple",
    "typical_diameter_px",
)
_CPU = "CPUExecutionProvider"
_CUDA = "CUDAExecutionProvider"


class ModelFileError(ValueError):
    """A model file that nptrack cannot use; the message is one line for the user."""


def read_metadata(meta_map: dict[str, str], origin: str = "model") -> dict[str, Any]:
    """Decode and check the ``nptrack.*`` entries of an ONNX model's metadata map.

    Parameters
    ----------
    meta_map : dict of str to str
        ``session.get_modelmeta().custom_metadata_map`` (values are JSON texts).
    origin : str
        Named in error messages (the file path).

    Returns
    -------
    dict
        Keys without the prefix, values decoded from JSON.
    """
    meta: dict[str, Any] = {}
    for key, text in meta_map.items():
        if key.startswith(METADATA_PREFIX):
            try:
                meta[key[len(METADATA_PREFIX) :]] = json.loads(text)
            except json.JSONDecodeError:
                meta[key[len(METADATA_PREFIX) :]] = text
    if meta.get("task") == "columns":
        raise ModelFileError(
            f"{origin}: an atomic-column model (occupancy classes), not a particle model; "
            "use it with `nptrack columns`"
        )
    missing = [k for k in REQUIRED_METADATA if k not in meta]
    if missing:
        raise ModelFileError(
            f"{origin}: not an nptrack segmentation model (metadata missing: "
            f"{', '.join(missing)}); export it with `nptrack export-model`"
        )
    if meta["contrast"] not in ("bright", "dark", "both"):
        raise ModelFileError(f"{origin}: metadata contrast {meta['contrast']!r} is not known")
    if not 0 < float(meta["threshold"]) < 1 or not float(meta["pixel_size_nm"]) > 0:
        raise ModelFileError(f"{origin}: metadata threshold or pixel_size_nm out of range")
    return meta


def _cuda_device_present() -> bool:
    """True when a CUDA driver with at least one device is there (checked without ORT, whose
    failed attempt to load its CUDA provider prints errors on every CPU-only machine)."""
    import ctypes

    names = ("nvcuda.dll",) if os.name == "nt" else ("libcuda.so.1", "libcuda.so")
    for name in names:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        count = ctypes.c_int(0)
        try:
            return (
                lib.cuInit(0) == 0
                and lib.cuDeviceGetCount(ctypes.byref(count)) == 0
                and (count.value > 0)
            )
        except AttributeError:  # pragma: no cover - not a CUDA driver
            return False
    return False


def select_providers(requested: str | Sequence[str] = "auto") -> list[str]:
    """The execution providers to ask ONNX Runtime for, best first.

    Parameters
    ----------
    requested : {"auto", "cpu", "cuda"} or list of str
        ``"auto"``: CUDA when ONNX Runtime lists it *and* a CUDA device is present, then CPU;
        ``"cuda"``: CUDA then CPU (checked after the session is made); a list is used as is.
    """
    if not isinstance(requested, str):
        return list(requested)
    available = ort.get_available_providers()
    if requested == "cpu":
        return [_CPU]
    if requested == "cuda":
        return [_CUDA, _CPU]
    if requested != "auto":
        raise ValueError(f"providers must be 'auto', 'cpu' or 'cuda', got {requested!r}")
    if _CUDA in available:
        if _cuda_device_present():
            return [_CUDA, _CPU]
        log.info("ONNX Runtime lists CUDA but no CUDA device/driver is present: using CPU")
    return [_CPU]


class Segmenter:
    """One ONNX Runtime session of an nptrack U-Net, with the pre- and post-processing.

    Use :meth:`from_path`. Attributes: ``threshold`` (decision threshold on the probability),
    ``providers`` (what the session really uses), ``metadata`` (decoded ``nptrack.*`` entries),
    ``last_info`` (zoom, scale source and contrast used by the last :meth:`predict`).
    """

    def __init__(
        self,
        session: ort.InferenceSession,
        metadata: dict[str, Any],
        *,
        threshold: float | None = None,
        tile_px: int = 1024,
        tile_overlap_px: int = 64,
        tile_batch: int = 2,
        resample_to_model: bool = True,
        expected_diameter_px: float | None = None,
    ) -> None:
        self.session = session
        self.metadata = metadata
        self.threshold = float(metadata["threshold"] if threshold is None else threshold)
        # Models trained with background lines between touching particles say how wide.
        self.separation_px = int(metadata.get("separation_px", 0))
        # Models with centre maps say at which level their cores are drawn.
        self.centre_threshold = float(metadata.get("centre_threshold", 0.5))
        # ... or, for regressed centre domes, the dynamic of the maxima that mark particles.
        dynamic = metadata.get("centre_dynamic")
        self.centre_dynamic = None if dynamic is None else float(dynamic)
        self.providers: list[str] = list(session.get_providers())
        self.multiple = int(metadata["input_multiple"])
        self.tile_px = max(self.multiple, int(tile_px) // self.multiple * self.multiple)
        self.tile_overlap_px = int(tile_overlap_px)
        self.tile_batch = max(1, int(tile_batch))
        self.resample_to_model = bool(resample_to_model)
        self.expected_diameter_px = expected_diameter_px
        self.last_info: dict[str, Any] = {}
        self.model_path: Path | None = None  # set by from_path

    @classmethod
    def from_path(
        cls,
        path: str | Path,
        *,
        providers: str | Sequence[str] = "auto",
        intra_op_threads: int | None = None,
        intra_op_spinning: bool | None = None,
        **options: Any,
    ) -> Segmenter:
        """Open a model file.

        Parameters
        ----------
        path : str or Path
            ONNX file exported by ``nptrack export-model`` / ``nptrack train``.
        providers : {"auto", "cpu", "cuda"} or list of str
            See :func:`select_providers`. ``"auto"`` falls back to CPU and logs why;
            ``"cuda"`` raises :class:`ModelFileError` if CUDA cannot be used.
        intra_op_threads : int, optional
            Threads of one operator (ONNX Runtime's default, all cores, when None).
        intra_op_spinning : bool, optional
            Whether those threads spin-wait for work between operators (ONNX Runtime's
            ``session.intra_op.allow_spinning``; its default, on, when None).
        **options
            Keyword options of :class:`Segmenter` (``tile_px``, ``tile_overlap_px``, ...).

        Raises
        ------
        ModelFileError
            Missing file, not ONNX, no nptrack metadata, wrong input rank.
        """
        path = Path(path)
        session = open_session(
            path,
            providers=providers,
            intra_op_threads=intra_op_threads,
            intra_op_spinning=intra_op_spinning,
        )
        inputs, outputs = session.get_inputs(), session.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4 or len(outputs[0].shape) != 4:
            ranks = [len(i.shape) for i in inputs]
            raise ModelFileError(
                f"{path}: expected one input of rank 4 (N, 1, H, W), got rank(s) {ranks}"
            )
        meta = read_metadata(session.get_modelmeta().custom_metadata_map, str(path))
        segmenter = cls(session, meta, **options)
        segmenter.model_path = path
        return segmenter

    @classmethod
    def from_config(cls, config: Any, *, root: str | Path | None = None) -> Segmenter:
        """Open the model of a :class:`nptrack.config.SegmentConfig`.

        A relative ``model_path`` is taken relative to `root` (default: the repository root,
        where the shipped model lives).
        """
        path = Path(config.model_path)
        if not path.is_absolute():
            path = Path(root or Path(__file__).resolve().parents[3]) / path
        if getattr(config, "int8_on_cpu", False) and _CUDA not in select_providers(
            config.providers
        ):
            path = int8_copy(path) or path
        return cls.from_path(
            path,
            providers=config.providers,
            intra_op_threads=config.intra_op_threads,
            intra_op_spinning=getattr(config, "intra_op_spinning", None),
            threshold=config.threshold,
            tile_px=config.tile_px,
            tile_overlap_px=config.tile_overlap_px,
            tile_batch=config.tile_batch,
            resample_to_model=config.resample_to_model,
            expected_diameter_px=config.expected_diameter_px,
        )

    @property
    def input_separation_px(self) -> int:
        """The model's separation lines (half-width) in pixels of the last predicted frame."""
        if self.separation_px <= 0:
            return 0
        zoom = min(self.last_info.get("zoom", (1.0, 1.0)))
        return max(1, round(self.separation_px / max(zoom, 1e-6)))

    # -- scale ------------------------------------------------------------------------------
    def _zoom(
        self,
        image: np.ndarray,
        pixel_size_nm: tuple[float, float] | None,
        expected_diameter_px: float | None,
        contrast: str,
    ) -> tuple[tuple[float, float], str]:
        if not self.resample_to_model:
            return (1.0, 1.0), "no resampling"
        model_px = float(self.metadata["pixel_size_nm"])
        if pixel_size_nm is not None:
            py, px = (float(v) for v in pixel_size_nm)
            return (py / model_px, px / model_px), f"pixel size {py:g} x {px:g} nm"
        typical = float(self.metadata["typical_diameter_px"])
        diameter = expected_diameter_px or self.expected_diameter_px
        source = f"expected diameter {diameter:g} px (given)" if diameter else ""
        if not diameter:
            diameter = self.estimate_diameter_px(image, contrast=contrast)
            if diameter is None:
                return (1.0, 1.0), "pixel size unknown, no particles in a coarse pass: zoom 1"
            source = f"estimated diameter {diameter:.1f} px (coarse pass)"
        z = typical / diameter
        # Keep at least ~128 px on the short side (huge particles) and do not blow up tiny
        # ones beyond 4x (cost grows with the square).
        z = float(np.clip(z, min(1.0, 128.0 / min(image.shape)), 4.0))
        return (z, z), source

    def estimate_diameter_px(self, image: np.ndarray, *, contrast: str = "auto") -> float | None:
        """Typical particle diameter in input pixels, from coarse passes of the network.

        The frame is shrunk to a long side of 256 px, then 640 px (stopping when particles of
        at least 6 px are found there); the inscribed diameter of the segmented regions
        (twice their largest distance to the background, so that touching particles are not
        taken as one) is averaged in log space weighted by area, and scaled back.

        Returns
        -------
        float or None
            ``None`` when nothing is found at any zoom.
        """
        long_side = max(image.shape)
        for target in (256, 640):
            z = min(1.0, target / long_side)
            small = self._run(image, (z, z), contrast)
            d = robust_diameter_px(small > self.threshold)
            if d is not None and (d >= 6.0 or z >= 1.0):
                return d / z
            if z >= 1.0:
                break
        return None

    # -- prediction -------------------------------------------------------------------------
    def predict(
        self,
        image: np.ndarray,
        *,
        pixel_size_nm: tuple[float, float] | None = None,
        contrast: str = "auto",
        expected_diameter_px: float | None = None,
    ) -> np.ndarray:
        """Particle probability of every pixel.

        Parameters
        ----------
        image : ndarray, shape (H, W)
            Raw intensities (any real dtype).
        pixel_size_nm : (float, float), optional
            Pixel size along (y, x) in nm; the image is resampled to the model's.
        contrast : {"auto", "bright", "dark"}
            Particles brighter (ADF-STEM) or darker (BF-TEM) than the support; ``auto``
            decides from the image when the model was trained for one polarity only.
        expected_diameter_px : float, optional
            Typical particle diameter in input pixels, used when `pixel_size_nm` is None;
            when both are None the scale is estimated by a coarse pass of the network.

        Returns
        -------
        ndarray of float32, shape (H, W)
            Probabilities in [0, 1].
        """
        return self.predict_maps(
            image,
            pixel_size_nm=pixel_size_nm,
            contrast=contrast,
            expected_diameter_px=expected_diameter_px,
        )[0]

    @property
    def has_centres(self) -> bool:
        """Whether the model also gives each particle's centre map (its second channel)."""
        return bool(self.metadata.get("centres", False))

    def predict_maps(
        self,
        image: np.ndarray,
        *,
        pixel_size_nm: tuple[float, float] | None = None,
        contrast: str = "auto",
        expected_diameter_px: float | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Particle probability and, for a model with centres, the centre map.

        Parameters are those of :meth:`predict`.

        Returns
        -------
        probability : ndarray of float32, shape (H, W)
        centres : ndarray of float32, shape (H, W), or None
            Each particle's centre map in [0, 1] (1 at its inner point, 0 at its outline,
            see :func:`nptrack.segment.data.centre_target`); None for a one-channel model.
        """
        image = np.asarray(image)
        if image.ndim != 2 or min(image.shape) < 2:
            raise ValueError(f"expected a 2-D image, got shape {image.shape}")
        if contrast not in ("auto", "bright", "dark"):
            raise ValueError(f"contrast must be auto, bright or dark, got {contrast!r}")
        zoom, source = self._zoom(image, pixel_size_nm, expected_diameter_px, contrast)
        channels = self._channels(image, zoom, contrast)
        log.info("segment: %s -> zoom %.3g x %.3g", source, *zoom)
        self.last_info = {"zoom": zoom, "scale_source": source, **self.last_info}
        prob = self._probability(channels[0], image.shape)
        if not self.has_centres or channels.shape[0] < 2:
            return prob, None
        return prob, self._probability(channels[1], image.shape)

    def _probability(self, logits: np.ndarray, out_shape: tuple[int, ...] | None) -> np.ndarray:
        if out_shape is not None and logits.shape != tuple(out_shape):
            logits = cv2.resize(
                logits, (out_shape[1], out_shape[0]), interpolation=cv2.INTER_LINEAR
            )
        return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)

    def _run(
        self,
        image: np.ndarray,
        zoom: tuple[float, float],
        contrast: str,
        out_shape: tuple[int, ...] | None = None,
    ) -> np.ndarray:
        """Probability at the zoomed size (or resampled back to `out_shape`)."""
        return self._probability(self._logits(image, zoom, contrast), out_shape)

    def _logits(self, image: np.ndarray, zoom: tuple[float, float], contrast: str) -> np.ndarray:
        """The particle logits (channel 0) of :meth:`_channels`."""
        return self._channels(image, zoom, contrast)[0]

    def _channels(self, image: np.ndarray, zoom: tuple[float, float], contrast: str) -> np.ndarray:
        """Resample by `zoom`, normalise, flip the contrast if needed, tile, infer, blend;
        every output channel, shape (C, h, w)."""
        img = np.ascontiguousarray(image, dtype=np.float32)
        h, w = img.shape
        zh, zw = max(1, round(h * zoom[0])), max(1, round(w * zoom[1]))
        if (zh, zw) != (h, w):
            shrink = zh * zw < h * w
            img = cv2.resize(
                img, (zw, zh), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
            )
        x = normalise(img, self.metadata["normalisation"])
        model_contrast = self.metadata["contrast"]
        used = contrast
        if model_contrast != "both":
            if contrast == "auto":
                used = estimate_polarity(x)
            if used != model_contrast:
                x = 1.0 - x  # normalised to ~[0, 1]: inversion keeps the range
        self.last_info = {"contrast": used}
        return self._tiled_logits(x)

    def _tiled_logits(self, x: np.ndarray) -> np.ndarray:
        return tiled_logits(
            self.session, x, multiple=self.multiple, tile_px=self.tile_px,
            overlap_px=self.tile_overlap_px, tile_batch=self.tile_batch,
        )  # fmt: skip

    def __repr__(self) -> str:
        v = self.metadata.get("model_version", "?")
        return f"Segmenter(version={v!r}, providers={self.providers}, threshold={self.threshold})"


def int8_copy(path: str | Path) -> Path | None:
    """The int8 copy ``<stem>-int8.onnx`` of a float model, if it is there and is one.

    ``nptrack export-model MODEL.onnx --out MODEL-int8.onnx --int8`` writes it. It is taken
    only when its metadata says it is quantized and names the same model version as the
    float file (a stale copy of an older model is refused with a warning).

    Returns
    -------
    Path or None
        The copy's path, or None (no copy, or not a valid copy of this model).
    """
    path = Path(path)
    copy = path.with_name(f"{path.stem}-int8{path.suffix}")
    if not (path.is_file() and copy.is_file()):
        return None

    def meta(p: Path) -> dict[str, Any]:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.log_severity_level = 3
        session = ort.InferenceSession(str(p), opts, providers=[_CPU])
        return read_metadata(session.get_modelmeta().custom_metadata_map, str(p))

    try:
        float_meta, copy_meta = meta(path), meta(copy)
    except Exception as exc:  # any unreadable copy: keep the float model
        log.warning("%s: not usable as the int8 copy (%s); using %s", copy, exc, path.name)
        return None
    if "quantization" not in copy_meta or "quantization" in float_meta:
        log.warning("%s: not an int8 copy (no quantization metadata); using %s", copy, path.name)
        return None
    if copy_meta["model_version"] != float_meta["model_version"]:
        log.warning(
            "%s is of model version %s, %s of %s: stale copy, using the float model",
            copy.name,
            copy_meta["model_version"],
            path.name,
            float_meta["model_version"],
        )
        return None
    log.info("no CUDA: segmenting with the int8 copy %s of %s", copy.name, path.name)
    return copy


# -- helpers (pure numpy / OpenCV) ------------------------------------------------------------
def open_session(
    path: Path,
    *,
    providers: str | Sequence[str] = "auto",
    intra_op_threads: int | None = None,
    intra_op_spinning: bool | None = None,
) -> Any:
    """One ONNX Runtime session of a model file, on the providers really available.

    ``providers="auto"`` falls back to CPU and logs why; ``"cuda"`` raises
    :class:`ModelFileError` if CUDA cannot be used. A missing or unreadable file raises
    :class:`ModelFileError` with one line. `intra_op_spinning` None keeps ONNX Runtime's
    default (its threads spin-wait for work between operators).
    """
    if not path.is_file():
        raise ModelFileError(f"{path}: model file not found")
    chosen = select_providers(providers)
    so = ort.SessionOptions()
    if intra_op_threads:
        so.intra_op_num_threads = int(intra_op_threads)
    if intra_op_spinning is not None:
        so.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if intra_op_spinning else "0"
        )
    # Keep ORT quiet while it tries CUDA; we report the outcome ourselves below.
    ort.set_default_logger_severity(4 if _CUDA in chosen else 2)
    try:
        session = ort.InferenceSession(str(path), so, providers=chosen)
    except Exception as exc:  # ORT raises several private exception types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(f"{path}: cannot load as an ONNX model: {first}") from None
    finally:
        ort.set_default_logger_severity(2)  # ORT's default (warnings)
    got = session.get_providers()
    if _CUDA in chosen and _CUDA not in got:
        if providers == "cuda":
            raise ModelFileError(
                f"{path}: CUDA was requested but ONNX Runtime could not use it "
                "(driver, CUDA or cuDNN missing); use providers='auto' or 'cpu'"
            )
        log.warning("CUDA provider failed to load (CUDA/cuDNN libraries?): using CPU")
    log.info("model %s on %s", path.name, ", ".join(got))
    return session


def tiled_logits(
    session: Any,
    x: np.ndarray,
    *,
    multiple: int,
    tile_px: int,
    overlap_px: int,
    tile_batch: int = 1,
) -> np.ndarray:
    """Logits of a normalised image through overlapping tiles, blended without seams.

    Parameters
    ----------
    session : onnxruntime.InferenceSession
        One input (N, 1, H, W), one output (N, C, H, W).
    x : ndarray, shape (H, W), float32
    multiple : int
        The model needs heights and widths divisible by this (reflection padding).
    tile_px, overlap_px, tile_batch : int
        Tile side, overlap and tiles per run (see `tile_layout`, `tile_weights`).

    Returns
    -------
    ndarray, shape (C, H, W), float32
    """
    name = session.get_inputs()[0].name
    h, w = x.shape
    m, ov = multiple, overlap_px
    # Pad (reflection keeps the local statistics) to the multiple the U-Net needs.
    ph, pw = -h % m, -w % m
    if ph or pw:
        x = cv2.copyMakeBorder(x, 0, ph, 0, pw, cv2.BORDER_REFLECT_101)
    hh, ww = x.shape
    ys, th = tile_layout(hh, tile_px=tile_px, overlap_px=ov, multiple=m)
    xs, tw = tile_layout(ww, tile_px=tile_px, overlap_px=ov, multiple=m)
    jobs = [(i, j) for i in range(len(ys)) for j in range(len(xs))]
    if len(jobs) == 1:
        return session.run(None, {name: x[None, None]})[0][0, :, :h, :w]
    wy = [tile_weights(th, y0, hh, overlap_px=ov) for y0 in ys]
    wx = [tile_weights(tw, x0, ww, overlap_px=ov) for x0 in xs]
    acc: np.ndarray | None = None
    wsum = np.zeros((hh, ww), np.float32)
    for b in range(0, len(jobs), tile_batch):
        chunk = jobs[b : b + tile_batch]
        batch = np.stack([x[ys[i] : ys[i] + th, xs[j] : xs[j] + tw] for i, j in chunk])
        out = session.run(None, {name: batch[:, None]})[0]
        if acc is None:
            acc = np.zeros((out.shape[1], hh, ww), np.float32)
        for (i, j), tile in zip(chunk, out, strict=True):
            wt = np.outer(wy[i], wx[j])
            acc[:, ys[i] : ys[i] + th, xs[j] : xs[j] + tw] += tile * wt
            wsum[ys[i] : ys[i] + th, xs[j] : xs[j] + tw] += wt
    assert acc is not None
    return (acc / wsum)[:, :h, :w]


def normalise(image: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    """Robust percentile scaling of a whole frame, as described by the model metadata.

    Parameters
    ----------
    image : ndarray, shape (H, W)
    spec : dict
        ``{"method": "percentile", "low": 1.0, "high": 99.0, "clip": [-0.5, 1.5],
        "stats_px": 512}``: the ``low`` and ``high`` percentiles (computed on a copy shrunk by
        area averaging to at most ``stats_px`` on its long side, which also averages out shot
        noise) map to 0 and 1; values are then clipped to ``clip``.

    Returns
    -------
    ndarray of float32, shape (H, W)
    """
    if spec.get("method", "percentile") != "percentile":
        raise ModelFileError(f"unknown normalisation method {spec.get('method')!r}")
    img = np.asarray(image, dtype=np.float32)
    stats_px = int(spec.get("stats_px", 512))
    f = min(1.0, stats_px / max(img.shape))
    small = img
    if f < 1.0:
        size = (max(1, round(img.shape[1] * f)), max(1, round(img.shape[0] * f)))
        small = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    lo, hi = np.percentile(small, [float(spec.get("low", 1.0)), float(spec.get("high", 99.0))])
    scale = 1.0 / max(float(hi - lo), 1e-6 * max(abs(float(hi)), 1.0), 1e-12)
    out = (img - np.float32(lo)) * np.float32(scale)
    c0, c1 = spec.get("clip", [-0.5, 1.5])
    return np.clip(out, c0, c1, out=out)


def estimate_polarity(x: np.ndarray) -> str:
    """``"bright"`` or ``"dark"`` particles, from a normalised image (values ~[0, 1]).

    Particles are the minority phase: the intensity histogram has its long tail on the side of
    the particles, so the side farther from the median wins. Fails on frames that are mostly
    particle; give the contrast explicitly there.
    """
    lo, med, hi = np.percentile(
        x[:: max(1, x.shape[0] // 256), :: max(1, x.shape[1] // 256)], [2, 50, 98]
    )
    return "bright" if hi - med >= med - lo else "dark"


def robust_diameter_px(mask: np.ndarray) -> float | None:
    """Typical particle diameter (px) of a binary mask, insensitive to touching particles.

    Each connected region contributes twice its largest distance to the background (its
    inscribed diameter: a chain of touching particles counts as one particle wide); regions
    are averaged in log space with their area as weight. ``None`` if the mask is empty.
    """
    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n <= 1:
        return None
    padded = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    dist = cv2.distanceTransform(padded, cv2.DIST_L2, 5)[1:-1, 1:-1]
    inscribed = np.zeros(n, np.float64)
    np.maximum.at(inscribed, labels.ravel(), dist.ravel())
    d, area = 2.0 * inscribed[1:], stats[1:, cv2.CC_STAT_AREA].astype(np.float64)
    keep = d >= 2.0  # single-pixel specks say nothing about the scale
    if not keep.any():
        return None
    return float(np.exp(np.average(np.log(d[keep]), weights=area[keep])))


def tile_layout(
    length: int, *, tile_px: int, overlap_px: int, multiple: int
) -> tuple[list[int], int]:
    """Start positions and size of tiles covering ``length`` px with at least `overlap_px`.

    `length` must be a multiple of `multiple`. Starts and size are multiples of `multiple`:
    max-pooling makes a U-Net equivariant to shifts by ``2 ** (depth - 1)`` px only, so any
    other offset would change the result and show up as seams. The number of tiles is the
    smallest that fits tiles of at most `tile_px`; the tile size is then shrunk so that the
    tiles cover the frame evenly.
    """
    if length <= tile_px:
        return [0], length
    tile_px = max(multiple, tile_px // multiple * multiple)
    ov = overlap_px + multiple  # slack for rounding the starts to the grid
    n = max(2, math.ceil((length - ov) / max(tile_px - ov, multiple)))
    while True:
        size = min(tile_px, math.ceil((length + (n - 1) * ov) / n / multiple) * multiple)
        starts = [round(s / multiple) * multiple for s in np.linspace(0, length - size, n)]
        if all(b - a <= size - overlap_px for a, b in itertools.pairwise(starts)) or size < ov:
            return starts, size
        n += 1


def tile_weights(size: int, start: int, length: int, *, overlap_px: int) -> np.ndarray:
    """1-D blending weight of a tile: 1 inside, 0 on the outer quarter of the overlap next to
    an inner tile edge, a linear ramp between (no weight where the network sees padding)."""
    w = np.ones(size, np.float32)
    if overlap_px <= 0:
        return w
    i = np.arange(size, dtype=np.float32)
    q = overlap_px / 4.0
    ramp = np.clip((i + 0.5 - q) / (2.0 * q), 0.0, 1.0)
    if start > 0:
        w = np.minimum(w, ramp)
    if start + size < length:
        w = np.minimum(w, ramp[::-1])
    return np.maximum(w, 1e-6)  # never exactly 0: a lone tile still counts
