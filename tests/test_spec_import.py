"""Validating a run spec imports neither torch nor the data code: its configs are in metacli.engine.config."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from metacli.engine.config import algorithms as algorithm_configs
from metacli.engine.config import data as data_configs
from metacli.engine.config import models as model_configs

# Run in a fresh interpreter: load specs through metacli.spec (a misspelt field, the validators of the
# few-shot and online configs, split_classes, unused_sections) and report what got imported.
VALIDATE_ONLY = """
import json, sys
from pathlib import Path
from metacli.errors import SpecError
from metacli.spec import load_spec, spec_to_yaml

def error(*args, **kwargs):
    try:
        load_spec(*args, **kwargs)
    except SpecError as e:
        return str(e)
    raise SystemExit(f"accepted: {args} {kwargs}")

out = {"misspelt": error(Path(sys.argv[1]))}
out["too_many_ways"] = error(algo="maml", dataset="miniimagenet", overrides=["data.ways=30"])
out["bad_tasks"] = error(algo="moml", dataset="smnist", overrides=["data.tasks=7"])
out["bad_range"] = error(overrides=["data.amplitude=[5, 1]"])
few_shot, _ = load_spec(algo="maml", dataset="omniglot")
online, _ = load_spec(algo="moml", dataset="smnist")
out["split_classes"] = few_shot.data.split_classes()
out["unused"] = [list(few_shot.unused_sections), list(online.unused_sections)]
out["yaml"] = spec_to_yaml(online)
heavy = ("torch", "numpy", "PIL", "metacli.engine.algorithms", "metacli.engine.data", "metacli.engine.models")
out["heavy"] = sorted(m for m in sys.modules if any(m == h or m.startswith(h + ".") for h in heavy))
print(json.dumps(out))
"""


def test_validating_a_spec_imports_neither_torch_nor_the_data_code(tmp_path: Path) -> None:
    spec = tmp_path / "typo.yaml"
    spec.write_text("algorithm: {name: maml, inner_stepz: 2}\nmodel: {name: mlp}\ndata: {name: sinusoid}\n")
    proc = subprocess.run(
        [sys.executable, "-c", VALIDATE_ONLY, str(spec)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert "algorithm.inner_stepz: Extra inputs" in out["misspelt"]
    assert "Did you mean algorithm.inner_steps?" in out["misspelt"]
    assert "ways = 30" in out["too_many_ways"] and "16 classes" in out["too_many_ways"]
    assert "data.tasks" in out["bad_tasks"] and "divisor" in out["bad_tasks"]
    assert "amplitude: low 5.0 > high 1.0" in out["bad_range"]
    assert out["split_classes"] == {"train": 4112, "val": 688, "test": 1692}  # Vinyals x 4 rotations
    assert out["unused"] == [["online"], ["train", "eval"]]
    assert "name: moml" in out["yaml"] and "\ntrain:" not in out["yaml"]
    assert out["heavy"] == []  # no torch, numpy or PIL, and no implementation module


def test_the_registries_are_split_by_the_config_name_sets() -> None:
    from metacli.engine.algorithms import ALGORITHMS, EPISODIC_ALGORITHMS, ONLINE_ALGORITHMS
    from metacli.engine.data import DATASETS, EPISODIC_DATASETS, ONLINE_DATASETS

    assert set(ONLINE_ALGORITHMS) == algorithm_configs.ONLINE_ALGORITHM_NAMES
    assert set(EPISODIC_ALGORITHMS) == set(ALGORITHMS) - algorithm_configs.ONLINE_ALGORITHM_NAMES
    assert set(ONLINE_DATASETS) == data_configs.ONLINE_DATASET_NAMES
    assert set(EPISODIC_DATASETS) == set(DATASETS) - data_configs.ONLINE_DATASET_NAMES


def test_the_implementations_reexport_the_one_definition_of_each_config() -> None:
    from metacli.engine import algorithms, data, inner, models
    from metacli.engine.algorithms import implicit, maml, moml, online_baselines, reptile
    from metacli.engine.data import cifar, images, miniimagenet, omniglot, sinusoid, smnist
    from metacli.engine.models import conv4, mlp, resnet12

    pairs = [
        (algorithm_configs, [algorithms, inner, implicit, maml, moml, online_baselines, reptile]),
        (data_configs, [data, cifar, images, miniimagenet, omniglot, sinusoid, smnist]),
        (model_configs, [models, conv4, mlp, resnet12]),
    ]
    for config_module, modules in pairs:
        for module in modules:
            for name, value in vars(config_module).items():
                if not name.startswith("__") and name in vars(module):
                    assert vars(module)[name] is value, f"{module.__name__}.{name} is a second copy"
    assert maml.MAMLConfig is algorithm_configs.MAMLConfig and omniglot.DRAWERS == 20
    # the constants a module still exports under its old name, renamed in the config module
    assert miniimagenet.SPLIT_CLASSES is data_configs.MINIIMAGENET_SPLIT_CLASSES
    assert miniimagenet.PER_CLASS == cifar.PER_CLASS == 600
    assert cifar.SPLIT_CLASSES is data_configs.CIFAR_SPLIT_CLASSES
    assert (smnist.N_TRAIN, smnist.N_TEST) == (60000, 10000)
