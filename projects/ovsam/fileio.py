"""Atomic file writes: the one way this project writes a file.

Every writer goes through :func:`atomic_write` (a file object) or
:func:`atomic_path` (a temporary path, for libraries that only take a path,
e.g. ``cv2.imwrite`` or ``torch.onnx.export``):

1. the data goes to a temporary file in the destination's own folder
   (``.NAME.HOST.PID.XXXX.tmp``; same file system, so the rename is atomic);
2. it is flushed and ``os.fsync``-ed;
3. ``os.replace`` puts it in place of the destination;
4. the folder is ``fsync``-ed where the platform allows it, so the rename
   itself survives a power cut.

A destination that is a symbolic link is written through: the file the link
points to is replaced (in the target's folder) and the link stays a link, as
with a plain ``open(path, 'w')``.

If anything fails before step 3 (an exception inside the ``with`` block, a
full disk, Ctrl-C), the temporary file is removed and the destination is left
as it was: readers see either the old file or the complete new one, never a
truncated one. A process killed with ``SIGKILL`` cannot clean up, but still
never damages the destination; its ``.tmp`` file is left behind until the
next atomic write of the same file on the same host removes it
(:func:`remove_stale_temps`).

The conveniences :func:`atomic_save_bytes`, :func:`atomic_save_text`,
:func:`atomic_save_json` and :func:`atomic_save_torch` cover the usual cases.
"""
import contextlib
import json
import os
import os.path as osp
import socket
import tempfile
from typing import Any, Iterator, Optional

__all__ = ['atomic_path', 'atomic_save_bytes', 'atomic_save_json', 'atomic_save_text', 'atomic_save_torch',
           'atomic_write', 'fsync_dir', 'remove_stale_temps', 'TMP_SUFFIX']

TMP_SUFFIX = '.tmp'
_WRITE_MODES = ('w', 'wt', 'wb', 'w+', 'wb+', 'w+b')


def _umask() -> int:
    """The process umask, read without changing it where possible."""
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('Umask:'):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no /proc: read it by setting it (and set it back)
    os.umask(mask)
    return mask


def fsync_dir(folder: str) -> None:
    """``fsync`` a folder so that a rename inside it is durable (no-op where
    folders cannot be opened, e.g. on Windows)."""
    flags = getattr(os, 'O_DIRECTORY', None)
    if flags is None:
        return
    try:
        fd = os.open(folder, os.O_RDONLY | flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _host() -> str:
    return ''.join(c if c.isalnum() or c == '-' else '-' for c in socket.gethostname())[:40] or 'host'


def _tmp_head(path: str) -> str:
    return f'.{osp.basename(path)[:100]}.{_host()}.'  # short enough for any file-name limit


def _tmp_prefix(path: str) -> str:
    """``.NAME.HOST.PID.``: whose temporary file it is, so that a later write
    can remove what a killed writer left behind."""
    return f'{_tmp_head(path)}{os.getpid()}.'


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def remove_stale_temps(path) -> int:
    """Remove temporary files of ``path`` left by writers of this host that
    no longer run (killed mid-write); return how many were removed. Called by
    every atomic write; other hosts' files (shared file systems) are kept."""
    path = os.fspath(path)
    folder = osp.dirname(osp.abspath(path))
    head = _tmp_head(path)
    removed = 0
    try:
        names = os.listdir(folder)
    except OSError:
        return 0
    for name in names:
        if not (name.startswith(head) and TMP_SUFFIX in name[len(head):]):
            continue
        pid = name[len(head):].split('.', 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or _pid_alive(int(pid)):
            continue
        with contextlib.suppress(OSError):
            os.remove(osp.join(folder, name))
            removed += 1
    return removed


def _prepare(path) -> tuple:
    try:
        path = os.fspath(path)
    except TypeError:
        raise TypeError(f'cannot write a file: its path must be a string (or os.PathLike), got '
                        f'{type(path).__name__} {path!r}'[:200]) from None
    if not isinstance(path, str):
        path = os.fsdecode(path)
    if not path:
        raise ValueError('cannot write a file with an empty path')
    if '\0' in path:
        raise ValueError(f'cannot write {path!r}: the path contains a NUL character')
    if osp.islink(path):  # write through the link, as open(path, 'w') would; the link stays
        path = osp.realpath(path)
    if osp.isdir(path):
        raise IsADirectoryError(f'cannot write {path!r}: it is a directory; give a file name')
    folder = osp.dirname(osp.abspath(path))
    parent = folder
    while parent and not osp.exists(parent):
        parent = osp.dirname(parent) if osp.dirname(parent) != parent else ''
    if parent and not osp.isdir(parent):
        raise NotADirectoryError(f'cannot write {path!r}: {parent!r} is a file, not a folder; choose another '
                                 'output path (or move that file away)')
    os.makedirs(folder, exist_ok=True)
    remove_stale_temps(path)
    return path, folder


def _mode_of(path: str) -> int:
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        return 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_path(path, suffix: Optional[str] = None) -> Iterator[str]:
    """Yield a temporary path next to ``path``; on success it replaces ``path``.

    For writers that need a file name (``cv2.imwrite`` picks the format from
    the extension, hence ``suffix`` defaults to the destination's). The
    caller writes the temporary file completely inside the ``with`` block.
    """
    path, folder = _prepare(path)
    if suffix is None:
        suffix = osp.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), suffix=TMP_SUFFIX + suffix, dir=folder)
    os.close(fd)
    try:
        yield tmp
        if not osp.isfile(tmp):
            raise OSError(f'the writer of {path!r} removed or did not create its temporary file {tmp!r}')
        with open(tmp, 'rb+') as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _mode_of(path))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    fsync_dir(folder)


@contextlib.contextmanager
def atomic_write(path, mode: str = 'wb', encoding: Optional[str] = None, newline: Optional[str] = None):
    """Open a temporary file next to ``path`` for writing; on a clean exit it
    is flushed, fsync-ed and renamed over ``path``; on any exception it is
    removed and ``path`` is left untouched.

    Args:
        path: the destination file (its folder is created if missing).
        mode: ``'wb'`` (default) or ``'w'`` (text; ``encoding`` defaults to
            UTF-8). Appending cannot be atomic and is refused.
    """
    if mode not in _WRITE_MODES:
        raise ValueError(f'atomic_write: mode must be one of {_WRITE_MODES} (a whole new file), got {mode!r}')
    binary = 'b' in mode
    if not binary and encoding is None:
        encoding = 'utf-8'
    with atomic_path(path) as tmp:  # fsync, rename, clean-up on failure
        with open(tmp, mode, encoding=None if binary else encoding, newline=None if binary else newline) as f:
            yield f


def atomic_save_bytes(path, data: bytes) -> str:
    """Write ``data`` to ``path`` atomically; return ``path``."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f'cannot write {path!r}: data must be bytes, got {type(data).__name__} '
                        '(use atomic_save_text for text)')
    with atomic_write(path, 'wb') as f:
        f.write(data)
    return os.fspath(path)


def atomic_save_text(path, text: str, encoding: str = 'utf-8') -> str:
    """Write ``text`` to ``path`` atomically; return ``path``."""
    if not isinstance(text, str):
        raise TypeError(f'cannot write {path!r}: text must be a str, got {type(text).__name__} '
                        '(use atomic_save_bytes for bytes)')
    with atomic_write(path, 'w', encoding=encoding) as f:
        f.write(text)
    return os.fspath(path)


def atomic_save_json(path, obj: Any, **kwargs) -> str:
    """``json.dump(obj)`` to ``path`` atomically; return ``path``.

    The object is serialised first, so an object that cannot be written as
    JSON raises before anything touches the disk. ``kwargs`` go to
    ``json.dumps`` (``allow_nan=False`` by default: NaN is not JSON).
    """
    kwargs.setdefault('allow_nan', False)
    try:
        text = json.dumps(obj, **kwargs)
    except (TypeError, ValueError) as e:
        hint = ' (NaN and Infinity are not JSON: replace them, e.g. by None)' if 'Out of range float' in str(e) else ''
        raise type(e)(f'cannot write {os.fspath(path)!r} as JSON: {e}{hint}; nothing was written') from None
    return atomic_save_text(path, text)


def atomic_save_torch(path, obj: Any) -> str:
    """``torch.save(obj)`` to ``path`` atomically; return ``path``."""
    import pickle

    import torch
    try:
        with atomic_write(path, 'wb') as f:
            torch.save(obj, f)
    except (pickle.PicklingError, AttributeError, TypeError) as e:
        if not isinstance(e, pickle.PicklingError) and 'pickle' not in str(e).lower():
            raise
        raise TypeError(f'cannot write {os.fspath(path)!r}: the object cannot be saved with torch.save ({e}); '
                        'save tensors, numbers, strings and plain containers only; nothing was written') from None
    return os.fspath(path)
