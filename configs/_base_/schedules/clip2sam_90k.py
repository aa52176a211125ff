# CLIP2SAM's optimiser (AdamW 1e-4, wd 0.05, 500 warm-up iterations, gradient
# clipping at 0.01) on an iteration schedule for the infinite multi-source
# sampler: 90k iterations, steps at 2/3 and 11/12 (the 12-epoch schedule's 8
# and 11). The configs using it also set default_hooks.checkpoint and
# log_processor to iterations (mmengine refuses the same key in two bases).
max_iters = 90000
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=10000)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.05),
    clip_grad=dict(max_norm=0.01, norm_type=2),
    paramwise_cfg=dict(custom_keys={'backbone': dict(lr_mult=0.1)}))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=max_iters, by_epoch=False, milestones=[60000, 82500], gamma=0.1),
]
auto_scale_lr = dict(enable=False, base_batch_size=32)
