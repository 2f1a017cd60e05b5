"""The package's shape: no import cycles, private internals in one place (and still there), config
found through the installed package."""

import ast
import re
from pathlib import Path

import torch
from torch import nn

import charlm
from charlm import internals

PACKAGE = Path(charlm.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Every charlm module and the charlm modules it imports anywhere in it, function bodies included."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                # `from charlm.models import gpt` may name a module or a name inside one
                targets |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert "charlm.checkpoint" in graph and "charlm.int8" in graph["charlm.checkpoint"]  # the graph is real
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_torch_free_modules_import_no_torch():
    """The NumPy engine, the model settings and the config checks must load without torch."""
    graph = import_graph()
    torch_free = ["charlm.numpy_gpt", "charlm.model_config", "charlm.run_config", "charlm.generation", "charlm.corpus"]
    for name in torch_free:
        reachable, todo = set(), [name]
        while todo:
            module = todo.pop()
            if module not in reachable:
                reachable.add(module)
                todo += graph[module]
        for module in reachable:
            path = PACKAGE.parent / (module.replace(".", "/") + ".py")
            path = path if path.is_file() else path.with_suffix("") / "__init__.py"
            assert not re.search(r"^\s*(import|from) (torch|lightning)\b", path.read_text(), re.M), (name, module)


PRIVATE = re.compile(r"\b(torch\._(?!_)\w+|_compiled_call_impl|_current_fx_name)\b")  # not torch.__version__


def test_private_internals_live_only_in_internals_py():
    users = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                   if p.name != "internals.py" and PRIVATE.search(p.read_text()))
    assert users == []


def test_the_private_internals_still_exist():
    """Fails loudly when an upgrade of torch or Lightning removes what charlm.internals relies on."""
    import lightning as L

    model = nn.Linear(2, 2)
    model.compile()
    assert model._compiled_call_impl is not None
    assert internals.undo_module_compile(model) and model._compiled_call_impl is None
    assert internals.mark_static_address(torch.zeros(2))
    trainer_module = L.LightningModule()
    assert hasattr(trainer_module, internals.LIGHTNING_HOOK_NAME_ATTRIBUTE)  # Lightning still names its hooks so
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit_loop.epoch_loop._batches_that_stepped = 7
    assert internals.align_logging_step(trainer) and trainer.fit_loop.epoch_loop._batches_that_stepped == 0


def test_plain_attribute_shortcut_only_takes_the_hook_name():
    module = nn.Module()
    assert internals.set_plain_attribute(module, internals.LIGHTNING_HOOK_NAME_ATTRIBUTE, "training_step")
    assert module.__dict__[internals.LIGHTNING_HOOK_NAME_ATTRIBUTE] == "training_step"
    assert not internals.set_plain_attribute(module, "layer", nn.Linear(1, 1))  # the public path's job


def test_fallbacks_when_the_internals_are_gone(monkeypatch):
    monkeypatch.delattr(torch._dynamo, "mark_static_address")
    assert not internals.mark_static_address(torch.zeros(2))  # the compiled step stays correct, only slower

    class Plain:  # a module without nn.Module.compile's attribute
        pass

    assert not internals.undo_module_compile(Plain())
    assert not internals.align_logging_step(Plain())


def test_config_ships_inside_the_package():
    conf = PACKAGE / "conf"
    assert (conf / "config.yaml").is_file() and (conf / "sample.yaml").is_file()
    from charlm.bench import CONF

    assert CONF == conf
    # One copy: no conf/ link at the top of the repository (searches would show every file twice, and a
    # zip download would break it)
    assert not (Path(__file__).resolve().parents[1] / "conf").exists()
