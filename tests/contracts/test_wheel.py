"""A normal (non-editable) install works: the wheel carries every file the program reads (Avro
schemas, migrations, Grafana dashboards and provisioning), and the installed ``threadline`` runs
from a fresh venv in a folder that is not the repository, ``doctor`` green."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
# What a fresh clone does not have (.gitignore): setuptools reuses build/, so a file deleted from
# the tree would still reach a wheel built in place.
TOP_LEVEL_ONLY = {".git", ".venv", "build", "data", "bench-results", "out"}
ANYWHERE = shutil.ignore_patterns("*.egg-info", "__pycache__", "*.pyc", ".pytest_cache", ".hypothesis")


def not_in_a_clone(folder: str, names: list[str]) -> set[str]:
    return ANYWHERE(folder, names) | (TOP_LEVEL_ONLY & set(names) if Path(folder) == ROOT else set())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("wheel")
    source = folder / "source"
    shutil.copytree(ROOT, source, symlinks=True, ignore=not_in_a_clone)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(source), "-w", str(folder)],
                   check=True, capture_output=True)
    (built,) = folder.glob("threadline-*.whl")
    return built


def test_the_wheel_holds_every_file_of_the_package(wheel):
    """Every file under pipeline/ (data files too, whatever reads them) is in the wheel, and the
    top-level schemas/ and dashboards/ are links to package folders, so they are in it too."""
    packaged = set(zipfile.ZipFile(wheel).namelist())
    package = ROOT / "pipeline"
    files = {p.relative_to(ROOT).as_posix() for p in package.rglob("*")
             if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    data = {f for f in files if not f.endswith(".py")}
    assert {"pipeline/contracts/schemas/registry.json", "pipeline/sinks/migrations/0001_topic_tables.sql",
            "pipeline/analytics/grafana/threadline-sla.json",
            "pipeline/analytics/grafana/provisioning/datasources/threadline-clickhouse.yaml"} <= data
    assert files <= packaged, sorted(files - packaged)
    for top in ("schemas", "dashboards"):
        assert (ROOT / top).is_symlink() and (ROOT / top).resolve().is_relative_to(package), top


def _fresh_venv(folder: Path, wheel: Path) -> Path:
    """A venv with only the wheel installed (``--no-deps``); the dependencies are those of the
    interpreter running the tests, made visible by a .pth file.

    Installing the dependencies for real would download about 1.4 GB on every run. A .pth line
    naming a folder only appends it to sys.path: the .pth files inside that folder are not run, so
    the path hook of this project's editable install there (``__editable__.threadline-*.pth``)
    does not load and the checkout stays out of the fresh venv (asserted below). The fresh venv's
    own site-packages comes first, so ``pipeline`` is the installed wheel's."""
    venv = folder / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True)
    site_packages = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   check=True, capture_output=True, text=True).stdout.strip()
    ours = dict.fromkeys(sysconfig.get_paths()[kind] for kind in ("purelib", "platlib"))
    (Path(site_packages) / "test-dependencies.pth").write_text("".join(f"{path}\n" for path in ours))
    return venv


def _run(venv: Path, cwd: Path, program: str, *args: str) -> subprocess.CompletedProcess:
    """``program`` of the venv's bin/, without PYTHONPATH (it may name the checkout) or the test
    run's THREADLINE_* settings."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("THREADLINE_")}
    return subprocess.run([str(venv / "bin" / program), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_the_installed_wheel_runs_in_a_fresh_venv_outside_the_repository(wheel, tmp_path):
    venv = _fresh_venv(tmp_path, wheel)
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()

    probe = _run(venv, cwd, "python", "-c", "import json, sys, pipeline; print(json.dumps("
                 "[pipeline.__file__, sys.path, [type(f).__module__ for f in sys.meta_path]]))")
    assert probe.returncode == 0, probe.stderr
    module, path, finders = json.loads(probe.stdout)
    assert Path(module).is_relative_to(venv), module
    # No folder on the path but the venv's own holds a `pipeline` package: the checkout is not
    # importable (the test run's own venv may lie inside the checkout, as in CI, and is on the path
    # for the dependencies only).
    assert not [p for p in path if p and (Path(p) / "pipeline").is_dir() and not Path(p).is_relative_to(venv)], path
    assert not [f for f in finders if "editable" in f], finders

    doctor = _run(venv, cwd, "threadline", "doctor")
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    lines = doctor.stdout.splitlines()
    assert not [line for line in lines if line.startswith("[FAIL]")], doctor.stdout
    installed = str(venv.resolve())
    assert any(line.startswith("[ok  ] dashboards: 4 Grafana dashboards") and installed in line for line in lines)
    assert any(line.startswith("[ok  ] schemas: 14 topics") for line in lines), doctor.stdout
    assert any(line.startswith("[ok  ] broker: none running") and "`threadline up` starts" in line for line in lines)
    for command in (("dashboards", "check"), ("schemas", "check"), ("settings",)):
        result = _run(venv, cwd, "threadline", *command)
        assert result.returncode == 0, (command, result.stdout + result.stderr)
    # The migrations are read from the package: the embedded store of this folder gets its tables.
    sql = _run(venv, cwd, "threadline", "sql", "SELECT count() FROM threadline.mail_correlated")
    assert sql.returncode == 0 and sql.stdout.split()[-1] == "0", sql.stdout + sql.stderr
    assert (cwd / "data" / "clickhouse").is_dir()

    # The package's own files are not rewritten in site-packages: built elsewhere, or released in a checkout.
    refused = [_run(venv, cwd, "threadline", *command) for command in (("dashboards", "build"), ("schemas", "release"))]
    assert [result.returncode for result in refused] == [2, 2], [r.stderr for r in refused]
    assert "--out-dir DIR" in refused[0].stderr and "in a checkout" in refused[1].stderr
    copies = _run(venv, cwd, "threadline", "dashboards", "build", "--out-dir", "grafana")
    assert copies.returncode == 0 and len(list((cwd / "grafana").glob("*.json"))) == 4, copies.stderr

    # A damaged install: the fix is to install it again, not to release schemas into site-packages.
    (Path(module).parent / "contracts" / "schemas" / "mail.raw.avsc").unlink()
    damaged = _run(venv, cwd, "threadline", "doctor")
    assert damaged.returncode == 1
    [failed] = [line for line in damaged.stdout.splitlines() if line.startswith("[FAIL]")]
    assert "schemas:" in failed and "mail.raw.avsc" in failed, damaged.stdout
    fix = damaged.stdout.split(failed, 1)[1].splitlines()[1]
    assert "install it again" in fix and "schemas release" not in fix, damaged.stdout
