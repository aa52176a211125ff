# Runtime of the evaluation configs: mmdet's default runtime plus a test loop.
_base_ = ['mmdet::_base_/default_runtime.py']

test_cfg = dict(type='TestLoop')
