#!/usr/bin/env python
"""OV-SAM web demo (gradio): upload an image, click points or type a box, see
the mask and its open-vocabulary label; or segment everything.

    python tools/demo/web_demo.py                      # tiny RANDOM model, http://127.0.0.1:7860
    python tools/demo/web_demo.py --config configs/_base_/models/ovsam_rn50x16.py \
        --checkpoint ovsam_coco.pth --clip-checkpoint RN50x16.pt \
        --embeddings coco=data/embeddings/rn50x16_coco.pth lvis=data/embeddings/rn50x16_lvis.pth

Without ``--checkpoint`` it runs the tiny model with random weights (the page
says so): everything works, but masks and labels are meaningless. Vocabularies:
Shapes / COCO / LVIS (from ``--embeddings`` files if given, otherwise embedded
with the CLIP text tower, which needs ``--clip-checkpoint`` for a real model)
or custom classes typed one per line, commas separating the synonyms of one
class (``cup,mug``), as everywhere in :mod:`ovsam.vocabulary`. An official
bare-tensor file works too: ``--embeddings lvis=RN50x16_LVISV1Dataset.pth``
takes its class names from the built-in LVIS list.

Needs gradio: ``pip install -c requirements/constraints.txt gradio``.
"""
import argparse
import hashlib
import os
import sys
import threading

os.environ.setdefault('GRADIO_ANALYTICS_ENABLED', 'False')

VOCAB_CHOICES = ['Shapes', 'COCO', 'LVIS', 'Custom']
RANDOM_MODEL_NOTE = ('**Note: no checkpoint was given, so this demo runs the tiny model with RANDOM '
                     'weights. Masks and labels are meaningless; start it with `--config` and '
                     '`--checkpoint` for real predictions.**')


class DemoBackend:
    """Everything the UI calls, thread-safe around one shared predictor."""

    def __init__(self, predictor, embedding_files=None, points_per_side: int = 16,
                 stability_thresh: float = 0.9) -> None:
        self.predictor = predictor
        self.embedding_files = {k.lower(): v for k, v in (embedding_files or {}).items()}
        self.points_per_side = points_per_side
        self.stability_thresh = stability_thresh
        self.lock = threading.Lock()
        self._image_key = None
        self._vocab_key = None
        # the vocabulary the model came with (config file), offered as 'Model'
        self.model_vocab = None
        if predictor.num_classes > 0:
            self.model_vocab = (predictor.vocabulary_embeddings(), predictor.class_names)
            self._vocab_key = ('Model', None)

    @property
    def choices(self):
        return (['Model'] if self.model_vocab is not None else []) + VOCAB_CHOICES

    # ------------------------------------------------------------ state
    def _ensure_image(self, image):
        import numpy as np
        if image is None:
            raise ValueError('upload an image first')
        image = np.asarray(image)
        key = (image.shape, str(image.dtype), hashlib.blake2b(image.tobytes(), digest_size=16).hexdigest())
        if key != self._image_key or not self.predictor.is_image_set:
            self.predictor.set_image(image)
            self._image_key = key
        return image

    def _ensure_vocab(self, choice: str, custom: str):
        from ovsam.vocabulary import builtin_class_names, check_class_names, parse_class_lines
        choice = choice or self.choices[0]
        key = (choice, custom if choice == 'Custom' else None)
        if key == self._vocab_key:
            return
        p = self.predictor
        if choice == 'Model':
            if self.model_vocab is None:
                raise ValueError('the model has no vocabulary of its own')
            p.set_vocabulary(self.model_vocab[1], embeddings=self.model_vocab[0])
        elif choice == 'Custom':
            names = parse_class_lines(custom or '')
            if not names:
                raise ValueError('type the custom classes, one per line (commas separate synonyms)')
            p.set_vocabulary(check_class_names(names))
        else:
            name = choice.lower()
            if name in self.embedding_files:  # a bare official tensor is named by the built-in list
                p.set_vocabulary_spec([self.embedding_files[name], name])
            else:
                p.set_vocabulary(builtin_class_names(name))
        self._vocab_key = key

    # ------------------------------------------------------------ actions
    def prompt(self, image, points, box_text, choice, custom):
        """Returns (drawn image, {class: prob}, status)."""
        import numpy as np

        from ovsam.apis import draw_predictions
        from ovsam.vocabulary import short_name
        with self.lock:
            image = self._ensure_image(image)
            self._ensure_vocab(choice, custom)
            box = None
            if box_text and box_text.strip():
                try:
                    box = [float(v) for v in box_text.replace(' ', '').split(',')]
                except ValueError:
                    raise ValueError(f'box must be x1,y1,x2,y2, got {box_text!r}')
                if len(box) != 4:
                    raise ValueError(f'box must be x1,y1,x2,y2, got {box_text!r}')
            coords = labels = None
            if points:
                coords = np.array([[p[0], p[1]] for p in points], np.float32)
                labels = np.array([p[2] for p in points], np.int64)
            if coords is None and box is None:
                raise ValueError('click on the image or enter a box')
            out = self.predictor.predict(point_coords=coords, point_labels=labels, box=box, top_k=5)
            names = self.predictor.class_names
            drawn = draw_predictions(image, out.masks, out.boxes, out.labels, out.scores, names, points=coords,
                                     point_labels=labels, draw_boxes=box is not None)
            label = {short_name(n): float(s) for n, s in zip(out.topk_names[0], out.topk_scores[0])}
            status = (f'{out.class_names[0]}: {out.scores[0]:.3f} (mask area {int(out.masks[0].sum())} px, '
                      f'stability {out.mask_scores[0]:.2f})')
            if points:
                status += f'; {len(points)} point(s), last at ({points[-1][0]:.0f}, {points[-1][1]:.0f})'
            if box is not None:
                status += '; box ({:.0f}, {:.0f}, {:.0f}, {:.0f})'.format(*box)
            return drawn, label, status

    def everything(self, image, choice, custom):
        import numpy as np

        from ovsam.apis import OVSAMAutomaticMaskGenerator, draw_predictions
        from ovsam.vocabulary import short_name
        with self.lock:
            image = self._ensure_image(image)
            self._ensure_vocab(choice, custom)
            gen = OVSAMAutomaticMaskGenerator(self.predictor, points_per_side=self.points_per_side,
                                              stability_score_thresh=self.stability_thresh)
            anns = gen.generate()
            names = self.predictor.class_names
            if not anns:
                return draw_predictions(image), {}, 'no mask passed the filters'
            masks = np.stack([a['segmentation'] for a in anns])
            drawn = draw_predictions(image, masks, None, [a['label'] for a in anns], [a['score'] for a in anns],
                                     names, draw_boxes=False)
            label = {}
            for a in anns:
                n = short_name(a['class_name'])
                label[n] = max(label.get(n, 0.0), a['score'])
            return drawn, label, f'{len(anns)} masks'


def build_app(backend: DemoBackend, random_model: bool):
    import gradio as gr

    def safe(fn):
        def wrapped(*args):
            try:
                return fn(*args)
            except (ValueError, RuntimeError) as e:  # PromptError is a ValueError
                return None, None, f'Error: {e}'
        return wrapped

    with gr.Blocks(title='Open-Vocabulary SAM') as demo:
        gr.Markdown('# Open-Vocabulary SAM\nUpload an image, then click on an object (or type a box) '
                    'to get its mask and class; or segment everything.')
        if random_model:
            gr.Markdown(RANDOM_MODEL_NOTE, elem_id='random-model-note')
        points = gr.State([])
        with gr.Row():
            with gr.Column():
                image = gr.Image(label='Image (click to add points)', type='numpy', sources=['upload'],
                                 image_mode='RGB', elem_id='input_image')
                click_mode = gr.Radio(['foreground', 'background'], value='foreground', label='Click adds a',
                                      elem_id='click_mode')
                box_text = gr.Textbox(label='Box x1,y1,x2,y2 (image pixels)', elem_id='box_text')
                with gr.Row():
                    box_btn = gr.Button('Segment (points + box)', elem_id='segment_btn')
                    all_btn = gr.Button('Segment everything', elem_id='everything_btn')
                    clear_btn = gr.Button('Clear prompts', elem_id='clear_btn')
                vocab = gr.Dropdown(backend.choices, value=backend.choices[0], label='Vocabulary',
                                    elem_id='vocab_choice')
                custom = gr.Textbox(label='Custom classes (one class per line; commas separate synonyms)',
                                    placeholder='cat\ndog\ncup,mug', lines=4, elem_id='custom_vocab')
            with gr.Column():
                result = gr.Image(label='Result', type='numpy', interactive=False, elem_id='output_image')
                label = gr.Label(num_top_classes=5, label='Class', elem_id='output_label')
                status = gr.Markdown('', elem_id='status')

        def on_upload(img):
            return [], None, None, 'image loaded: click on an object'

        def on_click(img, pts, mode, box, voc, cust, evt: gr.SelectData):
            x, y = evt.index[0], evt.index[1]
            pts = list(pts or []) + [[float(x), float(y), 1 if mode == 'foreground' else 0]]
            drawn, lab, msg = safe(backend.prompt)(img, pts, box, voc, cust)
            return pts, drawn, lab, msg

        def on_segment(img, pts, box, voc, cust):
            return safe(backend.prompt)(img, pts, box, voc, cust)

        def on_everything(img, voc, cust):
            return safe(backend.everything)(img, voc, cust)

        def on_clear():
            return [], None, None, '', ''

        image.upload(on_upload, [image], [points, result, label, status])
        image.clear(on_clear, [], [points, result, label, status, box_text])
        image.select(on_click, [image, points, click_mode, box_text, vocab, custom], [points, result, label, status])
        box_btn.click(on_segment, [image, points, box_text, vocab, custom], [result, label, status])
        all_btn.click(on_everything, [image, vocab, custom], [result, label, status])
        clear_btn.click(on_clear, [], [points, result, label, status, box_text])
    return demo


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--config', help='model config (default: tiny random model)')
    p.add_argument('--checkpoint', help='trained OV-SAM checkpoint')
    p.add_argument('--clip-checkpoint', help='CLIP weights to embed class names')
    p.add_argument('--embeddings', nargs='*', default=[], metavar='NAME=PATH',
                   help='precomputed embedding files for the built-in vocabularies (coco=..., lvis=..., shapes=...)')
    p.add_argument('--cache-dir', help='folder to cache text embeddings in (optional)')
    p.add_argument('--host', default='127.0.0.1')
    p.add_argument('--port', type=int, default=7860)
    p.add_argument('--device', default='cpu')
    p.add_argument('--points-per-side', type=int, default=16, help='grid for "segment everything"')
    p.add_argument('--stability-thresh', type=float, default=0.9)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import gradio as gr

    from ovsam.apis import OVSAMPredictor
    files = {}
    for item in args.embeddings:
        if '=' not in item:
            raise SystemExit(f'--embeddings items are NAME=PATH, got {item!r}')
        k, v = item.split('=', 1)
        files[k.strip().lower()] = v
    random_model = args.checkpoint is None
    if args.config is None and args.checkpoint is None:
        pred = OVSAMPredictor.from_tiny(device=args.device, vocabulary=None, cache_dir=args.cache_dir)
    else:
        if args.config is None:
            raise SystemExit('--checkpoint needs --config')
        pred = OVSAMPredictor.from_config(args.config, args.checkpoint, device=args.device,
                                          clip_checkpoint=args.clip_checkpoint, cache_dir=args.cache_dir)
    backend = DemoBackend(pred, files, points_per_side=args.points_per_side,
                          stability_thresh=args.stability_thresh)
    demo = build_app(backend, random_model)
    theme = gr.themes.Default(font=['ui-sans-serif', 'system-ui', 'sans-serif'],
                              font_mono=['ui-monospace', 'monospace'])  # no web fonts: works offline
    demo.queue(default_concurrency_limit=1)
    print(f'[web_demo] serving on http://{args.host}:{args.port}' + (' (tiny RANDOM model)' if random_model else ''),
          flush=True)
    demo.launch(server_name=args.host, server_port=args.port, theme=theme, ssr_mode=False, show_error=True,
                share=False, inbrowser=False)
    return 0


if __name__ == '__main__':
    sys.exit(main())
