"""tools/analysis/benchmark.py --quick runs and writes a complete report."""
import json
import os.path as osp
import subprocess
import sys

from conftest import ROOT


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
