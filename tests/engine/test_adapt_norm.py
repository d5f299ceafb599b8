"""Which parameters the MAML family adapts: ``adapt_norm`` (issue 23), in every preset and by hand (float64).

- every MAML-family preset with a conv model, built as a run builds it: the parameters its inner loop moves
  (and those that get extras) are its variant's set, less the batch-norm scales and shifts for lslr,
  metacurvature and maml_enhanced (their codes keep them out), found from the module types;
- LSLR with ``adapt_norm: false`` on a tiny Conv4: batch norm stays at theta exactly, the meta-gradient equals
  a hand-unrolled reference and central differences, and differs from ``adapt_norm: true``;
- a run's spec.yaml written before the field existed is read, and resumes, with batch norm adapted, as it was
  trained.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from metacli.commands import stored_differences
from metacli.engine.algorithms.maml import MAML
from metacli.engine.build import BuildSettings, episodic_parts
from metacli.engine.config.algorithms import MAML_VARIANTS, LSLRConfig, MAMLConfig
from metacli.engine.config.data import FewShotConfig
from metacli.engine.data.images import ClassImages, FewShotImages
from metacli.engine.executors import task_at
from metacli.engine.functional import Learner
from metacli.engine.inner import split_meta
from metacli.engine.models import build_model, param_group
from metacli.engine.models.conv4 import Conv4Config
from metacli.engine.models.layers import BatchNorm
from metacli.engine.types import Batch, Params, Task
from metacli.spec import RunSpec, load_spec, spec_to_yaml, validate
from metacli.yamlfile import read_yaml
from tests.engine.test_omniglot import write_tiny_archives
from tests.resume import straight_and_resumed
from tests.test_pinned_losses import OMNIGLOT_FIXTURE, sets

F64 = torch.float64
ROOT = Path(__file__).resolve().parents[2]
FAMILY = {cfg.model_fields["name"].default for cfg in MAML_VARIANTS}
WITHOUT_NORM = {"lslr", "metacurvature", "maml_enhanced"}
"""The variants whose reference codes keep batch norm out of the inner loop: ``adapt_norm`` false."""


def family_conv_presets() -> list[Path]:
    """Every config file of a MAML-family variant on a model with batch norm."""
    out = []
    for path in sorted((ROOT / "configs").glob("*/*.yaml")):
        spec = load_spec(path)[0]
        if spec.algorithm.name in FAMILY and spec.model.name != "mlp":
            out.append(path)
    return out


PRESETS = family_conv_presets()


def norm_parameters(learner: Learner) -> set[str]:
    """The batch-norm scales and shifts, from the module types (not from their names)."""
    return {
        f"{m_name}.{p_name}"
        for m_name, module in learner.model.named_modules()
        if isinstance(module, BatchNorm)
        for p_name, _ in module.named_parameters(recurse=False)
    }


def random_images(spec: RunSpec) -> FewShotImages:
    """Seeded uint8 images of the spec's shape, just enough classes and examples for one task."""
    d = spec.data
    assert isinstance(d, FewShotConfig)
    shape = (d.ways, d.shots + d.queries, *d.input_shape())
    images = torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    return FewShotImages(d, {"train": ClassImages(images, torch.device("cpu"))})


def test_the_family_has_conv_presets_of_every_kind() -> None:
    names = {load_spec(p)[0].algorithm.name for p in PRESETS}
    assert WITHOUT_NORM <= names and {"maml", "anil", "boil", "sparse_maml"} <= names


@pytest.mark.parametrize("path", PRESETS, ids=[f"{p.parent.name}/{p.stem}" for p in PRESETS])
def test_a_preset_adapts_its_variants_parameters(path: Path) -> None:
    spec = load_spec(path)[0]
    name = spec.algorithm.name
    data = random_images(spec)
    parts = episodic_parts(spec.algorithm, spec.model, data, BuildSettings(seed=0))
    algo = parts.algorithm
    meta = algo.init_meta(parts.learner.init_params())
    theta, extras = split_meta(meta)
    support = task_at(data.sample("train", 1, torch.Generator().manual_seed(1)), 0).support
    fast = algo.adapt(meta, support, steps=1)
    # a parameter outside the adapted set is theta itself, not a copy: it is never stepped
    moved = {k for k in theta if fast[k] is not theta[k]}
    group = {"anil": {"head"}, "boil": {"body"}}.get(name, {"body", "head"})
    norms = norm_parameters(parts.learner)
    expected = {k for k in theta if param_group(k) in group} - (norms if name in WITHOUT_NORM else set())
    assert moved == expected
    assert isinstance(spec.algorithm, MAMLConfig)
    assert spec.algorithm.adapt_norm == (name not in WITHOUT_NORM)
    if name != "anil":  # anil's head holds no batch norm
        adapted_norms = norms & moved
        assert bool(adapted_norms) == (name not in WITHOUT_NORM)
        assert all(not torch.equal(fast[k], theta[k]) for k in adapted_norms)  # they do move when adapted
    if extras:  # rates, curvature factors, masks: for the adapted tensors only
        assert {k.split(":")[1] for k in extras} == expected


# ---------------------------------------------------------------- LSLR without batch norm, by hand

WAYS, SHOTS, QUERIES, N_TASKS, STEPS = 2, 2, 3, 2, 2


def conv4_tasks(
    cfg: Conv4Config, side: int, shape: tuple[int, int, int, int], seed: int
) -> tuple[Learner, Task]:
    """Conv4 (float64, torch seed 0) on random 1 x side x side images: ``shape`` = (tasks, ways, shots,
    queries), the tasks stacked, the labels class by class, the images drawn from ``seed``."""
    n_tasks, ways, shots, queries = shape
    torch.manual_seed(0)
    net = build_model(cfg, (1, side, side), ways).to(F64)
    gen = torch.Generator().manual_seed(seed)

    def batch(per_class: int) -> Batch:
        x = torch.randn(n_tasks, ways * per_class, 1, side, side, generator=gen, dtype=F64)
        return Batch(x, torch.arange(ways).repeat_interleave(per_class).repeat(n_tasks, 1))

    return Learner(net, "cross_entropy"), Task(batch(shots), batch(queries))


def tiny_conv4() -> tuple[Learner, Task]:
    """Conv4 with 2 filters on 8x8 images (stride 2: 8 -> 4 -> 2 -> 1 -> 1), 2-way tasks, float64."""
    return conv4_tasks(Conv4Config(filters=2, pool="stride"), 8, (N_TASKS, WAYS, SHOTS, QUERIES), seed=3)


def lslr_meta(cfg: LSLRConfig, learner: Learner) -> tuple[Params, Params]:
    """(meta-parameters with distinct rates per tensor and step, as fresh leaves; the rates alone)."""
    meta = MAML(cfg, learner).init_meta(learner.init_params())
    gen = torch.Generator().manual_seed(4)
    for k, v in meta.items():
        if k.startswith("lslr:"):  # away from alpha, so a mixed-up tensor or step cannot pass
            scale = 0.5 + torch.rand(v.shape, generator=gen, dtype=F64)
            meta[k] = (v.detach() * scale).requires_grad_(True)
    return meta, split_meta(meta)[1]


def hand_unrolled_loss(learner: Learner, meta: Params, tasks: Task) -> Tensor:
    """Mean query loss after ``STEPS`` explicit LSLR steps on the non-batch-norm parameters.

    phi_p^{k+1} = phi_p^k - alpha_{p,k} grad_p L_S(phi^k) for every p outside batch norm (the reference's
    rule, written out with ``torch.autograd.grad``); the batch-norm scales and shifts are theta's throughout.
    """
    norms = norm_parameters(learner)
    total = torch.zeros((), dtype=F64)
    for i in range(N_TASKS):
        task = task_at(tasks, i)
        phi = {k: v for k, v in meta.items() if ":" not in k}
        moving = [k for k in phi if k not in norms]
        for step in range(STEPS):
            loss = F.cross_entropy(learner.forward(phi, task.support.x), task.support.y)
            grads = torch.autograd.grad(loss, [phi[k] for k in moving], create_graph=True)
            for k, g in zip(moving, grads, strict=True):
                phi[k] = phi[k] - meta[f"lslr:{k}"][step] * g
        total = total + F.cross_entropy(learner.forward(phi, task.query.x), task.query.y) / N_TASKS
    return total


def lslr_algo(adapt_norm: bool, learner: Learner) -> MAML:
    return MAML(LSLRConfig(alpha=0.1, inner_steps=STEPS, adapt_norm=adapt_norm), learner)


def test_lslr_without_norm_keeps_batch_norm_at_theta_and_gives_it_no_rates() -> None:
    learner, tasks = tiny_conv4()
    algo = lslr_algo(False, learner)
    meta, rates = lslr_meta(algo.cfg, learner)
    norms = norm_parameters(learner)
    assert len(norms) == 8 and not {k.split(":")[1] for k in rates} & norms
    fast = algo.adapt(meta, task_at(tasks, 0).support, create_graph=True)
    for k in norms:
        assert torch.equal(fast[k], meta[k]), k
    assert all(not torch.equal(fast[k], meta[k]) for k in ("head.weight", "body.0.conv.weight"))


@pytest.mark.parametrize("executor", ["loop", "vmap"])
def test_lslr_without_norm_meta_gradient_by_hand(executor: str) -> None:
    learner, tasks = tiny_conv4()
    algo = lslr_algo(False, learner)
    meta, _ = lslr_meta(algo.cfg, learner)
    result = algo.meta_step(meta, tasks, executor)
    reference = hand_unrolled_loss(learner, meta, tasks)
    expected = torch.autograd.grad(reference, list(meta.values()))
    assert result.loss == pytest.approx(float(reference.detach()), rel=1e-12)
    for k, g in zip(meta, expected, strict=True):
        torch.testing.assert_close(result.grads[k], g, rtol=1e-10, atol=1e-13)
    for k in norm_parameters(learner):  # meta-learned, though not adapted
        assert float(result.grads[k].abs().max()) > 0, k


def test_lslr_without_norm_meta_gradient_matches_finite_differences() -> None:
    """<grad, v> against a central difference along a random v (eps 1e-7: the ReLUs are only piecewise
    smooth, see tests/engine/test_models.py), and the two settings differ."""
    learner, tasks = tiny_conv4()
    without, with_norm = lslr_algo(False, learner), lslr_algo(True, learner)
    meta, _ = lslr_meta(without.cfg, learner)
    grads = without.meta_step(meta, tasks, "loop").grads
    gen = torch.Generator().manual_seed(2)
    direction = {k: torch.randn(v.shape, generator=gen, dtype=F64) for k, v in meta.items()}
    eps = 1e-7

    def meta_loss(at: Params) -> float:
        return sum(float(without.task_loss(at, task_at(tasks, i))[0]) for i in range(N_TASKS)) / N_TASKS

    def shifted(sign: float) -> Params:
        return {k: (v + sign * eps * direction[k]).detach() for k, v in meta.items()}

    finite = (meta_loss(shifted(1.0)) - meta_loss(shifted(-1.0))) / (2 * eps)
    analytic = float(sum((grads[k] * direction[k]).sum() for k in meta))
    assert analytic == pytest.approx(finite, rel=1e-6)
    # with batch norm adapted (and given rates at alpha) the same theta and rates give other gradients
    full = with_norm.init_meta(learner.init_params())
    full = {k: (meta[k] if k in meta else v).detach().requires_grad_(True) for k, v in full.items()}
    other = with_norm.meta_step(full, tasks, "loop")
    assert set(full) - set(meta) == {f"lslr:{k}" for k in norm_parameters(learner)}
    assert other.loss != pytest.approx(float(meta_loss(meta)), rel=1e-6)
    gap = max(float((other.grads[k] - grads[k]).abs().max()) for k in meta)
    assert gap > 1e-6


# ---------------------------------------------------------------- old run folders


def as_before_the_field(spec_yaml: str) -> str:
    """A run's spec.yaml with batch norm adapted, as metacli wrote it before ``adapt_norm`` existed."""
    assert "  adapt_norm: true\n" in spec_yaml
    return spec_yaml.replace("  adapt_norm: true\n", "")


@pytest.mark.parametrize("name", sorted(WITHOUT_NORM))
def test_an_old_run_folder_keeps_batch_norm_adapted(name: str, tmp_path: Path) -> None:
    """A run's spec.yaml records every field; one written before ``adapt_norm`` existed was trained with
    batch norm adapted, and is read (resumed, compared by ``train``) that way. A spec file written by hand
    without the field gets the variant's default."""
    spec = load_spec(algo=name, dataset="omniglot")[0]
    old = spec.model_copy(update={"algorithm": spec.algorithm.model_copy(update={"adapt_norm": True})})
    (tmp_path / "spec.yaml").write_text(as_before_the_field(spec_to_yaml(old)))
    assert stored_differences(tmp_path, old) == []
    assert stored_differences(tmp_path, spec) == ["algorithm.adapt_norm: True -> False"]
    written = read_yaml(ROOT / "configs" / "omniglot" / f"5way_1shot_{name}.yaml")
    del written["algorithm"]["adapt_norm"]
    algorithm = validate(written, "a spec file").algorithm
    assert isinstance(algorithm, MAMLConfig) and algorithm.adapt_norm is False


def test_an_old_sparse_run_folder_keeps_the_mean_and_the_clamp_on_all(tmp_path: Path) -> None:
    """Sparse-MAML's defaults became the code's ``sum`` and ``network`` with ``adapt_norm``: a spec.yaml
    written before the three fields existed ran with the mean and the clamp on every tensor: it reads so."""
    spec = load_spec(algo="sparse_maml", dataset="omniglot")[0]
    assert (spec.algorithm.meta_reduction, spec.algorithm.clip_scope) == ("sum", "network")
    old = spec.model_copy(
        update={
            "algorithm": spec.algorithm.model_copy(
                update={"adapt_norm": True, "meta_reduction": "mean", "clip_scope": "all"}
            )
        }
    )
    text = as_before_the_field(spec_to_yaml(old))
    text = text.replace("  meta_reduction: mean\n", "").replace("  clip_scope: all\n", "")
    assert "meta_reduction" not in text and "clip_scope" not in text
    (tmp_path / "spec.yaml").write_text(text)
    assert stored_differences(tmp_path, old) == []


def test_an_old_run_folder_resumes_as_it_was_trained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An LSLR run stopped with batch norm adapted, its spec.yaml stripped of ``adapt_norm`` (as written
    before the field), resumes to the same losses as the run trained straight with ``adapt_norm: true``."""
    monkeypatch.setenv("METACLI_TRUST_DATA", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    write_tiny_archives(tmp_path / "data" / "omniglot")
    base = [
        "train", "--algo", "lslr", "--dataset", "omniglot", "--data-root", str(tmp_path / "data"),
        *OMNIGLOT_FIXTURE, *sets("train.log_every=1", "eval.tasks=2", "algorithm.adapt_norm=true"), "--quiet",
    ]  # fmt: skip
    saved = straight_and_resumed(base, tmp_path, as_before_the_field)
    assert "lslr:body.0.norm.weight" in saved["meta"]  # batch norm had its rates: it was adapted
