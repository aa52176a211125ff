"""Bad and edge inputs for vocabularies: names, specs, class files, embedding
files, the cached text encoder and the vocabulary tool. Each case asserts the
exact outcome: the right classes, or an exception naming the input and the fix."""
import importlib.util
import json
import os.path as osp
import pathlib
import warnings

import pytest
import torch

from ovsam.vocabulary import (TextEncoder, check_class_names, load_text_embeddings, resolve_vocabulary,
                              save_text_embeddings, vocabulary_hash)
from ovsam.vocabulary.encoder import check_prompt_lengths, embed_synonyms

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


# ------------------------------------------------------------ check_class_names
@pytest.mark.parametrize('names, first, second', [
    (['Cat', 'cat ', ' CAT'], "'Cat' (index 0)", "'cat ' (index 1)"),
    (['traffic_light', 'Traffic Light'], "'traffic_light' (index 0)", 'index 1'),
    (['tv_or_monitor', 'Monitor/TV'], "'tv_or_monitor' (index 0)", 'index 1'),
    (['cup,mug', 'mug, CUP'], "'cup,mug' (index 0)", 'index 1'),
    (['café', 'CAFÉ'], "'café' (index 0)", 'index 1'),
    (['dog', 'cat', 'dog  '], "'dog' (index 0)", 'index 2'),
])
def test_duplicates_up_to_case_and_spaces(names, first, second):
    with pytest.raises(ValueError, match='duplicate classes') as e:
        check_class_names(names)
    assert first in str(e.value) and second in str(e.value)


@pytest.mark.parametrize('names, exc, text', [
    (['cat', 5], TypeError, 'item 1 is int 5'),
    (['cat', None], TypeError, 'item 1 is NoneType None'),
    ([b'cat'], TypeError, "item 0 is bytes b'cat'"),
    (['cat', 1.5, True], TypeError, 'item 2 is bool True'),
    (b'cat,dog', TypeError, 'decode them'),
    (None, TypeError, 'None'),
    ({'cat', 'dog'}, TypeError, 'ordered list'),
    ({'cat': 0}, TypeError, 'ordered list'),
    ('cat', TypeError, "use ['cat'] for one class"),
    (42, TypeError, 'got int'),
    ([], ValueError, 'empty vocabulary'),
    (['cat', ''], ValueError, "class 1 ('') has no usable synonym"),
    ([' , ,'], ValueError, 'no usable synonym'),
    (['cat\ndog'], ValueError, 'line break'),
    (['cat\rdog'], ValueError, 'line break'),
    (['cat\u2028dog'], ValueError, 'line break'),
    (['cat\tdog'], ValueError, "control character '\\t'"),
    (['cat\x00'], ValueError, 'control character'),
    (['# my classes', 'cat'], ValueError, "class 0 ('# my classes') starts with \"#\""),
])
def test_invalid_names_name_the_item(names, exc, text):
    with pytest.raises(exc) as e:
        check_class_names(names)
    assert text in str(e.value), str(e.value)


def test_valid_names_are_kept_as_given():
    assert check_class_names(('cat', 'dog')) == ['cat', 'dog']
    assert check_class_names(n for n in ['cat', 'dog']) == ['cat', 'dog']
    assert check_class_names(['cat', 'cat,kitty']) == ['cat', 'cat,kitty']  # one shared synonym is allowed
    assert check_class_names(['dog # good boy']) == ['dog # good boy']  # '#' inside a name is text
    names = [f'class {i}' for i in range(2000)]
    assert check_class_names(names) == names


# ---------------------------------------------------------- resolve_vocabulary
@pytest.mark.parametrize('spec, exc, text', [
    (None, TypeError, 'no vocabulary given (None)'),
    (42, TypeError, 'got int 42'),
    (b'coco', TypeError, "got bytes b'coco'"),
    ({'cat', 'dog'}, TypeError, 'ordered'),
    ({'cat': 1}, TypeError, 'ordered'),
    ([], ValueError, 'empty vocabulary'),
    ('', ValueError, 'empty vocabulary'),
    ('   ', ValueError, 'empty vocabulary'),
    ('\n\n', ValueError, 'empty vocabulary'),
    ('# only a comment\n\n', ValueError, 'no class names given'),
    (['cat', None], TypeError, 'item 1 is NoneType None'),
    (['cat', 3], TypeError, 'item 1 is int 3'),
    (['cat', '', 'dog'], ValueError, 'items [1] are blank'),
    (['cat', '  ', 'dog', 'bird'], ValueError, 'labels after them shift'),
    (['coco', 'cat'], ValueError, "item 0 ('coco') is a built-in vocabulary name"),
    (['cat', 'lvis'], ValueError, "item 1 ('lvis') is a built-in"),
    (['cat', 'classes.txt'], ValueError, "item 1 ('classes.txt') is a file name"),
    (['Cat', 'cat '], ValueError, 'duplicate classes'),
    ('cat\nCAT', ValueError, 'duplicate classes'),
    ('missing.txt', FileNotFoundError, "'missing.txt' does not exist"),
    ('missing.json', FileNotFoundError, 'does not exist'),
    ('missing.pth', FileNotFoundError, 'gen_text_embeddings.py'),
])
def test_bad_specs(spec, exc, text, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(exc) as e:
        resolve_vocabulary(spec)
    assert text in str(e.value), str(e.value)


def test_one_word_spec_is_a_class_even_if_a_file_has_that_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'cat').write_text('dog\nbird\n')
    (tmp_path / 'coco').write_text('dog\n')
    (tmp_path / 'lvis.txt').write_text('dog\n')
    assert resolve_vocabulary('cat').class_names == ['cat']
    assert resolve_vocabulary(['cat']).class_names == ['cat']
    assert len(resolve_vocabulary('coco').class_names) == 80  # built-in names win
    assert resolve_vocabulary('./cat').class_names == ['dog', 'bird']  # a path-like spec is a file
    assert resolve_vocabulary(str(tmp_path / 'cat')).class_names == ['dog', 'bird']
    assert resolve_vocabulary('lvis.txt').class_names == ['dog']
    assert resolve_vocabulary(pathlib.Path('lvis.txt')).class_names == ['dog']
    # a synonym list with '/' that is not a file stays a class
    assert resolve_vocabulary('tv/monitor').class_names == ['tv/monitor']


def test_class_files(tmp_path):
    p = tmp_path / 'c.txt'
    p.write_bytes('\ufeff# header\r\ncat\r\n\r\n   \r\n  # indented comment\r\ncup,mug\r\n'.encode('utf-8'))
    assert resolve_vocabulary(str(p)).class_names == ['cat', 'cup,mug']  # BOM, CRLF, blanks, comments
    p.write_text('# nothing\n\n')
    with pytest.raises(ValueError, match='holds no class names'):
        resolve_vocabulary(str(p))
    p.write_text('Cat\ndog\ncat \n')
    with pytest.raises(ValueError, match="c.txt'.*'Cat' \\(index 0\\) and 'cat' \\(index 2\\)"):
        resolve_vocabulary(str(p))
    p.write_bytes(b'cat\x00\x01\x02')
    with pytest.raises(ValueError, match='binary'):
        resolve_vocabulary(str(p))
    p.write_bytes('café\n'.encode('latin-1'))
    with pytest.raises(ValueError, match='not UTF-8'):
        resolve_vocabulary(str(p))
    d = tmp_path / 'dir.txt'
    d.mkdir()
    with pytest.raises(IsADirectoryError, match='is a directory'):
        resolve_vocabulary(str(d))


@pytest.mark.parametrize('content, exc, text', [
    ('"cat"', ValueError, "holds the single string 'cat'"),
    ('["cat", 3]', TypeError, 'item 1 is int 3'),
    ('[]', ValueError, 'empty list'),
    ('{"categories": [{"id": 1}]}', ValueError, 'needs an "id" and a "name"'),
    ('{"categories": [{"id": 1, "name": "a"}, {"id": 1, "name": "b"}]}', ValueError, 'ids [1] are given twice'),
    ('{"categories": [{"id": true, "name": "a"}]}', ValueError, 'ids are integers'),
    ('{"categories": [{"id": 1, "name": 5}]}', TypeError, 'item 0 is int 5'),
    ('{"categories": []}', ValueError, 'has no categories'),
    ('{"images": []}', ValueError, 'COCO annotations with a "categories" list'),
    ('{not json', ValueError, 'not valid JSON'),
    ('{"categories": [{"id": 2, "name": "b"}, {"id": 1, "name": "B "}]}', ValueError, 'duplicate classes'),
])
def test_json_class_files(tmp_path, content, exc, text):
    p = tmp_path / 'v.json'
    p.write_text(content)
    with pytest.raises(exc) as e:
        resolve_vocabulary(str(p))
    assert text in str(e.value), str(e.value)


def test_json_class_list_and_categories(tmp_path):
    p = tmp_path / 'v.json'
    p.write_text('["cat", "cup,mug"]')
    assert resolve_vocabulary(str(p)).class_names == ['cat', 'cup,mug']
    p.write_text(json.dumps(dict(categories=[dict(id=9, name='z'), dict(id=2, name='a')])))
    assert resolve_vocabulary(str(p)).class_names == ['a', 'z']


def test_trailing_blank_items_shift_nothing_and_embedding_file_with_names(tmp_path):
    assert resolve_vocabulary(['cat', 'dog', '', ' ']).class_names == ['cat', 'dog']
    emb = tmp_path / 'e.pth'
    torch.save(torch.zeros(2, 1, 4), emb)
    v = resolve_vocabulary([str(emb), 'cat', 'dog'])
    assert v.embedding_file == str(emb) and v.class_names == ['cat', 'dog']
    with pytest.raises(ValueError, match='is a text-embedding file; class names are wanted'):
        resolve_vocabulary([str(emb), str(emb)])


# ------------------------------------------------------------- embedding files
def _save_raw(path, **payload):
    torch.save(payload, path)
    return str(path)


@pytest.mark.parametrize('payload, exc, text', [
    (dict(embeddings=torch.zeros(3, 1, 4), class_names='cat'), ValueError, "class_names is a str ('cat'"),
    (dict(embeddings=torch.zeros(2, 1, 4), class_names=['cat', 'Cat']), ValueError, 'duplicate classes'),
    (dict(embeddings=torch.zeros(2, 1, 4), class_names=['cat', 7]), ValueError, 'item 1 is int 7'),
    (dict(embeddings=torch.full((2, 1, 4), float('nan')), class_names=['a', 'b']), ValueError, 'NaN or Inf'),
    (dict(embeddings=torch.zeros(2, 1, 4, dtype=torch.long), class_names=['a', 'b']), ValueError,
     'floating point'),
    (dict(embeddings=torch.zeros(2, 0, 4), class_names=['a', 'b']), ValueError, 'do not match'),
    (dict(embeddings=torch.zeros(3, 1, 4), class_names=['a', 'b']), ValueError, 'do not match 2 class names'),
])
def test_bad_embedding_files(tmp_path, payload, exc, text):
    p = _save_raw(tmp_path / 'v.pth', **payload)
    with pytest.raises(exc) as e:
        load_text_embeddings(p)
    assert text in str(e.value) and 'v.pth' in str(e.value), str(e.value)


def test_damaged_embedding_files_say_what_is_wrong(tmp_path):
    p = tmp_path / 'v.pth'
    save_text_embeddings(str(p), torch.randn(2, 1, 4), ['a', 'b'])
    data = p.read_bytes()
    (tmp_path / 'trunc.pth').write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match='truncated'):
        load_text_embeddings(str(tmp_path / 'trunc.pth'))
    (tmp_path / 'empty.pth').write_bytes(b'')
    with pytest.raises(ValueError, match='is empty'):
        load_text_embeddings(str(tmp_path / 'empty.pth'))
    with pytest.raises(IsADirectoryError, match='is a directory'):
        load_text_embeddings(str(tmp_path))
    bare = tmp_path / 'bare.pth'
    torch.save(torch.zeros(3, dtype=torch.int32), bare)
    with pytest.raises(ValueError, match='floating point'):
        load_text_embeddings(str(bare), class_names=['a', 'b', 'c'])
    with pytest.raises(TypeError, match='path is a string'):
        load_text_embeddings(None)


def test_save_refuses_what_load_would_refuse(tmp_path):
    p = tmp_path / 'v.pth'
    with pytest.raises(ValueError, match='do not fit 3 class names'):
        save_text_embeddings(str(p), torch.zeros(2, 1, 4), ['a', 'b', 'c'])
    with pytest.raises(ValueError, match='duplicate classes'):
        save_text_embeddings(str(p), torch.zeros(2, 1, 4), ['a', 'A'])
    with pytest.raises(TypeError, match='one class per item'):
        save_text_embeddings(str(p), torch.zeros(1, 1, 4), 'a')
    assert not p.exists()


# ------------------------------------------------------------- text encoder
class TokenText(torch.nn.Module):
    """encode_text of token ids: the embedding is the (float) token ids, so
    prompts cut at the same place embed identically."""

    def encode_text(self, tokens):
        return tokens.float() + 1.


def _short_tokenizer(n=16):
    from open_clip.tokenizer import SimpleTokenizer
    return SimpleTokenizer(context_length=n)


def test_names_longer_than_the_context_are_refused():
    tok = _short_tokenizer(16)
    long_a = 'very big red spotted mushroom with a white stem number one'
    long_b = 'very big red spotted mushroom with a white stem number two'
    with pytest.raises(ValueError, match='too long for the text tower') as e:
        embed_synonyms(TokenText(), tok, [long_a, long_b])
    assert repr(long_a) in str(e.value) and 'reads 16' in str(e.value)
    enc = TextEncoder('fake', text_model=(TokenText(), tok))
    with pytest.raises(ValueError, match='Shorten it'):
        enc.encode([long_a, long_b])
    out = enc.encode(['cat', 'dog'])  # short names still work
    assert out.shape[:2] == (2, 1) and not torch.equal(out[0], out[1])
    check_prompt_lengths(lambda x: x, [long_a])  # tokenizers that cannot count are trusted


@pytest.mark.parametrize('kwargs, text', [
    (dict(batch_size=0), 'batch_size must be a whole number >= 1, got 0'),
    (dict(batch_size=-3), 'got -3'),
    (dict(batch_size=2.5), 'got 2.5'),
    (dict(cache_size=-1), 'cache_size must be a whole number >= 0'),
    (dict(cache_size=True), 'got True'),
])
def test_encoder_options(kwargs, text):
    with pytest.raises(ValueError) as e:
        TextEncoder('fake', text_model=(TokenText(), _short_tokenizer()), **kwargs)
    assert text in str(e.value)


def test_embed_synonyms_options():
    tok = _short_tokenizer()
    with pytest.raises(ValueError, match='batch_size'):
        embed_synonyms(TokenText(), tok, ['cat'], batch_size=0)
    with pytest.raises(ValueError, match='exactly one'):
        embed_synonyms(TokenText(), tok, ['cat'], templates=['a photo'])
    with pytest.raises(ValueError, match='no templates'):
        embed_synonyms(TokenText(), tok, ['cat'], templates=[])


def test_cache_dir_that_is_a_file(tmp_path):
    f = tmp_path / 'f'
    f.write_text('x')
    with pytest.raises(NotADirectoryError, match='is a file'):
        TextEncoder('fake', text_model=(TokenText(), _short_tokenizer()), cache_dir=str(f))


def test_cache_keys_do_not_collide(tmp_path):
    enc = TextEncoder('fake', text_model=(TokenText(), _short_tokenizer()), cache_dir=str(tmp_path))
    paths = {enc.cache_path(n) for n in (['ab', 'c'], ['a', 'bc'], ['a,b'], ['a', 'b'], ['b', 'a'], ['a b'])}
    assert len(paths) == 6
    other = TextEncoder('fake', text_model=(TokenText(), _short_tokenizer()), cache_dir=str(tmp_path),
                        templates=('a photo of a {}.',))
    assert other.cache_path(['a', 'b']) != enc.cache_path(['a', 'b'])  # the recipe is part of the key
    assert vocabulary_hash(['a', 'b']) != vocabulary_hash(['a\nb'])


def test_lru_cache_is_bounded():
    enc = TextEncoder('fake', text_model=(TokenText(), _short_tokenizer()), cache_size=2)
    for name in ('cat', 'dog', 'bird', 'fish'):
        enc.encode([name])
    info = enc.cache_info()
    assert info['size'] == 2 and info['max_size'] == 2
    enc.encode(['fish'])  # the most recent entry is still there
    assert enc.cache_info()['hits'] == 1
    off = TextEncoder('fake', text_model=(TokenText(), _short_tokenizer()), cache_size=0)
    off.encode(['cat'])
    assert off.cache_info()['size'] == 0


@pytest.mark.parametrize('damage', ['garbage', 'truncated', 'empty', 'other_names', 'nan'])
def test_corrupt_disk_cache_is_reported_as_a_cache_and_rebuilt(tmp_path, damage):
    enc = TextEncoder('fake', text_model=(TokenText(), _short_tokenizer()), cache_dir=str(tmp_path))
    names = ['cat', 'cup,mug']
    good = enc.encode(names)
    path = enc.cache_path(names)
    data = open(path, 'rb').read()
    if damage == 'garbage':
        open(path, 'wb').write(b'\x00garbage' * 10)
    elif damage == 'truncated':
        open(path, 'wb').write(data[:len(data) // 3])
    elif damage == 'empty':
        open(path, 'wb').write(b'')
    elif damage == 'other_names':
        torch.save(dict(embeddings=torch.zeros(2, 2, good.shape[-1]), class_names=['dog', 'bird'],
                        meta=dict(identity=enc.identity())), path)
    else:
        torch.save(dict(embeddings=torch.full_like(good, float('nan')), class_names=names,
                        meta=dict(identity=enc.identity())), path)
    fresh = TextEncoder('fake', text_model=(TokenText(), _short_tokenizer()), cache_dir=str(tmp_path))
    with pytest.warns(RuntimeWarning, match='cache file .* is corrupt .*not a wrong vocabulary'):
        again = fresh.encode(names)
    assert torch.allclose(again, good)
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # rewritten: read cleanly next time
        third = TextEncoder('fake', text_model=(TokenText(), _short_tokenizer()), cache_dir=str(tmp_path))
        assert torch.allclose(third.encode(names), good)


# ------------------------------------------------------------- the tool
def _tool():
    spec = importlib.util.spec_from_file_location('gen_text_embeddings',
                                                  osp.join(ROOT, 'tools', 'gen_text_embeddings.py'))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize('value, text', [('0', 'must be at least 1'), ('-2', 'must be at least 1'),
                                         ('x', 'not a whole number'), ('1.5', 'not a whole number')])
def test_tool_batch_size(value, text, capsys):
    with pytest.raises(SystemExit) as e:
        _tool().parse_args(['--names', 'cat', '--out', 'o.pth', '--batch-size', value])
    assert e.value.code == 2 and text in capsys.readouterr().err


def test_tool_refuses_bad_classes_and_outputs(tmp_path, monkeypatch):
    tool = _tool()
    with pytest.raises(SystemExit, match='duplicate classes'):
        tool.main(['--names', 'Cat', 'cat ', '--allow-random-weights', '--out', str(tmp_path / 'o.pth')])
    with pytest.raises(SystemExit, match='is a directory'):
        tool.main(['--names', 'cat', '--allow-random-weights', '--out', str(tmp_path)])
    (tmp_path / 'cfg.json').write_text('[1, 2]')
    with pytest.raises(SystemExit, match='JSON object'):
        tool.main(['--names', 'cat', '--allow-random-weights', '--clip-cfg', str(tmp_path / 'cfg.json'),
                   '--out', str(tmp_path / 'o.pth')])
    monkeypatch.chdir(tmp_path)
    (tmp_path / 'cat').write_text('dog\n')
    with pytest.raises(SystemExit, match='not a file and not one of'):
        tool.read_classes('dog')
    assert not (tmp_path / 'o.pth').exists()


# ------------------------------------------------------------------ review of issue 17 (second round)
@pytest.mark.parametrize('names, text', [
    (['café', 'cafe\u0301'], 'duplicate classes'),  # NFC vs NFD
    (['cat', '\uff43\uff41\uff54'], 'duplicate classes'),  # full-width
    (['straße', 'STRASSE'], 'duplicate classes'),  # case folding
    (['cat', 'cat\u200b'], r"invisible character '\\u200b' \(U\+200B\)"),
    (['\u200dcat'], 'invisible character'),
    (['cat\u202e'], 'invisible character'),  # right-to-left override
    (['\ud800cat'], 'unpaired surrogate'),
])
def test_look_alike_names_are_refused(names, text):
    with pytest.raises(ValueError, match=text):
        check_class_names(names)


def test_lookups_use_the_same_unicode_rules():
    from ovsam.vocabulary import match_class
    assert match_class('\uff23\uff21\uff34', ['dog', 'cat']) == 1
    assert match_class('cafe\u0301', ['café']) == 0
    assert check_class_names(['猫', 'собака', 'café']) == ['猫', 'собака', 'café']


@pytest.mark.parametrize('class_names, exc, text', [
    ({'a', 'b', 'c'}, TypeError, 'ordered list'),
    ({'a': 0, 'b': 1, 'c': 2}, TypeError, 'ordered list'),
    (3, TypeError, "a vocabulary spec such as 'lvis', got int 3"),
])
def test_bare_tensor_class_names_must_be_ordered(tmp_path, class_names, exc, text):
    path = tmp_path / 'bare.pth'
    torch.save(torch.randn(3, 1, 8), path)
    with pytest.raises(exc, match=text):
        load_text_embeddings(str(path), class_names=class_names)


@pytest.mark.parametrize('emb, text', [
    (torch.full((1, 1, 8), float('nan')), r'classes \[0\] hold NaN or Inf'),
    (torch.ones(1, 1, 8, dtype=torch.int64), 'text embeddings are floating point'),
    (torch.ones(1, 0, 8), 'are empty'),
])
def test_save_refuses_nonfinite_and_integer_embeddings(tmp_path, emb, text):
    out = tmp_path / 'v.pth'
    with pytest.raises(ValueError, match=text):
        save_text_embeddings(str(out), emb, ['a'])
    assert not out.exists()


def test_encoder_checks_templates_and_text_model():
    with pytest.raises(TypeError, match='templates must be a list of prompt templates, got the string'):
        TextEncoder(templates='a photo of a {}.')
    with pytest.raises(TypeError, match=r'text_model must be a \(model, tokenizer\) pair'):
        TextEncoder(text_model=('model', 'tokenizer'))
    with pytest.raises(TypeError, match=r'text_model must be a \(model, tokenizer\) pair'):
        TextEncoder(text_model=object())


def test_tool_output_must_be_an_embedding_file_name(tmp_path):
    tool = _tool()
    with pytest.raises(SystemExit, match='must end in .pth or .pt'):
        tool.main(['--names', 'cat', '--allow-random-weights', '--out', str(tmp_path / 'e.txt')])


def test_tool_reports_a_bad_clip_checkpoint_without_traceback(tmp_path):
    tool = _tool()
    ck = tmp_path / 'clip.pt'
    ck.write_text('hello')
    cfg = dict(embed_dim=16, vision_cfg=dict(image_size=64, layers=[1, 1, 1, 1], width=8),
               text_cfg=dict(context_length=16, vocab_size=49408, width=16, heads=2, layers=1))
    (tmp_path / 'cfg.json').write_text(json.dumps(cfg))
    with pytest.raises(SystemExit, match='it is a text file, not a PyTorch checkpoint'):
        tool.main(['--names', 'cat', '--clip-model', 'tiny', '--clip-cfg', str(tmp_path / 'cfg.json'),
                   '--clip-checkpoint', str(ck), '--out', str(tmp_path / 'e.pth')])
