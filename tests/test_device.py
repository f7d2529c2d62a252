"""The run's device (``--device``): the config field, the CPU path unchanged, every rule,
aggregator and attack free of host tensors, and (``gpu``, where CUDA exists) the
simulator and every component on CUDA against the CPU.

Device cleanliness on a CPU-only machine: :class:`DeviceTaint`, a torch function mode,
marks the inputs a component is handed as "on the device" and every tensor computed from
one (or made with an explicit ``device=``, or moved by ``.to(device)``) the same; a
tensor made by a factory without ``device`` is "on the host". An operation that combines
a device tensor with a host tensor of one element or more is what raises on CUDA ("found
at least two devices"); so is drawing a device tensor from a generator that is not the
device's. It also counts the host reads of device values (``item``, ``bool``, ``float``,
``int``, ``tolist``, ``numpy``, ``cpu``): each is a synchronisation on a GPU, allowed only
for the rules declared in :data:`HOST_READS` (data-dependent control). ``FakeTensorMode``
with fake CUDA tensors was tried first: it refuses every data-dependent operation
(boolean masks, ``.item()``) and some copies ("PyTorch is not linked with support for
cuda devices") on a CPU-only build, which is most of the robust rules.
"""

from __future__ import annotations

import dataclasses
import weakref

import pytest
import torch
from test_cli import run_cli
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from signvote import aggregators, attacks, packing, rules
from signvote.attacks import AttackContext
from signvote.contracts import Preview
from signvote.engine import protocol
from signvote.engine import run as run_module
from signvote.engine.run import prepare, run_rng
from signvote.engine.sim import data_path, train
from signvote.experiment import config as cfg
from signvote.experiment.config import ConfigError, TrainConfig, resolve, trajectory_id

CUDA = torch.cuda.is_available()

SYNCS = {"item", "__bool__", "__float__", "__int__", "__index__", "tolist", "numpy", "cpu"}

HOST_READS = {
    # aggregators: every robust rule drops non-finite rows first (base.well_formed: how many
    # rows remain decides the shapes), and then:
    "bulyan": "selection by Krum, rounds chosen by index",
    "caf": "its filter loop runs while the weights' sum exceeds n - 2f",
    "centered-clipping": "the iterate's weight sum, a float each iteration",
    "geometric-median": "Weiszfeld's stopping test, each iteration",
    "krum": "the selected row's index",
    "mda": "the subset search walks index lists",
    "meamed": "the finite-bounds test",
    "median": "the rows that remain",
    "multi-krum": "the selected rows' indices",
    "trimmed-mean": "the finite-bounds test",
    "weighted-majority-vote": "whether any weight is nonzero, the warmup count",
    "arc+mean": "the rows that remain",
    "bucketing+mean": "the rows that remain",
    "clipping+mean": "the rows that remain",
    "nnm+mean": "the rows that remain, the neighbours' count",
    # attacks: how many Byzantine rows (the drawn noise's shape) or whether any
    "alie": "the coalition's size f",
    "gaussian": "the coalition's size f (the noise's shape)",
    "random-sign": "the coalition's size f (the bits' shape)",
    "vote-cancel": "the coalition's size and first member",
    "ipm": "whether a Byzantine worker exists",
    "sign-flip": "whether a Byzantine worker exists",
    "mimic": "whether a Byzantine worker exists, its size",
    "min-max": "the largest distance, a float bound of its search",
    "min-sum": "the largest distance sum, a float bound of its search",
    "optimal-alie": "its line search evaluates the aggregator, a float each evaluation",
    "optimal-ipm": "its line search evaluates the aggregator, a float each evaluation",
    "optimal-vote": "whether a Byzantine worker exists",
    "cancel-to-zero": "the coalition's size f (the clip bound and the rows' shape)",
}
"""The rules that read device values on the host (a GPU synchronisation), and why: each
needs a value for Python control flow or a shape. Every other aggregator, attack and rule
reads none (so a run of them synchronises only where the step needs it)."""


class DeviceTaint(TorchFunctionMode):
    """Marks tensors as on the device (see the module docstring); records in ``mixed``
    each operation that combines a device tensor with a host tensor (or draws on the device
    from a host generator) and in ``syncs`` each host read of a device value."""

    def __init__(self, generators: tuple[torch.Generator, ...] = ()) -> None:
        super().__init__()
        self.marked: dict[int, weakref.ref] = {}
        self.generators = {id(g) for g in generators}
        self.mixed: list[str] = []
        self.syncs: list[str] = []

    def mark(self, t: torch.Tensor) -> torch.Tensor:
        self.marked[id(t)] = weakref.ref(t)
        return t

    def on(self, t: torch.Tensor) -> bool:
        ref = self.marked.get(id(t))
        return ref is not None and ref() is t

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", str(func))
        leaves = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
        on = [t for t in leaves if self.on(t)]
        if name in SYNCS and on:
            self.syncs.append(name)
        if name == "__getitem__":  # host indices into a device tensor are allowed
            checked = [args[0]]
        elif name == "__setitem__":
            checked = [t for t in (args[0], args[2]) if isinstance(t, torch.Tensor)]
        else:
            checked = leaves
        if on and any(not self.on(t) and t.dim() > 0 for t in checked):
            self.mixed.append(name)
        explicit = kwargs.get("device") is not None or (
            name == "to" and any(isinstance(a, torch.device | str) for a in args[1:]))
        generator = kwargs.get("generator")
        if generator is not None and (explicit or on) and id(generator) not in self.generators:
            self.mixed.append(f"{name}(a host generator)")
        out = func(*args, **kwargs)
        if name == "cpu" and out is args[0]:  # on a GPU, a copy on the host
            out = out.clone()
        if (on or explicit) and name not in SYNCS:  # what a read returns is on the host
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor):
                    self.mark(t)
        return out


def traced(fn, n: int = 11, d: int = 20, byzantine=(2, 5)):
    """``fn(messages, mask, generator, mode)`` under :class:`DeviceTaint` with device
    messages ``[n, d]``, a device mask and a device generator; returns the mode."""
    g = torch.Generator().manual_seed(0)
    device_generator = torch.Generator().manual_seed(1)
    mode = DeviceTaint((device_generator,))
    messages = mode.mark(torch.randn(n, d, generator=g))
    mask = torch.zeros(n, dtype=torch.bool)
    mask[list(byzantine)] = True
    mask = mode.mark(mask)
    with mode:
        fn(messages, mask, device_generator, mode)
    return mode


# --- the checker itself ------------------------------------------------------------------


def test_the_checker_flags_a_host_tensor_and_a_host_generator_and_counts_reads():
    host_generator = torch.Generator()

    def bad(m, mask, g, mode):
        _ = m + torch.zeros(m.shape[1])  # the classic bug
        _ = torch.rand(3, generator=host_generator, device=m.device)
        _ = bool(mask.any())

    def good(m, mask, g, mode):
        z = torch.zeros(m.shape[1], device=m.device)
        _ = m + z + m.new_ones(m.shape[1]) + torch.tensor(2.0)  # a 0-dim host value is fine
        _ = m[torch.tensor([0, 1])]  # host indices into a device tensor are fine
        _ = torch.rand(3, generator=g, device=m.device)

    flagged = traced(bad)
    assert flagged.mixed == ["add", "rand(a host generator)"]
    assert flagged.syncs == ["__bool__"]
    clean = traced(good)
    assert clean.mixed == [] and clean.syncs == []


# --- every component on device tensors -------------------------------------------------


def every_aggregator_spec() -> list[str]:
    return aggregators.names() + [f"{p}+mean" for p in aggregators.pre_names()]


@pytest.mark.parametrize("spec", every_aggregator_spec())
def test_every_aggregator_keeps_to_the_device(spec):
    agg = aggregators.build(spec, 2)

    def run(m, mask, g, mode):
        state = agg.init_state()
        for _ in range(2):  # the second call from the state the first left
            v, state = agg.apply(m, state)
        assert v.shape == (m.shape[1],)

    mode = traced(run)
    assert mode.mixed == []
    assert bool(mode.syncs) == (spec in HOST_READS), (spec, mode.syncs)


@pytest.mark.parametrize("name", attacks.names())
def test_every_attack_keeps_to_the_device(name):
    attack = attacks.get(name)
    preview_of = aggregators.build("mean", 2)  # reads nothing on the host itself

    def run(m, mask, g, mode):
        ctx = AttackContext(0, g, False, Preview(preview_of, preview_of.init_state()))
        if attack.capabilities.data_level:
            attack.poison_targets(mode.mark(torch.zeros(m.shape[0], 4, dtype=torch.int64)),
                                  mask, 10)
        else:
            attack(m, mask, ctx)

    mode = traced(run)
    assert mode.mixed == []
    assert bool(mode.syncs) == (name in HOST_READS), (name, mode.syncs)


@pytest.mark.parametrize("name", rules.names())
def test_every_rule_keeps_to_the_device_and_reads_nothing_on_the_host(name):
    rule = rules.get(name, rules.DEFAULT_MOMENTUM[name])

    def run(m, mask, g, mode):
        _, state = rule.step(m, None, [g] * m.shape[0])
        rule.step(m, state, [g] * m.shape[0])

    mode = traced(run)
    assert mode.mixed == [] and mode.syncs == []


def test_packing_in_torch_keeps_to_the_device():
    def run(m, mask, g, mode):
        bits = packing.pack_bits_torch(m > 0)
        back = packing.unpack_bits_torch(bits, m.shape[1])
        assert torch.equal(back, m > 0)

    mode = traced(run)
    assert mode.mixed == [] and mode.syncs == []


def test_wire_frames_in_torch_keep_to_the_device_and_read_only_sizes():
    """A GPU rank encodes its row, decodes the gathered frames and votes on its device;
    the host reads are the row's zero count (the payload's size) and the headers (the
    receives' sizes), nothing else."""
    def run(m, mask, g, mode):
        rows = torch.where(m > 0.3, 1.0, torch.where(m < -0.3, -1.0, 0.0))
        encoded = [protocol.encode_signs_torch(row) for row in rows]
        frames = torch.stack([f for f, _ in encoded])
        payloads = [p for _, p in encoded]
        mode.syncs.clear()
        vote = protocol.vote_from_frames_torch(frames, payloads, m.shape[1])
        assert mode.syncs == ["cpu"], mode.syncs  # the headers, once
        assert mode.on(vote)
        assert torch.equal(vote.float(), aggregators.build("majority-vote")(rows))

    mode = traced(run, n=7, d=300)
    assert mode.mixed == []


@pytest.mark.parametrize(("options", "reads"), [
    ({"byzantine": 2, "attack": "random-sign", "aggregator": "weighted-majority-vote"}, True),
    ({"blind": 2, "aggregator": "majority-vote"}, False),
    ({"rule": "stochastic-sign", "byzantine": 1, "attack": "crash"}, False),
    pytest.param({"dataset": "digits", "model": "smallcnn", "workers": 3, "blind": 1}, False,
                 marks=pytest.mark.slow, id="digits-smallcnn"),
    pytest.param({"dataset": "digits", "model": "resnet20(norm=batch)", "workers": 2,
                  "batch_size": 4}, False, marks=pytest.mark.slow, id="digits-resnet20-bn"),
], ids=["random-sign-weighted-vote", "blind-vote", "stochastic-crash", None, None])
def test_a_simulator_step_on_device_inputs_mixes_no_host_tensor(options, reads):
    """Two steps of the simulator's data path with the parameters, batches, masks and
    generators marked as on the device: no host tensor is mixed in, and a step whose
    rule, adversaries and aggregator read nothing on the host (HOST_READS) reads nothing
    (the plan's masks are read once, on the host: ``AdversaryPlan.host_masks``)."""
    setup = prepare(TrainConfig(**{"rule": "signum", "workers": 7, "epochs": 1, **options}))
    path = data_path(setup)
    inputs, targets = setup.walk(0)
    mode = DeviceTaint((path.generator, *path.rule_generators))
    plan = dataclasses.replace(setup.plan, blind_mask=mode.mark(setup.plan.blind_mask),
                               byzantine_mask=mode.mark(setup.plan.byzantine_mask))
    path = dataclasses.replace(path, plan=plan)
    x = mode.mark(setup.x)
    xb, yb = mode.mark(inputs[:, :8]), mode.mark(targets[:, :8])
    state = path.initial_state()
    if state.buffers is not None:  # every worker's BatchNorm statistics, on the device
        state = dataclasses.replace(state, buffers=type(state.buffers)(
            mode.mark(state.buffers.floats), mode.mark(state.buffers.counts)))
    with mode:
        x, state, _ = path.step(x, state, xb, yb, 0.01, 0)
        first = list(mode.syncs)
        x, state, _ = path.step(x, state, xb, yb, 0.01, 1)
    assert mode.mixed == []
    assert mode.on(x)
    later = mode.syncs[len(first):]
    assert bool(later) == reads, later
    if not reads:  # the first step reads the masks once (AdversaryPlan.host_masks)
        assert first == ["cpu", "cpu"], first


# --- the config field and the CPU path ---------------------------------------------------


def test_device_is_how_a_run_computes_not_what_it_is():
    assert cfg.section_of("device") == cfg.OUTPUT
    base = TrainConfig(epochs=1)
    for device in ("cpu", "cuda", "cuda:3"):
        assert trajectory_id(dataclasses.replace(base, device=device)) == trajectory_id(base)
    assert "device" not in cfg.trajectory_key(dataclasses.replace(base, device="cpu"))


def test_cpu_and_auto_give_the_numbers_of_a_run_without_the_field():
    config = TrainConfig(epochs=2, workers=5, byzantine=1, attack="random-sign")
    without = train(config, progress=False, write=False)
    for device in ("cpu",) + (() if CUDA else ("auto",)):
        same = train(dataclasses.replace(config, device=device), progress=False, write=False)
        strip = [{k: v for k, v in row.items() if k != "wall_s"} for row in same.metrics]
        assert strip == [{k: v for k, v in row.items() if k != "wall_s"}
                         for row in without.metrics]
        assert torch.equal(same.params, without.params)
        assert same.summary["device"] == "cpu"


@pytest.mark.skipif(CUDA, reason="checks the refusal where no CUDA device is visible")
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_without_a_cuda_device_is_one_line_exit_2(device, capsys, tmp_path):
    code, _out, err = run_cli(["train", "--device", device, "--out", str(tmp_path / "r")],
                              capsys)
    assert code == 2, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert f"--device '{device}': no CUDA device is visible; valid: auto, cpu" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda:01", "cuda:-1", "CUDA", "cpu:0",
                                    "cuda:x", "mps"])
def test_a_malformed_device_is_refused_with_the_valid_ones(device):
    with pytest.raises(ConfigError, match=r"is no device; valid: auto, cpu, cuda, cuda:N"):
        resolve(TrainConfig(device=device))


def test_an_index_beyond_the_visible_devices_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert cfg.device_problem("cuda:1") is None
    assert cfg.device_problem("cuda") is None
    assert cfg.device_problem("cuda:2") == (
        "'cuda:2': only 2 CUDA devices visible; valid: auto, cpu, cuda, cuda:0 to cuda:1")
    assert cfg.run_device("auto") == "cuda"


@pytest.mark.slow
def test_prepare_moves_the_model_data_and_masks_to_the_device_it_is_given():
    """The plumbing of ``prepare(device=)`` on the meta device (shapes, no numbers): what
    the run computes with is there, and what it built on the CPU is what moved. (Slow: a
    first ``torch.cat`` of meta tensors imports torch._dynamo, about 5 s.)"""
    config = TrainConfig(workers=5, blind=1, byzantine=1, epochs=1)
    cpu, meta = prepare(config), prepare(config, device="meta")
    assert meta.summary == {**cpu.summary, "device": "meta"}
    assert meta.x.device.type == "meta" and meta.x.shape == cpu.x.shape
    assert all(p.device.type == "meta" for p in meta.module.parameters())
    for name in ("train_x", "train_y", "test_x", "test_y"):
        assert getattr(meta.data, name).device.type == "meta"
        assert getattr(meta.data, name).shape == getattr(cpu.data, name).shape
    assert meta.plan.blind_mask.device.type == "meta"
    assert meta.plan.byzantine_mask.device.type == "meta"
    assert meta.walk(0)[0].device.type == "meta"
    assert cpu.x.device.type == "cpu" and cpu.data is not meta.data


def test_run_rng_on_the_cpu_leaves_the_callers_generator_as_it_was():
    torch.manual_seed(5)
    before = torch.get_rng_state()
    with run_rng(torch.Generator().manual_seed(9).get_state(), "cpu", 9):
        torch.rand(3)
    assert torch.equal(torch.get_rng_state(), before)


def test_generators_are_made_on_the_device_asked_for():
    assert run_module.attack_generator(3, "cpu").device == torch.device("cpu")
    assert all(g.device == torch.device("cpu") for g in run_module.coin_generators(3, [0, 1]))
    assert torch.equal(run_module.attack_generator(3).get_state(),
                       torch.Generator().manual_seed(3 + run_module.ATTACK_STREAM).get_state())


# --- on CUDA (skipped without it) ----------------------------------------------------------


def _cpu_and_cuda(config: TrainConfig):
    cpu = train(dataclasses.replace(config, device="cpu"), progress=False, write=False)
    gpu = train(dataclasses.replace(config, device="cuda"), progress=False, write=False)
    return cpu, gpu


@pytest.fixture
def fp32_cuda(monkeypatch):
    """CUDA in full float32 (no TF32 in matmuls or convolutions), as the CPU computes."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


@pytest.mark.gpu
@pytest.mark.parametrize("config", [
    TrainConfig(epochs=3, rule="signum"),
    TrainConfig(dataset="digits", model="smallcnn", rule="signum", workers=5, batch_size=16,
                lr=1e-3, epochs=1),
    TrainConfig(dataset="digits", model="resnet20(norm=batch)", rule="signum", workers=5,
                batch_size=16, lr=1e-3, epochs=1),
    TrainConfig(epochs=2, rule="signum", workers=7, byzantine=2, attack="vote-cancel",
                aggregator="majority-vote"),
], ids=["logreg", "digits-smallcnn", "digits-resnet20-bn", "logreg-vote-cancel"])
def test_the_simulator_on_cuda_equals_the_cpu_run(config, fp32_cuda):
    """Deterministic rules only: a sign may flip where a gradient coordinate is within
    float error of 0, so the parameters agree to a few ``lr`` on a small fraction of the
    coordinates and the metrics to float tolerance."""
    cpu, gpu = _cpu_and_cuda(config)
    assert gpu.summary["device"].startswith("cuda:")
    assert gpu.params.device.type == "cuda"
    far = ((gpu.params.cpu() - cpu.params).abs() > 1e-4).float().mean()
    assert far < 0.05, far
    for a, b in zip(cpu.metrics, gpu.metrics, strict=True):
        assert abs(a["test_acc"] - b["test_acc"]) <= 0.02, (a, b)
        assert abs(a["train_loss"] - b["train_loss"]) <= 1e-3 + 2e-2 * abs(a["train_loss"])


@pytest.mark.gpu
@pytest.mark.parametrize("model", [None, "smallcnn", "resnet20(norm=batch)"])
@pytest.mark.parametrize("rule", ["sgd", "signum"])
def test_two_simulator_steps_on_cuda_equal_the_cpu_steps(model, rule, fp32_cuda):
    """The sharp form of the test above: from the same parameters and batches, two steps
    on CUDA give the CPU's parameters (SGD to float tolerance; Signum exactly but where a
    coordinate of the momentum is within float error of 0) and BatchNorm statistics."""
    options = {} if model is None else {"dataset": "digits", "model": model}
    config = TrainConfig(rule=rule, workers=4, batch_size=8, epochs=1, **options)
    out = []
    for device in ("cpu", "cuda"):
        setup = prepare(config, device=device)
        path = data_path(setup)
        inputs, targets = setup.walk(0)
        x, state = setup.x, path.initial_state()
        for step in range(2):
            xb, yb = inputs[:, 8 * step:8 * step + 8], targets[:, 8 * step:8 * step + 8]
            x, state, _ = path.step(x, state, xb, yb, 0.01, step)
        out.append((x.cpu(), None if state.buffers is None else state.buffers.floats.cpu()))
    (cpu_x, cpu_b), (gpu_x, gpu_b) = out
    if rule == "sgd":
        assert torch.allclose(gpu_x, cpu_x, rtol=1e-4, atol=1e-6)
    else:
        assert ((gpu_x - cpu_x).abs() > 1e-6).float().mean() < 1e-3
    if cpu_b is not None:
        assert torch.allclose(gpu_b, cpu_b, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
def test_measure_theory_on_cuda_matches_the_cpu(fp32_cuda):
    cpu, gpu = _cpu_and_cuda(TrainConfig(epochs=1, measure_theory=True))
    for key in ("theory_p", "theory_vote_wrong", "theory_vote_wrong_predicted"):
        assert abs(cpu.metrics[0][key] - gpu.metrics[0][key]) <= 0.01, key


@pytest.mark.gpu
def test_stochastic_sign_trains_on_cuda():
    result = train(TrainConfig(epochs=3, rule="stochastic-sign", device="cuda"),
                   progress=False, write=False)
    assert result.status == "completed"
    assert result.summary["final_test_acc"] > 0.6, result.metrics


def _components(n=11, d=300):
    g = torch.Generator().manual_seed(4)
    messages = torch.randn(n, d, generator=g)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[[1, 6]] = True
    return messages, mask


@pytest.mark.gpu
@pytest.mark.parametrize("spec", every_aggregator_spec())
def test_every_aggregator_on_cuda_matches_the_cpu(spec, fp32_cuda):
    messages, _ = _components()
    for rows in (messages, torch.sign(messages)):
        cpu_agg, gpu_agg = aggregators.build(spec, 2), aggregators.build(spec, 2)
        cs, gs = cpu_agg.init_state(), gpu_agg.init_state()
        for _ in range(2):
            cv, cs = cpu_agg.apply(rows, cs)
            gv, gs = gpu_agg.apply(rows.cuda(), gs)
            assert gv.device.type == "cuda"
            if "vote" in spec:
                assert torch.equal(gv.cpu(), cv)
            else:
                assert torch.allclose(gv.cpu(), cv, rtol=1e-4, atol=1e-5), spec


@pytest.mark.gpu
@pytest.mark.parametrize("name", sorted(set(attacks.names()) - {"label-flip"}))
def test_every_attack_on_cuda_matches_the_cpu(name, fp32_cuda):
    """The deterministic attacks equal the CPU's; the random ones (drawn from a CUDA
    generator, other numbers) keep the honest rows and give the Byzantine rows the law's
    shape and values."""
    messages, mask = _components()
    agg = aggregators.build("median", 2)
    cpu_ctx = AttackContext(0, torch.Generator().manual_seed(1), False,
                            Preview(agg, agg.init_state()))
    gpu_ctx = AttackContext(0, torch.Generator(device="cuda").manual_seed(1), False,
                            Preview(agg, agg.init_state()))
    attack = attacks.get(name)
    cpu = attack(messages, mask, cpu_ctx)
    gpu = attack(messages.cuda(), mask.cuda(), gpu_ctx).cpu()
    assert torch.equal(gpu[~mask], cpu[~mask])
    if name in ("random-sign", "gaussian"):
        assert gpu[mask].shape == cpu[mask].shape
        if name == "random-sign":
            assert set(gpu[mask].unique().tolist()) <= {-1.0, 1.0}
    else:
        assert torch.allclose(gpu, cpu, rtol=1e-4, atol=1e-5, equal_nan=True), name


@pytest.mark.gpu
def test_label_flip_on_cuda_matches_the_cpu():
    targets = torch.randint(0, 10, (5, 8), generator=torch.Generator().manual_seed(2))
    mask = torch.tensor([False, True, False, False, True])
    attack = attacks.get("label-flip")
    assert torch.equal(attack.poison_targets(targets.cuda(), mask.cuda(), 10).cpu(),
                       attack.poison_targets(targets, mask, 10))


@pytest.mark.gpu
@pytest.mark.parametrize("d", [1, 7, 8, 9, 1000])
def test_packing_round_trips_on_cuda(d):
    g = torch.Generator().manual_seed(d)
    messages = torch.sign(torch.randn(9, d, generator=g))
    messages[0, 0] = 0.0
    packed = packing.pack_signs(messages.cuda())
    assert packed.positive.device.type == "cuda"
    assert torch.equal(packing.unpack_signs(packed).cpu(), messages)
    assert torch.equal(packing.packed_vote(packed).cpu(),
                       packing.packed_vote(packing.pack_signs(messages)))


@pytest.mark.gpu
@pytest.mark.parametrize("d", [7, 1000, 100_003])
def test_wire_frames_on_cuda_are_the_cpu_bytes_and_vote(d):
    g = torch.Generator().manual_seed(d)
    rows = torch.sign(torch.randn(6, d, generator=g))
    rows[1, ::3] = 0.0
    rows[2, 5] = 0.0
    encoded = [protocol.encode_signs(row) for row in rows]
    on_gpu = [protocol.encode_signs(row.cuda()) for row in rows]
    for (frame, payload), (f, p) in zip(encoded, on_gpu, strict=True):
        assert f.device.type == "cuda" and torch.equal(f.cpu(), frame)
        assert (p is None and payload is None) or torch.equal(p.cpu(), payload)
    frames = torch.stack([f for f, _ in on_gpu])
    vote = protocol.vote_from_frames(frames, [p for _, p in on_gpu], d)
    assert vote.device.type == "cuda"
    assert torch.equal(vote.cpu(), protocol.vote_from_frames(
        torch.stack([f for f, _ in encoded]), [p for _, p in encoded], d))


@pytest.mark.gpu
def test_stochastic_sign_on_cuda_draws_from_a_cuda_generator():
    g = torch.Generator(device="cuda").manual_seed(0)
    values = torch.randn(4, 1000, device="cuda")
    out = rules.stochastic_sign(values, None, [g] * 4)
    assert out.device.type == "cuda" and set(out.unique().tolist()) <= {-1.0, 1.0}
