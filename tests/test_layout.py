"""The package's shape: folders that are layers (nothing imports from a layer above it; inference
loads neither training nor Lightning; the core needs no torch), no import cycles, private internals
in the two internals.py files (and still there), config found through the installed package."""

import ast
import re
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import charlm
from charlm.inference import internals as torch_internals
from charlm.training import internals as lightning_internals

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


# Bottom to top. The entry points (charlm, charlm.__main__, charlm.commands) sit above them all.
LAYERS = ["core", "models", "inference", "training", "tools"]
ENTRY_POINTS = {"charlm", "charlm.__main__", "charlm.commands"}


def layer_of(module: str) -> int:
    return len(LAYERS) if module in ENTRY_POINTS else LAYERS.index(module.split(".")[1])


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += graph[module]
    return seen


def source(module: str) -> str:
    path = PACKAGE.parent / (module.replace(".", "/") + ".py")
    return (path if path.is_file() else path.with_suffix("") / "__init__.py").read_text()


def imports_of(module: str, *packages: str) -> bool:
    return any(re.search(rf"^\s*(import|from) {package}\b", source(module), re.M) for package in packages)


def test_every_module_sits_in_a_layer_and_imports_only_from_its_own_or_lower_ones():
    graph = import_graph()
    assert "charlm.inference.checkpoint" in graph and "charlm.models.int8" in graph["charlm.inference.checkpoint"]
    upward = sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets if layer_of(b) > layer_of(a))
    assert upward == []


def test_inference_loads_neither_training_nor_lightning():
    """Sampling, evaluation, export, quantization and the NumPy engine run without a trainer."""
    graph = import_graph()
    for name in (m for m in graph if m.startswith("charlm.inference")):
        for module in reachable(graph, name):
            assert layer_of(module) <= LAYERS.index("inference") and not imports_of(module, "lightning"), (name, module)


def test_the_core_and_the_numpy_engine_import_no_torch():
    """The config schemas and checks, the corpus, the sampling loop and the NumPy engine load without torch."""
    graph = import_graph()
    torch_free = [m for m in graph if m.startswith(("charlm.core", "charlm.inference.numpy_gpt"))]
    assert "charlm.core.run_config" in torch_free and "charlm.inference.numpy_gpt.model" in torch_free
    for name in torch_free:
        for module in reachable(graph, name):
            assert not imports_of(module, "torch", "lightning"), (name, module)


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


# torch._x, not torch.__version__
PRIVATE = re.compile(r"\b(torch\._(?!_)\w+|hydra\._internal|_compiled_call_impl|_current_fx_name)\b")


def test_private_internals_live_only_in_the_internals_py_files():
    users = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                   if p.name != "internals.py" and PRIVATE.search(p.read_text()))
    assert users == []


def test_the_private_internals_still_exist():
    """Fails loudly when an upgrade of torch or Lightning removes what the internals.py files rely on."""
    import lightning as L

    model = nn.Linear(2, 2)
    model.compile()
    assert model._compiled_call_impl is not None
    assert torch_internals.undo_module_compile(model) and model._compiled_call_impl is None
    assert torch_internals.mark_static_address(torch.zeros(2))
    assert torch_internals.count_cpu_attention_flops()
    q = torch.zeros(1, 2, 8, 4)  # (B, H, T, D): 2 products of 2 x (8 x 4 x 8) multiply-adds each
    with FlopCounterMode(display=False) as counter:
        nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
    assert counter.get_total_flops() == 2 * 2 * (2 * 8 * 4 * 8)
    trainer_module = L.LightningModule()
    assert hasattr(trainer_module, lightning_internals.LIGHTNING_HOOK_NAME_ATTRIBUTE)  # Lightning still names hooks so
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit_loop.epoch_loop._batches_that_stepped = 7
    assert lightning_internals.align_logging_step(trainer) and trainer.fit_loop.epoch_loop._batches_that_stepped == 0
    from lightning.pytorch.loggers import WandbLogger

    wandb_logger = WandbLogger(offline=True)
    assert lightning_internals.drop_wandb_anonymous(wandb_logger) and "anonymous" not in wandb_logger._wandb_init


def test_plain_attribute_shortcut_only_takes_the_hook_name():
    module = nn.Module()
    hook_name = lightning_internals.LIGHTNING_HOOK_NAME_ATTRIBUTE
    assert lightning_internals.set_plain_attribute(module, hook_name, "training_step")
    assert module.__dict__[hook_name] == "training_step"
    assert not lightning_internals.set_plain_attribute(module, "layer", nn.Linear(1, 1))  # the public path's job


def test_fallbacks_when_the_internals_are_gone(monkeypatch):
    monkeypatch.delattr(torch._dynamo, "mark_static_address")
    assert not torch_internals.mark_static_address(torch.zeros(2))  # the compiled step stays correct, only slower

    class Plain:  # a module without nn.Module.compile's attribute
        pass

    assert not torch_internals.undo_module_compile(Plain())
    assert not torch_internals.count_cpu_attention_flops("no_such_attention_op")  # attention counts 0 FLOPs
    assert not lightning_internals.align_logging_step(Plain())


def test_config_ships_inside_the_package():
    conf = PACKAGE / "conf"
    assert (conf / "config.yaml").is_file() and (conf / "sample.yaml").is_file()
    from charlm.tools.bench_cases import CONF

    assert CONF == conf
    # One copy: no conf/ link at the top of the repository (searches would show every file twice, and a
    # zip download would break it)
    assert not (Path(__file__).resolve().parents[1] / "conf").exists()


def test_no_two_test_modules_share_a_name():
    """pytest imports a test file by its name (tests/ holds no packages), so tests/core/test_x.py and
    tests/test_x.py would collide: one of them fails to collect."""
    names = [path.name for path in Path(__file__).parent.rglob("test_*.py")]
    assert sorted({name for name in names if names.count(name) > 1}) == []
