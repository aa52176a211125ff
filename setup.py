"""Install ovsam: Open-Vocabulary SAM as an MMDetection 3.x plugin.

The package lives in ``projects/ovsam``. ``mim train ovsam <config>`` looks for
``<package>/.mim/{configs,tools}``: the repository keeps those as symbolic links
(``projects/ovsam/.mim``), which serve editable installs; for wheels and sdists
``build_py`` below copies the real files in.
"""
import os
import os.path as osp
import shutil

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

ROOT = osp.dirname(osp.abspath(__file__))
MIM_DIRS = ('configs', 'tools')


def read_version():
    ns = {}
    with open(osp.join(ROOT, 'projects', 'ovsam', 'version.py')) as f:
        exec(f.read(), ns)
    return ns['__version__']


def read_requirements(name):
    reqs = []
    with open(osp.join(ROOT, 'requirements', name)) as f:
        for line in f:
            line = line.split('#', 1)[0].strip()
            if line and not line.startswith('-'):
                reqs.append(line)
    return reqs


class BuildPyWithMim(build_py):
    """Copy configs/ and tools/ into ``ovsam/.mim`` of the built package."""

    def run(self):
        super().run()
        target = osp.join(self.build_lib, 'ovsam', '.mim')
        for name in MIM_DIRS:
            dst = osp.join(target, name)
            if osp.islink(dst) or osp.isfile(dst):
                os.remove(dst)
            elif osp.isdir(dst):
                shutil.rmtree(dst)
            shutil.copytree(osp.join(ROOT, name), dst,
                            ignore=shutil.ignore_patterns('__pycache__', '*.pyc'))


setup(
    name='ovsam',
    version=read_version(),
    description='Open-Vocabulary SAM (ECCV 2024) as an MMDetection 3.x plugin',
    long_description=open(osp.join(ROOT, 'README.md')).read() if osp.exists(osp.join(ROOT, 'README.md')) else '',
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    python_requires='>=3.9',
    package_dir={'': 'projects'},
    packages=find_packages('projects'),
    include_package_data=False,
    cmdclass={'build_py': BuildPyWithMim},
    install_requires=read_requirements('runtime.txt'),
    extras_require={
        'tests': read_requirements('tests.txt'),
        'optional': read_requirements('optional.txt'),
    },
    zip_safe=False,
)
