"""Packaging: ament index, package.xml, data_files, and the layering of the packages (onboard
never imports torch, timm or rclpy; no import from a lower layer to a higher one)."""
import ast
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_ament_index_finds_the_installed_package():
    from ament_index_python.packages import get_package_share_directory
    share = Path(get_package_share_directory('gplq_ros'))
    assert (share / 'package.xml').read_text() == (REPO / 'package.xml').read_text()


def test_package_xml_format3_ament_python():
    root = ET.parse(REPO / 'package.xml').getroot()
    assert root.get('format') == '3' and root.findtext('name') == 'gplq_ros'
    deps = {e.text for e in root.findall('exec_depend')}
    assert {'rclpy', 'sensor_msgs', 'std_msgs', 'geometry_msgs', 'diagnostic_msgs'} <= deps
    # every ROS interface package the installed code imports is declared (rosdep installs it)
    used = set()
    for f in (REPO / 'gplq_ros').rglob('*.py'):
        used |= set(re.findall(r'^\s*from (\w+_msgs)\b', f.read_text(), re.M))
    assert used and used <= deps, sorted(used - deps)
    assert 'python3-onnxruntime-pip' in deps and 'python3-yaml' in deps
    assert root.find('export/build_type').text == 'ament_python'


def test_setup_installs_ros_layout():
    text = (REPO / 'setup.py').read_text()
    for piece in ("'share/ament_index/resource_index/packages'", "glob('launch/*.py')",
                  "glob('config/*.yaml')", "['package.xml']"):
        assert piece in text
    cfg = (REPO / 'setup.cfg').read_text()
    assert 'script_dir=$base/lib/gplq_ros' in cfg and 'install_scripts=$base/lib/gplq_ros' in cfg
    assert (REPO / 'resource' / 'gplq_ros').is_file()


PACKAGE = REPO / 'gplq_ros'
# which gplq_ros packages each package may import (tools: any but another tool)
LAYERS = {'onboard': {'onboard'}, 'offline': {'onboard', 'offline'}, 'bringup': {'onboard', 'bringup'},
          'nodes': {'onboard', 'nodes'}, 'tools': {'onboard', 'offline', 'bringup', 'nodes', 'tools'}}
FORBIDDEN = {'onboard': ('torch', 'timm', 'rclpy'), 'bringup': ('torch', 'timm', 'rclpy'),
             'offline': ('rclpy',)}


def modules_of(package: str):
    """Every module of gplq_ros.<package>, found by walking the directory."""
    return sorted(f'gplq_ros.{package}.' + '.'.join(p.relative_to(PACKAGE / package).with_suffix('').parts)
                  for p in (PACKAGE / package).rglob('*.py') if p.name != '__init__.py')


def test_every_package_is_in_a_layer():
    assert {p.name for p in PACKAGE.iterdir() if (p / '__init__.py').is_file()} == set(LAYERS)
    assert [p.name for p in PACKAGE.glob('*.py')] == ['__init__.py']


def _check_imports(mods, forbidden):
    """Import ``mods`` one after the other in a fresh interpreter; fails naming the first
    module after whose import one of ``forbidden`` is loaded."""
    code = ('import importlib, sys, json\nbad = {}\n'
            f'for m in {mods!r}:\n'
            '    importlib.import_module(m)\n'
            f'    hit = [x for x in {forbidden!r} if x in sys.modules]\n'
            '    if hit:\n'
            '        bad[m] = hit\n'
            '        break\n'
            'print(json.dumps(bad)); sys.exit(1 if bad else 0)')
    res = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert res.returncode == 0, res.stdout + res.stderr[-2000:]


@pytest.mark.parametrize('module', modules_of('onboard') + modules_of('bringup'))
def test_onboard_and_bringup_modules_import_without_torch_or_rclpy(module):
    """Each module alone, in a fresh interpreter: no torch, timm or rclpy."""
    _check_imports([module], FORBIDDEN[module.split('.')[1]])


@pytest.mark.slow
def test_offline_imports_no_rclpy():
    mods = modules_of('offline')
    assert len(mods) >= 10
    _check_imports(mods, FORBIDDEN['offline'])


def _imports(path: Path):
    """(module imported, line, inside a function) for every gplq_ros import of a file."""
    tree = ast.parse(path.read_text())
    out = []
    for fn in [None] + [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
        body = tree.body if fn is None else fn.body
        for node in (n for stmt in body for n in ast.walk(stmt)) if fn else body:
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                out.append((node.module, node.lineno, fn is not None))
            elif isinstance(node, ast.Import):
                out += [(a.name, node.lineno, fn is not None) for a in node.names]
    return out


def test_layering_and_top_level_imports():
    """No import from a lower layer to a higher one, no tool imports another tool, no
    relative imports, and imports sit at the top of modules unless marked optional."""
    problems = []
    for path in sorted(PACKAGE.rglob('*.py')):
        rel = path.relative_to(PACKAGE)
        layer = rel.parts[0] if len(rel.parts) > 1 else None
        src = path.read_text().splitlines()
        if any(line.lstrip().startswith('from .') for line in src):
            problems.append(f'{rel}: relative import')
        for module, line, nested in _imports(path):
            if nested and 'optional' not in src[line - 1] and 'optional' not in src[line - 2]:
                problems.append(f'{rel}:{line}: import of {module} inside a function')
            parts = module.split('.')
            if parts[0] != 'gplq_ros' or len(parts) < 2 or layer is None:
                continue
            if parts[1] not in LAYERS[layer]:
                problems.append(f'{rel}:{line}: {layer} imports {module}')
            if layer == 'tools' and parts[1] == 'tools' and module != 'gplq_ros.tools.common':
                problems.append(f'{rel}:{line}: a tool imports another tool ({module})')
    assert not problems, '\n'.join(problems)


@pytest.mark.slow
def test_console_scripts_installed(capsys):
    """Every console script pip installed is in the venv's bin; every gplq_ tool's entry point
    loads and answers --help; the wrappers themselves run (one of the torch tools, one onboard)."""
    from importlib.metadata import distribution
    bindir = Path(sys.executable).parent
    eps = {e.name: e for e in distribution('gplq_ros').entry_points.select(group='console_scripts')}
    tools = sorted(n for n in eps if n.startswith('gplq_'))
    assert {'gplq_assets', 'gplq_vocab', 'gplq_demo', 'gplq_calibrate', 'gplq_fidelity', 'gplq_export', 'gplq_bench',
            'gplq_map', 'gplq_up', 'gplq_record', 'gplq_eval_bag'} <= set(tools), tools
    missing = [n for n in eps if not os.access(bindir / n, os.X_OK)]
    assert not missing, missing
    procs = {name: subprocess.Popen([str(bindir / name), '--help'], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True) for name in ('gplq_calibrate', 'gplq_map')}
    for name in tools:          # in this process: the torch stack is imported once, not once per tool
        with pytest.raises(SystemExit) as stop:
            eps[name].load()(['--help'])
        out = capsys.readouterr().out
        assert stop.value.code == 0 and 'usage' in out, (name, out[-500:])
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0 and 'usage' in out, (name, err[-2000:])


def test_license_matches_package_xml():
    """LICENSE is the Apache License 2.0 that package.xml and setup.py declare."""
    text = (REPO / 'LICENSE').read_text()
    assert ET.parse(REPO / 'package.xml').getroot().findtext('license') == 'Apache-2.0'
    assert "license='Apache-2.0'" in (REPO / 'setup.py').read_text()
    assert text.split()[:4] == ['Apache', 'License', 'Version', '2.0,']
    assert 'TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION' in text
    assert text.rstrip().endswith('limitations under the License.')


# the console scripts a drone runs: they import no offline module (torch) at module level, nor
# does tools.common, which they share (run with torch and timm hidden: test_onboard_tools.py)
ONBOARD_TOOLS = ('map', 'eval_bag', 'up', 'record')


def test_onboard_tools_import_neither_offline_nor_torch():
    setup = (REPO / 'setup.py').read_text()
    for name in ONBOARD_TOOLS:
        assert f"'gplq_{name} = gplq_ros.tools.{name}:main'" in setup, name
    problems = []
    for name in ONBOARD_TOOLS + ('common',):
        for module, line, nested in _imports(PACKAGE / 'tools' / f'{name}.py'):
            parts = module.split('.')
            if not nested and (parts[:2] == ['gplq_ros', 'offline'] or parts[0] in ('torch', 'timm')):
                problems.append(f'tools/{name}.py:{line}: imports {module}')
    assert not problems, '\n'.join(problems)
    _check_imports([f'gplq_ros.tools.{name}' for name in ('common',) + ONBOARD_TOOLS], ('torch', 'timm'))


def test_config_and_spec_import_without_torch():
    """The calibration configs are plain validated dataclasses (as their docstrings say)."""
    _check_imports(['gplq_ros.offline.config', 'gplq_ros.offline.spec'], ('torch', 'timm'))


# a dotted name of a gplq_ros module, or of the packages it had before (runtime, model, quant,
# gplq: a docstring naming those is stale)
MODULE_NAME = re.compile(r'\b(gplq_ros|onboard|offline|bringup|nodes|tools|runtime|model|quant|gplq)'
                         r'((?:\.[A-Za-z_]\w*)+)')


def _top_level_names(path: Path) -> set:
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split('.')[0] for a in node.names}
    return names


def _missing_module(name: str):
    """Why dotted ``name`` (``gplq_ros.onboard.engine.load`` or ``onboard.engine.load``) names
    no module or module attribute of gplq_ros; None if it does."""
    parts = name.split('.')
    if parts[0] == 'gplq_ros':
        parts = parts[1:]
    if not parts:
        return None
    if not (PACKAGE / parts[0] / '__init__.py').is_file():
        return f'no package gplq_ros.{parts[0]}'
    if len(parts) == 1:
        return None
    module = PACKAGE / parts[0] / f'{parts[1]}.py'
    if not module.is_file():
        return f'no module gplq_ros.{parts[0]}.{parts[1]}'
    if len(parts) > 2 and parts[2] not in _top_level_names(module):
        return f'gplq_ros.{parts[0]}.{parts[1]} has no {parts[2]}'
    return None


def test_module_paths_in_docstrings_and_architecture_exist():
    """Every module path a docstring or docs/architecture.md names exists (dotted names,
    and the modules listed under each gplq_ros/<package> of the docs' package map)."""
    problems = []
    for path in sorted(PACKAGE.rglob('*.py')):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                for m in MODULE_NAME.finditer(ast.get_docstring(node) or ''):
                    why = _missing_module(m.group(0))
                    if why:
                        problems.append(f'{path.relative_to(REPO)}: docstring names {m.group(0)}: {why}')
    text = (REPO / 'docs' / 'architecture.md').read_text()
    for m in MODULE_NAME.finditer(text):
        why = _missing_module(m.group(0))
        if why:
            problems.append(f'docs/architecture.md names {m.group(0)}: {why}')
    package_map = text.split('## Package map', 1)[1].split('```')[1]
    package, listed = None, 0
    for line in package_map.splitlines():
        head = re.match(r'gplq_ros/(\w+)\s', line + ' ')
        if head:
            package = head.group(1)
            assert (PACKAGE / package / '__init__.py').is_file(), line
            continue
        if not line.startswith(' '):
            package = None
        entry = re.match(r'  ([a-z_]\w*(?:, [a-z_]\w*)*)\s{2,}', line)
        if package and entry:
            for name in entry.group(1).split(', '):
                listed += 1
                if not (PACKAGE / package / f'{name}.py').is_file():
                    problems.append(f'docs/architecture.md package map: no module gplq_ros/{package}/{name}.py')
    assert listed > 40       # the map was found and read
    assert not problems, '\n'.join(problems)


def test_readme_is_a_front_page_whose_launch_arguments_are_the_bringups():
    """The README's launch-argument table is generated from ``bringup.description.ARGUMENTS``
    (one home per setting); the README stays a front page (details in docs/)."""
    from gplq_ros.bringup.description import argument_table
    readme = (REPO / 'README.md').read_text()
    assert argument_table() in readme, 'README.md: replace the launch-argument table with\n' + argument_table()
    assert len(readme.splitlines()) <= 250
    for link in re.findall(r'\]\(((?:docs/)?[\w./-]+\.md)', readme):
        assert (REPO / link).is_file(), link
