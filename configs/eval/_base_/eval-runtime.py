# Runtime of the evaluation configs: ovsam's runtime (mmdet's default runtime
# with safe checkpoint loading) plus a test loop.
_base_ = ['../../_base_/ovsam_runtime.py']

test_cfg = dict(type='TestLoop')
