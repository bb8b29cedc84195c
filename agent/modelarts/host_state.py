"""State shared by every agent process of one OS user on one host: the rate budget and IAM tokens.

ModelArts counts 20 look-ups a minute per IAM user, whichever process makes them. So the budget's
call log and its 429 pauses live in one file, read and written under an exclusive `flock`, by
every `run` and `endpoints` on the host; IAM tokens are cached beside it (mode 0600), so a loop
of one-shot commands does not ask IAM for a token each time.

The directory is private: `$XDG_RUNTIME_DIR/modelarts-agent` when that exists, else
`/tmp/modelarts-agent-<uid>`, or `budget.state_dir`. It must be owned by this user and closed to
everyone else; anything else is refused (another user could otherwise plant or read tokens).
Times are CLOCK_MONOTONIC readings, the same for every process on the host and immune to wall
clock steps; the file carries the kernel's boot id, so a file from before a reboot is ignored.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.errors import ConfigError

if TYPE_CHECKING:
    from agent.config import AgentConfig

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
# Call times older than this are dropped (every window is at most 60 s + a 30 s margin), and so are
# entries idle this long; pauses are kept until they end.
CALLS_KEPT_SECONDS = 120.0
PRUNE_AFTER_SECONDS = 600.0
MAX_STATE_BYTES = 8 << 20


class HostStateError(OSError):
    """The shared directory or a file in it cannot be used safely."""


def default_state_dir() -> Path:
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    if runtime_dir and Path(runtime_dir).is_dir():
        return Path(runtime_dir) / "modelarts-agent"
    return Path(tempfile.gettempdir()) / f"modelarts-agent-{os.getuid()}"


def private_dir(path: Path) -> Path:
    """Create `path` (0700) or check an existing one: a real directory, ours, closed to others."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700, parents=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode):
        raise HostStateError(f"{path} is not a directory (a symlink or a file is refused)")
    if info.st_uid != os.getuid():
        raise HostStateError(f"{path} belongs to uid {info.st_uid}, not to this user ({os.getuid()})")
    if info.st_mode & 0o077:
        raise HostStateError(f"{path} is open to other users (mode {stat.S_IMODE(info.st_mode):o}); it must be 0700")
    return path


def state_key(*parts: str) -> str:
    """A file-safe key that names no user: a hash of the parts."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
    except OSError:
        return "unknown"


def resolve_dir(configured: Path | None) -> Path | None:
    """The usable shared directory, or None (process-local only) with a warning.

    A directory named in the config that cannot be used is a configuration error; the default
    one failing (a read-only root filesystem, say) only costs the cross-process guarantee.
    """
    try:
        return private_dir(configured or default_state_dir())
    except OSError as exc:
        reason = exc.strerror if exc.strerror else str(exc)
        if configured is not None:
            raise ConfigError(f"invalid configuration: budget.state_dir {configured}: {reason}") from None
        log.warning("no host-wide budget (the 20/min promise then holds per process only): %s", reason)
        return None


def _write_private(path: Path, data: bytes) -> None:
    """Atomically replace `path` with `data`, created 0600."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_private(path: Path) -> bytes | None:
    """The file's bytes if it is ours and closed to others; None if absent or not to be trusted."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if info.st_uid != os.getuid() or info.st_mode & 0o077 or not stat.S_ISREG(info.st_mode):
            log.warning("ignoring %s: not a private file of this user", path)
            return None
        return handle.read(MAX_STATE_BYTES)


class SharedBudgetFile:
    """The budget state of every identity, in one JSON file under one exclusive lock."""

    def __init__(self, directory: Path) -> None:
        self.directory = private_dir(directory)
        self.path = self.directory / "budget.json"
        self._lock_path = self.directory / "budget.lock"
        self._boot = boot_id()

    @contextlib.contextmanager
    def locked(self) -> Iterator[dict[str, dict[str, Any]]]:
        """The entries (key -> state), held under the host-wide lock; written back on exit."""
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            entries = self._load()
            before = json.dumps(entries, sort_keys=True)
            yield entries
            if json.dumps(entries, sort_keys=True) != before:
                data = {"format": FORMAT_VERSION, "boot_id": self._boot, "clock": "monotonic", "entries": entries}
                _write_private(self.path, json.dumps(data, separators=(",", ":")).encode())
        finally:
            os.close(fd)  # releases the lock

    def _load(self) -> dict[str, dict[str, Any]]:
        raw = _read_private(self.path)
        if raw is None:
            return {}
        try:
            data = json.loads(raw)
        except ValueError:
            log.warning("ignoring a corrupt budget state file %s", self.path)
            return {}
        if (not isinstance(data, dict) or data.get("format") != FORMAT_VERSION or data.get("boot_id") != self._boot
                or not isinstance(data.get("entries"), dict)):
            return {}  # another format, or from before a reboot: its times mean nothing now
        return {k: v for k, v in data["entries"].items() if isinstance(k, str) and isinstance(v, dict)}


def prune(entries: dict[str, dict[str, Any]], now: float) -> None:
    """Drop call times and whole entries nobody can need any more."""
    for key in list(entries):
        entry = entries[key]
        calls = [t for t in entry.get("calls") or [] if isinstance(t, (int, float)) and t > now - CALLS_KEPT_SECONDS]
        entry["calls"] = calls
        last, paused = entry.get("last"), entry.get("paused_until")
        recent = [t for t in (last, paused) if isinstance(t, (int, float)) and t > now - PRUNE_AFTER_SECONDS]
        if not calls and not recent:
            del entries[key]


class TokenCache:
    """IAM tokens shared by this user's processes: one 0600 file per identity, named by a hash."""

    def __init__(self, directory: Path) -> None:
        self.directory = private_dir(directory)

    def _path(self, key: str) -> Path:
        return self.directory / f"token-{key}.json"

    def get(self, key: str, now_wall: float) -> tuple[str, float] | None:
        """(token, refresh-at wall time) if a cached token is still good to use."""
        try:
            raw = _read_private(self._path(key))
            data = json.loads(raw) if raw else None
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict):
            return None
        token, refresh_at = data.get("token"), data.get("refresh_at")
        if not isinstance(token, str) or not token or not isinstance(refresh_at, (int, float)):
            return None
        if refresh_at <= now_wall:
            return None
        return token, float(refresh_at)

    def put(self, key: str, token: str, refresh_at: float) -> None:
        try:
            _write_private(self._path(key), json.dumps({"token": token, "refresh_at": refresh_at}).encode())
        except OSError as exc:
            log.warning("cannot cache the IAM token for other processes: %s", exc.strerror or exc)

    def drop(self, key: str, token: str) -> None:
        """Forget `token` (refused by ModelArts), unless another process already replaced it."""
        cached = self.get(key, float("-inf"))
        if cached is not None and cached[0] == token:
            with contextlib.suppress(OSError):
                self._path(key).unlink()


def host_state_for(config: AgentConfig) -> tuple[SharedBudgetFile | None, TokenCache | None]:
    """The shared budget file and token cache a `run` or `endpoints` uses (None, None: process-local)."""
    if not config.budget.host_wide:
        return None, None
    directory = resolve_dir(config.budget.state_dir)
    if directory is None:
        return None, None
    try:
        return SharedBudgetFile(directory), TokenCache(directory) if config.auth.token_cache else None
    except OSError as exc:
        log.warning("no host-wide budget: %s", exc.strerror or exc)
        return None, None
