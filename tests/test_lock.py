"""The locked installs (deploy/requirements*.lock, written by deploy/lock.sh) agree with
pyproject.toml, carry hashes, and are what this environment has installed."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
RUNTIME_LOCK = ROOT / "deploy" / "requirements.lock"
DEV_LOCK = ROOT / "deploy" / "requirements-dev.lock"
FIX = "run deploy/lock.sh and commit deploy/requirements*.lock"
PIN = re.compile(r"^(?P<name>[A-Za-z0-9._-]+)==(?P<version>[^\s;\\]+)\s*(?:;(?P<marker>[^\\]*))?")


@dataclass(frozen=True)
class Pin:
    version: str
    marker: Marker | None
    hashes: int
    direct: bool  # the lock says "via perg-stream (pyproject.toml)"


def read_lock(path: Path) -> dict[str, Pin]:
    pins: dict[str, Pin] = {}
    name = ""
    for line in path.read_text(encoding="utf-8").splitlines():
        match = PIN.match(line)
        if match:
            name = canonicalize_name(match["name"])
            marker = match["marker"]
            pins[name] = Pin(
                version=match["version"],
                marker=Marker(marker.strip()) if marker else None,
                hashes=0,
                direct=False,
            )
        elif name and line.strip().startswith("--hash=sha256:"):
            pin = pins[name]
            pins[name] = Pin(pin.version, pin.marker, pin.hashes + 1, pin.direct)
        elif name and "perg-stream (pyproject.toml)" in line:
            pin = pins[name]
            pins[name] = Pin(pin.version, pin.marker, pin.hashes, direct=True)
    return pins


def declared(extra: str | None) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements = [Requirement(text) for text in project["dependencies"]]
    if extra is not None:
        requirements += [Requirement(text) for text in project["optional-dependencies"][extra]]
    return requirements


LOCKS = [pytest.param(RUNTIME_LOCK, None, id="runtime"), pytest.param(DEV_LOCK, "dev", id="dev")]


@pytest.mark.parametrize(("lock", "extra"), LOCKS)
def test_every_declared_requirement_is_pinned_within_its_range(
    lock: Path, extra: str | None
) -> None:
    pins = read_lock(lock)
    for requirement in declared(extra):
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} (pyproject.toml) is not in {lock.name}: {FIX}"
        assert requirement.specifier.contains(pins[name].version, prereleases=True), (
            f"{lock.name} pins {name}=={pins[name].version}, outside pyproject.toml's "
            f"{requirement}: {FIX}"
        )


@pytest.mark.parametrize(("lock", "extra"), LOCKS)
def test_lock_has_no_requirement_pyproject_dropped(lock: Path, extra: str | None) -> None:
    wanted = {canonicalize_name(r.name) for r in declared(extra)}
    direct = {name for name, pin in read_lock(lock).items() if pin.direct}
    assert direct == wanted, f"{lock.name} and pyproject.toml list different requirements: {FIX}"


@pytest.mark.parametrize("lock", [RUNTIME_LOCK, DEV_LOCK], ids=["runtime", "dev"])
def test_every_pin_has_a_hash(lock: Path) -> None:
    unhashed = [name for name, pin in read_lock(lock).items() if pin.hashes == 0]
    assert not unhashed, f"{lock.name}: no --hash for {unhashed}: {FIX}"


def test_runtime_lock_agrees_with_the_dev_lock() -> None:
    dev = read_lock(DEV_LOCK)
    for name, pin in read_lock(RUNTIME_LOCK).items():
        assert name in dev and dev[name].version == pin.version, f"{name}: {FIX}"


def test_installed_versions_are_the_locked_ones() -> None:
    # the versions the suite runs on are the versions users install (deploy/setup.sh --dev)
    for name, pin in read_lock(DEV_LOCK).items():
        if pin.marker is not None and not pin.marker.evaluate():
            continue
        assert metadata.version(name) == pin.version, (
            f"installed {name} {metadata.version(name)} != locked {pin.version}: "
            "rerun deploy/setup.sh --dev"
        )
