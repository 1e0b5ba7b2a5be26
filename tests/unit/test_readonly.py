"""Read-only binds are read-only all the way down; run in a private mount namespace (needs root)."""

import os
import subprocess
import sys
import textwrap

import pytest


SCRIPT = textwrap.dedent("""
    import errno, os, sys
    from pellucid import linux
    from pellucid.runtime import readonly
    from pellucid.runtime.mounts import make_binds
    from pellucid.runtime.guest_config import Bind

    base, fallback = sys.argv[1], sys.argv[2] == "fallback"
    if fallback:
        def enosys(target):
            raise OSError(errno.ENOSYS, "mount_setattr: Function not implemented")
        readonly.mount_setattr_readonly = enosys
    src = os.path.join(base, "src")
    os.makedirs(src)
    linux.mount("tmpfs", src, "tmpfs")
    os.makedirs(os.path.join(src, "sub", "deeper"))
    linux.mount("tmpfs", os.path.join(src, "sub"), "tmpfs")
    os.makedirs(os.path.join(src, "sub", "deeper"))
    linux.mount("tmpfs", os.path.join(src, "sub", "deeper"), "tmpfs")
    share = os.path.join(base, "share")
    make_binds(share, "", [Bind(src, "ro", True, True), Bind(src, "rw", True, False)])
    for where in ("ro", "ro/sub", "ro/sub/deeper", "rw", "rw/sub/deeper"):
        try:
            open(os.path.join(share, where, "probe"), "w").close()
            print(where, "writable")
        except OSError as err:
            print(where, errno.errorcode[err.errno])
    open(os.path.join(src, "sub", "deeper", "source-still-writable"), "w").close()
    print("source writable")
""")


@pytest.mark.parametrize("mode", ["mount_setattr", "fallback"])
def test_readonly_bind_is_readonly_all_the_way_down(tmp_path, mode):
    out = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, "-c", SCRIPT,
                          str(tmp_path), mode], capture_output=True, text=True, timeout=30,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["ro EROFS", "ro/sub EROFS", "ro/sub/deeper EROFS", "rw writable",
                                       "rw/sub/deeper writable", "source writable"]
