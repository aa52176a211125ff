"""Joint vocabulary: merging sources, id maps, files; resumable embedding."""
import json
import os

import numpy as np
import pytest
import torch

TINY_CLIP_CFG = dict(embed_dim=16, vision_cfg=dict(image_size=64, layers=[1, 1, 1, 1], width=8),
                     text_cfg=dict(context_length=16, vocab_size=49408, width=16, heads=2, layers=1))


def test_merge_synonyms_case_unicode_and_id_maps():
    from ovsam.vocabulary import JointVocabulary
    j = JointVocabulary.build({
        'seg': ['cat,kitty', 'dog', 'traffic_light'],
        'det': ['Puppy', ' DOG ', 'ｃａｔ', 'Traffic  Light,signal'],
    })
    # 'DOG' and full-width 'ｃａｔ' match after NFKC + casefold + spaces
    assert j.class_names == ['cat,kitty', 'dog', 'traffic light,signal', 'puppy']
    assert j.source_ids('seg').tolist() == [0, 1, 2]
    assert j.source_ids('det').tolist() == [3, 1, 0, 2]
    assert j.source_ids('seg').dtype == np.int64
    with pytest.raises(KeyError, match='unknown source'):
        j.source_ids('nope')


def test_wordnet_ids_merge_and_conflicts_stay_apart():
    from ovsam.vocabulary import JointVocabulary
    j = JointVocabulary.build({
        'lvis': ['crane', 'bat', 'tench'],
        'in21k': ['n02012849 crane', 'n03126707 crane,derrick', 'n02139199 bat,chiropteran',
                  'n02110341 dalmatian,coach dog'],
        'extra': dict(class_names=['Derrick', 'firehouse dog'], wnids=['n03126707', 'n02110341']),
    })
    ids = {k: j.source_ids(k).tolist() for k in j.sources}
    # the first in21k crane joins LVIS's crane; the second has another WordNet id: a class of its own
    assert ids['lvis'] == [0, 1, 2]
    assert ids['in21k'][0] == 0 and ids['in21k'][1] not in (0, 1, 2)
    assert j.class_names[ids['in21k'][1]] == 'crane,derrick'
    # same WordNet id merges even without a shared synonym
    assert ids['extra'] == [ids['in21k'][1], ids['in21k'][3]]
    assert j.class_names[ids['in21k'][3]] == 'dalmatian,coach dog,firehouse dog'
    assert j.wnids[0] == 'n02012849' and j.wnids[2] == ''
    assert any('different WordNet ids' in c for c in j.conflicts)


def test_one_source_keeps_its_classes_apart_unless_identical():
    from ovsam.vocabulary import JointVocabulary
    j = JointVocabulary.build({'a': ['cat', 'cat,kitty']})
    assert j.class_names == ['cat', 'cat,kitty'] and j.source_ids('a').tolist() == [0, 1]
    # identical synonym sets (two synsets with one lemma) cannot be told apart: one class
    j = JointVocabulary.build({'in21k': ['n00000001 crane', 'n00000002 Crane']})
    assert j.class_names == ['crane'] and j.source_ids('in21k').tolist() == [0, 0]
    assert j.wnids == ['n00000001,n00000002']
    assert any('identical synonyms' in c for c in j.conflicts)


def test_source_files_and_bad_sources(tmp_path):
    from ovsam.vocabulary import JointVocabulary
    (tmp_path / 'in21k.txt').write_text('# ImageNet-21k\nn01440764 tench,Tinca tinca\nn01443537\tgoldfish\n')
    coco = dict(images=[], annotations=[], categories=[
        dict(id=7, name='goldfish', synonyms=['goldfish', 'Carassius auratus']), dict(id=2, name='aerosol_can')])
    (tmp_path / 'lvis.json').write_text(json.dumps(coco))
    (tmp_path / 'plain.txt').write_text('tench\nshark\n')
    j = JointVocabulary.build({'lvis': str(tmp_path / 'lvis.json'), 'in21k': str(tmp_path / 'in21k.txt'),
                               'plain': str(tmp_path / 'plain.txt')})
    assert j.class_names == ['aerosol can', 'goldfish,carassius auratus', 'tench,tinca tinca', 'shark']
    assert j.source_ids('lvis').tolist() == [0, 1]  # categories by id
    assert j.source_ids('in21k').tolist() == [2, 1] and j.source_ids('plain').tolist() == [2, 3]
    assert j.wnids == ['', 'n01443537', 'n01440764', '']
    with pytest.raises(ValueError, match='line 2.*expected a WordNet id'):
        JointVocabulary.build({'x': ['n01440764 tench', 'goldfish']})
    with pytest.raises(ValueError, match='has no class name'):
        JointVocabulary.build({'x': ['n01440764 tench', 'n01443537']})
    with pytest.raises(ValueError, match="source 'x'.*not a WordNet id"):
        JointVocabulary.build({'x': dict(class_names=['a'], wnids=['1234'])})
    with pytest.raises(ValueError, match="source 'x'.*duplicate"):
        JointVocabulary.build({'x': ['cat', 'Cat']})
    with pytest.raises(FileNotFoundError, match="source 'x'"):
        JointVocabulary.build({'x': str(tmp_path / 'missing.txt')})
    with pytest.raises(ValueError, match='non-empty dict'):
        JointVocabulary.build({})


def test_save_load_round_trip(tmp_path):
    from ovsam.vocabulary import JointVocabulary
    j = JointVocabulary.build({'a': ['cat', 'dog'], 'b': ['n00000001 dog,hound', 'n00000002 emu']})
    path = str(tmp_path / 'joint.json')
    j.save(path)
    k = JointVocabulary.load(path)
    assert k.class_names == j.class_names and k.wnids == j.wnids and k.conflicts == j.conflicts
    for s in ('a', 'b'):
        assert k.source_ids(s).tolist() == j.source_ids(s).tolist()
    assert sorted(os.listdir(tmp_path)) == ['joint.json']
    (tmp_path / 'bad.json').write_text('{"class_names": ["a"]}')
    with pytest.raises(ValueError, match='not a joint vocabulary'):
        JointVocabulary.load(str(tmp_path / 'bad.json'))


class Interrupt(Exception):
    pass


def _encoder():
    from ovsam.vocabulary import TextEncoder
    return TextEncoder('tiny', TINY_CLIP_CFG, allow_random=True, random_seed=3, batch_size=64)


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path):
    from ovsam.vocabulary import embed_synonyms
    from ovsam.vocabulary.resumable import embed_resumable
    synonyms = [f'thing {i}' for i in range(23)]
    enc = _encoder()
    full = embed_resumable(enc, synonyms, str(tmp_path / 'a'), chunk_size=5, progress=False)
    model, tok = enc.text_model
    assert torch.allclose(full, embed_synonyms(model, tok, synonyms), atol=1e-6)

    def stop_after_two(i, n):
        if i == 1:
            raise Interrupt
    work = str(tmp_path / 'b')
    with pytest.raises(Interrupt):
        embed_resumable(_encoder(), synonyms, work, chunk_size=5, progress=False, on_chunk=stop_after_two)
    assert sorted(f for f in os.listdir(work) if f.startswith('chunk_')) == ['chunk_000000.pth', 'chunk_000001.pth']
    done = []
    again = embed_resumable(_encoder(), synonyms, work, chunk_size=5, progress=False,
                            on_chunk=lambda i, n: done.append(i))
    assert done == [2, 3, 4]  # finished chunks were not recomputed
    assert torch.equal(again, full)
    # a damaged chunk is recomputed with a warning, the result is unchanged
    with open(os.path.join(work, 'chunk_000003.pth'), 'r+b') as f:
        f.truncate(40)
    done.clear()
    with pytest.warns(RuntimeWarning, match='cannot be used'):
        again = embed_resumable(_encoder(), synonyms, work, chunk_size=5, progress=False,
                                on_chunk=lambda i, n: done.append(i))
    assert done == [3] and torch.equal(again, full)


def test_work_folder_of_another_run_is_refused(tmp_path):
    from ovsam.vocabulary import TextEncoder
    from ovsam.vocabulary.resumable import embed_resumable
    work = str(tmp_path / 'w')
    embed_resumable(_encoder(), ['cat', 'dog'], work, chunk_size=1, progress=False)
    other_model = TextEncoder('tiny', TINY_CLIP_CFG, allow_random=True, random_seed=4)
    with pytest.raises(ValueError, match='holds chunks of another run'):
        embed_resumable(other_model, ['cat', 'dog'], work, chunk_size=1, progress=False)
    with pytest.raises(ValueError, match='holds chunks of another run'):
        embed_resumable(_encoder(), ['cat', 'emu'], work, chunk_size=1, progress=False)


def test_build_vocabulary_tool_resumes_and_writes_a_flat_table(tmp_path, capsys):
    import importlib.util
    from conftest import ROOT
    from ovsam.models import TextClassifier
    from ovsam.vocabulary import JointVocabulary, load_text_embeddings
    spec = importlib.util.spec_from_file_location('build_vocabulary', os.path.join(ROOT, 'tools',
                                                                                   'build_vocabulary.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    (tmp_path / 'cfg.json').write_text(json.dumps(TINY_CLIP_CFG))
    (tmp_path / 'in21k.txt').write_text('n00000001 cat,kitty\nn00000002 emu\nn00000003 auk,great auk\n')

    def argv(out):
        return ['--source', 'seg=' + 'cat\ndog\ncup,mug', '--source', f'in21k={tmp_path / "in21k.txt"}',
                '--vocab-out', str(tmp_path / 'joint.json'), '--out', str(out), '--clip-model', 'tiny',
                '--clip-cfg', str(tmp_path / 'cfg.json'), '--allow-random-weights', '--chunk-size', '2']

    assert tool.main(argv(tmp_path / 'ref.pth')) == 0
    joint = JointVocabulary.load(str(tmp_path / 'joint.json'))
    assert joint.class_names == ['cat,kitty', 'dog', 'cup,mug', 'emu', 'auk,great auk']
    assert not os.path.exists(str(tmp_path / 'ref.pth.parts'))  # chunks removed after success

    def crash(i, n):
        if i == 1:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        tool.main(argv(tmp_path / 'out.pth'), on_chunk=crash)
    assert not os.path.exists(str(tmp_path / 'out.pth'))  # nothing half-written
    calls = []
    assert tool.main(argv(tmp_path / 'out.pth'), on_chunk=lambda i, n: calls.append(i)) == 0
    assert calls == [2, 3]  # 8 synonyms in chunks of 2: chunks 0 and 1 were kept
    ref = torch.load(tmp_path / 'ref.pth', weights_only=True)
    out = torch.load(tmp_path / 'out.pth', weights_only=True)
    assert torch.equal(ref['synonym_embeddings'], out['synonym_embeddings'])
    assert out['synonym_class'].tolist() == [0, 1, 2, 3, 4, 0, 2, 4]
    assert out['class_names'].split('\n') == joint.class_names
    table, names = load_text_embeddings(str(tmp_path / 'out.pth'), layout='table')
    assert names == joint.class_names and table.max_synonyms == 2
    clf = TextClassifier(vocabulary=str(tmp_path / 'out.pth'), num_classes=5)
    assert clf.num_classes == 5 and clf.class_names == joint.class_names


def test_joint_json_is_a_vocabulary_spec_and_tool_embeds_any_list(tmp_path, capsys):
    import importlib.util
    from conftest import ROOT
    from ovsam.vocabulary import JointVocabulary, load_text_embeddings, resolve_vocabulary
    j = JointVocabulary.build({'a': ['cat', 'dog'], 'b': ['n00000001 dog,hound', 'n00000002 emu']})
    j.dump_json(str(tmp_path / 'joint.json'))
    assert resolve_vocabulary(str(tmp_path / 'joint.json')).class_names == j.class_names
    spec = importlib.util.spec_from_file_location('build_vocabulary', os.path.join(ROOT, 'tools',
                                                                                   'build_vocabulary.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    (tmp_path / 'cfg.json').write_text(json.dumps(TINY_CLIP_CFG))
    common = ['--clip-model', 'tiny', '--clip-cfg', str(tmp_path / 'cfg.json'), '--allow-random-weights']
    for vocab in (str(tmp_path / 'joint.json'), 'shapes'):
        out = str(tmp_path / 'out.pth')
        assert tool.main(['--vocab', vocab, '--out', out] + common) == 0
        _, names = load_text_embeddings(out, layout='table')
        assert names == resolve_vocabulary(vocab).class_names
    with pytest.raises(SystemExit):
        tool.main(['--source', 'lvis', '--out', out] + common)
    assert 'write a source as NAME=SPEC' in capsys.readouterr().err
    with pytest.raises(SystemExit, match='given twice'):
        tool.main(['--source', 'a=cat', '--source', 'a=dog', '--vocab-out', str(tmp_path / 'x.json')])
    with pytest.raises(SystemExit, match='nothing to write'):
        tool.main(['--vocab', 'shapes'])
    with pytest.raises(SystemExit, match='--clip-checkpoint is required'):
        tool.main(['--vocab', 'shapes', '--out', out])
