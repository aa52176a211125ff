# ImageNet-21k alone, image-level labels (one whole-image box prompt per
# image, no mask: CLIP2SAM learns only recognition), at 1024 px. Labels are
# the class list's own (classes.txt), or joint ids with joint_vocabulary +
# source. Paths are read when the dataloader is built; a missing folder or
# list stops with an error that says how to make it.
backend_args = None
img_scale = (1024, 1024)
image_level_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='LoadWholeImageBox'),
    dict(type='RandomFlip', prob=0.5),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(
    batch_size=8,
    num_workers=4,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    batch_sampler=None,
    dataset=dict(
        type='ImageLevelDataset',
        mmpretrain_type='ImageNet21k',
        data_root='data/imagenet21k/',
        data_prefix=dict(img='train/'),
        ann_file='meta/train.txt',
        classes='data/imagenet21k/classes.txt',
        missing_hint='Put ImageNet-21k under data/imagenet21k/: train/<wnid>/*.JPEG, classes.txt with one '
        "'<wnid> <name>[,<synonym>...]' line per class, and meta/train.txt with one '<wnid>/<file> <label>' line "
        "per image (label = line of classes.txt, from 0), or set ann_file='' to scan the folders (slow for "
        '13 M images).',
        pipeline=image_level_pipeline))
