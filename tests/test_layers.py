"""
The package's layers, enforced: the core never imports the zoo/config layer or the command lines, talks MPI only
through ``distributed/``, touches SB3/torch private names only through ``compat.py``, and trains with PyYAML and
rl_zoo3 unavailable; ``ParallelDQN`` reads as SB3's ``DQN`` plus the parallel diff.
"""

import ast
import inspect
from pathlib import Path

import pytest
from conftest import REPO_DIR, check_ok, run_python
from stable_baselines3 import DQN

from sb3_parallel_dqn import ParallelDQN, compat

PACKAGE = REPO_DIR / "sb3_parallel_dqn"
# The command lines (python -m sb3_parallel_dqn.<name>), above the zoo layer.
COMMAND_LINES = {"train", "evaluate", "plot", "benchmark", "cli", "__main__"}
# Imported only by the zoo layer (configs, rl_zoo3), never by the core.
CONFIG_LIBRARIES = ("yaml", "rl_zoo3")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_DIR).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(name: str) -> str:
    if name.startswith("sb3_parallel_dqn.zoo"):
        return "zoo"
    if name.startswith("sb3_parallel_dqn.bench"):
        return "bench"
    if name.split(".")[1:2] and name.split(".")[1] in COMMAND_LINES:
        return "command line"
    return "core"


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path) -> list[tuple[int, str]]:
    """Every module that ``path`` imports (with ``from X import Y``: X, and X.Y in case Y is a module), with its line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def test_item5_the_command_lines_are_the_package_modules_run_as_scripts():
    """
    Issue 23, item 5 (this tested the ``layer`` helper against itself): the command lines the layer rules exempt are
    exactly the top-level modules that run as ``python -m sb3_parallel_dqn.<name>``, the console script is one of
    them, and the core holds the library (a new command line not listed here would be held to the core's rules).
    """
    scripts = {
        name.split(".")[1]
        for name, path in MODULES.items()
        if name.count(".") == 1 and 'if __name__ == "__main__":' in path.read_text()
    }
    assert scripts == COMMAND_LINES
    console = (REPO_DIR / "pyproject.toml").read_text().split("[project.scripts]", 1)[1].split("[", 1)[0]
    targets = {line.split("=", 1)[1].strip().strip('"').split(":")[0] for line in console.splitlines() if "=" in line}
    assert targets and {target.split(".")[1] for target in targets} <= COMMAND_LINES, targets
    core = {name for name in MODULES if layer(name) == "core"}
    assert {"sb3_parallel_dqn.parallel_dqn", "sb3_parallel_dqn.distributed.comm", "sb3_parallel_dqn.losses"} <= core


@pytest.mark.parametrize("name", sorted(name for name in MODULES if layer(name) != "command line"))
def test_imports_point_down_only(name):
    """The core imports neither the zoo layer nor the command lines (nor YAML, nor rl_zoo3); the zoo layer imports
    no command line. Lazy imports inside functions count too."""
    own = layer(name)
    for line, imported in imports(MODULES[name]):
        top = imported.split(".")[0]
        if top == "sb3_parallel_dqn" and imported in MODULES:
            below = {"core": {"core"}, "zoo": {"core", "zoo"}, "bench": {"core", "zoo", "bench"}}[own]
            assert layer(imported) in below, f"{name} (line {line}, {own}) imports {imported} ({layer(imported)})"
        if own == "core":
            assert top not in CONFIG_LIBRARIES, f"{name} (line {line}) imports {imported}: a config-layer library"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_only_distributed_talks_mpi(name):
    if name.startswith("sb3_parallel_dqn.distributed"):
        return
    for line, imported in imports(MODULES[name]):
        assert imported.split(".")[0] != "mpi4py", f"{name} (line {line}) imports mpi4py: go through distributed/"


# The MPI layer: what it may import of the package (itself, and compat.py for the torch privates it needs).
MPI_LAYER_MAY_IMPORT = ("sb3_parallel_dqn.distributed", "sb3_parallel_dqn.compat")


@pytest.mark.parametrize("name", sorted(name for name in MODULES if name.startswith("sb3_parallel_dqn.distributed")))
def test_the_mpi_layer_knows_no_algorithm(name):
    """distributed/ imports nothing of the algorithm (lazy imports count) and takes no model: every function gets
    plain values, tensors, modules or optimizers, never a ``model`` whose attributes it could read or write."""
    for line, imported in imports(MODULES[name]):
        if imported.startswith("sb3_parallel_dqn.") and imported in MODULES:  # `from sb3_parallel_dqn import x`: x
            assert imported.startswith(MPI_LAYER_MAY_IMPORT), f"{name} (line {line}) imports {imported}"
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            arguments = [argument.arg for argument in node.args.args + node.args.kwonlyargs]
            assert "model" not in arguments, f"{name}.{node.name} (line {node.lineno}) takes a model"


def private_uses(path: Path) -> list[str]:
    """``from stable_baselines3/torch... import _name``, ``import x._y``, and ``alias._name`` of an SB3/torch module."""
    tree = ast.parse(path.read_text())
    module_aliases, found = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in ("torch", "stable_baselines3"):
                    module_aliases.add(alias.asname or alias.name.split(".")[0])
                    if any(part.startswith("_") for part in alias.name.split(".")):
                        found.append(f"line {node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("torch", "stable_baselines3"):
            if any(part.startswith("_") for part in node.module.split(".")):
                found.append(f"line {node.lineno}: from {node.module}")
            for alias in node.names:
                if alias.name.startswith("_"):
                    found.append(f"line {node.lineno}: from {node.module} import {alias.name}")
                elif alias.name[:1].islower() and alias.name not in ("functional",):
                    module_aliases.add(alias.asname or alias.name)  # a submodule, e.g. `from torch import nn`
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in module_aliases
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            found.append(f"line {node.lineno}: {node.value.id}.{node.attr}")
    return found


@pytest.mark.parametrize("name", sorted(name for name in MODULES if name != "sb3_parallel_dqn.compat"))
def test_private_internals_only_through_compat(name):
    assert private_uses(MODULES[name]) == [], f"{name} uses SB3/torch private names: go through sb3_parallel_dqn/compat.py"


def protected_state_uses(path: Path) -> list[str]:
    """``x._name`` for the protected ``DQN`` state that compat.py wraps (:data:`compat.PROTECTED_DQN_STATE`)."""
    return [
        f"line {node.lineno}: .{node.attr}"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute) and node.attr in compat.PROTECTED_DQN_STATE
    ]


# ParallelDQN's own methods use its base class's state, as SB3's DQN does; everything else asks compat.py.
@pytest.mark.parametrize("name", sorted(set(MODULES) - {"sb3_parallel_dqn.compat", "sb3_parallel_dqn.parallel_dqn"}))
def test_dqns_protected_state_only_through_compat(name):
    assert protected_state_uses(MODULES[name]) == [], f"{name} uses DQN's protected state: go through compat.py"


def test_the_private_name_check_can_fail(tmp_path):
    offender = tmp_path / "offender.py"
    offender.write_text(
        "import torch as th\nfrom stable_baselines3.common.vec_env.subproc_vec_env import _worker\n"
        "from stable_baselines3.common.vec_env import subproc_vec_env as s\nth._foreach_norm([], 2)\ns._worker\n"
    )
    assert len(private_uses(offender)) == 3
    offender.write_text("model._n_calls += 1\nobservation = self.model._last_obs\nmodel._n_updates_seen = 0\n")
    assert len(protected_state_uses(offender)) == 2


def test_parallel_dqn_reads_as_sb3s_dqn_plus_the_parallel_diff():
    source_file = Path(inspect.getsourcefile(ParallelDQN))
    # 400 lines until the asynchronous mode's parameters and its two learn() branches (issue 25): readable, not short
    assert len(source_file.read_text().splitlines()) <= 430
    lines = source_file.read_text().splitlines()
    tree = ast.parse(source_file.read_text())
    (cls,) = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "ParallelDQN"]
    overridden = [node for node in cls.body if isinstance(node, ast.FunctionDef) and hasattr(DQN, node.name)]
    assert len(overridden) >= 15
    for method in overridden:
        if method.name == "__init__":
            continue
        # The first comment or docstring line of the body says what differs from SB3 (and why).
        body_start = method.body[0].lineno - 1
        if isinstance(method.body[0], ast.Expr) and isinstance(method.body[0].value, ast.Constant):
            first = method.body[0].value.value.strip().splitlines()[0]
            if not first.startswith("As SB3"):
                first = lines[method.body[0].end_lineno].strip()  # a docstring for users, then the comment
        else:
            first = next(line.strip() for line in lines[method.lineno : body_start + 1] if line.strip().startswith("#"))
        assert first.lstrip("# ").startswith("As SB3"), f"ParallelDQN.{method.name} does not start by saying how it differs"


TRAIN_WITHOUT_CONFIG_LIBRARIES = """
import sys
sys.modules["yaml"] = None  # any import of PyYAML or rl_zoo3 now fails
sys.modules["rl_zoo3"] = None
from sb3_parallel_dqn import ParallelDQN, PrioritizedReplayBuffer, make_parallel_vec_env, stop_on_signals
model = ParallelDQN("MlpPolicy", make_parallel_vec_env("CartPole-v1", n_envs=2, seed=0), learning_starts=50,
                    replay_buffer_class=PrioritizedReplayBuffer, n_steps=2, policy_kwargs=dict(net_arch=[16]))
with stop_on_signals():
    model.learn(300)
model.save(sys.argv[1])
assert ParallelDQN.load(sys.argv[1]).num_timesteps == model.num_timesteps
print("trained without", sorted(name for name in ("yaml", "rl_zoo3") if sys.modules.get(name) is None))
"""


@pytest.mark.slow  # 7.5 s: a training run in a fresh process with the config libraries blocked
def test_parallel_dqn_trains_without_pyyaml_and_rl_zoo3(tmp_path):
    result = check_ok(run_python(["-c", TRAIN_WITHOUT_CONFIG_LIBRARIES, str(tmp_path / "model.zip")], cwd=tmp_path))
    assert "trained without ['rl_zoo3', 'yaml']" in result.stdout
