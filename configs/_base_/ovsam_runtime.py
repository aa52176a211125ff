# mmdet's default runtime plus ovsam's opt-in for mmengine checkpoints
# (ovsam.engine): weights-only loading of load_from / resume files on
# torch >= 2.6, refusing pickled objects, and atomic checkpoint writes.
# `import ovsam` alone changes nothing in mmengine or torch.
_base_ = ['mmdet::_base_/default_runtime.py']

default_hooks = dict(safe_checkpoints=dict(type='SafeCheckpointsHook'))
