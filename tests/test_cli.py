"""The command line as a user meets it: exit codes, one-line errors, JSON contract."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from nptrack.cli import main


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nptrack.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_info_prints_pixel_size(formats_dir: Path) -> None:
    result = CliRunner().invoke(main, ["info", str(formats_dir / "test_STEM_image.dm3")])
    assert result.exit_code == 0, result.output
    assert "0.248538" in result.output and "68 x 68" in result.output


def test_info_json_contract(formats_dir: Path) -> None:
    files = [formats_dir / "dmTest_3D_int16_64_65_66.dm4", formats_dir / "08_carbon.dm3"]
    result = CliRunner().invoke(main, ["info", "--json", *map(str, files)])
    assert result.exit_code == 1  # one file refused
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [set(d) for d in lines] == [
        {
            "file",
            "kind",
            "reason",
            "frames",
            "height",
            "width",
            "dtype",
            "pixel_size_nm",
            "complete",
        }
    ] * 2
    stack, spectrum = lines
    assert (stack["kind"], stack["frames"], stack["height"], stack["width"]) == (
        "stack",
        66,
        65,
        64,
    )
    assert stack["pixel_size_nm"] == [3.0, 0.002] and stack["dtype"] == "int16"
    assert spectrum["kind"] == "refused" and "spectrum" in spectrum["reason"]


def test_info_truncated_exits_1_with_one_line(formats_dir: Path, tmp_path: Path) -> None:
    data = (formats_dir / "test_STEM_image.dm3").read_bytes()
    cut = tmp_path / "cut.dm3"
    cut.write_bytes(data[: len(data) // 2])
    proc = run("info", str(cut))
    assert proc.returncode == 1
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "cut.dm3" in err[0] and "Traceback" not in proc.stderr


def test_bad_usage_exits_2() -> None:
    proc = run("info")
    assert proc.returncode == 2
    proc = run("nonsense-command")
    assert proc.returncode == 2
