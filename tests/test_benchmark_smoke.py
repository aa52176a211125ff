"""tools/analysis/benchmark.py --quick runs and writes a complete report."""
import json
import os.path as osp
import subprocess
import sys

import pytest

from conftest import ROOT


def _load_benchmark():
    import importlib.util
    spec = importlib.util.spec_from_file_location('ovsam_benchmark',
                                                  osp.join(ROOT, 'tools', 'analysis', 'benchmark.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_benchmark_quick(tmp_path):
    out = tmp_path / 'bench.json'
    cmd = [sys.executable, osp.join(ROOT, 'tools', 'analysis', 'benchmark.py'), '--quick', '--out', str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report['config']['quick'] is True
    assert report['matmul_gflops'] > 0
    for name in ('ovsam', 'sam_crop_clip', 'sam_maskpool_clip'):
        m = report['models'][name]
        assert 'error' not in m, m.get('error')
        for key in ('per_image_s', 'per_prompt_ms', 'peak_rss_mib', 'total_gflops', 'achieved_gflops_per_s',
                    'flops_g', 'stages_s', 'matmul_gflops', 'image_encoder'):
            assert key in m, (name, key)
        assert m['per_image_s'] > 0 and m['total_gflops'] > 0 and m['peak_rss_mib'] > 0
        assert 0 < m['image_encoder']['matmul_fraction']
    dec = report['models']['ovsam']['decode']
    for key in ('num_prompts', 'per_prompt_ms', 'per_prompt_floor_ms', 'vs_floor', 'model_gflops',
                'executed_gflops', 'vs_executed_floor'):
        assert key in dec
    # the floor counts the plain modules; the fast path folds projections away
    assert dec['model_gflops'] > dec['executed_gflops'] > 0
    assert report['models']['ovsam']['flops_g']['sam2clip_adapter'] > 0  # SDPA counted
    assert set(report['ratios']) == {'ovsam_vs_sam_crop_clip', 'ovsam_vs_sam_maskpool_clip'}
    assert report['vocab']['load_s'] > 0
    for key in ('ovsam_vs_crop_time', 'image_encoder_matmul_fraction', 'decode_vs_floor', 'peak_rss_gib',
                'vocab_load_s'):
        assert key in report['targets'] and report['targets'][key]['value'] is not None


def _flops_plain_and_fast_block(bench, window, size):
    """FLOPs counted on a plain ViT block (64 channels) and on its fast copy,
    plus the fast block and its input."""
    import copy
    from functools import partial

    import torch
    import torch.nn as nn
    from segment_anything.modeling.image_encoder import Block

    from ovsam.models.fast_inference import optimize_for_inference
    torch.manual_seed(0)
    plain = Block(64, 4, 4.0, True, partial(nn.LayerNorm, eps=1e-6), nn.GELU, True, True, window,
                  (size, size)).eval()
    fast = copy.deepcopy(plain)
    optimize_for_inference(fast, paths=['attention'])
    x = torch.randn(1, size, size, 64)
    with torch.inference_mode():
        _, f_plain = bench.count_flops(lambda: plain(x))
        _, f_fast = bench.count_flops(lambda: fast(x))
    return f_plain, f_fast, fast, x


def test_flop_counter_counts_fast_block_like_plain():
    """The benchmark's FLOP counter sees the fast ViT block's in-place GEMMs and
    CPU SDPA: a global-attention block counts the same FLOPs either way."""
    f_plain, f_fast, _, _ = _flops_plain_and_fast_block(_load_benchmark(), window=0, size=8)
    assert f_plain > 2 * 64 * 64 * 64 * 12  # at least the qkv/proj/MLP GEMMs
    assert f_fast == f_plain


def test_targets_use_the_best_probe_of_the_run():
    """The encoder fraction and the decode floor are judged against the fastest
    matmul probe of any process in the run, not the OV-SAM worker's own."""
    bench = _load_benchmark()
    row = dict(impl='fast', per_prompt_ms=1., image_level_s=1., total_gflops=1., achieved_gflops_per_s=1.,
               peak_rss_mib=1024.)
    report = dict(matmul_gflops=120., matmul_gflops_end=110., models=dict(
        ovsam=dict(row, per_image_s=10., matmul_gflops=100.,
                   image_encoder=dict(gflops=1000., time_s=10., best_time_s=8., gflops_per_s=100.,
                                      best_gflops_per_s=125.),
                   decode=dict(num_prompts=10, time_s=2., per_prompt_ms=200., model_gflops=400.,
                               executed_gflops=100., executed_gflops_per_s=50., matmul_gflops=100.)),
        sam_crop_clip=dict(row, per_image_s=40., matmul_gflops=200.)))
    text = bench.summarise(report)
    t = report['targets']
    # the encoder's best repeat against the best probe (200); its median repeat reported beside it
    assert t['image_encoder_matmul_fraction']['value'] == 0.625 and t['image_encoder_matmul_fraction']['met'] is False
    assert report['models']['ovsam']['image_encoder']['median_matmul_fraction_best_probe'] == 0.5
    assert t['decode_vs_floor']['value'] == 1.0  # 2 s against 400 GFLOP at 200 GFLOP/s
    assert report['models']['ovsam']['decode']['vs_executed_floor'] == 4.0
    assert t['ovsam_vs_crop_time']['value'] == 0.25 and t['ovsam_vs_crop_time']['met']
    assert 'image_encoder_matmul_fraction: 0.625 (target >= 0.75: NOT met)' in text
    assert '= 0.625 / 0.500 of the best matmul probe of the run (200.0 GFLOP/s)' in text


def test_model_flops_count_the_padding_of_windowed_blocks():
    """plain_padded_blocks counts a windowed fast block like the plain block
    (whose padded tokens go through qkv/proj), more than the fast one executes,
    and puts the fast block back afterwards."""
    import torch

    from ovsam.models.fast_inference import FastBlock
    bench = _load_benchmark()
    f_plain, f_fast, fast, x = _flops_plain_and_fast_block(bench, window=4, size=10)
    with torch.inference_mode(), bench.plain_padded_blocks(fast):
        _, f_model = bench.count_flops(lambda: fast(x))
    assert type(fast) is FastBlock
    assert f_model == f_plain
    pad, real = 12 * 12, 10 * 10  # 10x10 padded to 12x12 for 4x4 windows
    assert f_plain - f_fast == 2 * (pad - real) * 64 * (3 * 64 + 64)  # qkv + proj of the padding


def test_click_benchmark_quick(tmp_path):
    """tools/analysis/benchmark_click.py on the tiny model: every kind of click
    timed for the fast and the plain predictor (figures, not timings)."""
    out = tmp_path / 'click.json'
    cmd = [sys.executable, osp.join(ROOT, 'tools', 'analysis', 'benchmark_click.py'), '--quick', '--plain',
           '--threads', '1', '--repeats', '2', '--warmup', '0', '--height', '64', '--width', '80', '--out', str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert set(r['clicks']) == {f'{i}/{k}' for i in ('fast', 'plain') for k in ('box', 'point', 'refine')}
    for v in r['clicks'].values():
        assert 0 < v['min_ms'] <= v['median_ms'] <= v['p90_ms']
    assert r['fast_set_image_s'] > 0 and r['plain_set_image_s'] > 0
    assert 'fast  box' in proc.stdout


def test_benchmark_photo_input():
    """--photo: a scikit-image photo, resized and normalised, as OV-SAM's input."""
    import torch
    bench = _load_benchmark()
    x = bench.photo_input('astronaut', 64)
    assert x.shape == (1, 3, 64, 64) and torch.isfinite(x).all()
    assert -3 < float(x.mean()) < 3 and float(x.std()) > 0.2  # normalised, not flat
    img, sample = bench.make_inputs(64, 3, photo='coffee')
    assert torch.equal(img, bench.photo_input('coffee', 64)) and len(sample.gt_instances) == 3


@pytest.mark.slow
def test_everything_benchmark_quick(tmp_path):
    """tools/analysis/benchmark_everything.py with tiny models: both generators
    run in their own process and the report has the ratio (figures, not timings)."""
    out = tmp_path / 'everything.json'
    cmd = [sys.executable, osp.join(ROOT, 'tools', 'analysis', 'benchmark_everything.py'), '--quick', '--size', '96',
           '--points-per-side', '2', '--threads', '1', '--out', str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    r = json.loads(out.read_text())
    for name in ('ovsam', 'sam'):
        m = r['models'][name]
        assert m['generate_s'] > 0 and m['peak_rss_gib'] > 0 and m['masks'] >= 0
    assert r['models']['ovsam']['labelled'] and r['time_ratio'] > 0


def test_cold_start_script_names_missing_files(tmp_path):
    """tools/analysis/cold_start.py load on a folder without the files says how to make them."""
    cmd = [sys.executable, osp.join(ROOT, 'tools', 'analysis', 'cold_start.py'), 'load', str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert 'RN50x16.pt' in proc.stderr and 'make' in proc.stderr
