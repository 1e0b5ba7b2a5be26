"""The container state store: one directory per container under the runtime's ``--root``.

    <root>/<id>/state.json   the :class:`~pellucid.state.ContainerState`, replaced atomically on every save
    <root>/<id>/lock         flock(2)ed by whoever reads or changes the container

Every lifecycle command is a fresh process (containerd calls ``state``, ``kill`` and ``delete``
many times per container), so this module imports little and does the least work it can.

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

import errno
import fcntl
import json
import os
import stat
import time

from . import ids
from .errors import ContainerError, ContainerExists, NotFound
from .mountinfo import mounts_under
from .procs import proc_start_time
from .state import DEFAULT_ROOT, ContainerState, Status, now_rfc3339, status

STATE_FILE = "state.json"
LOCK_FILE = "lock"

_NOT_FOUND = "container does not exist"
ABANDONED_AFTER = 10.0  # seconds: a container directory without a lock file older than this is a killed create's


def _check_id(id: str) -> None:
    # The CLI checks ids first; this is defence in depth against escaping the root, and keeps
    # dot-names for the runtime's own entries (".vm", temporary files), which ids()/list() skip.
    ids.check(id)


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
            raise ContainerError(f"cannot read the state of container {id}: {err.strerror}") from err
        try:
            state = ContainerState.from_dict(json.loads(data))
        except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError is a ValueError
            raise ContainerError(f"corrupt state file {path}: {err}") from err
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
            raise ContainerError(f"cannot remove {err.filename or path}: {err.strerror}") from err

    def remove_abandoned(self, id: str) -> bool:
        """Remove the directory of a ``create`` killed before it saved a state (so that no
        ``delete`` finds it): only if there is no state and no live create holds its lock.
        Returns whether it was removed."""
        d = self.dir(id)
        state = os.path.join(d, STATE_FILE)
        try:
            fd = os.open(os.path.join(d, LOCK_FILE), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:  # killed between mkdir and the lock file, or a create just begun
            try:
                if time.time() - os.stat(d).st_mtime < ABANDONED_AFTER:
                    return False
            except FileNotFoundError:
                return False
            fd = -1
        except NotADirectoryError:
            return False
        try:
            if fd >= 0:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.path.exists(state):
                return False
            self.remove(id)
            return True
        except BlockingIOError:  # its create is alive
            return False
        finally:
            if fd >= 0:
                os.close(fd)

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
        """The root, 0700 as runc's: containers' rootfs and volumes are shared below it (a root
        made by an older pellucid, 0711, is tightened)."""
        try:
            os.mkdir(self.root, 0o700)
        except FileExistsError:
            pass
        except FileNotFoundError:
            os.makedirs(os.path.dirname(os.path.abspath(self.root)), exist_ok=True)
            try:
                os.mkdir(self.root, 0o700)
            except FileExistsError:
                pass
        mode = os.stat(self.root).st_mode
        if not stat.S_ISDIR(mode):
            raise ContainerError(f"--root {self.root}: not a directory")
        if mode & 0o7777 != 0o700:
            os.chmod(self.root, 0o700)


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
            os.mkdir(d, 0o700)
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
