"""Writers of the simulator: training sets (images, masks, per-particle truth) and sequences
(ground truth, then frames played into a folder by the simulated microscope).

Everything that opens a file lives here or in `microscope`; the algorithms never do.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from nptrack.simulate.dynamics import write_ground_truth
from nptrack.simulate.microscope import encode_frame, play
from nptrack.simulate.presets import (
    AcquisitionConfig,
    SimConfig,
    intensity_per_nm3,
    load_preset,
    simulate_image,
    simulate_sequence,
)

__all__ = ["prepare_sequence", "write_images", "write_sequence"]


def _load_support(path: str, cfg: SimConfig) -> tuple[np.ndarray, float]:
    from nptrack.io.read import read_frames

    frame = read_frames(path)[0]
    px = frame.pixel_size_nm[1] if frame.pixel_size_nm else cfg.support.images_pixel_size_nm
    if px is None:
        raise ValueError(f"{path}: no pixel size in the file; set support.images_pixel_size_nm")
    return frame.data, float(px)


def write_images(
    out: str | Path, *, n: int, config: SimConfig | str, seed: int = 0, progress: bool = True
) -> Path:
    """Write `n` training images with masks and per-particle truth into `out`.

    Layout: ``images/sim_0000.tif`` (float32 counts, ImageJ calibration), ``masks/sim_0000.png``
    (16-bit instance labels, 0 = background), ``particles.csv`` (image, id, x, y, diameter_nm,
    intensity, area_px, layer, border; pixels of that image), ``images.csv`` (image,
    pixel_size_nm, modality, height, width, particles, settings as JSON) and
    ``simulation.json`` (the preset and seed). Image i depends only on (seed, i). `config` is
    a preset or its name.
    """
    config = load_preset(config) if isinstance(config, str) else config
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    supports = [_load_support(p, config) for p in config.support.images]
    with (
        (out / "particles.csv").open("w", newline="", encoding="utf-8") as fp,
        (out / "images.csv").open("w", newline="", encoding="utf-8") as fi,
    ):
        parts, imgs = csv.writer(fp, lineterminator="\n"), csv.writer(fi, lineterminator="\n")
        parts.writerow(
            ["image", "id", "x", "y", "diameter_nm", "intensity", "area_px", "layer", "border"]
        )
        imgs.writerow(
            ["image", "pixel_size_nm", "modality", "height", "width", "particles", "settings"]
        )
        for i in tqdm(range(n), desc="simulate images", unit="img", disable=not progress):
            rng = np.random.default_rng([seed, i])
            support, spx = None, None
            if supports:
                support, spx = supports[int(rng.integers(len(supports)))]
            sim = simulate_image(config, rng=rng, support_image=support, support_pixel_size_nm=spx)
            name = f"sim_{i:04d}"
            tif = encode_frame(sim.image, pixel_size_nm=sim.pixel_size_nm, format="tif")
            (out / "images" / f"{name}.tif").write_bytes(tif)
            if sim.labels.max() > 65535:
                raise ValueError("more than 65535 particles in one image: cannot store 16-bit")
            cv2.imwrite(str(out / "masks" / f"{name}.png"), sim.labels.astype(np.uint16))
            for r in sim.truth:
                parts.writerow(
                    [
                        name,
                        int(r["id"]),
                        f"{r['x']:.4f}",
                        f"{r['y']:.4f}",
                        f"{r['diameter_nm']:.5f}",
                        f"{r['intensity']:.8g}",
                        int(r["area_px"]),
                        int(r["layer"]),
                        int(r["border"]),
                    ]
                )
            h, w = sim.image.shape
            imgs.writerow(
                [
                    name,
                    f"{sim.pixel_size_nm:.6g}",
                    sim.meta.get("modality"),
                    h,
                    w,
                    len(sim.truth),
                    json.dumps(sim.meta, sort_keys=True),
                ]
            )
    meta = {"kind": "images", "n": n, "seed": seed, "preset": config.model_dump(mode="json")}
    (out / "simulation.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return out


def prepare_sequence(
    out: str | Path,
    *,
    config: SimConfig | str,
    frames: int | None = None,
    seed: int = 0,
    masks: bool = False,
    **acquisition: Any,
) -> tuple[Iterator[np.ndarray], dict[str, Any]]:
    """Simulate the population, write its truth into `out`, and return the frames (lazy) with
    the keyword arguments of `microscope.play` for ``out/frames``.

    Parameters
    ----------
    out : path-like
    config : SimConfig or str
        A preset or its name.
    frames : int, optional
        Default: the preset's ``acquisition.frames``.
    seed : int
    masks : bool
        Also write ``masks/frame_0000.png`` (16-bit labels = track ids) as frames are rendered.
    **acquisition
        Overrides of the preset's `AcquisitionConfig` (format, mode, cadence_s, chunks ...).

    Written now: ``ground_truth.csv``, ``events.csv``, ``transforms_truth.csv``,
    ``sequence.json``.
    """
    config = load_preset(config) if isinstance(config, str) else config
    acq = AcquisitionConfig.model_validate({**config.acquisition.model_dump(), **acquisition})
    out = Path(out)
    frames = frames or acq.frames
    rng = np.random.default_rng(seed)
    truth, optics, images = simulate_sequence(config, frames=frames, rng=rng)
    write_ground_truth(out, truth, intensity_per_nm3=intensity_per_nm3(config, optics))
    meta = {
        "kind": "sequence",
        "frames": frames,
        "seed": seed,
        "shape": list(truth.shape),
        "pixel_size_nm": truth.pixel_size_nm,
        "frame_interval_s": config.dynamics.frame_interval_s,
        "coordinates": "ground_truth.csv x, y: pixels of frame 0 (before drift/affine)",
        "optics": asdict(optics),
        "acquisition": acq.model_dump(mode="json"),
        "preset": config.model_dump(mode="json"),
    }
    (out / "sequence.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    if masks:
        (out / "masks").mkdir(parents=True, exist_ok=True)

    def stream() -> Iterator[np.ndarray]:
        for t, sim in enumerate(images):
            if masks:
                cv2.imwrite(
                    str(out / "masks" / f"frame_{t:04d}.png"),
                    np.minimum(sim.labels, 65535).astype(np.uint16),
                )
            yield sim.image

    options = {
        "pixel_size_nm": truth.pixel_size_nm,
        "format": acq.format,
        "mode": acq.mode,
        "cadence_s": acq.cadence_s,
        "chunks": acq.chunks,
        "chunk_interval_s": acq.chunk_interval_s,
        "frame_interval_s": config.dynamics.frame_interval_s,
        "dtype": acq.dtype,
    }
    return stream(), options


def write_sequence(
    out: str | Path,
    *,
    config: SimConfig | str,
    frames: int | None = None,
    seed: int = 0,
    masks: bool = False,
    progress: bool = True,
    **acquisition: Any,
) -> Path:
    """Simulate a sequence and play it into ``out/frames`` (truth files in `out`, see
    `prepare_sequence`); blocks until every frame is written, at the acquisition cadence."""
    config = load_preset(config) if isinstance(config, str) else config
    total = frames or int(acquisition.get("frames", config.acquisition.frames))
    out = Path(out)
    stream, options = prepare_sequence(
        out, config=config, frames=total, seed=seed, masks=masks, **acquisition
    )
    with tqdm(total=total, desc="simulate sequence", unit="frame", disable=not progress) as bar:
        for step in play(stream, out / "frames", **options):  # type: ignore[arg-type]
            if step.done:
                bar.update(1)
    return out
