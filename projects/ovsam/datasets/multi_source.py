"""Multi-source sampling for co-training: mmdet's samplers, any number of sources.

mmdet's ``MultiSourceSampler`` fills every batch with a fixed number of
images from each source of a ``ConcatDataset`` (``source_ratio``), each
source an infinite seeded stream that every rank slices (rank r takes draws
r, r + W, ...), so the ranks see disjoint parts of each source and together
all of it. It works for any number of sources and is what the co-training
configs use: their large-scale-jitter crop pads every image to the same
square, so grouping by aspect ratio buys nothing.

mmdet's ``GroupMultiSourceSampler`` (batches of one aspect-ratio group) is
written for the two sources of semi-supervised training and fails with an
``IndexError`` on a third. :class:`OVSAMGroupMultiSourceSampler` is the same
sampler with its bookkeeping sized to the number of sources; it reads
``width`` / ``height`` of every data info (``ImageLevelDataset(read_sizes=True)``).
"""
import numpy as np
from mmdet.datasets.samplers import GroupMultiSourceSampler
from mmdet.registry import DATA_SAMPLERS


@DATA_SAMPLERS.register_module()
class OVSAMGroupMultiSourceSampler(GroupMultiSourceSampler):
    """mmdet's ``GroupMultiSourceSampler`` for any number of sources (same
    arguments: ``dataset`` a ``ConcatDataset``, ``batch_size``, ``source_ratio``,
    ``shuffle``, ``seed``)."""

    def _get_source_group_info(self) -> None:
        n = len(self.dataset.datasets)
        self.group2size_per_source = [{0: 0, 1: 0} for _ in range(n)]
        self.group2inds_per_source = [{0: [], 1: []} for _ in range(n)]
        for source, dataset in enumerate(self.dataset.datasets):
            for idx in range(len(dataset)):
                info = dataset.get_data_info(idx)
                if 'width' not in info or 'height' not in info:
                    raise KeyError(f'source {source} ({type(dataset).__name__}) has no image sizes in its data '
                                   'infos; grouping by aspect ratio needs them (ImageLevelDataset: read_sizes=True), '
                                   'or use MultiSourceSampler')
                group = 0 if info['width'] < info['height'] else 1
                self.group2size_per_source[source][group] += 1
                self.group2inds_per_source[source][group].append(idx)
        self.group_sizes = np.zeros(2, dtype=np.int64)
        for group2size in self.group2size_per_source:
            for group, size in group2size.items():
                self.group_sizes[group] += size
        self.group_ratio = self.group_sizes / sum(self.group_sizes)
