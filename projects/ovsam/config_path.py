"""Find the absolute path of a config shipped with ovsam.

mmengine's package scope (``_base_ = ['ovsam::NAME']``) only resolves the
packages mmengine itself knows (mmdet, mmcls, ...) and fails for ovsam with
"does not support to load ovsam config". An absolute ``_base_`` path works
with any mmengine, so this module prints one::

    python -m ovsam.config_path clip2sam_rn50x16_12e_coco-ov.py
    python -m ovsam.config_path tiny/clip2sam_tiny_1400it_shapes   # '.py' optional
    python -m ovsam.config_path --list                              # every shipped config

and in your own config::

    _base_ = ['/the/path/printed/clip2sam_rn50x16_12e_coco-ov.py']
    custom_imports = dict(imports=['ovsam'], allow_failed_imports=False)

Python: ``from ovsam.config_path import ovsam_config_path``.

Where configs are looked for, in order: the installed package's
``ovsam/.mim/configs`` (wheels and sdists get a real copy, see setup.py;
editable installs link it to the repository's ``configs/``), then the
``configs/`` folder of the source tree the package was imported from. A
name is a path relative to that folder (``eval/ovsam_tiny_box-prompt_shapes.py``)
or, if unique, a bare file name; ``configs/`` and ``ovsam::`` prefixes are
accepted. Only the standard library is used here.
"""
import argparse
import difflib
import os
import os.path as osp
import sys
from typing import List

__all__ = ['config_roots', 'list_configs', 'ovsam_config_path']

_PKG = osp.dirname(osp.realpath(__file__))


def config_roots() -> List[str]:
    """The existing config folders, installed copy first, without duplicates."""
    roots = []
    for cand in (osp.join(_PKG, '.mim', 'configs'), osp.join(osp.dirname(osp.dirname(_PKG)), 'configs')):
        real = osp.realpath(cand)
        if osp.isdir(real) and real not in roots:
            roots.append(real)
    return roots


def list_configs() -> List[str]:
    """Every shipped config, as a path relative to its config folder
    (``tiny/clip2sam_tiny_1400it_shapes.py``), sorted."""
    names = set()
    for root in config_roots():
        for folder, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if d != '__pycache__']
            for f in files:
                if f.endswith('.py'):
                    names.add(osp.relpath(osp.join(folder, f), root).replace(os.sep, '/'))
    return sorted(names)


def _normalise(name: str) -> str:
    name = name.strip().replace('\\', '/')
    if name.startswith('ovsam::'):
        name = name[len('ovsam::'):]
    while name.startswith('./'):
        name = name[2:]
    if name.startswith('configs/'):
        name = name[len('configs/'):]
    if not name.endswith('.py'):
        name += '.py'
    return name


def ovsam_config_path(name: str) -> str:
    """The absolute path of the shipped config ``name``.

    Raises:
        ValueError: no config has that name (the message lists close
            matches), or a bare file name matches several configs.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f'config name must be a non-empty string, got {name!r}')
    roots = config_roots()
    if not roots:
        raise ValueError(f'no config folder found (looked for {osp.join(_PKG, ".mim", "configs")} and the source '
                         "tree's configs/); reinstall ovsam with pip or mim")
    rel = _normalise(name)
    for root in roots:
        path = osp.join(root, *rel.split('/'))
        if osp.isfile(path):
            return path
    known = list_configs()
    if '/' not in rel:  # a bare file name: unique anywhere in the tree
        same = [k for k in known if k.rsplit('/', 1)[-1] == rel]
        if len(same) == 1:
            return ovsam_config_path(same[0])
        if len(same) > 1:
            raise ValueError(f'config name {name!r} is ambiguous; give one of: {", ".join(same)}')
    by_base = {k.rsplit('/', 1)[-1]: k for k in known}
    close = difflib.get_close_matches(rel, known, n=5, cutoff=0.5)
    close += [by_base[b] for b in difflib.get_close_matches(rel.rsplit('/', 1)[-1], list(by_base), n=5, cutoff=0.5)
              if by_base[b] not in close]
    hint = f'close matches: {", ".join(close[:5])}' if close else 'no close match'
    raise ValueError(f'no ovsam config named {name!r} ({hint}); `python -m ovsam.config_path --list` lists all '
                     f'{len(known)} configs in {", ".join(roots)}')


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog='python -m ovsam.config_path', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('name', nargs='?', help='config name, e.g. clip2sam_rn50x16_12e_coco-ov.py')
    p.add_argument('--list', action='store_true', help='list every shipped config and exit')
    args = p.parse_args(argv)
    if args.list:
        for n in list_configs():
            print(n)
        return 0
    if not args.name:
        p.error('give a config name (or --list)')
    try:
        print(ovsam_config_path(args.name))
    except ValueError as e:
        print(f'ovsam.config_path: {e}', file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
