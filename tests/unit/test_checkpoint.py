"""Checkpoint store: round trips, crashes mid-write, pruning, corruption fallback, safe loading."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import subprocess
import sys
import textwrap
import warnings
from collections import OrderedDict, namedtuple
from pathlib import Path

import pytest
import torch

from streamloco.atomic import TMP_MARK
from streamloco.launcher.checkpoint import (
    CheckpointError,
    CheckpointWarning,
    list_checkpoints,
    load_checkpoint,
    load_latest,
    save_checkpoint,
)

# ---- helpers ------------------------------------------------------------------------------------


def small_state(step: int) -> dict:
    return {"step": step, "w": torch.full((4,), float(step)), "name": f"s{step}"}


def names(root: Path) -> list[str]:
    return [p.name for p in list_checkpoints(root)]


def tmp_entries(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if TMP_MARK in p.name)


def assert_same(a, b, where: str = "state") -> None:
    """Equal values of identical types; tensors equal bit for bit (NaN payloads included)."""
    assert type(a) is type(b), f"{where}: {type(a)} != {type(b)}"
    if isinstance(a, torch.Tensor):
        assert (a.dtype, a.shape, a.device) == (b.dtype, b.shape, b.device), where
        assert a.contiguous().reshape(-1).view(torch.uint8).tolist() == (
            b.contiguous().reshape(-1).view(torch.uint8).tolist()
        ), where
    elif isinstance(a, dict):
        assert list(a.keys()) == list(b.keys()), where
        for k in a:
            assert type(k) is type(next(kb for kb in b if kb == k)), f"{where} key {k!r}"
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def run_crashing(code: str) -> None:
    """Run `code` in a fresh interpreter that is expected to die by os._exit(17) (a real crash)."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 17, proc.stderr


# ---- round trip ---------------------------------------------------------------------------------


def test_round_trip_realistic_state(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Embedding(11, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 11)
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95))
    model(torch.randint(0, 11, (3, 5))).square().mean().backward()
    opt.step()
    odd = torch.tensor([float("nan"), -0.0, float("inf"), 1e-40])
    state = {
        "model": model.state_dict(),
        "optim": opt.state_dict(),
        "engine": {
            "global": [torch.randn(5), torch.randn(3).to(torch.bfloat16)],
            "momentum": [None, torch.zeros(3)],
            # Keyed by fragment index: ints must stay ints, not become strings.
            "in_flight": {0: {"send_step": 4, "payloads": {1: torch.arange(7, dtype=torch.uint8)}}},
        },
        "step": 12,
        "lr": 2.5e-4,
        "run": "demo",
        "done": False,
        "shape": (2, 3),
        "odd": odd,
        "scalar": torch.tensor(3, dtype=torch.int64),
        "rng": torch.get_rng_state(),
    }
    meta = {"config_toml": '[run]\nname = "demo"\n', "tokenizer_sha256": "ab" * 32}
    path = save_checkpoint(tmp_path / "ckpt", 12, state, meta)
    assert path == tmp_path / "ckpt" / "step-00000012"
    assert sorted(p.name for p in path.iterdir()) == ["meta.json", "state.pt"]

    loaded, got_meta = load_checkpoint(path)
    assert_same(state, loaded)
    assert isinstance(loaded["model"], OrderedDict)
    assert got_meta["config_toml"] == meta["config_toml"]
    assert got_meta["tokenizer_sha256"] == meta["tokenizer_sha256"]
    assert got_meta["step"] == 12 and got_meta["format"] == 1
    assert got_meta["torch_version"] == torch.__version__
    assert got_meta["state_size"] == (path / "state.pt").stat().st_size
    assert got_meta["state_sha256"] == hashlib.sha256((path / "state.pt").read_bytes()).hexdigest()

    got = load_latest(tmp_path / "ckpt")
    assert got is not None and got[0] == path
    assert_same(state, got[1])

    # (model.state_dict() shares storage with the live parameters, so compare before training.)
    # The loaded state really restores training: one more step matches the original's.
    model2 = torch.nn.Sequential(
        torch.nn.Embedding(11, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 11)
    )
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-3, betas=(0.9, 0.95))
    model2.load_state_dict(loaded["model"])
    opt2.load_state_dict(loaded["optim"])
    x = torch.randint(0, 11, (3, 5))
    for m, o in ((model, opt), (model2, opt2)):
        o.zero_grad()
        m(x).square().mean().backward()
        o.step()
    for p1, p2 in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(p1, p2)


def test_load_latest_without_checkpoints(tmp_path):
    assert load_latest(tmp_path / "missing") is None
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / f"step-00000003{TMP_MARK}1-abcd.new").mkdir()
    assert load_latest(tmp_path / "empty") is None


def test_list_ignores_temporaries_and_unrelated(tmp_path):
    for s in (30, 2, 100_000_000):
        save_checkpoint(tmp_path, s, small_state(s), keep=5)
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / "step-00000009").write_text("a file, not a checkpoint")
    (tmp_path / "step-abc").mkdir()
    (tmp_path / f"step-00000050{TMP_MARK}99-0000.new").mkdir()
    assert names(tmp_path) == ["step-00000002", "step-00000030", "step-100000000"]


# ---- crashes ------------------------------------------------------------------------------------


def test_exception_mid_write_keeps_previous(tmp_path, monkeypatch):
    save_checkpoint(tmp_path, 1, small_state(1))
    save_checkpoint(tmp_path, 2, small_state(2))
    before = {p.name: (p / "state.pt").read_bytes() for p in list_checkpoints(tmp_path)}
    real_save = torch.save

    def half_then_fail(obj, f, *args, **kwargs):
        real_save({"partial": torch.zeros(1000)}, f)  # some bytes really reach the file
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, 3, small_state(3))
    # Rewriting an existing step that fails leaves the good one in place too.
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, 2, small_state(99))
    monkeypatch.undo()

    assert names(tmp_path) == ["step-00000001", "step-00000002"]
    assert {p.name: (p / "state.pt").read_bytes() for p in list_checkpoints(tmp_path)} == before
    assert tmp_entries(tmp_path) == []  # cleaned up on the way out
    path, state, _ = load_latest(tmp_path)
    assert path.name == "step-00000002" and state["step"] == 2


def test_hard_crash_mid_write_leaves_only_a_temporary(tmp_path):
    save_checkpoint(tmp_path, 1, small_state(1))
    # A real crash: the process dies in the middle of writing state.pt, no except block runs.
    run_crashing(
        f"""
        import os, torch
        from pathlib import Path
        from streamloco.launcher.checkpoint import save_checkpoint
        real_save = torch.save
        def dying_save(obj, f, *a, **k):
            real_save({{"partial": torch.zeros(1000)}}, f)
            f.flush()
            os._exit(17)
        torch.save = dying_save
        save_checkpoint(Path({str(tmp_path)!r}), 2, {{"w": torch.ones(3)}})
        """
    )
    leftovers = tmp_entries(tmp_path)
    assert len(leftovers) == 1 and leftovers[0].startswith("step-00000002" + TMP_MARK)
    assert names(tmp_path) == ["step-00000001"]
    path, state, _ = load_latest(tmp_path)
    assert state["step"] == 1
    assert path.name == "step-00000001"

    save_checkpoint(tmp_path, 3, small_state(3))
    assert tmp_entries(tmp_path) == []
    assert names(tmp_path) == ["step-00000001", "step-00000003"]


def test_hard_crash_while_replacing_a_step_restores_the_old_one(tmp_path):
    save_checkpoint(tmp_path, 5, small_state(5))
    # Die right after the old directory was moved aside, before the new one is renamed in.
    run_crashing(
        f"""
        import os, torch
        from pathlib import Path
        from streamloco.launcher.checkpoint import save_checkpoint
        real_rename = os.rename
        def rename(src, dst):
            real_rename(src, dst)
            if str(dst).endswith(".old"):
                os._exit(17)
        os.rename = rename
        save_checkpoint(Path({str(tmp_path)!r}), 5, {{"step": 555}})
        """
    )
    assert names(tmp_path) == []  # neither under the final name for the moment...
    with warnings.catch_warnings():
        warnings.simplefilter("error", CheckpointWarning)  # restored, not skipped as damaged
        got = load_latest(tmp_path)
    assert got is not None and got[0].name == "step-00000005" and got[1]["step"] == 5

    save_checkpoint(tmp_path, 6, small_state(6))
    assert tmp_entries(tmp_path) == []  # the unfinished new copy is gone
    assert names(tmp_path) == ["step-00000005", "step-00000006"]


# ---- pruning and rewriting ----------------------------------------------------------------------


def test_keep_prunes_older(tmp_path):
    for s in range(1, 6):
        save_checkpoint(tmp_path, s * 10, small_state(s * 10), keep=2)
        assert len(list_checkpoints(tmp_path)) == min(s, 2)
    assert names(tmp_path) == ["step-00000040", "step-00000050"]
    assert tmp_entries(tmp_path) == []
    save_checkpoint(tmp_path, 60, small_state(60), keep=1)
    assert names(tmp_path) == ["step-00000060"]


def test_damaged_checkpoints_do_not_count_towards_keep(tmp_path):
    for s in (1, 2, 3):
        save_checkpoint(tmp_path, s, small_state(s), keep=5)
    (tmp_path / "step-00000003" / "state.pt").unlink()
    save_checkpoint(tmp_path, 4, small_state(4), keep=2)
    # 4 and 2 are the two good ones; the damaged 3 between them stays until it is older.
    assert names(tmp_path) == ["step-00000002", "step-00000003", "step-00000004"]


def test_bit_flipped_newest_never_costs_a_good_older_one(tmp_path):
    for s in (1, 2, 3):
        save_checkpoint(tmp_path, s, small_state(s), keep=5)
    _flip_byte(tmp_path / "step-00000003")  # same size: only the sha256 tells
    save_checkpoint(tmp_path, 4, small_state(4), keep=2)
    # 4 and 2 verify; 3 does not count, so 2 is kept and only 1 goes.
    assert names(tmp_path) == ["step-00000002", "step-00000003", "step-00000004"]
    # keep=1 still keeps the newest good one; the damaged 3, older than it, goes now.
    save_checkpoint(tmp_path, 5, small_state(5), keep=1)
    assert names(tmp_path) == ["step-00000005"]


def test_foreign_state_with_a_recomputed_size_does_not_count(tmp_path):
    for s in (1, 2):
        save_checkpoint(tmp_path, s, small_state(s), keep=5)
    # Someone copies another run's state.pt over step 2 and fixes up only the size in meta.json.
    foreign = tmp_path / "step-00000002"
    torch.save({"step": 2, "w": torch.zeros(64)}, foreign / "state.pt")
    meta = json.loads((foreign / "meta.json").read_text())
    meta["state_size"] = (foreign / "state.pt").stat().st_size
    (foreign / "meta.json").write_text(json.dumps(meta))
    save_checkpoint(tmp_path, 3, small_state(3), keep=2)
    assert names(tmp_path) == ["step-00000001", "step-00000002", "step-00000003"]
    # 1 is the good one a resume falls back to should 3 fail: it was kept because 2 did not count.
    with pytest.raises(CheckpointError, match="sha256 mismatch"):
        load_checkpoint(foreign)
    assert load_checkpoint(tmp_path / "step-00000001")[0]["step"] == 1


def test_a_checkpoint_damaged_after_it_was_verified_stops_counting(tmp_path):
    # Hashes are cached per process by the file's stat; a rewrite must not reuse the old verdict.
    for s in (1, 2, 3):
        save_checkpoint(tmp_path, s, small_state(s), keep=5)  # hashes 1 and 2 (now cached)
    state_pt = tmp_path / "step-00000002" / "state.pt"
    _flip_byte(tmp_path / "step-00000002")
    # A rewrite within one tick of the filesystem's clock can keep the mtime: move it on, as
    # any later write would.
    st = state_pt.stat()
    os.utime(state_pt, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    save_checkpoint(tmp_path, 4, small_state(4), keep=3)
    # 4, 3 and 1 verify; the damaged 2 between them stays until it is older than all three.
    assert names(tmp_path) == ["step-00000001", "step-00000002", "step-00000003", "step-00000004"]


def test_prune_never_touches_newer_steps(tmp_path):
    for s in (10, 20, 30):
        save_checkpoint(tmp_path, s, small_state(s), keep=5)
    # A run that went back to step 10 saves step 15 with keep=1: 15 itself is always kept.
    save_checkpoint(tmp_path, 15, small_state(15), keep=1)
    assert names(tmp_path) == ["step-00000015", "step-00000020", "step-00000030"]


def test_rewrite_existing_step(tmp_path):
    save_checkpoint(tmp_path, 7, small_state(7), meta={"v": "old"})
    save_checkpoint(tmp_path, 7, {"step": 7, "w": torch.arange(3)}, meta={"v": "new"})
    assert names(tmp_path) == ["step-00000007"]
    assert tmp_entries(tmp_path) == []
    state, meta = load_checkpoint(tmp_path / "step-00000007")
    assert torch.equal(state["w"], torch.arange(3)) and meta["v"] == "new"


def test_leftover_temporaries_are_removed_by_the_next_save(tmp_path):
    save_checkpoint(tmp_path, 1, small_state(1))
    for name in (
        f"step-00000002{TMP_MARK}4242-dead.new",
        f"step-00000001{TMP_MARK}4242-beef.old",  # step 1 exists: a stale copy
        f"step-00000000{TMP_MARK}4242-f00d.del",
    ):
        (tmp_path / name).mkdir()
        (tmp_path / name / "state.pt").write_bytes(b"junk")
    (tmp_path / "unrelated.txt").write_text("keep me")
    save_checkpoint(tmp_path, 2, small_state(2))
    assert tmp_entries(tmp_path) == []
    assert (tmp_path / "unrelated.txt").read_text() == "keep me"


# ---- damaged checkpoints ------------------------------------------------------------------------


def _truncate(d: Path) -> None:
    data = (d / "state.pt").read_bytes()
    (d / "state.pt").write_bytes(data[: len(data) // 2])


def _flip_byte(d: Path) -> None:
    data = bytearray((d / "state.pt").read_bytes())
    data[len(data) // 2] ^= 0x01
    (d / "state.pt").write_bytes(bytes(data))


def _drop_meta(d: Path) -> None:
    (d / "meta.json").unlink()


def _garbage_meta(d: Path) -> None:
    (d / "meta.json").write_text('{"format": 1, "step": ')


def _drop_state(d: Path) -> None:
    (d / "state.pt").unlink()


DAMAGE = {
    "truncated": (_truncate, r"size \d+ != \d+ recorded in meta\.json"),
    "flipped-byte": (_flip_byte, "sha256 mismatch"),
    "missing-meta": (_drop_meta, "meta.json is missing"),
    "garbage-meta": (_garbage_meta, r"meta\.json is not valid JSON"),
    "missing-state": (_drop_state, "state.pt is missing"),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damaged_newest_falls_back_with_warning(tmp_path, kind):
    damage, reason = DAMAGE[kind]
    for s in (1, 2, 3):
        save_checkpoint(tmp_path, s, small_state(s))
    newest = tmp_path / "step-00000003"
    damage(newest)
    with pytest.raises(CheckpointError, match=reason) as err:
        load_checkpoint(newest)
    assert str(newest) in str(err.value)

    with pytest.warns(CheckpointWarning, match=re.escape(str(newest))) as record:
        got = load_latest(tmp_path)
    assert re.search(reason, str(record[0].message))
    assert got is not None
    path, state, meta = got
    assert path.name == "step-00000002" and state["step"] == 2 and meta["step"] == 2


def test_garbage_meta_error_names_the_file(tmp_path):
    path = save_checkpoint(tmp_path, 1, small_state(1))
    _garbage_meta(path)
    with pytest.raises(CheckpointError, match=re.escape(str(path / "meta.json"))):
        load_checkpoint(path)


def test_all_damaged_raises_listing_each(tmp_path):
    damages = [_truncate, _flip_byte, _drop_meta]
    for s, damage in enumerate(damages, start=1):
        damage(save_checkpoint(tmp_path, s, small_state(s)))
    with pytest.warns(CheckpointWarning), pytest.raises(CheckpointError) as err:
        load_latest(tmp_path)
    msg = str(err.value)
    for s, reason in ((1, "size"), (2, "sha256 mismatch"), (3, "meta.json is missing")):
        line = next(ln for ln in msg.splitlines() if f"step-0000000{s}" in ln)
        assert reason in line


def test_step_in_meta_must_match_directory(tmp_path):
    src = save_checkpoint(tmp_path, 1, small_state(1))
    moved = tmp_path / "step-00000009"
    src.rename(moved)
    with pytest.raises(CheckpointError, match=r"step 1 in meta\.json != 9"):
        load_checkpoint(moved)


def test_unknown_format_is_refused(tmp_path):
    path = save_checkpoint(tmp_path, 1, small_state(1))
    meta = json.loads((path / "meta.json").read_text())
    meta["format"] = 99
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="format 99"):
        load_checkpoint(path)


# ---- safety -------------------------------------------------------------------------------------

UNPICKLED: list[str] = []


class Payload:
    """Stands for an attacker's object: unpickling it would run code (here: record a call)."""

    def __reduce__(self):
        return (UNPICKLED.append, ("code ran",))


class RunsAShellCommand:
    """Stands for the classic attack: unpickling calls os.system (pickled as posix.system)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class Plain:
    """An arbitrary class: harmless here, but weights_only loading refuses any unlisted global."""


def _rechecksum(path: Path) -> None:
    """Make meta.json match whatever state.pt now holds, as an attacker would."""
    data = (path / "state.pt").read_bytes()
    meta = json.loads((path / "meta.json").read_text())
    meta.update(state_size=len(data), state_sha256=hashlib.sha256(data).hexdigest())
    (path / "meta.json").write_text(json.dumps(meta))


def _forge(path: Path, payload) -> None:
    torch.save({"w": torch.ones(2), "evil": payload}, path / "state.pt")
    _rechecksum(path)


@pytest.mark.parametrize(
    ("payload", "needs"),
    [
        (lambda tmp: Payload(), "global 'getattr'"),  # getattr(list, 'append') via copyreg
        (lambda tmp: RunsAShellCommand(tmp / "pwned"), "global 'posix.system'"),
        (lambda tmp: Plain(), f"global '{__name__}.Plain'"),
    ],
    ids=["bound-method", "os.system", "class"],
)
def test_arbitrary_object_is_refused_even_with_a_valid_checksum(tmp_path, payload, needs):
    path = save_checkpoint(tmp_path / "ckpt", 1, small_state(1))
    _forge(path, payload(tmp_path))

    with pytest.raises(CheckpointError, match="refused to unpickle") as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert str(path) in msg
    # Says what was refused, and never advises turning the safety off.
    assert f"needs {needs}, which safe loading does not allow" in msg, msg
    assert "weights_only" not in msg and "add_safe_globals" not in msg, msg
    # torch's advice must not reach a traceback through the exception chain either.
    assert err.value.__cause__ is None and err.value.__suppress_context__
    assert UNPICKLED == [] and not (tmp_path / "pwned").exists()


def test_a_torchscript_file_is_refused_without_advice(tmp_path):
    path = save_checkpoint(tmp_path, 1, small_state(1))
    with warnings.catch_warnings():
        # torch.jit is deprecated, and torch.load says it "looks like a TorchScript archive"
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), path / "state.pt")
        _rechecksum(path)
        with pytest.raises(CheckpointError, match="safe loading cannot read TorchScript") as err:
            load_checkpoint(path)
    assert "weights_only" not in str(err.value) and err.value.__cause__ is None


def test_an_unfamiliar_refusal_keeps_the_reason_and_drops_the_advice():
    # A refusal torch words in a way _REFUSED does not know, shaped as torch 2.x wraps them.
    from streamloco.launcher.checkpoint import _unpickle_reason

    err = pickle.UnpicklingError(
        "Weights only load failed. In PyTorch 2.6, we changed the default value of the "
        "`weights_only` argument in `torch.load` from `False` to `True`. Re-running `torch.load` "
        "with `weights_only` set to `False` will likely succeed, but it can result in arbitrary "
        "code execution. Do it only if you got the file from a trusted source.\n"
        "Please file an issue with the following so that we can make `weights_only=True` "
        "compatible with your use case: WeightsUnpickler error: \n\nUnsupported operand 149\n\n"
        "Check the documentation of torch.load to learn more about types accepted by default "
        "with weights_only https://pytorch.org/docs/stable/generated/torch.load.html."
    )
    assert _unpickle_reason(err) == "Unsupported operand 149"


Pair = namedtuple("Pair", "a b")


@pytest.mark.parametrize(
    ("bad", "what"),
    [
        (lambda x: x, "function"),
        (b"raw", "bytes"),
        (Payload(), "Payload"),
        (Pair(1, 2), "Pair"),
        ({1, 2}, "set"),
        ({("a", 1): 2}, "key"),
    ],
    ids=["lambda", "bytes", "object", "namedtuple", "set", "tuple-key"],
)
def test_unsupported_content_fails_before_writing(tmp_path, bad, what):
    save_checkpoint(tmp_path, 1, small_state(1))
    state = {"model": {"w": torch.ones(2)}, "extra": [1, {"deep": bad}]}
    with pytest.raises(CheckpointError, match=what) as err:
        save_checkpoint(tmp_path, 2, state)
    if what != "key":
        assert "state['extra'][1]['deep']" in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000001"]


def test_cycle_and_bad_meta_are_refused(tmp_path):
    loop: list = []
    loop.append(loop)
    with pytest.raises(CheckpointError, match="cycle"):
        save_checkpoint(tmp_path, 1, {"x": loop})
    with pytest.raises(CheckpointError, match="reserved"):
        save_checkpoint(tmp_path, 1, small_state(1), meta={"step": 5})
    with pytest.raises(CheckpointError, match="JSON"):
        save_checkpoint(tmp_path, 1, small_state(1), meta={"t": torch.ones(1)})
    with pytest.raises(CheckpointError, match="step"):
        save_checkpoint(tmp_path, -1, small_state(1))
    with pytest.raises(CheckpointError, match="keep"):
        save_checkpoint(tmp_path, 1, small_state(1), keep=0)
    assert not tmp_path.exists() or list(tmp_path.iterdir()) == []
