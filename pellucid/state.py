"""The container state store: one directory per container under the runtime's ``--root``.

    <root>/<id>/state.json   the :class:`ContainerState`, replaced atomically on every save
    <root>/<id>/lock         flock(2)ed by whoever reads or changes the container

Every lifecycle command is a fresh process (containerd calls ``state``, ``kill`` and ``delete``
many times per container), so this module imports little and does the least work it can.

A container's status is not taken from the file alone: :func:`status` derives it from the
processes that are alive (checking their start time against pid reuse), so a VM that died or
a ``create`` that was killed shows as what it is.

Usage::

    store = Store(args.root)
    with store.create(id, bundle=bundle, rootfs=rootfs) as st:   # ContainerExists if taken
        ...                  # body holds the exclusive lock; on an exception nothing is left
        st.pid, st.pid_start = pid, proc_start_time(pid) or 0
    with store.lock(id):     # NotFound if the container does not exist (or vanished meanwhile)
        st = store.load(id)
        st.started = True
        store.save(st)
"""

from __future__ import annotations

import enum
import errno
import fcntl
import json
import os
import time

from pellucid.errors import ContainerError, ContainerExists, NotFound

OCI_VERSION = "1.0.2"
DEFAULT_ROOT = "/run/pellucid"
STATE_FILE = "state.json"
LOCK_FILE = "lock"
KINDS = ("single", "sandbox", "container")

_NOT_FOUND = "container does not exist"


class Status(enum.Enum):
    CREATING = "creating"
    CREATED = "created"
    RUNNING = "running"
    PAUSED = "paused"
    STOPPED = "stopped"


# Field name -> the exact JSON type it must have in state.json.
_FIELDS = {
    "id": str, "bundle": str, "rootfs": str, "created": str, "owner": str, "annotations": dict,
    "pid": int, "pid_start": int, "started": bool, "paused": bool, "sandbox": str, "kind": str,
    "creator_pid": int, "creator_start": int, "extra": dict,
}


class ContainerState:
    """What the runtime remembers of one container; ``status`` is derived, never stored.

    - ``pid``/``pid_start``: host pid of the process standing for the container's init and its
      start time (clock ticks, :func:`proc_start_time`); 0 when there is none yet, or unknown.
    - ``started``: ``start`` has run. ``paused``: ``pause`` has run and ``resume`` not since.
    - ``sandbox``: id of the VM/pod sandbox the container lives in (its own id by default).
    - ``kind``: "single" (one VM per container), "sandbox" (a pod's VM) or "container" (in a pod).
    - ``creator_pid``/``creator_start``: the ``create`` command while status is creating, else 0.
    - ``extra``: free-form (exec processes, console, ...); must be JSON-serialisable.
    """

    __slots__ = tuple(_FIELDS)

    def __init__(self, id: str, *, bundle: str = "", rootfs: str = "", created: str = "", owner: str = "",
                 annotations: dict | None = None, pid: int = 0, pid_start: int = 0, started: bool = False,
                 paused: bool = False, sandbox: str = "", kind: str = "single", creator_pid: int = 0,
                 creator_start: int = 0, extra: dict | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"container kind {kind!r} is not one of {', '.join(KINDS)}")
        self.id = id
        self.bundle = bundle
        self.rootfs = rootfs
        self.created = created
        self.owner = owner
        self.annotations = {} if annotations is None else annotations
        self.pid = pid
        self.pid_start = pid_start
        self.started = started
        self.paused = paused
        self.sandbox = sandbox or id
        self.kind = kind
        self.creator_pid = creator_pid
        self.creator_start = creator_start
        self.extra = {} if extra is None else extra

    def to_dict(self) -> dict:
        return {name: getattr(self, name) for name in _FIELDS}

    @classmethod
    def from_dict(cls, data: object) -> ContainerState:
        """Checked: raises ValueError naming the first field missing or of the wrong type.
        Unknown keys are ignored (a newer pellucid may have written them)."""
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        kwargs = {}
        for name, kind in _FIELDS.items():
            if name not in data:
                if name == "id":
                    raise ValueError("missing field 'id'")
                continue
            value = data[name]
            if type(value) is not kind:
                raise ValueError(f"field {name!r} has the wrong type")
            if kind is int and value < 0:
                raise ValueError(f"field {name!r} is negative")
            kwargs[name] = value
        if data.get("kind", "single") not in KINDS:
            raise ValueError(f"field 'kind' has the unknown value {data['kind']!r}")
        return cls(kwargs.pop("id"), **kwargs)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ContainerState):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # mutable

    def __repr__(self) -> str:
        return f"ContainerState({self.to_dict()!r})"


def _check_id(id: str) -> None:
    # Ids are validated by the CLI; this is defence in depth against escaping the root, and
    # keeps dot-names for the runtime's own entries (".vm", ...), which ids()/list() skip.
    if not id or "/" in id or "\0" in id or id in (".", "..") or id.startswith("."):
        raise ValueError(f"invalid container id {id!r}")


class Store:
    """The containers under one runtime root. Not thread-safe; one per process is the intent."""

    def __init__(self, root: str = DEFAULT_ROOT) -> None:
        self.root = os.path.abspath(root)  # mount points are compared with mountinfo's absolute paths
        self._held: dict[str, list] = {}  # id -> [fd, depth, shared] of the locks this Store holds

    def dir(self, id: str) -> str:
        """The container's directory (where other modules may keep the container's files too)."""
        _check_id(id)
        return os.path.join(self.root, id)

    def create(self, id: str, **fields: object) -> _Creation:
        """``with store.create(id, **fields) as st:`` -- see :class:`_Creation`. ``created``
        defaults to now, ``sandbox`` to ``id``."""
        fields.setdefault("created", now_rfc3339())
        return _Creation(self, ContainerState(id, **fields))

    def lock(self, id: str, shared: bool = False) -> _Lock:
        """``with store.lock(id):`` holds flock(2) on the container (exclusive unless ``shared``).
        Raises NotFound if the container does not exist, also if it vanished while waiting.
        Re-entrant within this Store (a nested lock() is free), but a shared lock cannot be
        upgraded. A child that forks without exec keeps the lock held until it closes ``fd``."""
        return _Lock(self, id, shared)

    def load(self, id: str) -> ContainerState:
        path = os.path.join(self.dir(id), STATE_FILE)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(_NOT_FOUND) from None
        except OSError as err:
            raise ContainerError(f"cannot read the state of container {id}: {err.strerror}") from None
        try:
            state = ContainerState.from_dict(json.loads(data))
        except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
            raise ContainerError(f"corrupt state file {path}: {err}") from None
        if state.id != id:
            raise ContainerError(f"corrupt state file {path}: it names container {state.id!r}")
        return state

    def save(self, state: ContainerState) -> None:
        """Atomic: readers see the old state or the new one, whole (no fsync: the root is a tmpfs)."""
        d = self.dir(state.id)
        data = json.dumps(state.to_dict(), separators=(",", ":")).encode()
        tmp = os.path.join(d, f".{STATE_FILE}.{os.getpid()}.{os.urandom(4).hex()}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(_NOT_FOUND) from None
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)
            os.replace(tmp, os.path.join(d, STATE_FILE))
        except BaseException:
            _unlink(tmp)
            raise

    def remove(self, id: str) -> None:
        """Remove the container's directory and all in it; nothing to remove is no error."""
        path = self.dir(id)
        busy = mounts_under(path)
        if busy:  # never delete through a mount: it may be a container's rootfs on the host
            raise ContainerError(f"cannot remove {path}: {busy[0]} is still mounted")
        try:
            _rmtree(path)
        except OSError as err:
            raise ContainerError(f"cannot remove {err.filename or path}: {err.strerror}") from None

    def ids(self) -> list[str]:
        """Ids of the containers (directories) under the root, sorted; none if there is no root."""
        try:
            with os.scandir(self.root) as entries:
                return sorted(e.name for e in entries if e.name[0] != "." and e.is_dir(follow_symlinks=False))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def list(self, on_error: object = None) -> list[ContainerState]:
        """Every container's state, skipping those that vanish meanwhile. A corrupt one raises
        ContainerError, unless ``on_error(id, err)`` is given: then it is called and skipped."""
        out = []
        for id in self.ids():
            try:
                out.append(self.load(id))
            except NotFound:
                continue
            except ContainerError as err:
                if on_error is None:
                    raise
                on_error(id, err)
        return out

    @staticmethod
    def status(state: ContainerState) -> Status:
        return status(state)

    def _make_root(self) -> None:
        try:
            os.mkdir(self.root, 0o711)
        except FileExistsError:
            return
        except FileNotFoundError:
            os.makedirs(os.path.dirname(os.path.abspath(self.root)), exist_ok=True)
            try:
                os.mkdir(self.root, 0o711)
            except FileExistsError:
                return
        os.chmod(self.root, 0o711)  # whatever the umask


class _Lock:
    """Context manager returned by :meth:`Store.lock`; ``fd`` is the locked descriptor."""

    __slots__ = ("_store", "_id", "_shared", "fd")

    def __init__(self, store: Store, id: str, shared: bool) -> None:
        self._store, self._id, self._shared, self.fd = store, id, shared, -1
        _check_id(id)

    def __enter__(self) -> _Lock:
        held = self._store._held.get(self._id)
        if held is not None:
            if held[2] and not self._shared:
                raise RuntimeError(f"container {self._id}: cannot take an exclusive lock inside a shared one")
            held[1] += 1
        else:
            held = self._store._held[self._id] = [_acquire(self._store.dir(self._id), self._shared), 1, self._shared]
        self.fd = held[0]
        return self

    def __exit__(self, *exc: object) -> None:
        held = self._store._held[self._id]
        held[1] -= 1
        if held[1] == 0:
            del self._store._held[self._id]
            os.close(held[0])
        self.fd = -1


def _acquire(d: str, shared: bool) -> int:
    """An fd holding flock(2) on ``d``'s lock file, which belongs to a container with a state."""
    lock_path = os.path.join(d, LOCK_FILE)
    while True:
        try:
            # Only create() makes the lock file: opening it here must not bring back a
            # container being removed.
            fd = os.open(lock_path, os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(_NOT_FOUND) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            try:
                now = os.stat(lock_path)
            except (FileNotFoundError, NotADirectoryError):
                raise NotFound(_NOT_FOUND) from None  # removed while we waited
            mine = os.fstat(fd)
            if (now.st_ino, now.st_dev) == (mine.st_ino, mine.st_dev):
                if not os.path.exists(os.path.join(d, STATE_FILE)):
                    raise NotFound(_NOT_FOUND)  # create() has not written it yet
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # removed and created again while we waited: lock the new one


class _Creation:
    """Context manager returned by :meth:`Store.create`.

    Entering makes ``<root>/<id>`` atomically (ContainerExists if it is there), takes the
    exclusive lock for the body and saves the state as creating (``creator_pid`` = this
    process). Leaving normally saves the final state (``creator_pid`` = 0); leaving by an
    exception (or failing to save) removes the directory, so that nothing is left behind.
    """

    __slots__ = ("_store", "_state", "_dir", "_fd", "_outer")

    def __init__(self, store: Store, state: ContainerState) -> None:
        self._store, self._state = store, state
        self._dir = store.dir(state.id)

    def __enter__(self) -> ContainerState:
        store, st, d = self._store, self._state, self._dir
        store._make_root()
        try:
            os.mkdir(d, 0o711)
        except FileExistsError:
            raise ContainerExists(f"container with id exists: {st.id}") from None
        try:
            fd = os.open(os.path.join(d, LOCK_FILE), os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except BaseException:
            _rmtree(d)
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            st.creator_pid = os.getpid()
            st.creator_start = proc_start_time(st.creator_pid) or 0
            store.save(st)
        except BaseException:
            _rmtree(d)
            os.close(fd)
            raise
        # Register the lock so that lock() in the body nests; keep any lock this Store held on
        # a previous container by that id (removed since) for when the body is done.
        self._fd, self._outer = fd, store._held.get(st.id)
        store._held[st.id] = [fd, 1, False]
        return st

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        store, st = self._store, self._state
        try:
            if exc_type is None:
                st.creator_pid = st.creator_start = 0
                try:
                    store.save(st)
                except BaseException:
                    _rmtree(self._dir)
                    raise
            else:
                _rmtree(self._dir)
        finally:
            if self._outer is None:
                del store._held[st.id]
            else:
                store._held[st.id] = self._outer
            os.close(self._fd)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def mounts_under(path: str) -> list[str]:
    """Mount points at or below ``path``, deepest first (mountinfo escapes blanks as octal)."""
    path = path.rstrip("/")
    prefix = path + "/"
    with open("/proc/self/mountinfo") as f:
        points = {line.split()[4].encode().decode("unicode_escape") for line in f}
    return sorted((p for p in points if p == path or p.startswith(prefix)), key=lambda p: p.count("/"),
                  reverse=True)


def _rmtree(path: str) -> None:
    """shutil.rmtree without the import; never follows symlinks; gone already is fine."""
    for attempt in range(5):
        try:
            with os.scandir(path) as it:
                entries = list(it)
        except FileNotFoundError:
            return
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    _rmtree(entry.path)
                else:
                    os.unlink(entry.path)
            except FileNotFoundError:
                pass
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as err:  # a file appeared meanwhile (a save racing the removal): again
            if err.errno != errno.ENOTEMPTY or attempt == 4:
                raise


# Processes.

def _parse_stat(data: bytes) -> tuple[str, int] | None:
    """(state, starttime) from the text of /proc/PID/stat. The comm field (2) may hold spaces
    and parentheses, so the fields are counted from its last ')'."""
    _, paren, rest = data.rpartition(b")")
    fields = rest.split()
    if not paren or len(fields) < 20:
        return None
    try:
        return fields[0].decode("ascii"), int(fields[19])  # fields 3 and 22
    except (UnicodeDecodeError, ValueError):
        return None


def _proc_stat(pid: int) -> tuple[str, int] | None:
    if pid <= 0:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return _parse_stat(f.read())
    except OSError:  # gone (ENOENT, or ESRCH if it exited between open and read)
        return None


def proc_start_time(pid: int) -> int | None:
    """The start time of process ``pid`` in clock ticks since boot (/proc/PID/stat field 22),
    or None if there is no such process. A zombie still has its start time."""
    info = _proc_stat(pid)
    return None if info is None else info[1]


def alive(pid: int, start: int = 0) -> bool:
    """Process ``pid`` exists, is no zombie and, if ``start`` is known (non-zero), started then."""
    info = _proc_stat(pid)
    return info is not None and info[0] not in ("Z", "X", "x") and (not start or info[1] == start)


def status(state: ContainerState) -> Status:
    """The container's status, from the processes alive now rather than from the file alone."""
    if state.creator_pid:
        if alive(state.creator_pid, state.creator_start):
            return Status.CREATING
        if not state.pid:
            return Status.STOPPED  # create was killed before it had a process to show
    if state.pid > 0 and alive(state.pid, state.pid_start):
        if state.paused:
            return Status.PAUSED
        return Status.RUNNING if state.started else Status.CREATED
    return Status.STOPPED


# Output.

def now_rfc3339() -> str:
    """UTC now as Go's RFC3339Nano prints it (what runc shows): nanoseconds, trailing zeros
    dropped, e.g. "2024-05-01T12:34:56.123456789Z"."""
    secs, nanos = divmod(time.time_ns(), 1_000_000_000)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
    if nanos:
        stamp += "." + f"{nanos:09d}".rstrip("0")
    return stamp + "Z"


def oci_state(state: ContainerState, status: Status) -> dict:
    """The object ``pellucid state`` prints, as ``runc state`` does."""
    out = {
        "ociVersion": OCI_VERSION,
        "id": state.id,
        "pid": 0 if status is Status.STOPPED else state.pid,
        "status": status.value,
        "bundle": state.bundle,
        "rootfs": state.rootfs,
        "created": state.created,
        "owner": state.owner,
    }
    if state.annotations:
        out["annotations"] = state.annotations
    return out
