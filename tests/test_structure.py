"""Structural rules of the package: one bundle interface, an acyclic layered import graph, no
process-global side effects at import."""

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "oncolens"

#: the data's path through the package; a module may import its own layer or an earlier one
LAYERS = {"errors": 0, "_lazy": 0, "_version": 0, "registry": 0, "files": 0, "figures": 0, "runtime": 0, "distributed": 0, "__init__": 0, "__main__": 7,
          "data": 1, "staging": 1, "models": 2, "training": 3, "evaluation": 4, "explain": 5, "studies": 6,
          "predictor": 7, "apps": 7}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        yield path, parts


def _imported(path: Path, parts: tuple[str, ...]) -> set[str]:
    """Top-level oncolens sub-packages/modules that ``path`` imports (absolute or relative)."""
    tree = ast.parse(path.read_text())
    package = parts[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[: len(package) - node.level + 1])
                target = base + (node.module.split(".") if node.module else [])
                if not target:  # ``from .. import x``: x is the sub-package
                    target = [alias.name for alias in node.names][:1]
            elif node.module and node.module.startswith("oncolens."):
                target = node.module.split(".")[1:]
            else:
                continue
            if target:
                found.add(target[0])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("oncolens."):
                    found.add(alias.name.split(".")[1])
    return found


def test_import_graph_follows_the_data_path():
    wrong = []
    for path, parts in _modules():
        own = LAYERS[parts[0]]
        for target in _imported(path, parts):
            if target not in LAYERS:
                continue
            if LAYERS[target] > own:
                wrong.append(f"{'/'.join(parts)} imports {target}")
    assert not wrong, wrong


def test_no_consumer_outside_models_tells_bundle_kinds_apart():
    offenders = []
    for path, parts in _modules():
        if parts[0] == "models":
            continue
        text = path.read_text()
        if "HierarchicalBundle" in text or re.search(r"\.kind\s*[!=]=|isinstance\([^)]*\bBundle\b", text):
            offenders.append("/".join(parts))
    assert not offenders, offenders


def test_no_global_side_effects_in_library_code():
    found = []
    for path, parts in _modules():
        text = path.read_text()
        for pattern in (r"matplotlib\.use\(", r"\.attrs\[", r"\btorch\.manual_seed\(",
                        r"np\.random\.seed\(", r"use_deterministic_algorithms\(True"):
            for match in re.finditer(pattern, text):
                line = text[: match.start()].count("\n") + 1
                found.append(f"{'/'.join(parts)}:{line}: {match.group(0)}")
    allowed = {  # inside a context manager that restores the global state (see the code at that line)
        "training/seeding", "data/dataset", "explain/attributions",
    }
    assert [f for f in found if f.split(":")[0] not in allowed] == []


def test_importing_the_package_leaves_matplotlib_alone():
    import os
    import subprocess
    import sys

    code = ("import matplotlib, oncolens.evaluation, oncolens.studies, oncolens.explain, oncolens.apps.cli; "
            "print(matplotlib.rcParams._get_backend_or_none())")
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.strip() == "None"  # nobody chose a backend


def test_register_model_refuses_silent_overwrites():
    from oncolens.models import get_spec, register_model

    with pytest.raises(ValueError, match="already registered"):
        register_model(get_spec("seed_cnn"))
    assert register_model(get_spec("seed_cnn"), replace=True) is get_spec("seed_cnn")


def test_license_is_an_spdx_string():
    """setuptools drops support for a TOML-table license on 2027-02-18: every install would fail."""
    import tomllib

    project = tomllib.loads((PACKAGE.parents[1] / "pyproject.toml").read_text())["project"]
    assert isinstance(project["license"], str) and project["license"] == "Apache-2.0"


def test_the_command_line_starts_without_torch_sklearn_or_pandas():
    """``oncolens --help`` must start in well under a second: nothing heavy at import of the CLI."""
    import subprocess
    import sys

    code = ("import sys, oncolens.apps.cli\n"
            "print(sorted(m for m in ('torch', 'torchvision', 'sklearn', 'pandas', 'timm', 'scipy', 'matplotlib')"
            " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
    help_run = subprocess.run([sys.executable, "-m", "oncolens", "train", "--help"], capture_output=True, text=True)
    assert help_run.returncode == 0 and "--model" in help_run.stdout


def test_every_registry_is_the_one_registry_type():
    """Things looked up by name live in ``oncolens.registry.Registry`` (one duplicate-name policy), never in a
    module-level dict filled by hand."""
    offenders = []
    for path, parts in _modules():
        text = path.read_text()
        for match in re.finditer(r"^[_A-Z][A-Z_]*: dict\[[^\n]*\] = \{\}", text, re.M):
            offenders.append(f"{'/'.join(parts)}: {match.group(0)}")
    assert not offenders, offenders
    from oncolens.data.perturb import PERTURBATIONS
    from oncolens.models.trust import CONFORMAL_SCORES, OOD_DETECTORS
    from oncolens.registry import Registry

    assert all(isinstance(r, Registry) for r in (PERTURBATIONS, CONFORMAL_SCORES, OOD_DETECTORS))


def test_a_taken_name_is_refused_unless_overridden():
    from oncolens.errors import ConfigError
    from oncolens.registry import Registry

    registry: Registry[int] = Registry("number")
    registry.register("one", 1)
    with pytest.raises(ConfigError, match="already registered"):
        registry.register("one", 2)
    assert registry.register("one", 3, override=True) == 3 and registry["one"] == 3
    with pytest.raises(ConfigError, match="unknown number 'two'; available: one"):
        registry.get("two")


def test_apps_hold_no_figure_or_row_file_logic():
    """The command line parses options and prints; figures, row files, shards and merges live in the library."""
    offenders = []
    for path, parts in _modules():
        if parts[0] != "apps":
            continue
        text = path.read_text()
        for pattern in (r"\bsubplots\(", r"\bRowLog\(", r"heapq\.merge", r"\.imshow\("):
            if re.search(pattern, text):
                offenders.append(f"{'/'.join(parts)}: {pattern}")
    assert not offenders, offenders


def _body_lines(node: ast.FunctionDef | ast.ClassDef) -> int:
    """Lines of a function's or class's body, without its signature and docstring."""
    body = node.body
    first = body[1] if len(body) > 1 and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
        else body[0]
    return node.end_lineno - first.lineno + 1


def _sizes(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            yield node, _body_lines(node)


def test_the_training_loop_and_its_parts_stay_small():
    """Training is stages run by one loop of ~150 lines; no function over 80 lines, no class over 250, in the
    training package."""
    sizes = {node.name: n for path in (PACKAGE / "training").glob("*.py") for node, n in _sizes(path)
             if not (isinstance(node, ast.ClassDef) and node.name == "TrainConfig")}  # a list of fields
    assert sizes["Loop"] <= 160, sizes["Loop"]
    too_big = {name: n for name, n in sizes.items() if n > 80 and name != "Loop"}
    too_big.update({name: n for name, n in sizes.items() if n > 250})
    assert not too_big, too_big
    assert not (PACKAGE / "training" / "trainer.py").read_text().count("class _Trainer")


def test_the_command_line_is_thin():
    """Each command module under 600 lines, each command (a function typer registers) at most 40 lines of
    body: parse, call the library, print."""
    modules = sorted((PACKAGE / "apps" / "cli").glob("*.py"))
    assert {p.stem for p in modules} >= {"__init__", "_base", "data", "training", "scoring", "explaining", "serving"}
    assert not (PACKAGE / "apps" / "cli.py").exists()
    long_files = {p.name: len(p.read_text().splitlines()) for p in modules if len(p.read_text().splitlines()) >= 600}
    assert not long_files, long_files
    long_commands = {}
    for path in modules:
        for node, n in _sizes(path):
            decorated = any("command" in ast.unparse(d) for d in getattr(node, "decorator_list", []))
            if isinstance(node, ast.FunctionDef) and (decorated or node.name == "command") and n > 40:
                long_commands[f"{path.name}:{node.name}"] = n
    assert not long_commands, long_commands


def _runtime_imports(path: Path) -> set[str]:
    """Sibling modules of ``path``'s package that it imports at run time (``if TYPE_CHECKING:`` blocks are
    annotations only)."""
    tree = ast.parse(path.read_text())
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for n in ast.walk(node))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1 and id(node) not in skipped:
            found.update([node.module.split(".")[0]] if node.module else [a.name for a in node.names])
    return found


def test_no_import_cycle_inside_training():
    """trainer -> loop -> stages/callbacks -> state: the training package's modules form no cycle."""
    folder = PACKAGE / "training"
    graph = {p.stem: _runtime_imports(p) & {q.stem for q in folder.glob("*.py")} for p in folder.glob("*.py")}
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        for target in graph.get(node, ()):
            if target in trail:
                cycles.append(trail[trail.index(target):] + [target])
            elif len(trail) < 12:
                visit(target, trail + [target])

    for module in graph:
        if module != "__init__":
            visit(module, [module])
    assert not cycles, cycles[:3]


#: code that asks whether the data or a model is a bag (multiple-instance learning) rather than asking its task
_BAG_QUESTIONS = re.compile(r"is_bag_manifest\(|bag_classifier|\binputs\s*[!=]=|[!=]=\s*[\"']bags?[\"']|"
                            r"[\"']bags?[\"']\s*[!=]=|hasattr\([^)]*[\"']explain[\"']\)|\[[\"']kind[\"']\]\s*[!=]=")


def test_only_the_task_modules_ask_whether_something_is_a_bag():
    """The plan chooses the task (images or bags) once; everything that differs is the task's (training/tasks.py,
    and the bag model's own module, models/mil.py). Elsewhere at most 2 places may ask (registries keyed by a
    bundle's task do not count: they look up, they do not branch)."""
    owners = {"training/tasks", "models/mil"}
    found = []
    for path, parts in _modules():
        if "/".join(parts) in owners:
            continue
        text = path.read_text()
        for match in _BAG_QUESTIONS.finditer(text):
            found.append(f"{'/'.join(parts)}:{text[: match.start()].count(chr(10)) + 1}: {match.group(0)}")
    assert len(found) <= 2, found


#: what writes atomically (files.py): a writer handed to these gets a temporary path; their blocks are staged
_ATOMIC_CALLS = {"atomic_write", "atomic_write_bytes", "atomic_write_text", "atomic_write_json"}
_ATOMIC_BLOCKS = {"atomic_path", "atomic_folder"}
#: where bytes may go without touching a final path
_TEMPORARY = {"BytesIO", "StringIO", "mkdtemp", "mkstemp", "TemporaryDirectory", "NamedTemporaryFile"}


def _call_name(func: ast.expr) -> str:
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""


def _written_file(call: ast.Call) -> ast.expr | None:
    """The expression naming the file a call writes, or None when the call writes no file."""
    name, args, keywords = _call_name(call.func), call.args, {k.arg: k.value for k in call.keywords}
    if name in ("write_text", "write_bytes"):
        return call.func.value
    if name in ("to_csv", "to_parquet", "to_json", "to_html", "savefig", "savez", "savetxt", "imwrite", "dcmwrite",
                "TiffWriter", "save_as"):
        return args[0] if args else keywords.get("path_or_buf") or keywords.get("fname")
    if name == "save":  # PIL's image.save(fp), np.save(file, array); torch.save(obj, f)
        if isinstance(call.func, ast.Attribute) and _call_name(call.func.value) == "torch":
            return args[1] if len(args) > 1 else keywords.get("f")
        return args[0] if args else None
    if name in ("dump", "safe_dump", "save_file"):  # json/yaml/pickle.dump(obj, fp); safetensors' save_file(obj, path)
        return args[1] if len(args) > 1 else keywords.get("fp") or keywords.get("stream") or keywords.get("filename")
    if name in ("copy", "copy2", "copyfile", "copytree", "move"):
        return args[1] if len(args) > 1 else None
    if name == "open":  # open(path, "w") or path.open("w")
        method = isinstance(call.func, ast.Attribute)
        mode = keywords.get("mode") or (args[0] if method and args else args[1] if not method and len(args) > 1
                                        else None)
        if isinstance(mode, ast.Constant) and isinstance(mode.value, str) and set(mode.value) & set("wax+"):
            return call.func.value if method else args[0]
    return None


def _plain_writes(tree: ast.Module) -> list[ast.Call]:
    """Calls that write a file by its final name: not the temporary path an atomic writer was given, not inside an
    atomic_path / atomic_folder block, not an in-memory buffer or a temporary file."""
    temporary = {target.id for node in ast.walk(tree) if isinstance(node, ast.Assign)
                 and any(_call_name(c.func) in _TEMPORARY for c in ast.walk(node.value) if isinstance(c, ast.Call))
                 for target in node.targets if isinstance(target, ast.Name)}
    writers = {arg.id for node in ast.walk(tree)  # functions handed to an atomic helper as the writer
               if isinstance(node, ast.Call) and _call_name(node.func) in _ATOMIC_CALLS
               for arg in node.args[1:] if isinstance(arg, ast.Name)}
    found = []

    def visit(node: ast.AST, staged: frozenset[str]) -> None:
        if isinstance(node, ast.Call) and _call_name(node.func) in _ATOMIC_CALLS:
            for arg in node.args[1:]:  # the writer: its parameters are the temporary path
                visit(arg.body if isinstance(arg, ast.Lambda) else arg,
                      staged | {a.arg for a in arg.args.args} if isinstance(arg, ast.Lambda) else staged)
            return
        if isinstance(node, ast.Call) and (file := _written_file(node)) is not None:
            names = {n.id for n in ast.walk(file) if isinstance(n, ast.Name)}
            in_memory = isinstance(file, ast.Call) and _call_name(file.func) in _TEMPORARY
            if not (names & (staged | temporary) or in_memory):
                found.append(node)
        if isinstance(node, ast.FunctionDef) and node.name in writers and node.args.args:
            staged = staged | {node.args.args[0].arg}
        if isinstance(node, ast.With):
            staged = staged | {item.optional_vars.id for item in node.items if isinstance(item.optional_vars, ast.Name)
                               and isinstance(item.context_expr, ast.Call)
                               and _call_name(item.context_expr.func) in _ATOMIC_BLOCKS}
        for child in ast.iter_child_nodes(node):
            visit(child, staged)

    visit(tree, frozenset())
    return found


def test_every_file_is_written_atomically():
    """A crash leaves the old file or the new one, never half of one: outside files.py every file is written
    through its atomic helpers (a writer's temporary path, an atomic_path / atomic_folder block), to memory or to a
    temporary file; never by its final name."""
    plain = ("p.write_text('x'); p.write_bytes(b''); frame.to_csv(out / 'a.csv'); fig.savefig(out); image.save(p);"
             "np.save(p, a); torch.save(state, p); json.dump(v, handle); open(p, 'w'); open(p, mode='a'); p.open('wb');"
             "shutil.copy(a, b); tifffile.TiffWriter(p); pydicom.dcmwrite(p, ds); save_file(state, str(p))\n"
             "atomic_write(p, lambda tmp: frame.to_csv(final))")
    assert len(_plain_writes(ast.parse(plain))) == 16
    safe = ("atomic_write(p, lambda tmp: frame.to_csv(tmp)); atomic_write(p, lambda tmp: image.save(tmp, 'PNG'))\n"
            "with atomic_path(p) as tmp, open(tmp, 'w') as handle: handle.write('x')\n"
            "with atomic_folder(p) as staging: (staging / 'x').write_text('1')\n"
            "buffer = io.BytesIO(); np.save(buffer, a); torch.save(state, buffer); image.save(io.BytesIO())\n"
            "folder = Path(tempfile.mkdtemp()); (folder / 'x').write_text('1'); open(p).read(); frame.to_csv()\n"
            "def write(tmp):\n    tmp.write_text('x')\natomic_write(p, write)")
    assert _plain_writes(ast.parse(safe)) == []
    found = [f"{'/'.join(parts)}:{call.lineno}: {ast.unparse(call)[:80]}" for path, parts in _modules()
             if parts != ("files",) for call in _plain_writes(ast.parse(path.read_text()))]
    assert not found, found


#: ``run`` methods still waiting for their owners' renaming (a back-end's forward pass, a scoring job's loop);
#: remove an entry when its module says what its method does
_RUN_PENDING: set[str] = set()


def test_run_names_a_training_run():
    """``run`` is a training run (:class:`~oncolens.training.run.TrainingRun`, its folder ``run_dir``, its
    ``RunResult``): no function or method is named ``run``, no callable is bound to the name, no import renamed to
    it (a study, a slide job, a work queue's call and a git command say what they are)."""
    found = []
    for path, parts in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            named = (isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "run"
                     or isinstance(node, ast.alias) and node.asname == "run"
                     or isinstance(node, ast.Assign) and isinstance(node.value, ast.Lambda)
                     and any(isinstance(t, ast.Name) and t.id == "run" for t in node.targets))
            if named and "/".join(parts) not in _RUN_PENDING:
                found.append(f"{'/'.join(parts)}:{node.lineno}")
    assert not found, found


def test_every_default_has_one_source():
    """A run's defaults are settled in one place: the planner (training/planner.py) and the configuration's own
    tables (training/config.py: PLAIN_DEFAULTS, STUDY_DEFAULTS). No other module declares a table of defaults, and
    no study or command builds a TrainConfig with its own hyper-parameters."""
    owners = {"training/planner", "training/config"}
    tables, literal_configs = [], []
    for path, parts in _modules():
        name = "/".join(parts)
        if name in owners:
            continue
        text = path.read_text()
        tables += [f"{name}: {m.group(0)}" for m in re.finditer(r"^[A-Z_]*DEFAULTS\s*[:=]", text, re.M)]
        if parts[0] in ("studies", "training") or name.startswith("apps/cli"):
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, ast.Call) and ast.unparse(node.func).endswith("TrainConfig"):
                    chosen = [k.arg for k in node.keywords if k.arg in ("model", "epochs", "lr", "augment", "recipe")
                              and isinstance(k.value, ast.Constant)]
                    if chosen:
                        literal_configs.append(f"{name}:{node.lineno}: {chosen}")
    assert not tables, tables
    assert not literal_configs, literal_configs
