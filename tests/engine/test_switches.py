"""The training switches train.clip_grad, ema, grad_checkpointing, channels_last and compile, each
against the run (or the step) without it or against a hand-computed value; which of them a resumed
run keeps. (The EMA's exact resume is in test_interrupts.py.)"""
import copy
import json
import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from torch.nn.modules.module import register_module_forward_pre_hook
from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook

import visattn.engine.trainer as trainer_module
from visattn.engine import train
from visattn.engine.build import enable_grad_checkpointing
from visattn.engine.config import ConfigError, load_config
from visattn.engine.ema import create_ema
from visattn.engine.step import TrainingStep
from visattn.engine.trainer import FIXED_ON_RESUME, Trainer
from visattn.models import create_model

import tinyseg

RUN = ["model.name=tinyseg:build_bn", "model.kwargs={dropout: 0.3}", "data.digits.train_length=16",
       "data.digits.val_length=4", "data.digits.size=32", "data.digits.digit_size=[8,16]", "data.crop_size=[32,32]",
       "train.batch_size=8", "train.iters=3", "train.warmup_iters=0", "train.optimizer=sgd", "train.lr=0.05",
       "train.log_every=1", "train.ckpt_every=3", "train.eval_every=null", "eval.batch_size=4"]


def _run(path, device: torch.device, *overrides: str) -> dict:
    cfg = load_config(None, RUN + [f"run.dir={path}", f"train.device={device}", *overrides])
    return train(cfg, quiet=True, trust_code=True)


def _train_log(path) -> list[dict]:
    return [r for r in map(json.loads, (path / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


@pytest.fixture
def built(monkeypatch) -> list[nn.Module]:
    """The models the trainer builds, in order."""
    models, build_model = [], trainer_module.build_model

    def build_recorded(*args, **kwargs):
        models.append(build_model(*args, **kwargs))
        return models[-1]

    monkeypatch.setattr(trainer_module, "build_model", build_recorded)
    return models


@pytest.fixture
def fp32():
    """Convolutions in full fp32 on CUDA too (not TF32), where two ways of computing a step are compared."""
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        yield


@pytest.fixture
def applied_norms() -> list[float]:
    """The total norm of the gradients of every optimizer update, as the optimizer receives them."""
    norms = []

    def record(optimizer, args, kwargs):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())

    hook = register_optimizer_step_pre_hook(record)
    yield norms
    hook.remove()


# -- clip_grad


def test_clip_grad_scales_the_gradients_down_to_the_max_norm(tmp_path, device, applied_norms):
    assert _run(tmp_path / "raw", device)["step"] == 3
    raw_norms = list(applied_norms)
    assert "grad_norm" not in _train_log(tmp_path / "raw")[0]
    exact = {"rel": 0} if device.type == "cpu" else {"rel": 1e-5}  # CUDA kernels sum in varying order

    applied_norms.clear()  # far above every norm: no clipping, the unclipped run
    _run(tmp_path / "loose", device, "train.clip_grad=1e6")
    assert applied_norms == pytest.approx(raw_norms, **exact)
    assert [r["grad_norm"] for r in _train_log(tmp_path / "loose")] == pytest.approx(raw_norms, rel=1e-5)
    a, b = load_file(tmp_path / "raw/model.safetensors"), load_file(tmp_path / "loose/model.safetensors")
    for k in a:
        assert torch.equal(b[k], a[k]) if device.type == "cpu" else torch.allclose(b[k], a[k]), k

    applied_norms.clear()  # below the first step's norm: that step applies gradients of norm max_norm
    max_norm = raw_norms[0] / 3
    _run(tmp_path / "clipped", device, f"train.clip_grad={max_norm}")
    logged = [r["grad_norm"] for r in _train_log(tmp_path / "clipped")]
    assert logged[0] == pytest.approx(raw_norms[0], rel=1e-5)  # the norm before clipping; same weights at step 1
    assert applied_norms[0] == pytest.approx(max_norm, rel=1e-5)
    assert applied_norms == pytest.approx([min(before, max_norm) for before in logged], rel=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fp16 AMP needs CUDA")
def test_clip_grad_unscales_fp16_gradients_first(tmp_path, applied_norms):
    """Clipping the scaled gradients would log norms and leave updates ``scale`` (65536) times off."""
    _run(tmp_path / "fp32", torch.device("cuda"))
    raw_norm = applied_norms[0]
    applied_norms.clear()
    _run(tmp_path / "fp16", torch.device("cuda"), "train.amp=fp16", f"train.clip_grad={raw_norm / 3}")
    logged = [r["grad_norm"] for r in _train_log(tmp_path / "fp16")]
    finite = [n for n in logged if n < float("inf")]  # the scaler skips an update whose gradients overflowed
    assert finite and applied_norms == pytest.approx([min(n, raw_norm / 3) for n in finite], rel=1e-3)
    if logged[0] < float("inf"):  # the same weights as the fp32 run's first step
        assert logged[0] == pytest.approx(raw_norm, rel=1e-2)


# -- ema


def test_ema_follows_the_formula_and_is_what_is_evaluated_and_saved(tmp_path, device, built):
    decay, weights = 0.6, []  # the model's weights and buffers after every update
    hook = register_optimizer_step_post_hook(
        lambda *_: weights.append({k: v.detach().clone().cpu() for k, v in built[0].state_dict().items()}))
    try:
        _run(tmp_path / "run", device, f"train.ema={decay}")
    finally:
        hook.remove()
    assert len(weights) == 3
    expected = dict(weights[0])
    for w in weights[1:]:
        expected = {k: decay * e + (1 - decay) * w[k] if e.is_floating_point() else w[k] for k, e in expected.items()}
    final = load_file(tmp_path / "run/model.safetensors")
    assert final.keys() == expected.keys()
    for k in final:
        torch.testing.assert_close(final[k], expected[k], rtol=1e-6, atol=1e-6, msg=k)
    assert final["stem.1.num_batches_tracked"] == 3  # counted, not averaged
    assert not torch.allclose(final["body.weight"], weights[-1]["body.weight"])  # the average, not the last weights
    best = load_file(tmp_path / "run/best.safetensors")  # the one evaluation: the final, of the average
    assert all(torch.equal(best[k], final[k]) for k in final)
    raw = load_file(tmp_path / "run/checkpoints/step_0000003.safetensors")  # the checkpoint keeps the trained ones
    assert all(torch.equal(raw[k], weights[-1][k]) for k in raw)
    state = torch.load(tmp_path / "run/checkpoints/step_0000003.state.pt", weights_only=True)
    assert state["ema"]["n_averaged"] == 3
    assert all(torch.equal(state["ema"][f"module.{k}"].cpu(), final[k]) for k in final)


def test_create_ema_by_hand():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema, history = create_ema(model, 0.9), []
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model(torch.randn(5, 3))  # BatchNorm statistics move, and their count
        history.append({k: v.clone() for k, v in model.state_dict().items()})
        ema.update_parameters(model)
    e = history[0]
    for w in history[1:]:
        e = {k: 0.9 * v + 0.1 * w[k] if v.is_floating_point() else w[k] for k, v in e.items()}
    got = ema.module.state_dict()
    for k in e:
        torch.testing.assert_close(got[k], e[k], rtol=1e-6, atol=1e-7, msg=k)
    assert got["1.num_batches_tracked"] == 3 and ema.n_averaged == 3
    assert not any(p.requires_grad for p in ema.module.parameters())
    with pytest.raises(ValueError, match=r"decay must be in \[0, 1\), got 1"):
        create_ema(model, 1)


# -- grad_checkpointing


def _loss(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return sum(F.cross_entropy(o, target) for o in (out.values() if isinstance(out, dict) else [out]))


def test_grad_checkpointing_recomputes_the_encoder_and_keeps_the_gradients(device, fp32):
    torch.manual_seed(0)
    plain = create_model("fcn", num_classes=3, encoder="resnet18", output_stride=8, aux=True).to(device).train()
    checkpointed = copy.deepcopy(plain)
    enable_grad_checkpointing(checkpointed, "fcn")
    x, target = torch.randn(2, 3, 32, 32, device=device), torch.randint(0, 3, (2, 32, 32), device=device)
    grads, calls = [], []
    for model in (plain, checkpointed):
        calls.append(0)
        model.encoder.layer2.register_forward_pre_hook(lambda *_: calls.__setitem__(-1, calls[-1] + 1))
        torch.manual_seed(1)  # the heads' dropout
        _loss(model, x, target).backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert calls == [1, 2]  # stage 2 ran again in backward
    assert grads[0].keys() == grads[1].keys()
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_grad_checkpointing_reaches_the_trainer_or_names_the_model(tmp_path):
    cfg = load_config(None, RUN + ["model.name=fcn", "model.kwargs={encoder: resnet18}",
                                   "train.grad_checkpointing=true", f"run.dir={tmp_path / 'fcn'}"])
    with Trainer(cfg, torch.device("cpu")) as trainer:
        assert trainer.module.encoder.grad_checkpointing is True
    cfg = load_config(None, RUN + ["train.grad_checkpointing=true", f"run.dir={tmp_path / 'tiny'}"])
    with pytest.raises(ValueError, match=r"^train\.grad_checkpointing=true: model 'tinyseg:build_bn' does not support "
                                         r"gradient checkpointing \(it, TinySeg, has no timm set_grad_checkpointing\)"):
        Trainer(cfg, torch.device("cpu"), trust_code=True)
    assert not (tmp_path / "tiny").exists()
    with pytest.raises(ValueError, match=r"model 'se_resnet50' .*\(it, ResNet, has no timm"):
        enable_grad_checkpointing(create_model("se_resnet50", num_classes=2), "se_resnet50")


# -- channels_last


def test_channels_last_step_matches_contiguous(device, fp32):
    torch.manual_seed(0)
    contiguous = tinyseg.build_bn(5).to(device)
    channels_last = copy.deepcopy(contiguous).to(memory_format=torch.channels_last)
    assert channels_last.body.weight.is_contiguous(memory_format=torch.channels_last)
    x, target = torch.randn(4, 3, 16, 16, device=device), torch.randint(0, 5, (4, 16, 16), device=device)
    losses, grads = [], []
    for model, inputs in ((contiguous, x), (channels_last, x.to(memory_format=torch.channels_last))):
        loss = _loss(model, inputs, target)
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad for n, p in model.named_parameters()})
    torch.testing.assert_close(losses[1], losses[0])
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_channels_last_run_trains_in_that_format(tmp_path, built):
    _run(tmp_path / "contiguous", torch.device("cpu"))
    formats = []  # of the training batches
    hook = register_module_forward_pre_hook(lambda m, inputs: formats.append(inputs[0].is_contiguous(
        memory_format=torch.channels_last)) if m is built[-1] and m.training else None)
    try:
        _run(tmp_path / "nhwc", torch.device("cpu"), "train.channels_last=true")
    finally:
        hook.remove()
    assert formats == [True] * 3 and built[1].body.weight.is_contiguous(memory_format=torch.channels_last)
    a, b = _train_log(tmp_path / "contiguous"), _train_log(tmp_path / "nhwc")
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], rel=1e-5)
    a, b = load_file(tmp_path / "contiguous/model.safetensors"), load_file(tmp_path / "nhwc/model.safetensors")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-6, msg=k)


# -- compile


class _FailingCompile(nn.Module):
    """What ``torch.compile`` returns where compiling fails on the first call, after running part
    of the model (BatchNorm statistics and the RNG move)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x):
        self.calls += 1
        self.model(x)
        raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found in torch._inductor.config.cpp.cxx\n"
                           "(more lines)")


def test_compile_falls_back_to_eager_with_one_warning(tmp_path, monkeypatch):
    _run(tmp_path / "eager", torch.device("cpu"))
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda model: compiled.append(_FailingCompile(model)) or compiled[-1])
    with pytest.warns(UserWarning) as caught:
        result = _run(tmp_path / "fallback", torch.device("cpu"), "train.compile=true")
    messages = [str(w.message) for w in caught if "compile" in str(w.message)]
    assert messages == ["train.compile: torch.compile failed (RuntimeError: InvalidCxxCompiler: No working C++ "
                        "compiler found in torch._inductor.config.cpp.cxx); training without compiling"]
    assert result["step"] == 3 and compiled[0].calls == 1
    a, b = load_file(tmp_path / "eager/model.safetensors"), load_file(tmp_path / "fallback/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)  # the failed attempt left no trace
    assert [r["loss"] for r in _train_log(tmp_path / "fallback")] == [r["loss"] for r in _train_log(tmp_path / "eager")]


@pytest.mark.parametrize("backend", [
    "aot_eager",  # Dynamo's graph capture and AOTAutograd's joint forward and backward, without code generation
    pytest.param("inductor", marks=pytest.mark.skipif(  # on CPU, its first compile costs 20 s of CPU time
        not torch.cuda.is_available(), reason="Inductor is tested on CUDA machines")),
])
def test_compiled_run_matches_eager_and_saves_plain_keys(tmp_path, monkeypatch, fp32, backend):
    from torch._dynamo.backends.registry import lookup_backend

    device = torch.device("cuda" if backend == "inductor" else "cpu")
    tiny = ["model.name=tinyseg:build", "model.kwargs={}"]  # no dropout: compiled code draws other random numbers
    _run(tmp_path / "eager", device, *tiny)
    compile_, compile_graph, graphs = torch.compile, lookup_backend(backend), []

    def recording_backend(graph, example_inputs):
        graphs.append(graph)
        return compile_graph(graph, example_inputs)

    monkeypatch.setattr(torch, "compile", lambda model: compile_(model, backend=recording_backend))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="train.compile")  # no fallback
        _run(tmp_path / "compiled", device, *tiny, "train.compile=true")
    assert graphs  # the training forward went through the compiler
    a, b = _train_log(tmp_path / "eager"), _train_log(tmp_path / "compiled")
    assert [r["loss"] for r in b] == pytest.approx([r["loss"] for r in a], rel=1e-4)
    for name in ("model.safetensors", "checkpoints/step_0000003.safetensors"):
        a, b = load_file(tmp_path / "eager" / name), load_file(tmp_path / "compiled" / name)
        assert a.keys() == b.keys() and not any("_orig_mod" in k for k in b)
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)


# -- resume


def test_a_resumed_run_keeps_clip_grad_and_ema_and_may_change_the_rest(tmp_path):
    assert {"clip_grad", "ema"} <= set(FIXED_ON_RESUME)
    assert not {"grad_checkpointing", "channels_last", "compile"} & set(FIXED_ON_RESUME)
    run = tmp_path / "run"
    tinyseg.make_run(run, 11, "train.ema=0.9")
    for override, shown in (("train.ema=0.99", "train.ema=0.99 (the run's is 0.9)"),
                            ("train.ema=null", "train.ema=None (the run's is 0.9)"),
                            ("train.clip_grad=1.0", "train.clip_grad=1.0 (the run's is None)")):
        with pytest.raises(ConfigError, match=rf"^{re.escape(shown)}: a resumed run keeps"):
            train(load_config(run / "config.yaml", [override]), resume=run, quiet=True, trust_code=True)


def test_the_trainer_steps_through_the_shared_training_step(tmp_path, monkeypatch):
    """Every optimizer step of a run is :meth:`TrainingStep.run`, the step ``visattn compare`` times."""
    steps, run = [], TrainingStep.run

    def run_recorded(self, *args, **kwargs):
        steps.append(self)
        return run(self, *args, **kwargs)

    monkeypatch.setattr(TrainingStep, "run", run_recorded)
    assert _run(tmp_path / "run", torch.device("cpu"), "train.clip_grad=1.0")["step"] == 3
    assert len(steps) == 3 and len(set(map(id, steps))) == 1 and steps[0].clip_grad == 1.0
