"""A pass-through FUSE filesystem that fails fsync on demand, for I/O error tests.

    python faultyfs.py BACKING_DIR MOUNT_POINT CONTROL_DIR

Every operation goes to BACKING_DIR unchanged, except:
- while CONTROL_DIR/fail-fsync exists, fsync and fdatasync of files (and of
  directories) return EIO, as a disk that lost a write does;
- while CONTROL_DIR/fail-write exists, writes return EIO.

The kernel's own fault injection (device-mapper's `dm-flakey`, `dm-error`) is not built
into this machine's kernel, but FUSE is, so the broker meets a real failing `fsync(2)`
from the kernel, not a mocked one. Runs in the foreground until unmounted.
"""

import errno
import os
import sys

from fuse import FUSE, FuseOSError, Operations


class FaultyPassthrough(Operations):
    def __init__(self, root, control):
        self.root = os.path.realpath(root)
        self.control = os.path.realpath(control)

    def _path(self, path):
        return os.path.join(self.root, path.lstrip("/"))

    def _failing(self, what):
        return os.path.exists(os.path.join(self.control, what))

    # Files and directories.

    def access(self, path, mode):
        if not os.access(self._path(path), mode):
            raise FuseOSError(errno.EACCES)

    def chmod(self, path, mode):
        return os.chmod(self._path(path), mode)

    def chown(self, path, uid, gid):
        return os.chown(self._path(path), uid, gid)

    def getattr(self, path, fh=None):
        st = os.lstat(self._path(path))
        return {key: getattr(st, key) for key in (
            "st_atime", "st_ctime", "st_gid", "st_mode", "st_mtime", "st_nlink",
            "st_size", "st_uid", "st_blocks")}

    def readdir(self, path, fh):
        return [".", ".."] + os.listdir(self._path(path))

    def readlink(self, path):
        return os.readlink(self._path(path))

    def mknod(self, path, mode, dev):
        return os.mknod(self._path(path), mode, dev)

    def rmdir(self, path):
        return os.rmdir(self._path(path))

    def mkdir(self, path, mode):
        return os.mkdir(self._path(path), mode)

    def statfs(self, path):
        st = os.statvfs(self._path(path))
        return {key: getattr(st, key) for key in (
            "f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree",
            "f_files", "f_flag", "f_frsize", "f_namemax")}

    def unlink(self, path):
        return os.unlink(self._path(path))

    def symlink(self, name, target):
        return os.symlink(target, self._path(name))

    def rename(self, old, new):
        return os.rename(self._path(old), self._path(new))

    def link(self, target, name):
        return os.link(self._path(name), self._path(target))

    def utimens(self, path, times=None):
        return os.utime(self._path(path), times)

    # File contents.

    def open(self, path, flags):
        return os.open(self._path(path), flags)

    def create(self, path, mode, fi=None):
        # fusepy does not pass the caller's flags here; the kernel may read through this
        # handle too (a file created O_RDWR), so open it for both.
        return os.open(self._path(path), os.O_RDWR | os.O_CREAT, mode)

    def read(self, path, length, offset, fh):
        return os.pread(fh, length, offset)

    def write(self, path, buf, offset, fh):
        if self._failing("fail-write"):
            raise FuseOSError(errno.EIO)
        return os.pwrite(fh, buf, offset)

    def truncate(self, path, length, fh=None):
        if fh is not None:
            os.ftruncate(fh, length)
        else:
            with open(self._path(path), "r+") as f:
                f.truncate(length)

    def flush(self, path, fh):
        return 0

    def release(self, path, fh):
        return os.close(fh)

    def fsync(self, path, datasync, fh):
        if self._failing("fail-fsync"):
            raise FuseOSError(errno.EIO)
        if datasync:
            os.fdatasync(fh)
        else:
            os.fsync(fh)
        return 0

    def fsyncdir(self, path, datasync, fh):
        if self._failing("fail-fsync"):
            raise FuseOSError(errno.EIO)
        return 0


def main():
    backing, mount_point, control = sys.argv[1:4]
    FUSE(FaultyPassthrough(backing, control), mount_point, foreground=True,
         nothreads=False, allow_other=False)


if __name__ == "__main__":
    main()
