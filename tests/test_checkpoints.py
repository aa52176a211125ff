"""Official checkpoint layouts, strict loading and safe unpickling."""
import json
import os
import os.path as osp

import pytest
import torch

from conftest import REAL_CFG, REFERENCE, build_tiny, make_batch

pytestmark = pytest.mark.filterwarnings('ignore::UserWarning')


def _manifest(name):
    path = osp.join(REFERENCE, name)
    assert osp.isfile(path), f'reference manifest {path} is missing from the repository'
    with open(path) as f:
        return json.load(f)


def _meta_tensors(entries, key=lambda k, v: k):
    return {key(k, v): torch.empty(v['shape'], device='meta') for k, v in entries.items()}


@pytest.fixture(scope='module')
def real_model():
    """The real-size model (~300 M parameters) on the meta device: no memory, no weights."""
    import ovsam  # noqa: F401
    from mmdet.registry import MODELS
    from mmengine.config import Config
    cfg = Config.fromfile(REAL_CFG)
    with torch.device('meta'):
        model = MODELS.build(cfg.model)
    return model


def test_real_model_matches_official_inference_layout(real_model):
    ref = _manifest('ovsam_rn50x16_inference_model.json')
    ours = {k: tuple(v.shape) for k, v in real_model.state_dict().items()}
    theirs = {k: tuple(v['shape']) for k, v in ref['state_dict'].items()}
    assert sorted(set(theirs) - set(ours)) == []
    assert sorted(set(ours) - set(theirs)) == []
    bad = {k: (ours[k], theirs[k]) for k in ours if ours[k] != theirs[k]}
    assert bad == {}
    assert len(ours) == ref['num_tensors']


def test_real_model_non_persistent_buffers(real_model):
    ref = _manifest('ovsam_rn50x16_inference_model.json')
    assert 'mask_decoder.classifier.cls_embed' not in real_model.state_dict()
    assert real_model.mask_decoder.classifier.logit_scale.item() == pytest.approx(
        4.6052) if not real_model.mask_decoder.classifier.logit_scale.is_meta else True
    assert 'mask_decoder.logit_scale' in ref['non_persistent_buffers']


def test_official_sources_map_onto_every_module(real_model):
    """Each released file's keys (from the manifests) convert into the exact key
    set and shapes of the submodule it feeds: strict loading on meta tensors."""
    from ovsam.checkpoint import convert_sam_mask_decoder, load_state_dict_strict, official_ovsam_state_dict, \
        strip_prefix
    inf = _manifest('ovsam_rn50x16_inference_model.json')['state_dict']
    clip_sd = {}
    for k, v in inf.items():
        src = v.get('source', '')
        if k.startswith('backbone.'):
            oc_key = src.split("open_clip key '")[1].rstrip("')")
            clip_sd[oc_key] = torch.empty(v['shape'], device='meta')
    sam2clip = _meta_tensors(_manifest('sam2clip_vith_rn50x16.json')['state_dict'])
    clip2sam = _meta_tensors(_manifest('clip2sam_coco_rn50x16.json')['state_dict'])
    sam = _meta_tensors(_manifest('sam_vit_h_used_subset.json')['state_dict'])
    parts = official_ovsam_state_dict(clip=clip_sd, sam2clip=sam2clip, clip2sam=clip2sam, sam=sam)
    assert set(parts) == {'backbone', 'neck', 'fpn_neck', 'mask_decoder', 'pe'}
    for name, sd in parts.items():
        load_state_dict_strict(getattr(real_model, name), sd, name)
    # SAM ViT-H initialises CLIP2SAM's decoder and the adapter's position embedding
    dec = convert_sam_mask_decoder(strip_prefix(sam, 'mask_decoder'))
    load_state_dict_strict(real_model.mask_decoder.mask_decoder, dec, 'sam decoder')
    assert tuple(sam['image_encoder.pos_embed'].shape) == tuple(real_model.neck.pos_embed.shape)


def test_strict_loading_lists_problems(tiny_model):
    from ovsam.checkpoint import CheckpointError, load_state_dict_strict
    sd = dict(tiny_model.neck.state_dict())
    sd.pop('level_encoding.weight')
    sd['extra.weight'] = torch.zeros(1)
    sd['neck.0.weight'] = torch.zeros(1, 1, 1, 1)
    with pytest.raises(CheckpointError) as e:
        load_state_dict_strict(tiny_model.neck, sd, 'x.pth')
    msg = str(e.value)
    assert 'missing keys: level_encoding.weight' in msg
    assert 'unexpected keys: extra.weight' in msg
    assert 'neck.0.weight' in msg and 'shape' in msg


def test_missing_prefix_is_clear(tmp_path):
    from ovsam.checkpoint import CheckpointError, load_module_from_checkpoint
    p = tmp_path / 'c.pth'
    torch.save({'state_dict': {'foo.weight': torch.zeros(1)}}, p)
    with pytest.raises(CheckpointError, match="no key starts with 'neck_student.'"):
        load_module_from_checkpoint(torch.nn.Linear(1, 1), str(p), 'neck_student')


class Payload:

    def __reduce__(self):
        return (os.system, ('echo pwned',))


@pytest.fixture
def safe_mmengine():
    """mmengine's loader routed through safe_load for one test (ovsam.engine)."""
    from ovsam.engine import disable_safe_mmengine_checkpoints, enable_safe_mmengine_checkpoints
    enable_safe_mmengine_checkpoints()
    yield
    disable_safe_mmengine_checkpoints()


def test_pickle_payload_is_refused(tmp_path, safe_mmengine):
    from ovsam.checkpoint import CheckpointError, safe_load
    p = tmp_path / 'evil.pth'
    torch.save({'state_dict': {}, 'x': Payload()}, p)
    with pytest.raises(CheckpointError, match='refusing to load'):
        safe_load(str(p))
    # also through mmengine's own loader (load_from / resume use it)
    from mmengine.runner import load_checkpoint
    with pytest.raises(CheckpointError, match='refusing to load'):
        load_checkpoint(torch.nn.Linear(1, 1), str(p))


def test_mmengine_checkpoint_meta_loads_weights_only(tmp_path, safe_mmengine):
    """What mmengine's runner writes (message hub with HistoryBuffers of numpy
    scalars, numpy dtypes) loads with weights_only=True through mmengine's own
    loader once a run opts in (ovsam.engine), and through safe_load."""
    import numpy as np
    from mmengine.logging import MessageHub
    from ovsam.checkpoint import safe_load
    from mmengine.runner import load_checkpoint
    hub = MessageHub.get_instance('ovsam_test_hub')
    hub.update_scalar('train/loss', np.float64(0.5))
    hub.update_scalar('train/lr', 1e-4)
    hub.update_info('iter', 3)
    model = torch.nn.Linear(2, 2)
    ckpt = dict(meta=dict(epoch=1, iter=3, seed=np.int64(7), dtype=np.dtype('float32'),
                          message_hub=hub.state_dict()),
                state_dict=model.state_dict(), optimizer=torch.optim.SGD(model.parameters(), 0.1).state_dict())
    p = tmp_path / 'epoch_1.pth'
    torch.save(ckpt, p)
    out = load_checkpoint(torch.nn.Linear(2, 2), str(p))
    assert out['meta']['iter'] == 3
    assert safe_load(str(p))['meta']['seed'] == 7
    restored = MessageHub.get_instance('ovsam_test_hub_restored')
    restored.load_state_dict(out['meta']['message_hub'])
    assert restored.get_scalar('train/loss').current() == 0.5


def _tiny_clip(tiny_cfg):
    from open_clip.model import CLIP
    torch.manual_seed(3)
    return CLIP(**tiny_cfg.tiny_clip_cfg).eval()


def test_backbone_regrouping_reproduces_open_clip(tiny_cfg, tmp_path):
    """Loading an open_clip checkpoint gives the same image embedding as
    open_clip's own forward."""
    from ovsam.models import OpenCLIPBackbone
    clip = _tiny_clip(tiny_cfg)
    p = tmp_path / 'tiny_clip.pt'
    torch.save(clip.state_dict(), p)
    bb = OpenCLIPBackbone('tiny', tiny_cfg.tiny_clip_cfg, init_cfg=dict(type='Pretrained', checkpoint=str(p)))
    bb.init_weights()  # like mmengine's Pretrained init, loading happens here
    s = tiny_cfg.tiny_clip_cfg.vision_cfg.image_size
    x = torch.randn(2, 3, s, s)
    with torch.no_grad():
        ref = clip.encode_image(x)
        ours = bb.head(bb(x)[-1])
        # region embedding of the whole image == CLIP's image embedding
        rois = torch.tensor([[0, 0, 0, s, s], [1, 0, 0, s, s]], dtype=torch.float32)
        region = bb.box_embed(bb(x)[-1], rois)
    assert torch.allclose(ours, ref, atol=1e-5)
    assert torch.allclose(region, ref, atol=1e-4)


def test_torchscript_clip_archive_loads(tiny_cfg, tmp_path):
    from ovsam.checkpoint import load_clip_state_dict
    clip = _tiny_clip(tiny_cfg)
    s = tiny_cfg.tiny_clip_cfg.vision_cfg.image_size
    traced = torch.jit.trace(clip.visual, torch.randn(1, 3, s, s))
    p = tmp_path / 'visual_ts.pt'
    traced.save(str(p))
    sd = load_clip_state_dict(str(p))
    assert set(sd) == set(clip.visual.state_dict())


def _write_official_files(model, clip, tmp_path):
    """Write the four released files at tiny size, in the official layouts."""
    from segment_anything.modeling import MaskDecoder, TwoWayTransformer
    clip_p = tmp_path / 'clip.pt'
    torch.save(clip.state_dict(), clip_p)
    prefixed = lambda p, sd: {f'{p}.{k}': v for k, v in sd.items()}  # noqa: E731
    sam2clip_p = tmp_path / 'sam2clip_tiny.pth'
    torch.save(dict(state_dict={**prefixed('backbone_student', model.backbone.state_dict()),
                                **prefixed('neck_student', model.neck.state_dict())},
                    meta=dict(epoch=24)), sam2clip_p)
    clip2sam_p = tmp_path / 'clip2sam_tiny.pth'
    torch.save(dict(state_dict={k: v for k, v in model.state_dict().items()}, meta=dict(epoch=12)), clip2sam_p)
    torch.manual_seed(5)
    full_dec = MaskDecoder(transformer_dim=64, transformer=TwoWayTransformer(2, 64, 4, 256))
    sam_p = tmp_path / 'sam_tiny.pth'
    torch.save({**prefixed('prompt_encoder', model.pe.state_dict()),
                **prefixed('mask_decoder', full_dec.state_dict()),
                'image_encoder.pos_embed': torch.randn(1, 16, 16, 64)}, sam_p)
    return dict(clip=str(clip_p), sam2clip=str(sam2clip_p), clip2sam=str(clip2sam_p), sam=str(sam_p))


def test_official_format_round_trip(tiny_cfg, tmp_path):
    """A model assembled from official-format files equals the model they came from."""
    from ovsam.checkpoint import load_clip_visual
    src = build_tiny(tiny_cfg, seed=1)
    clip = _tiny_clip(tiny_cfg)
    torch.save(clip.state_dict(), tmp_path / 'c.pt')
    load_clip_visual(src.backbone, str(tmp_path / 'c.pt'))
    files = _write_official_files(src, clip, tmp_path)
    dst = build_tiny(tiny_cfg, seed=2, checkpoints=files)
    dst.init_weights()  # must not overwrite loaded weights
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k]), k
    dst.mask_decoder.classifier.set_vocabulary(src.mask_decoder.classifier.cls_embed.permute(1, 2, 0)[:-1])
    inputs, samples = make_batch(src, boxes=[[20., 30., 120., 150.]])
    _, samples2 = make_batch(src, boxes=[[20., 30., 120., 150.]])
    with torch.no_grad():
        a = src.predict(inputs, samples)[0].pred_instances
        b = dst.predict(inputs, samples2)[0].pred_instances
    assert torch.equal(a.masks, b.masks) and torch.equal(a.labels, b.labels)


def test_sam_checkpoint_initialises_decoder_and_pos_embed(tiny_cfg, tmp_path):
    from ovsam.models import CLIP2SAMHead, SAM2CLIPAdapter
    src = build_tiny(tiny_cfg)
    files = _write_official_files(src, _tiny_clip(tiny_cfg), tmp_path)
    sam = torch.load(files['sam'], weights_only=True)
    head_cfg = dict(tiny_cfg.model.mask_decoder)
    head_cfg.pop('type')
    head = CLIP2SAMHead(**head_cfg, sam_checkpoint=files['sam'])
    head.init_weights()
    assert torch.equal(head.mask_decoder.mask_tokens.weight, sam['mask_decoder.mask_tokens.weight'][:1])
    neck_cfg = dict(tiny_cfg.model.neck)
    neck_cfg.pop('type')
    neck = SAM2CLIPAdapter(**neck_cfg, sam_checkpoint=files['sam'])
    neck.init_weights()
    assert torch.equal(neck.pos_embed, sam['image_encoder.pos_embed'])
    neck_cfg['embed_dim'] = 32
    neck_cfg['num_heads'] = 2
    from ovsam.checkpoint import CheckpointError
    with pytest.raises(CheckpointError, match='pos_embed has shape'):
        SAM2CLIPAdapter(**neck_cfg, sam_checkpoint=files['sam']).init_weights()


def test_missing_checkpoint_file_is_clear(tiny_cfg):
    from ovsam.checkpoint import CheckpointError
    with pytest.raises(CheckpointError, match='does not exist'):
        build_tiny(tiny_cfg, checkpoints=dict(sam2clip='/nonexistent/sam2clip.pth'))


# ------------------------------------------------ the released large-vocabulary set
LARGE_VOCAB_CFG = os.path.join(os.path.dirname(REAL_CFG), '..', '..', 'ovsam_rn50x16_large-vocab_lvis-v3det.py')


def _large_vocab_files_on_meta():
    """The large-vocabulary release's state dicts (official layouts) on the meta device."""
    clip2sam = _meta_tensors(_manifest('clip2sam_coco_rn50x16.json')['state_dict'])
    decoder = {k: v for k, v in clip2sam.items() if k.startswith('mask_decoder.')}
    fpn = {k: v for k, v in clip2sam.items() if k.startswith('fpn_neck.')}
    fpn['roi_conv.0.conv.weight'] = torch.empty(768, 256, 1, 1, device='meta')
    sam2clip = _meta_tensors(_manifest('sam2clip_vith_rn50x16.json')['state_dict'])
    return decoder, fpn, sam2clip


def test_large_vocab_config_matches_the_released_layout():
    """The one config of the large-vocabulary set builds the released
    architecture (7x7 RoIs) and its files' keys load strictly into it."""
    import ovsam  # noqa: F401
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from ovsam.checkpoint import load_state_dict_strict, official_ovsam_state_dict
    cfg = Config.fromfile(LARGE_VOCAB_CFG)
    ck = cfg.model.checkpoints
    assert os.path.basename(ck.sam2clip) == 'sam2clip_vith_rn50.pth'
    assert {k: os.path.basename(v) for k, v in ck.clip2sam.items()} == dict(
        mask_decoder='ovsam_R50x16_lvisnorare.pth', fpn_neck='R50x16_fpn_lvis_norare_v3det.pth',
        roi_conv='R50x16_fpn_lvis_norare_v3det.pth')
    clf = cfg.model.mask_decoder.classifier
    assert os.path.basename(clf.vocabulary) == 'RN50x16_LVISV1Dataset.pth' and clf.class_names == 'lvis'
    assert cfg.model.mask_decoder.roi_extractor.roi_layer.output_size == 7
    m = cfg.model.copy()
    m.checkpoints = None
    m.mask_decoder.classifier.vocabulary = None
    with torch.device('meta'):
        model = MODELS.build(m)
    assert tuple(model.mask_decoder.roi.roi_layers[0].output_size) == (7, 7)
    decoder, fpn, sam2clip = _large_vocab_files_on_meta()
    parts = official_ovsam_state_dict(sam2clip=sam2clip,
                                      clip2sam_parts=dict(mask_decoder=decoder, fpn_neck=fpn, roi_conv=fpn))
    assert set(parts) == {'neck', 'fpn_neck', 'mask_decoder'}
    for name, sd in parts.items():
        load_state_dict_strict(getattr(model, name), sd, name)


def test_large_vocab_vocabulary_file_in_the_official_layout(tmp_path):
    """RN50x16_LVISV1Dataset.pth: a bare [1203, synonyms, 768] tensor named by 'lvis'."""
    from ovsam.models import TextClassifier
    g = torch.Generator().manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(1203, 3, 768, generator=g), dim=-1)
    emb[:, 2] = emb[:, 0]  # padded by repeating the first synonym, as released
    path = str(tmp_path / 'RN50x16_LVISV1Dataset.pth')
    torch.save(emb, path)
    clf = TextClassifier(vocabulary=path, class_names='lvis', num_classes=1203, embed_dim=768)
    assert clf.num_classes == 1203 and clf.class_names[0] == 'aerosol_can'
    assert tuple(clf.cls_embed.shape) == (768, 1204, 3)  # held in the released layout
    x = torch.randn(4, 768, generator=g)
    cos = torch.einsum('nd,kpd->nkp', torch.nn.functional.normalize(x, dim=-1), emb).max(-1).values
    assert torch.allclose(clf(x)[:, :-1], clf.logit_scale.exp() * cos, atol=1e-4)
    with pytest.raises(ValueError, match='bare tensor'):
        TextClassifier(vocabulary=path)


def _write_large_vocab_files(model, clip, tmp_path, roi_conv):
    """The large-vocabulary set at tiny size, in its release's layouts."""
    files = _write_official_files(model, clip, tmp_path)
    prefixed = lambda p, sd: {f'{p}.{k}': v for k, v in sd.items()}  # noqa: E731
    torch.save(dict(state_dict=prefixed('neck_student', model.neck.state_dict())), tmp_path / 'sam2clip_vith_rn50.pth')
    torch.save(dict(state_dict=prefixed('mask_decoder', model.mask_decoder.state_dict()), meta=dict(epoch=12)),
               tmp_path / 'ovsam_R50x16_lvisnorare.pth')
    torch.save(dict(state_dict={**prefixed('fpn_neck', model.fpn_neck.state_dict()),
                                **prefixed('roi_conv', roi_conv)}), tmp_path / 'R50x16_fpn_lvis_norare_v3det.pth')
    fpn = str(tmp_path / 'R50x16_fpn_lvis_norare_v3det.pth')
    return dict(clip=files['clip'], sam=files['sam'], sam2clip=str(tmp_path / 'sam2clip_vith_rn50.pth'),
                clip2sam=dict(mask_decoder=str(tmp_path / 'ovsam_R50x16_lvisnorare.pth'), fpn_neck=fpn,
                              roi_conv=fpn))


def test_large_vocab_split_files_round_trip_strictly(tiny_cfg, tmp_path):
    """Assembled from the split files, the model has the decoder file's head
    with the FPN file's RoI projection; any missing or extra key is an error."""
    from ovsam.checkpoint import CheckpointError, load_clip_visual
    src = build_tiny(tiny_cfg, seed=1)
    clip = _tiny_clip(tiny_cfg)
    torch.save(clip.state_dict(), tmp_path / 'c.pt')
    load_clip_visual(src.backbone, str(tmp_path / 'c.pt'))
    roi = {k: torch.randn_like(v) for k, v in src.mask_decoder.roi_conv.state_dict().items()}
    files = _write_large_vocab_files(src, clip, tmp_path, roi)
    dst = build_tiny(tiny_cfg, seed=2, checkpoints=files)
    dst.init_weights()
    for k, v in src.state_dict().items():
        want = roi[k[len('mask_decoder.roi_conv.'):]] if k.startswith('mask_decoder.roi_conv.') else v
        assert torch.equal(want, dst.state_dict()[k]), k
    # strictness: each part must hold exactly its module's keys
    dec = files['clip2sam']['mask_decoder']
    sd = torch.load(dec, weights_only=True)
    sd['state_dict'].pop('mask_decoder.label_token.weight')
    torch.save(sd, dec)
    with pytest.raises(CheckpointError, match='missing keys: label_token.weight'):
        build_tiny(tiny_cfg, checkpoints=files)
    files = _write_large_vocab_files(src, clip, tmp_path, dict(roi, extra=torch.zeros(1)))
    with pytest.raises(CheckpointError, match=r"roi_conv.*unexpected keys \['extra'\]"):
        build_tiny(tiny_cfg, checkpoints=files)
    files = _write_large_vocab_files(src, clip, tmp_path, roi)
    fpn = files['clip2sam']['fpn_neck']
    sd = torch.load(fpn, weights_only=True)
    sd['state_dict']['fpn_neck.extra.weight'] = torch.zeros(1)
    torch.save(sd, fpn)
    with pytest.raises(CheckpointError, match='unexpected keys: extra.weight'):
        build_tiny(tiny_cfg, checkpoints=files)
    with pytest.raises(CheckpointError, match='needs the parts mask_decoder'):
        build_tiny(tiny_cfg, checkpoints=dict(clip2sam=dict(mask_decoder=dec)))


def test_safe_load_maps_zip_files_instead_of_reading_them(tmp_path):
    """Taking one small tensor from a large checkpoint (SAM-H's prompt encoder
    from its 2.5 GB file) reads that tensor, not the file: the process's peak
    memory grows by far less than the file's size."""
    import subprocess
    import sys
    path = tmp_path / 'big.pth'
    torch.save({'big': torch.zeros(64 * 2**20), 'small': torch.arange(10.)}, path)  # 256 MiB
    code = (
        'import resource, torch\n'
        'from ovsam.checkpoint import safe_load\n'
        'before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n'
        f'sd = safe_load({str(path)!r})\n'
        'assert torch.equal(sd["small"], torch.arange(10.)) and sd["big"].shape == (64 * 2**20,)\n'
        'print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)\n')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    grown_mib = float(out.stdout.strip().splitlines()[-1])
    assert grown_mib < 64, f'peak RSS grew by {grown_mib:.0f} MiB loading a 256 MiB file'
