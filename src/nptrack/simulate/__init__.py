"""Simulator: realistic ADF-STEM / BF-TEM images with exact masks, particle populations over
time with ground truth, and a simulated microscope that writes frames like acquisition software.

Modules: `support` (materials, support films), `particles` (particle shapes and footprints),
`stem` (image formation), `dynamics` (population over time, ground truth), `microscope`
(writing frames into a folder), `presets` (configs/sim/*.toml), `write` (output folders).
"""

from nptrack.simulate.dynamics import (
    DynamicsConfig,
    Event,
    SequenceTruth,
    ground_truth_rows,
    simulate_population,
    write_ground_truth,
)
from nptrack.simulate.microscope import SimulatedMicroscope, WriteStep, encode_frame, play
from nptrack.simulate.particles import Particles, particle_footprints, random_particles
from nptrack.simulate.presets import SimConfig, load_preset, preset_names, simulate_image
from nptrack.simulate.stem import (
    AdfOptics,
    BfOptics,
    ScanDistortion,
    SimImage,
    paste_particles,
    render_adf,
    render_bf,
)
from nptrack.simulate.support import MATERIALS, amorphous_phase, support_thickness
from nptrack.simulate.write import prepare_sequence, write_images, write_sequence

__all__ = [
    "MATERIALS",
    "AdfOptics",
    "BfOptics",
    "DynamicsConfig",
    "Event",
    "Particles",
    "ScanDistortion",
    "SequenceTruth",
    "SimConfig",
    "SimImage",
    "SimulatedMicroscope",
    "WriteStep",
    "amorphous_phase",
    "encode_frame",
    "ground_truth_rows",
    "load_preset",
    "particle_footprints",
    "paste_particles",
    "play",
    "prepare_sequence",
    "preset_names",
    "random_particles",
    "render_adf",
    "render_bf",
    "simulate_image",
    "simulate_population",
    "support_thickness",
    "write_ground_truth",
    "write_images",
    "write_sequence",
]
