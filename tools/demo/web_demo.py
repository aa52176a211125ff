#!/usr/bin/env python
"""OV-SAM web demo (gradio): upload an image, click points and/or drag a box
with the mouse, see the mask and its open-vocabulary label; or segment
everything.

    python tools/demo/web_demo.py                      # http://127.0.0.1:7860
    python tools/demo/web_demo.py --random-model       # the tiny RANDOM model
    python tools/demo/web_demo.py --config configs/_base_/models/ovsam_rn50x16.py \
        --checkpoint ovsam_coco.pth --clip-checkpoint RN50x16.pt \
        --embeddings coco=data/embeddings/rn50x16_coco.pth \
        --vocabulary checkpoints/RN50x16_LVISV1Dataset.pth lvis

Which model, without ``--config``/``--checkpoint``: the toy model that the
README's main job (``tools/tiny_pipeline.py``) trained, when its work dir
(``--work-dir``, default ``work_dirs/tiny_pipeline``) holds it, with its
vocabulary (the 10 shape classes, offered as 'Model'); otherwise, or with
``--random-model``, the tiny model with random weights, and the page says so
(everything works, but masks and labels are meaningless).

Prompts: a click adds a foreground or background point, a drag on the image
draws a box (or type it), and the points and the box form one prompt.
Vocabularies: the model's own, ``--vocabulary`` (any spec: an embedding file,
also a large one such as LVIS or 22k names, followed by its class names for an
official bare tensor), Shapes / COCO / LVIS (from ``--embeddings`` files if
given, otherwise embedded with the CLIP text tower, which needs a CLIP
checkpoint) or custom classes typed one per line, commas separating the
synonyms of one class (``cup,mug``), as everywhere in :mod:`ovsam.vocabulary`.
The top ``--top-k`` classes are shown with their probabilities.

Bounded resource use: uploads above ``--max-upload-mb`` or ``--max-megapixels``
are refused, custom vocabularies hold at most ``--max-custom-classes``
classes, at most ``--vocab-cache`` vocabularies are kept (least recently used
dropped), one request runs at a time, and visitors see error messages, never
tracebacks (those go to the server log).

Needs gradio: ``pip install -c requirements/constraints.txt gradio``.
"""
import argparse
import collections
import hashlib
import logging
import os
import os.path as osp
import sys
import threading
from typing import List, NamedTuple, Optional, Sequence, Tuple

os.environ.setdefault('GRADIO_ANALYTICS_ENABLED', 'False')

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
VOCAB_CHOICES = ['Shapes', 'COCO', 'LVIS', 'Custom']
DEFAULT_WORK_DIR = 'work_dirs/tiny_pipeline'
RANDOM_MODEL_NOTE = ('**Note: this demo runs the tiny model with RANDOM weights. Masks and labels are '
                     'meaningless; train the toy model (`python tools/tiny_pipeline.py`) or start it with '
                     '`--config` and `--checkpoint` for real predictions.**')
TOY_MODEL_NOTE = ('Model: the toy OV-SAM trained by `tools/tiny_pipeline.py` ({checkpoint}) on generated shapes; '
                  'vocabulary \'Model\' = its {num} classes. Try it on a generated shapes image.')
LIMITS = dict(max_megapixels=16.0, max_upload_mb=25.0, max_custom_classes=200, max_class_chars=200, vocab_cache=8)
log = logging.getLogger('ovsam.web_demo')


class VisitorError(ValueError):
    """A problem with what the visitor sent: shown to them as is."""


# ---------------------------------------------------------------- the model
class TrainedToyModel(NamedTuple):
    config: str
    checkpoint: str
    vocabulary: str


# Where tools/toy/pipeline.py writes the trained model in its work dir:
# Pipeline.clip2sam_cfg() (the config copy with this run's paths),
# Pipeline.ovsam_ckpt and Pipeline.vocab (tests/test_web_demo.py checks these
# against the pipeline's own properties).
TOY_FILES = TrainedToyModel(config='configs/clip2sam_tiny_1400it_shapes.py',
                            checkpoint='clip2sam/ovsam_tiny_shapes.pth', vocabulary='clip/shapes_vocabulary.pth')


def find_trained_model(work_dir: str = DEFAULT_WORK_DIR) -> Optional[TrainedToyModel]:
    """The model ``tools/tiny_pipeline.py`` trained in ``work_dir`` (a relative
    path is looked up from the current folder, then from the repository),
    or None when any of its config, checkpoint and vocabulary is missing."""
    roots = [work_dir] if osp.isabs(work_dir) else [osp.abspath(work_dir), osp.join(ROOT, work_dir)]
    for root in roots:
        files = TrainedToyModel(*(osp.join(root, f) for f in TOY_FILES))
        if all(osp.isfile(f) for f in files):
            return files
    return None


def load_predictor(args) -> Tuple[object, str, str]:
    """(predictor, kind, note): kind is 'checkpoint', 'toy' or 'random'."""
    from ovsam.apis import OVSAMPredictor
    if args.config is not None or args.checkpoint is not None:
        if args.config is None:
            raise SystemExit('--checkpoint needs --config')
        pred = OVSAMPredictor.from_config(args.config, args.checkpoint, device=args.device,
                                          clip_checkpoint=args.clip_checkpoint, cache_dir=args.cache_dir)
        if args.checkpoint is None:
            return pred, 'random', RANDOM_MODEL_NOTE
        return pred, 'checkpoint', f'Model: `{args.config}` with `{args.checkpoint}`.'
    trained = None if args.random_model else find_trained_model(args.work_dir)
    if trained is None:
        if not args.random_model:
            print(f'[web_demo] no trained toy model in {args.work_dir} (run tools/tiny_pipeline.py): '
                  'serving the tiny RANDOM model', flush=True)
        pred = OVSAMPredictor.from_tiny(device=args.device, vocabulary=None, cache_dir=args.cache_dir)
        return pred, 'random', RANDOM_MODEL_NOTE
    pred = OVSAMPredictor.from_config(trained.config, trained.checkpoint, device=args.device,
                                      cache_dir=args.cache_dir)
    note = TOY_MODEL_NOTE.format(checkpoint=osp.relpath(trained.checkpoint), num=pred.num_classes)
    return pred, 'toy', note


# ---------------------------------------------------------------- plain helpers
def parse_box(text: Optional[str]) -> Optional[List[float]]:
    """'x1, y1, x2, y2' -> four floats; '' or None -> None."""
    if not text or not text.strip():
        return None
    try:
        box = [float(v) for v in text.replace(' ', '').split(',')]
    except ValueError:
        raise VisitorError(f'box must be x1,y1,x2,y2 (image pixels), got {text!r}'[:200]) from None
    if len(box) != 4:
        raise VisitorError(f'box must be x1,y1,x2,y2 (image pixels), got {text!r}'[:200])
    return box


def check_image(image, max_megapixels: float):
    """The uploaded image as an array, refused when missing or too large."""
    import numpy as np
    if image is None:
        raise VisitorError('upload an image first')
    image = np.asarray(image)
    if image.ndim < 2:
        raise VisitorError(f'not an image (array of shape {image.shape})')
    h, w = image.shape[:2]
    if h * w > max_megapixels * 1e6:
        raise VisitorError(f'the image is {w} x {h} = {h * w / 1e6:.1f} megapixels; this demo accepts at most '
                           f'{max_megapixels:g} megapixels: upload a smaller image')
    return image


def parse_custom_classes(text: str, max_classes: int, max_chars: int) -> List[str]:
    """Custom vocabulary text (one class per line, commas separate synonyms,
    '#' comments) -> checked class names, at most ``max_classes``."""
    from ovsam.vocabulary import check_class_names, parse_class_lines
    if len(text or '') > max_classes * (max_chars + 1):
        raise VisitorError(f'the custom vocabulary is too long: at most {max_classes} classes of '
                           f'{max_chars} characters')
    names = parse_class_lines(text or '')
    if not names:
        raise VisitorError('type the custom classes, one per line (commas separate synonyms)')
    if len(names) > max_classes:
        raise VisitorError(f'{len(names)} custom classes: this demo takes at most {max_classes}')
    long = [n for n in names if len(n) > max_chars]
    if long:
        raise VisitorError(f'class {long[0][:40]!r}... is longer than {max_chars} characters')
    return check_class_names(names)


class LRUCache:
    """At most ``size`` entries; the least recently used one is dropped."""

    def __init__(self, size: int) -> None:
        self.size = max(1, int(size))
        self._d = collections.OrderedDict()

    def get(self, key, make):
        if key in self._d:
            self._d.move_to_end(key)
            return self._d[key]
        value = make()
        self._d[key] = value
        while len(self._d) > self.size:
            self._d.popitem(last=False)
        return value

    def keys(self):
        return list(self._d)

    def __len__(self) -> int:
        return len(self._d)


def file_choice(spec: Sequence[str]) -> str:
    """How a ``--vocabulary`` spec is offered in the vocabulary choice."""
    return f'File: {osp.basename(spec[0])}'


# ---------------------------------------------------------------- backend
class DemoBackend:
    """Everything the UI calls, thread-safe around one shared predictor.

    Vocabularies are made once and kept in an LRU cache of ``vocab_cache``
    entries (names, text embeddings, seen classes); the predictor is switched
    to the one a request asks for (cheap: no text encoding).
    """

    def __init__(self, predictor, embedding_files=None, points_per_side: int = 16,
                 stability_thresh: float = 0.9, vocabulary_file: Optional[Sequence[str]] = None,
                 top_k: int = 5, **limits) -> None:
        unknown = set(limits) - set(LIMITS)
        if unknown:
            raise TypeError(f'unknown limits {sorted(unknown)}; known: {sorted(LIMITS)}')
        self.limits = dict(LIMITS, **limits)
        self.predictor = predictor
        self.embedding_files = {k.lower(): v for k, v in (embedding_files or {}).items()}
        self.points_per_side = points_per_side
        self.stability_thresh = stability_thresh
        self.top_k = top_k
        self.lock = threading.Lock()
        self.cache = LRUCache(self.limits['vocab_cache'])
        self._image_key = None
        self._vocab_key = None
        self.vocabulary_file = list(vocabulary_file) if vocabulary_file else None
        # the vocabulary the model came with (config file), offered as 'Model' and never evicted
        self.model_vocab = None
        if predictor.num_classes > 0:
            base = getattr(predictor.model, 'base_classes', None)
            self.model_vocab = (predictor.class_names, predictor.vocabulary_embeddings(),
                                None if base is None else list(base))
            self._vocab_key = ('Model', None)

    @property
    def choices(self) -> List[str]:
        return ((['Model'] if self.model_vocab is not None else [])
                + ([file_choice(self.vocabulary_file)] if self.vocabulary_file else []) + VOCAB_CHOICES)

    # ------------------------------------------------------------ state
    def _ensure_image(self, image):
        image = check_image(image, self.limits['max_megapixels'])
        key = (image.shape, str(image.dtype), hashlib.blake2b(image.tobytes(), digest_size=16).hexdigest())
        if key != self._image_key or not self.predictor.is_image_set:
            self.predictor.set_image(image)
            self._image_key = key
        return image

    def _make_vocab(self, choice: str, custom: str):
        """(names, embeddings, seen classes) of a vocabulary choice."""
        from ovsam.vocabulary import builtin_class_names
        p = self.predictor
        if choice == 'Custom':
            names = parse_custom_classes(custom, self.limits['max_custom_classes'], self.limits['max_class_chars'])
            return names, p.encode_class_names(names), None
        if self.vocabulary_file and choice == file_choice(self.vocabulary_file):
            spec = self.vocabulary_file
        else:
            name = choice.lower()
            if name not in ('shapes', 'coco', 'lvis'):
                raise VisitorError(f'unknown vocabulary {choice!r}; pick one of {self.choices}')
            spec = [self.embedding_files[name], name] if name in self.embedding_files else None
            if spec is None:  # embedded by the text tower
                names = builtin_class_names(name)
                return names, p.encode_class_names(names), None
        from ovsam.vocabulary import load_text_embeddings, resolve_vocabulary
        vocab = resolve_vocabulary(spec)
        if vocab.embedding_file is None:
            return vocab.class_names, p.encode_class_names(vocab.class_names), None
        emb, names = load_text_embeddings(vocab.embedding_file, class_names=vocab.class_names)
        return names, emb, None

    def _ensure_vocab(self, choice: str, custom: str) -> None:
        choice = choice or self.choices[0]
        key = (choice, (custom or '').strip() if choice == 'Custom' else None)
        if key == self._vocab_key:
            return
        if choice == 'Model':
            if self.model_vocab is None:
                raise VisitorError('the model has no vocabulary of its own')
            names, emb, seen = self.model_vocab
        else:
            names, emb, seen = self.cache.get(key, lambda: self._make_vocab(choice, custom))
        self.predictor.set_vocabulary(list(names), embeddings=emb, seen_classes=seen)
        self._vocab_key = key

    # ------------------------------------------------------------ actions
    def prompt(self, image, points, box_text, choice, custom):
        """Returns (drawn image, {class: prob} of the top-k, status)."""
        import numpy as np

        from ovsam.apis import draw_predictions
        from ovsam.vocabulary import short_name
        with self.lock:
            box = parse_box(box_text)
            image = self._ensure_image(image)
            self._ensure_vocab(choice, custom)
            coords = labels = None
            if points:
                coords = np.array([[p[0], p[1]] for p in points], np.float32)
                labels = np.array([p[2] for p in points], np.int64)
            if coords is None and box is None:
                raise VisitorError('click on the image, drag a box on it, or type a box')
            out = self.predictor.predict(point_coords=coords, point_labels=labels, box=box, top_k=self.top_k)
            names = self.predictor.class_names
            drawn = draw_predictions(image, out.masks, out.boxes, out.labels, out.scores, names, points=coords,
                                     point_labels=labels, draw_boxes=box is not None)
            label = {short_name(n): float(s) for n, s in zip(out.topk_names[0], out.topk_scores[0])}
            top = ', '.join(f'{short_name(n)} {s:.3f}' for n, s in zip(out.topk_names[0], out.topk_scores[0]))
            status = (f'{out.class_names[0]}: {out.scores[0]:.3f} (mask area {int(out.masks[0].sum())} px, '
                      f'stability {out.mask_scores[0]:.2f}); top-{len(out.topk_names[0])} of '
                      f'{len(names)}: {top}')
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
                                              stability_score_thresh=self.stability_thresh, output_mode='coco_rle')
            anns = gen.generate()
            names = self.predictor.class_names
            if not anns:
                return draw_predictions(image), {}, 'no mask passed the filters'
            from pycocotools import mask as mask_utils
            masks = np.stack([mask_utils.decode(a['segmentation']).astype(bool) for a in anns])
            drawn = draw_predictions(image, masks, None, [a['label'] for a in anns], [a['score'] for a in anns],
                                     names, draw_boxes=False)
            label = {}
            for a in anns:
                n = short_name(a['class_name'])
                label[n] = max(label.get(n, 0.0), a['score'])
            return drawn, label, f'{len(anns)} masks'


def safe_call(fn, *args):
    """``fn(*args)``, or ``(None, None, 'Error: ...')``: messages of input
    errors for the visitor, never a traceback (logged on the server)."""
    from ovsam.models.prompts import PromptError
    try:
        return fn(*args)
    except (VisitorError, PromptError) as e:
        return None, None, f'Error: {e}'
    except (ValueError, RuntimeError, FileNotFoundError) as e:  # bad vocabulary files, text tower missing, ...
        log.warning('request failed: %s', e)
        return None, None, f'Error: {e}'
    except Exception as e:  # noqa: BLE001  (a bug: logged with its traceback, summarised for the visitor)
        log.exception('internal error')
        return None, None, f'Error: internal error ({type(e).__name__}); details are in the server log'


# ---------------------------------------------------------------- the page
# A drag on the input image becomes a box: mouse down/up in image pixels (the
# <img> may be letterboxed), a dashed rectangle while dragging, then a click on
# the hidden #drag_btn, whose event reads window.ovsamDragBox (DRAG_EVENT_JS).
# The click the browser sends after a drag is swallowed so it adds no point.
DRAG_PAGE_JS = r"""
() => {
  if (window.ovsamDragInstalled) return;
  window.ovsamDragInstalled = true;
  let start = null, suppressUntil = 0;
  const band = document.createElement('div');
  band.id = 'ovsam-drag-band';
  band.style.cssText = 'position:fixed;border:2px dashed #ff8800;background:rgba(255,136,0,0.1);' +
                       'pointer-events:none;display:none;z-index:1000';
  document.body.appendChild(band);
  const imageOf = (e) => (e.target && e.target.tagName === 'IMG' && e.target.closest('#input_image')) ? e.target : null;
  const toPixels = (el, e) => {
    const r = el.getBoundingClientRect(), nw = el.naturalWidth, nh = el.naturalHeight;
    const s = Math.min(r.width / nw, r.height / nh);
    const ox = r.left + (r.width - nw * s) / 2, oy = r.top + (r.height - nh * s) / 2;
    return [Math.min(Math.max((e.clientX - ox) / s, 0), nw), Math.min(Math.max((e.clientY - oy) / s, 0), nh)];
  };
  document.addEventListener('dragstart', (e) => { if (imageOf(e)) e.preventDefault(); }, true);
  document.addEventListener('mousedown', (e) => {
    const el = imageOf(e);
    if (el && e.button === 0) { start = {el: el, p: toPixels(el, e), x: e.clientX, y: e.clientY}; e.preventDefault(); }
  }, true);
  document.addEventListener('mousemove', (e) => {
    if (!start) return;
    const x = Math.min(start.x, e.clientX), y = Math.min(start.y, e.clientY);
    band.style.left = x + 'px'; band.style.top = y + 'px';
    band.style.width = Math.abs(e.clientX - start.x) + 'px'; band.style.height = Math.abs(e.clientY - start.y) + 'px';
    band.style.display = Math.hypot(e.clientX - start.x, e.clientY - start.y) >= 6 ? 'block' : 'none';
  }, true);
  document.addEventListener('mouseup', (e) => {
    if (!start) return;
    const s = start; start = null; band.style.display = 'none';
    if (Math.hypot(e.clientX - s.x, e.clientY - s.y) < 6) return;  // a click: a point
    const p = toPixels(s.el, e);
    window.ovsamDragBox = [Math.min(s.p[0], p[0]), Math.min(s.p[1], p[1]),
                           Math.max(s.p[0], p[0]), Math.max(s.p[1], p[1])].map(Math.round);
    suppressUntil = performance.now() + 400;
    setTimeout(() => { const b = document.querySelector('#drag_btn'); if (b) b.click(); }, 60);
  }, true);
  document.addEventListener('click', (e) => {
    if (imageOf(e) && performance.now() < suppressUntil) { e.stopPropagation(); e.preventDefault(); }
  }, true);
}
"""
DRAG_EVENT_JS = "(img, pts, box, voc, cust) => [img, pts, (window.ovsamDragBox || []).join(', '), voc, cust]"
PAGE_CSS = '#drag_btn {display: none !important}'


def build_app(backend: DemoBackend, random_model: bool, note: Optional[str] = None):
    import gradio as gr

    with gr.Blocks(title='Open-Vocabulary SAM') as demo:
        gr.Markdown('# Open-Vocabulary SAM\nUpload an image, then click on an object (foreground / background '
                    'points), drag a box on it with the mouse (or type a box), or both, to get its mask and '
                    'class; or segment everything.')
        if random_model:
            gr.Markdown(RANDOM_MODEL_NOTE, elem_id='random-model-note')
        elif note:
            gr.Markdown(note, elem_id='model-note')
        points = gr.State([])
        with gr.Row():
            with gr.Column():
                image = gr.Image(label='Image (click: add a point; drag: draw a box)', type='numpy',
                                 sources=['upload'], image_mode='RGB', elem_id='input_image')
                click_mode = gr.Radio(['foreground', 'background'], value='foreground', label='Click adds a',
                                      elem_id='click_mode')
                box_text = gr.Textbox(label='Box x1,y1,x2,y2 (image pixels; drag on the image to draw it)',
                                      elem_id='box_text')
                with gr.Row():
                    box_btn = gr.Button('Segment (points + box)', elem_id='segment_btn')
                    all_btn = gr.Button('Segment everything', elem_id='everything_btn')
                    clear_btn = gr.Button('Clear prompts', elem_id='clear_btn')
                    drag_btn = gr.Button('Segment the dragged box', elem_id='drag_btn')
                vocab = gr.Dropdown(backend.choices, value=backend.choices[0], label='Vocabulary',
                                    elem_id='vocab_choice')
                lim = backend.limits
                custom = gr.Textbox(label=f'Custom classes (one class per line, at most {lim["max_custom_classes"]}; '
                                    'commas separate synonyms)', placeholder='cat\ndog\ncup,mug', lines=4,
                                    elem_id='custom_vocab')
            with gr.Column():
                result = gr.Image(label='Result', type='numpy', interactive=False, elem_id='output_image')
                label = gr.Label(num_top_classes=backend.top_k, label='Class (top-k)', elem_id='output_label')
                status = gr.Markdown('', elem_id='status')
        gr.Markdown(f'Limits: images up to {lim["max_megapixels"]:g} megapixels and {lim["max_upload_mb"]:g} MB.')

        def on_upload(img):
            return [], None, None, '', 'image loaded: click on an object or drag a box'

        def on_click(img, pts, mode, box, voc, cust, evt: gr.SelectData):
            x, y = evt.index[0], evt.index[1]
            pts = list(pts or []) + [[float(x), float(y), 1 if mode == 'foreground' else 0]]
            drawn, lab, msg = safe_call(backend.prompt, img, pts, box, voc, cust)
            return pts, drawn, lab, msg

        def on_segment(img, pts, box, voc, cust):
            return safe_call(backend.prompt, img, pts, box, voc, cust)

        def on_drag(img, pts, box, voc, cust):
            return (box, *safe_call(backend.prompt, img, pts, box, voc, cust))

        def on_everything(img, voc, cust):
            return safe_call(backend.everything, img, voc, cust)

        def on_clear():
            return [], None, None, '', ''

        image.upload(on_upload, [image], [points, result, label, box_text, status])
        image.clear(on_clear, [], [points, result, label, status, box_text])
        image.select(on_click, [image, points, click_mode, box_text, vocab, custom], [points, result, label, status])
        box_btn.click(on_segment, [image, points, box_text, vocab, custom], [result, label, status])
        drag_btn.click(on_drag, [image, points, box_text, vocab, custom], [box_text, result, label, status],
                       js=DRAG_EVENT_JS)
        all_btn.click(on_everything, [image, vocab, custom], [result, label, status])
        clear_btn.click(on_clear, [], [points, result, label, status, box_text])
    return demo


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--config', help='model config (default: the trained toy model, else the tiny random model)')
    p.add_argument('--checkpoint', help='trained OV-SAM checkpoint')
    p.add_argument('--work-dir', default=DEFAULT_WORK_DIR,
                   help='work dir of tools/tiny_pipeline.py whose trained toy model is served by default')
    p.add_argument('--random-model', action='store_true',
                   help='serve the tiny model with RANDOM weights even when a trained toy model exists')
    p.add_argument('--clip-checkpoint', help='CLIP weights to embed class names')
    p.add_argument('--embeddings', nargs='*', default=[], metavar='NAME=PATH',
                   help='precomputed embedding files for the built-in vocabularies (coco=..., lvis=..., shapes=...)')
    p.add_argument('--vocabulary', nargs='+', metavar='SPEC',
                   help='one more vocabulary offered in the choice: an embedding file (an official bare tensor '
                   'followed by its class names: FILE lvis), a class file or names')
    p.add_argument('--top-k', type=int, default=5, help='classes shown per prompt')
    p.add_argument('--cache-dir', help='folder to cache text embeddings in (optional)')
    p.add_argument('--host', default='127.0.0.1')
    p.add_argument('--port', type=int, default=7860)
    p.add_argument('--device', default='cpu')
    p.add_argument('--points-per-side', type=int, default=16, help='grid for "segment everything"')
    p.add_argument('--stability-thresh', type=float, default=0.9)
    p.add_argument('--max-megapixels', type=float, default=LIMITS['max_megapixels'])
    p.add_argument('--max-upload-mb', type=float, default=LIMITS['max_upload_mb'])
    p.add_argument('--max-custom-classes', type=int, default=LIMITS['max_custom_classes'])
    p.add_argument('--vocab-cache', type=int, default=LIMITS['vocab_cache'],
                   help='vocabularies kept in memory (least recently used dropped)')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='[web_demo] %(levelname)s %(message)s')
    import gradio as gr
    from PIL import Image
    files = {}
    for item in args.embeddings:
        if '=' not in item:
            raise SystemExit(f'--embeddings items are NAME=PATH, got {item!r}')
        k, v = item.split('=', 1)
        files[k.strip().lower()] = v
    # PIL refuses to decode images of more than twice this many pixels (before
    # gradio hands them over); DemoBackend refuses anything above the limit
    Image.MAX_IMAGE_PIXELS = int(args.max_megapixels * 1e6)
    pred, kind, note = load_predictor(args)
    backend = DemoBackend(pred, files, points_per_side=args.points_per_side, stability_thresh=args.stability_thresh,
                          vocabulary_file=args.vocabulary, top_k=args.top_k, max_megapixels=args.max_megapixels,
                          max_upload_mb=args.max_upload_mb, max_custom_classes=args.max_custom_classes,
                          vocab_cache=args.vocab_cache)
    demo = build_app(backend, kind == 'random', note)
    theme = gr.themes.Default(font=['ui-sans-serif', 'system-ui', 'sans-serif'],
                              font_mono=['ui-monospace', 'monospace'])  # no web fonts: works offline
    demo.queue(default_concurrency_limit=1, max_size=16)
    print(f'[web_demo] serving on http://{args.host}:{args.port} ({kind} model)', flush=True)
    demo.launch(server_name=args.host, server_port=args.port, theme=theme, ssr_mode=False, show_error=True,
                share=False, inbrowser=False, js=DRAG_PAGE_JS, css=PAGE_CSS,
                max_file_size=int(args.max_upload_mb * 2**20))
    return 0


if __name__ == '__main__':
    sys.exit(main())
