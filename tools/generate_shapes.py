"""Write the synthetic shapes dataset (COCO train/val + SA-1B layout).

Example::

    python tools/generate_shapes.py --out data/generated/shapes --num-train 500 --num-val 100
"""
import argparse
import importlib.util
import os.path as osp


def load_shapes_module():
    # From a checkout, load shapes.py by path: it needs only numpy, cv2 and
    # pycocotools, so making data should not wait for (or need) torch and mmdet,
    # which ``import ovsam`` pulls in. Installed copies fall back to the package.
    path = osp.join(osp.dirname(osp.abspath(__file__)), '..', 'projects', 'ovsam', 'datasets',
                    'shapes.py')
    if osp.isfile(path):
        spec = importlib.util.spec_from_file_location('ovsam_shapes', path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    from ovsam.datasets import shapes
    return shapes


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', default='data/generated/shapes', help='output directory')
    parser.add_argument('--num-train', type=int, default=500)
    parser.add_argument('--num-val', type=int, default=100)
    parser.add_argument('--num-sa1b', type=int, default=None,
                        help='SA-1B style images (default: --num-train)')
    parser.add_argument('--image-size', type=int, default=256)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--min-objects', type=int, default=1)
    parser.add_argument('--max-objects', type=int, default=5)
    parser.add_argument('--colour-mode', choices=('class', 'random'), default='random',
                        help="'random' (default, as the main job): colour independent of class, only the "
                        "outline tells classes apart; 'class': each class also has its own hue band")
    parser.add_argument('--no-sa1b', action='store_true', help='skip the SA-1B layout')
    return parser.parse_args()


def main():
    args = parse_args()
    shapes = load_shapes_module()
    res = shapes.generate_shapes_dataset(
        args.out, num_train=args.num_train, num_val=args.num_val, image_size=args.image_size,
        seed=args.seed, min_objects=args.min_objects, max_objects=args.max_objects,
        sa1b=not args.no_sa1b, num_sa1b=args.num_sa1b, colour_mode=args.colour_mode)
    print(f'shapes dataset in {res["out_dir"]} ({len(res["classes"])} classes, '
          f'base {list(res["base_classes"])}, novel {list(res["novel_classes"])})')
    for split in ('train', 'val'):
        r = res[split]
        print(f'  {split}: {r["num_images"]} images, {r["num_instances"]} instances\n'
              f'    images: {r["img_dir"]}\n    annotations: {r["ann_file"]}')
    if res['sa1b'] is not None:
        r = res['sa1b']
        print(f'  sa1b: {r["num_images"]} images, {r["num_masks"]} masks\n'
              f'    images + json: {r["img_dir"]}\n    list (basenames, no extension): '
              f'{r["list_file"]}')


if __name__ == '__main__':
    main()
