"""A normal (non-editable) wheel carries every schema file, so an installed Threadline finds them."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pipeline.contracts.avro import SCHEMA_DIR

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.integration
@pytest.mark.slow
def test_the_wheel_holds_every_schema_file(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(ROOT), "-w", str(tmp_path)],
                   check=True, capture_output=True)
    (wheel,) = tmp_path.glob("threadline-*.whl")
    packaged = set(zipfile.ZipFile(wheel).namelist())
    schema_files = {f"pipeline/contracts/schemas/{p.relative_to(SCHEMA_DIR).as_posix()}"
                    for p in SCHEMA_DIR.rglob("*") if p.is_file()}
    assert schema_files and schema_files <= packaged, sorted(schema_files - packaged)
