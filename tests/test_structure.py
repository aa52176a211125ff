"""The package's structure: no import cycles (module-level and lazy imports
alike), and the predictor stays a facade that the automatic generator only
uses through its public API."""
import ast
import os
import os.path as osp

import ovsam

PKG = osp.dirname(osp.abspath(ovsam.__file__))


def _import_graph():
    mods = {}
    for root, _, files in os.walk(PKG):
        for f in files:
            if f.endswith('.py'):
                rel = osp.relpath(osp.join(root, f), PKG)[:-3].replace(os.sep, '.')
                name = 'ovsam' if rel == '__init__' else 'ovsam.' + rel.removesuffix('.__init__')
                mods[name] = osp.join(root, f)
    graph = {}
    for name, path in mods.items():
        is_pkg = path.endswith('__init__.py')
        base = name.split('.') if is_pkg else name.split('.')[:-1]
        found = set()
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.split('.')[0] == 'ovsam'}
            elif isinstance(node, ast.ImportFrom):
                mod = '.'.join(base[:len(base) - node.level + 1] + [node.module or '']).strip('.') \
                    if node.level else (node.module or '')
                if mod.split('.')[0] == 'ovsam':
                    found.add(mod)
                    found |= {f'{mod}.{a.name}' for a in node.names if f'{mod}.{a.name}' in mods}
        deps = set()
        for m in found:
            while m and m not in mods:
                m = m.rpartition('.')[0]
            if m and m != name:
                deps.add(m)
        graph[name] = deps
    return graph


def _cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    graph = _import_graph()
    assert 'ovsam.models.ovsam' in graph and 'ovsam.apis.predictor' in graph
    assert _cycles(graph) == []
    # the check itself finds a cycle when there is one
    assert _cycles({'a': {'b'}, 'b': {'a'}, 'c': set()}) == [['a', 'b']]


def test_plain_models_and_predictor_do_not_import_their_users():
    graph = _import_graph()
    for plain in ('ovsam.models.clip_backbone', 'ovsam.models.sam2clip', 'ovsam.models.clip2sam',
                  'ovsam.models.ovsam'):
        assert 'ovsam.models.fast_inference' not in graph[plain]
        assert 'ovsam.models.scratch' not in graph[plain]
    assert 'ovsam.apis.automatic' not in graph['ovsam.apis.predictor']
    assert not any(m.startswith('ovsam.apis') for m in graph['ovsam.models.ovsam'])


def test_automatic_generator_uses_only_public_predictor_api():
    tree = ast.parse(open(osp.join(PKG, 'apis', 'automatic.py')).read())
    private = [node.attr for node in ast.walk(tree)
               if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
               and node.value.id in ('pred', 'predictor') and node.attr.startswith('_')]
    assert private == []
