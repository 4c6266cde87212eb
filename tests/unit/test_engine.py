"""The engine with M replicas in threads of one process: identities, bit-identical globals,
convergence, and exact save/restore. No Ray, no process group."""

from __future__ import annotations

import io
import math
import threading
from dataclasses import dataclass, replace

import pytest
import torch

from streamloco.config import OuterConfig, load_config
from streamloco.outer_optim.engine import StreamingEngine
from streamloco.outer_optim.optimizer import flatten
from streamloco.outer_optim.transport import InProcessHub
from streamloco.simulate import run_simulation
from streamloco.workers.model import Transformer, model_args
from streamloco.workers.synthetic import MarkovLanguage, SyntheticStream

VOCAB, SEQ, BATCH = 32, 16, 4
LANG = MarkovLanguage(VOCAB, branching=2, seed=0)


@dataclass
class Replica:
    model: Transformer
    opt: torch.optim.Optimizer
    engine: StreamingEngine | None
    stream: SyntheticStream

    def train(self, steps: int, on_step=None) -> list[float]:
        losses = []
        for _ in range(steps):
            batch = self.stream.next()
            loss = self.model.loss(batch[:, :-1], batch[:, 1:])
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            if on_step is not None:
                on_step(self, "before_sync")
            events = self.engine.step() if self.engine is not None else []
            if on_step is not None:
                on_step(self, events)
            losses.append(loss.item())
        return losses

    def state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "opt": self.opt.state_dict(),
            "stream": self.stream.state_dict(),
            "engine": self.engine.state_dict(),
            "own": self.engine.group_state_dict(),
        }

    def load(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        self.stream.load_state_dict(state["stream"])
        self.engine.load_state_dict(state["engine"])
        self.engine.load_group_state_dict(state["own"])


def make_replica(group: int, options: OuterConfig | None, hub: InProcessHub | None) -> Replica:
    torch.manual_seed(0)  # every group starts from the same initialization
    model = Transformer(model_args("tiny", VOCAB, SEQ))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, foreach=False)
    engine = (
        StreamingEngine(model, options, hub.transport(group), timeout_s=30) if options else None
    )
    return Replica(model, opt, engine, SyntheticStream(LANG, BATCH, SEQ, seed=1, stream=group))


def in_threads(fn, m: int) -> list:
    results, errors = [None] * m, []

    def run(g):
        try:
            results[g] = fn(g)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(g,)) for g in range(m)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "replica thread hung"
    if errors:
        raise errors[0]
    return results


FP32_AVG = OuterConfig(
    sync_every=1,
    fragments=1,
    overlap=0,
    alpha=0.0,
    lr=1.0,
    momentum=0.0,
    codec="fp32",
)


def test_one_group_h1_lr1_no_momentum_alpha0_is_plain_training():
    plain = make_replica(0, None, None)
    synced = make_replica(0, FP32_AVG, InProcessHub(1))
    steps = 15
    plain_losses = plain.train(steps)
    synced_losses = synced.train(steps)
    # global - (global - local) equals local up to one fp32 rounding where the two differ by
    # more than 2x (Sterbenz), so this is equality to fp32 precision, not bitwise.
    assert synced_losses == pytest.approx(plain_losses, rel=1e-5, abs=1e-6)
    for a, b in zip(plain.model.parameters(), synced.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("m", [2, 4])
def test_lr1_no_momentum_alpha0_is_parameter_averaging(m):
    hub = InProcessHub(m)
    opts = replace(FP32_AVG, sync_every=5)
    replicas = [make_replica(g, opts, hub) for g in range(m)]
    before: dict[int, torch.Tensor] = {}
    after: dict[int, torch.Tensor] = {}

    def hook(rep, events):
        g = rep.engine.transport.group
        if events == "before_sync":
            if rep.engine.step_count + 1 == 5:
                before[g] = flatten(list(rep.model.parameters()))
        elif events:
            after[g] = flatten(list(rep.model.parameters()))

    in_threads(lambda g: replicas[g].train(5, hook), m)
    mean = torch.stack([before[g] for g in range(m)]).mean(0)
    assert not torch.allclose(before[0], before[1])  # the groups really did diverge
    for g in range(m):
        torch.testing.assert_close(after[g], mean, rtol=1e-5, atol=1e-6)
        assert torch.equal(after[g], after[0])  # bitwise the same on every group


@pytest.mark.parametrize(
    "m,codec,tau,schedule",
    [
        (2, "e3m0", 1, "streaming"),
        (4, "int4", 2, "torchft"),
        (2, "e3m0", 0, "streaming"),
        (2, "sparse", 1, "streaming"),
        (4, "sparse", 2, "torchft"),
        (3, "e3m0-stochastic", 1, "streaming"),
    ],
)
def test_every_group_holds_bit_identical_globals_after_every_apply(m, codec, tau, schedule):
    hub = InProcessHub(m)
    opts = OuterConfig(
        sync_every=12,
        fragments=3,
        overlap=tau,
        alpha=0.5,
        codec=codec.split("-")[0],
        rounding="stochastic" if codec.endswith("stochastic") else "nearest",
        zstd_level=3,
        schedule=schedule,
        error_feedback=codec == "sparse",  # per-group state must not break the identity
        topk=4,  # sparse: 4 of every 128
    )
    replicas = [make_replica(g, opts, hub) for g in range(m)]
    seen: dict[tuple[int, int, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(rep, events):
        if events == "before_sync":
            return
        for ev in events:
            if ev.kind == "apply":
                p = ev.fragment
                seen[(rep.engine.transport.group, p, ev.step)] = (
                    rep.engine.global_params[p].clone(),
                    rep.engine.momentum[p].clone(),
                )
                assert ev.groups == m and ev.quant_rel_error > 0

    in_threads(lambda g: replicas[g].train(24, hook), m)
    applies = sorted({(p, s) for (_, p, s) in seen})
    sched = replicas[0].engine.schedule
    assert len(applies) == sum(len(sched.applies(s)) for s in range(1, 25)) >= 5
    for p, s in applies:
        ref_global, ref_mom = seen[(0, p, s)]
        for g in range(1, m):
            assert torch.equal(seen[(g, p, s)][0], ref_global), (g, p, s)
            assert torch.equal(seen[(g, p, s)][1], ref_mom), (g, p, s)
    # Local copies differ (each group trained on its own data) while globals agree.
    assert not torch.equal(
        flatten(list(replicas[0].model.parameters())), flatten(list(replicas[1].model.parameters()))
    )


def _sim_cfg(m: int, **outer):
    overrides = [
        f"--outer.{k}={v if not isinstance(v, str) else repr(v)}" for k, v in outer.items()
    ]
    base = [
        "--train.steps=150",
        "--train.batch_size=8",
        "--train.eval_every=0",
        f"--train.groups={m}",
        "--model.vocab_size=16",
        "--model.seq_len=32",
        "--data.branching=2",
        "--run.tensorboard=false",
        "--inner.warmup_steps=10",
        "--inner.lr=3e-3",
        "--outer.sync_every=20",
    ]
    return load_config(None, base + overrides)


@pytest.mark.parametrize("m", [2, pytest.param(4, marks=pytest.mark.slow)])
def test_streaming_4bit_trains_and_ends_near_diloco_fp32(m):
    diloco = run_simulation(_sim_cfg(m, fragments=1, codec="fp32"))
    stream = run_simulation(_sim_cfg(m, fragments=2, overlap=1, alpha=0.5, codec="e3m0"))
    initial = math.log(16)  # an untrained model is ~uniform over the vocabulary
    for res in (diloco, stream):
        assert res.globals_identical()
        # The global model closed most of the gap between chance and the language's floor.
        assert res.final_eval_loss - res.nll_floor < 0.3 * (initial - res.nll_floor)
        first = sum(res.groups[0].train_loss[:10]) / 10
        last = sum(res.groups[0].train_loss[-10:]) / 10
        assert last < 0.6 * first
    # 4-bit streaming ends close to fp32 DiLoCo at the same tokens (and not clearly worse).
    assert stream.final_eval_loss < diloco.final_eval_loss * 1.05
    assert abs(stream.final_eval_loss - diloco.final_eval_loss) < 0.15
    # ... while sending about 8x fewer bytes (4 vs 32 bits, plus scales and headers).
    assert stream.groups[0].bytes_sent < diloco.groups[0].bytes_sent / 6


@pytest.mark.parametrize("codec", ["e3m0", "sparse", "e3m0-stochastic"])
def test_save_restore_mid_run_with_a_fragment_in_flight_is_bit_exact(codec):
    m, total, cut = 2, 14, 4
    opts = OuterConfig(
        sync_every=8,
        fragments=2,
        overlap=1,
        alpha=0.5,
        codec=codec.split("-")[0],
        rounding="stochastic" if codec.endswith("stochastic") else "nearest",  # seeded draws
        error_feedback=codec == "sparse",  # the residuals are part of the checkpoint
        error_decay=0.9,
    )
    # Uninterrupted run.
    hub = InProcessHub(m)
    ref = [make_replica(g, opts, hub) for g in range(m)]
    in_threads(lambda g: ref[g].train(total), m)

    # Interrupted: train to `cut` (fragment 1 sent at step 4, applies at 5), save, then resume
    # into freshly built replicas through a weights_only round trip of the checkpoint bytes.
    hub = InProcessHub(m)
    first = [make_replica(g, opts, hub) for g in range(m)]
    in_threads(lambda g: first[g].train(cut), m)
    assert all(1 in r.engine.in_flight for r in first)
    blobs = []
    for r in first:
        buf = io.BytesIO()
        torch.save(r.state(), buf)
        blobs.append(buf.getvalue())
    hub = InProcessHub(m)
    resumed = [make_replica(g, opts, hub) for g in range(m)]
    for r, blob in zip(resumed, blobs, strict=True):
        r.load(torch.load(io.BytesIO(blob), weights_only=True))
    in_threads(lambda g: resumed[g].train(total - cut), m)

    for a, b in zip(ref, resumed, strict=True):
        assert a.engine.step_count == b.engine.step_count == total
        for pa, pb in zip(a.model.parameters(), b.model.parameters(), strict=True):
            assert torch.equal(pa, pb)
        for ga, gb in zip(a.engine.global_params, b.engine.global_params, strict=True):
            assert torch.equal(ga, gb)
        for ea, eb in zip(a.engine.error, b.engine.error, strict=True):
            assert (ea is None) == (eb is None) and (ea is None or torch.equal(ea, eb))
    if codec == "sparse":  # the residuals really were saved: they differ between groups
        assert all(e is not None for e in ref[0].engine.error)
        assert not torch.equal(ref[0].engine.error[0], ref[1].engine.error[0])


def test_restore_rejects_state_of_a_different_plan():
    hub = InProcessHub(1)
    a = make_replica(0, OuterConfig(sync_every=6, fragments=2), hub)
    b = make_replica(0, OuterConfig(sync_every=6, fragments=3), hub)
    with pytest.raises(ValueError, match="fragment plan differs"):
        b.engine.load_state_dict(a.engine.state_dict())


def test_global_state_names_match_the_model():
    rep = make_replica(0, OuterConfig(sync_every=4, fragments=2), InProcessHub(1))
    state = rep.engine.global_state()
    assert set(state) == {n for n, _ in rep.model.named_parameters()}
    for name, p in rep.model.named_parameters():
        assert torch.equal(state[name], p.detach())


@pytest.mark.parametrize(
    ("k", "codec", "tau", "block"),
    [(2, "e3m0", 1, 128), (3, "int4", 0, 64), (4, "fp32", 2, 16), (2, "sparse", 1, 128)],
)
def test_hierarchical_k_ranks_per_group_match_one_rank_bit_for_bit(k, codec, tau, block):
    """Each rank syncs 1/K of every fragment with its peers; the result does not depend on K."""
    from streamloco.outer_optim.comm import ThreadHub

    m, steps = 2, 26  # 26: every fragment has landed (tau <= 2)
    opts = OuterConfig(
        sync_every=12,
        fragments=3,
        overlap=tau,
        alpha=0.5,
        codec=codec,
        block_size=block,
        zstd_level=0 if codec == "fp32" else 3,  # fp32: exact sizes to compare below,
        error_feedback=codec == "sparse",
        topk=4,
    )

    def run(ranks: int) -> tuple[list[Replica], list[dict]]:
        hubs = [InProcessHub(m) for _ in range(ranks)]  # one all-gather per rank index
        groups = [ThreadHub(ranks) for _ in range(m)]
        reps = []
        for g in range(m):
            for r in range(ranks):
                rep = make_replica(g, None, None)  # ranks of a group see the same data (as DDP)
                rep.engine = StreamingEngine(
                    rep.model, opts, hubs[r].transport(g), groups[g].comm(r), timeout_s=30
                )
                reps.append(rep)
        in_threads(lambda i: reps[i].train(steps), m * ranks)
        assert all(rep.engine.idle for rep in reps)
        states = in_threads(lambda i: reps[i].engine.state_dict(), m * ranks)
        own = in_threads(lambda i: reps[i].engine.group_state_dict(), m * ranks)
        for i, state in enumerate(states):
            state["own"] = own[i]
        return reps, states

    one, one_states = run(1)
    many, many_states = run(k)
    sent_one = sum(r.engine.transport.stats.bytes_sent for r in one[:1])
    sent_many = sum(r.engine.transport.stats.bytes_sent for r in many[:k])
    for rep in many:
        for a, b in zip(rep.engine.global_params, one[0].engine.global_params, strict=True):
            assert torch.equal(a, b)
        assert torch.equal(
            flatten(list(rep.model.parameters())),
            flatten(list(one[rep.engine.transport.group].model.parameters())),
        )
    for i, state in enumerate(many_states):  # gathered state: the same whatever K
        for a, b in zip(state["momentum"], one_states[0]["momentum"], strict=True):
            assert torch.equal(a, b)
        mine = one_states[i // k]["own"]["error"]  # per group: rank i belongs to group i // k
        for a, b in zip(state["own"]["error"], mine, strict=True):
            assert (a is None) == (b is None) and (a is None or torch.equal(a, b))
            assert (a is not None) == (codec == "sparse")
    # The group's traffic is spread over its ranks: each rank sends about 1/K of it.
    per_rank = [r.engine.transport.stats.bytes_sent for r in many[:k]]
    assert max(per_rank) < 0.7 * sent_one
    if codec == "fp32":  # fixed-size payloads: only the extra headers differ
        assert sent_many - sent_one == (k - 1) * 33 * 6  # 6 exchanges x (K-1) extra headers


def test_sharded_state_needs_a_round_boundary_and_restores_onto_any_k():
    from streamloco.outer_optim.comm import ThreadHub

    opts = OuterConfig(sync_every=6, fragments=2, overlap=1, block_size=16)

    def group(k: int) -> list[Replica]:
        hubs, comms = [InProcessHub(1) for _ in range(k)], ThreadHub(k)
        reps = [make_replica(0, None, None) for _ in range(k)]
        for r, rep in enumerate(reps):
            rep.engine = StreamingEngine(
                rep.model, opts, hubs[r].transport(0), comms.comm(r), timeout_s=30
            )
        return reps

    two = group(2)
    in_threads(lambda r: two[r].train(6), 2)  # fragment 0 sent at step 6, lands at 7 (tau=1)
    with pytest.raises(RuntimeError, match="in flight"):
        two[0].engine.state_dict()
    in_threads(lambda r: two[r].train(1), 2)
    state = in_threads(lambda r: two[r].engine.state_dict(), 2)[0]
    three = group(3)
    in_threads(lambda r: three[r].engine.load_state_dict(state), 3)
    again = in_threads(lambda r: three[r].engine.state_dict(), 3)[1]
    assert again["step"] == 7
    for a, b in zip(again["momentum"], state["momentum"], strict=True):
        assert a is not None and torch.equal(a, b)


class _Faulty:
    """Wraps a group's transport: corrupts or replaces its payloads on chosen sends."""

    def __init__(self, inner, corrupt_at: set[int]) -> None:
        self.inner, self.corrupt_at = inner, corrupt_at
        self.group, self.num_groups, self.stats = inner.group, inner.num_groups, inner.stats

    def exchange(self, key, payload):
        if key[1] in self.corrupt_at and payload:
            payload = payload[:-1] + bytes([payload[-1] ^ 0xFF])  # one flipped byte
        return self.inner.exchange(key, payload)


def test_bad_contributions_are_left_out_by_every_group_alike():
    """Group 2 sends a corrupted payload at step 2 and goes NaN at step 4: the others average
    without it, everyone keeps identical finite globals, and group 2 adopts the global."""
    m = 3
    hub = InProcessHub(m)
    reps = [make_replica(g, FP32_AVG, hub) for g in range(m)]
    reps[2].engine.transport = _Faulty(hub.transport(2), corrupt_at={2})
    seen: dict = {}

    def hook(rep, events):
        g = rep.engine.transport.group
        if events == "before_sync":
            seen[(g, rep.engine.step_count + 1, "local")] = flatten(list(rep.model.parameters()))
            if g == 2 and rep.engine.step_count + 1 == 4:
                with torch.no_grad():
                    next(rep.model.parameters()).fill_(float("nan"))
            return
        for ev in events:
            seen[(g, ev.step, ev.kind)] = ev
        seen[(g, rep.engine.step_count, "global")] = rep.engine.global_params[0].clone()

    in_threads(lambda g: reps[g].train(5, hook), m)
    for step, why in ((2, "invalid payload"), (4, "sent nothing")):
        for g in range(m):
            ev = seen[(g, step, "apply")]
            assert [b for b, _ in ev.excluded] == [2] and why in ev.excluded[0][1]
            assert ev.groups == 2 and ev.adopted == (g == 2)
            assert torch.equal(seen[(g, step, "global")], seen[(0, step, "global")])
        # lr 1, no momentum, alpha 0: the new global is the mean of groups 0 and 1 only
        mean = (seen[(0, step, "local")] + seen[(1, step, "local")]) / 2
        torch.testing.assert_close(seen[(0, step, "global")], mean, rtol=0, atol=1e-6)
    assert seen[(2, 4, "send")].abstained
    assert torch.isfinite(seen[(0, 5, "global")]).all()
    # alpha 0: the adopting group took the global parameters, NaNs gone
    assert torch.isfinite(flatten(list(reps[2].model.parameters()))).all()


# ---- error feedback ---------------------------------------------------------------------------


def _fp32_runs_with_and_without_error_feedback():
    out = []
    for ef in (False, True):
        opts = OuterConfig(sync_every=6, fragments=2, overlap=1, alpha=0.5, codec="fp32")
        opts = replace(opts, error_feedback=ef, error_decay=0.5)
        hub = InProcessHub(2)
        reps = [make_replica(g, opts, hub) for g in range(2)]
        in_threads(lambda g, reps=reps: reps[g].train(13), 2)
        out.append(reps)
    return out


def test_error_feedback_with_a_lossless_codec_changes_nothing():
    """fp32 sends exactly what it is given: the residual is exactly 0 and the run is
    bit-identical to one without error feedback, whatever the decay."""
    off, on = _fp32_runs_with_and_without_error_feedback()
    for a, b in zip(off, on, strict=True):
        for ga, gb in zip(a.engine.global_params, b.engine.global_params, strict=True):
            assert torch.equal(ga, gb)
        assert all(e is None for e in a.engine.error)
        assert all(e is not None and not e.any() for e in b.engine.error)


def test_error_feedback_carries_exactly_what_the_payload_left_out():
    """One group, lr 1, no momentum: the applied step is the decoded payload itself, so
    error_after = decay * error_before + delta - (global_before - global_after)."""
    decay = 0.8
    opts = replace(FP32_AVG, sync_every=4, fragments=2, codec="sparse", block_size=64, topk=2)
    opts = replace(opts, error_feedback=True, error_decay=decay)
    rep = make_replica(0, opts, InProcessHub(1))
    eng = rep.engine
    checked = []
    before: dict = {}

    def hook(r, events):
        if events == "before_sync":
            for p in eng.schedule.sends(eng.step_count + 1):
                local = flatten(eng.params[p])
                err = eng.error[p]
                before[p] = (
                    eng.global_params[p] - local,
                    torch.zeros_like(local) if err is None else err.clone(),
                    eng.global_params[p].clone(),
                )
            return
        for ev in events:
            if ev.kind != "apply":
                continue
            p = ev.fragment
            delta, err, glob = before.pop(p)
            applied = glob - eng.global_params[p]
            chunks = (applied != 0).view(-1).split(64)
            assert max(int(c.sum()) for c in chunks) <= 2  # at most k of every 64 sent
            expected = err * decay + delta - applied
            torch.testing.assert_close(eng.error[p], expected, rtol=0, atol=1e-6)
            assert float(eng.error[p].norm()) > 0.9 * float(delta.norm())  # most waits
            checked.append(p)

    rep.train(12, hook)
    assert sorted(checked) == [0, 0, 0, 1, 1, 1]


def test_a_group_left_out_of_a_round_drops_its_residual_the_others_keep_theirs():
    opts = OuterConfig(sync_every=4, fragments=1, codec="sparse", block_size=64, topk=2)
    opts = replace(opts, error_feedback=True)
    hub = InProcessHub(2)
    reps = [make_replica(g, opts, hub) for g in range(2)]
    reps[1].engine.transport = _Faulty(hub.transport(1), corrupt_at={8})
    after: dict = {}

    def hook(rep, events):
        if events != "before_sync" and any(ev.kind == "apply" for ev in events):
            e = rep.engine.error[0]
            after[(rep.engine.transport.group, rep.engine.step_count)] = e
            assert all(
                ev.adopted == (ev.step == 8 and rep.engine.transport.group == 1)
                for ev in events
                if ev.kind == "apply"
            )

    in_threads(lambda g: reps[g].train(12, hook), 2)
    assert after[(1, 8)] is None  # adopted the global fragment: nothing owed any more
    assert after[(0, 8)] is not None and after[(1, 12)] is not None  # ... and starts again
    for ga, gb in zip(reps[0].engine.global_params, reps[1].engine.global_params, strict=True):
        assert torch.equal(ga, gb)


def test_live_recovery_seeds_a_replacement_without_residuals_and_globals_stay_identical():
    """A replacement group takes a healthy peer's shared engine state (as trainer.recover
    does): it starts with no residual (neither the dead group's nor the peer's), the
    survivors keep theirs, and every group ends every later round with identical globals."""
    opts = OuterConfig(sync_every=6, fragments=2, overlap=1, codec="sparse", block_size=64)
    opts = replace(opts, error_feedback=True, topk=2, alpha=0.0)
    hub = InProcessHub(2)
    reps = [make_replica(g, opts, hub) for g in range(2)]
    in_threads(lambda g: reps[g].train(8), 2)  # idle: f1 sent at 3 landed at 4, f0 6 at 7
    assert reps[0].engine.idle and all(e is not None for e in reps[0].engine.error)
    shared = reps[0].engine.state_dict()
    fresh = make_replica(1, opts, hub)  # group 1 died; its replacement
    fresh.engine.load_state_dict(shared)
    from streamloco.workers.trainer import load_global

    load_global(fresh.model, fresh.engine.global_state())
    assert all(e is None for e in fresh.engine.error)
    reps[1] = fresh  # the survivor goes on untouched, residuals and all
    in_threads(lambda g: reps[g].train(12), 2)
    for ga, gb in zip(reps[0].engine.global_params, reps[1].engine.global_params, strict=True):
        assert torch.equal(ga, gb)
    assert all(e is not None for e in reps[1].engine.error)


def test_group_state_without_residuals_is_refused_when_error_feedback_is_on():
    opts = replace(OuterConfig(sync_every=4, fragments=2), error_feedback=True)
    rep = make_replica(0, opts, InProcessHub(1))
    with pytest.raises(ValueError, match="error-feedback"):
        rep.engine.load_group_state_dict(None)
    plain = make_replica(0, OuterConfig(sync_every=4, fragments=2), InProcessHub(1))
    plain.engine.load_group_state_dict(None)  # a checkpoint from before: fine when off
    with pytest.raises(ValueError, match="fragments"):
        plain.engine.load_group_state_dict({"version": 1, "error": [None]})


@pytest.mark.parametrize(
    ("flag", "key"),
    [
        ("--outer.error_decay=0", "outer.error_decay"),
        ("--outer.error_decay=1.5", "outer.error_decay"),
        ("--outer.topk=200", "outer.topk"),
        ("--outer.block_size=70000", "outer.block_size"),
        ("--outer.rounding='stochastic'", "outer.rounding"),  # e3m0 only
    ],
)
def test_sparse_and_error_feedback_options_are_validated_naming_the_key(flag, key):
    with pytest.raises(ValueError, match=key):
        load_config(None, ["--outer.codec='sparse'", flag])
