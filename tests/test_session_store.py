"""The session codec and files (workbench/session_store.py) and the state's save/restore rules."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import sys
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import torch

from core.memit import EditResult
from core.requests import EditRequest
from core.tracing import TraceResult
from workbench import session_store as store
from workbench import state
from workbench.state import RunRecord, WorkbenchState
from workbench.state_codec import SAVED, _Encoder, resolve_class, to_json
from workbench.state_fingerprint import fingerprint
from workbench.trace_flow import FullTrace


def per_edit_frame() -> pd.DataFrame:
    df = pd.DataFrame({"case": [3, 9], "stored": [0.25, float("nan")], "subject": ["Ann", "Bo"],
                       "ok": [True, False], "mixed": [[1, 2], None]})
    df.index = pd.Index([10, 20], name="row")
    return df


def sample_state() -> WorkbenchState:
    req = EditRequest(prompt="{} plays the", subject="Ann", target_new="chess",
                      paraphrase_prompts=("Ann is a player of",))
    result = EditResult(method="memit", layers=[1, 2],
                        deltas={1: torch.randn(5, 4), 2: torch.randn(5, 4, dtype=torch.float16)},
                        delta_norms={1: 0.5, 2: float("inf")}, relative_norms={1: 0.1, 2: float("nan")},
                        per_edit=per_edit_frame(), timings={"total": 1.5}, hparams={"layers": [1, 2]},
                        requests=[req])
    run = RunRecord(method="memit", requests=[req], result=result, applied=object(),
                    metrics_pre=per_edit_frame(), batch_id=7, model_key=("demo", "cpu", "auto", False))
    grid = TraceResult(prompt="Ann plays the", subject="Ann", kind="mlp",
                       scores=np.arange(12, dtype=np.float32).reshape(4, 3), clean_prob=0.9,
                       corrupted_prob=0.1, tokens=["Ann", " plays", " the", "!"], subject_span=(0, 1),
                       answer=" chess", answer_id=42, settings={"noise": 3.0, "window": None})
    trace = FullTrace(grids={"mlp": grid}, severed=None, suggestion=None)
    return WorkbenchState(trace=trace, edit_layers=[1, 2], runs=[run], learn={"run": run, "step": {(1, 2): "x"}},
                          draft_rows=[{"subject": "Ann"}], capacity=per_edit_frame(), flash="Batch 3 undone")


def test_round_trip_keeps_tensors_frames_keys_and_shared_objects(tmp_path):
    s = sample_state()
    store.save(s, tmp_path)
    back = store.load(tmp_path, WorkbenchState)
    assert back.problems == []
    got, run = back.obj, s.runs[0]
    r = got.runs[0]
    assert r.result.deltas.keys() == {1, 2}                                   # int keys
    assert r.result.deltas[2].dtype == torch.float16                          # dtype kept
    for i in (1, 2):
        assert torch.equal(r.result.deltas[i], run.result.deltas[i])
    assert r.result.delta_norms[2] == float("inf") and np.isnan(r.result.relative_norms[2])
    pd.testing.assert_frame_equal(r.result.per_edit, per_edit_frame())      # NaN, dtypes, index
    pd.testing.assert_frame_equal(r.metrics_pre, per_edit_frame())
    assert r.model_key == ("demo", "cpu", "auto", False) and r.batch_id == 7
    assert r.requests[0] == run.requests[0] and r.requests[0].paraphrase_prompts == ("Ann is a player of",)
    assert got.learn["run"] is r and r.requests[0] is r.result.requests[0]   # one object, as before
    assert got.learn["step"] == {(1, 2): "x"}                                 # tuple key
    grid = got.trace.grids["mlp"]
    assert grid.scores.dtype == np.float32 and np.array_equal(grid.scores, s.trace.grids["mlp"].scores)
    assert grid.subject_span == (0, 1) and grid.settings == {"noise": 3.0, "window": None}
    assert got.edit_layers == [1, 2] and got.draft_rows == [{"subject": "Ann"}]
    # process-local or derived: not saved, back as their defaults
    assert r.applied is None and got.capacity is None and got.flash is None
    text = (tmp_path / store.STATE_FILE).read_text()
    assert "Batch 3 undone" not in text and "applied" not in text


def count_writes(monkeypatch) -> list:
    written = []
    real = store.write_atomic
    monkeypatch.setattr(store, "write_atomic", lambda path, data: (written.append(path.name), real(path, data)))
    return written


def test_save_writes_only_what_changed(tmp_path, monkeypatch):
    s = sample_state()
    first = store.save(s, tmp_path)
    tensors = tmp_path / store.TENSOR_FILE
    written = count_writes(monkeypatch)
    assert store.save(s, tmp_path, first) is first                        # unchanged: nothing written
    assert written == []
    s.edit_layers = [2]
    stamp = tensors.stat().st_mtime_ns
    second = store.save(s, tmp_path, first)
    assert store.load(tmp_path, WorkbenchState).obj.edit_layers == [2]
    assert second.token == first.token and tensors.stat().st_mtime_ns == stamp   # same tensors kept
    s.runs[0].result.deltas[1].add_(1.0)                                   # in place: a new version
    third = store.save(s, tmp_path, second)
    assert third.token != second.token
    assert torch.equal(store.load(tmp_path, WorkbenchState).obj.runs[0].result.deltas[1],
                       s.runs[0].result.deltas[1])


def test_corrupt_session_starts_fresh_with_a_message(monkeypatch, tmp_path):
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))
    s = sample_state()
    state.save(s)
    folder = state.sessions_root() / s.session_id
    assert state.restore(s.session_id)[0].edit_layers == [1, 2]
    (folder / store.TENSOR_FILE).write_bytes(b"not safetensors")            # tensors lost: the rest stays
    partial, messages = state.restore(s.session_id)
    assert partial.edit_layers == [1, 2] and partial.runs == []
    assert len(messages) == 1 and "runs" in messages[0]
    (folder / store.STATE_FILE).write_text('{"format": 1, "state": {"__dc__": [')   # truncated JSON
    fresh, messages = state.start(s.session_id)
    assert fresh.session_id != s.session_id and fresh.runs == [] and fresh.trace is None
    assert len(messages) == 1 and "could not be read" in messages[0]
    fresh, messages = state.start("../" + s.session_id[3:])                # not an id: never a path
    assert messages == [] and store.valid_id(fresh.session_id)


def test_classes_outside_the_project_are_refused_unimported(tmp_path):
    assert "tabnanny" not in sys.modules
    s = WorkbenchState(edit_layers=[3])
    store.save(s, tmp_path)
    data = json.loads((tmp_path / store.STATE_FILE).read_text())
    data["state"]["fields"]["trace"] = {"__dc__": ["tabnanny", "NannyNag"], "id": 99, "fields": {}}
    (tmp_path / store.STATE_FILE).write_text(json.dumps(data))
    back = store.load(tmp_path, WorkbenchState)
    assert back.obj.trace is None and back.obj.edit_layers == [3]
    assert len(back.problems) == 1 and "refused" in back.problems[0]
    assert "tabnanny" not in sys.modules
    for module, name in [("workbench.app", "x"), ("os", "system"), ("core.memit", "torch"),
                         ("core.memit", "EditResult.__init__")]:
        with pytest.raises(store.SessionError, match="refused"):
            resolve_class(module, name)
    data["state"]["__dc__"] = ["tabnanny", "NannyNag"]                      # the whole file
    (tmp_path / store.STATE_FILE).write_text(json.dumps(data))
    with pytest.raises(store.SessionError, match="refused"):
        store.load(tmp_path, WorkbenchState)
    assert "tabnanny" not in sys.modules


@dataclass
class Foreign:                          # a dataclass of another module: never written, never read
    name: str = ""


def test_a_value_the_codec_cannot_write_drops_only_its_field(tmp_path, caplog):
    run = RunRecord(method="ft", requests=[], result=None, after_trace=object(), seconds=2.5)
    s = WorkbenchState(runs=[run], learn={"x": Foreign("a")}, edit_layers=[1])
    with caplog.at_level(logging.WARNING, logger="workbench.session_store"):
        store.save(s, tmp_path)
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "runs[0].after_trace: builtins.object" in logged and "learn['x']" in logged
    back = store.load(tmp_path, WorkbenchState).obj
    assert (back.runs[0].method, back.runs[0].seconds, back.runs[0].after_trace) == ("ft", 2.5, None)
    assert back.learn == {} and back.edit_layers == [1]


def test_new_session_starts_from_the_latest_draft(monkeypatch, tmp_path):
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path))
    legacy = state.legacy_draft_path()
    legacy.parent.mkdir(parents=True, exist_ok=True)
    legacy.write_text(json.dumps({"rows": [{"subject": "Old", "target_new": "x"}]}))
    first = state.new_session()
    assert [r["subject"] for r in first.draft_rows] == ["Old"]
    assert not state.sessions_root().exists()                               # nothing made, nothing saved
    first.set_draft([{"subject": "Mine"}])
    other = state.new_session()
    assert [r["subject"] for r in other.draft_rows] == ["Mine"]
    other.set_draft([{"subject": "Theirs"}])                               # its own folder
    assert [r["subject"] for r in state.restore(first.session_id)[0].draft_rows] == ["Mine"]
    assert [r["subject"] for r in state.restore(other.session_id)[0].draft_rows] == ["Theirs"]


# ---- cheap change detection -------------------------------------------------------------------

def saved_text(folder) -> str:
    return json.dumps(json.loads((folder / store.STATE_FILE).read_text())["state"])


def full_text(obj) -> str:
    """The state as a plain encode writes it (no reuse), in the form saved_text compares."""
    return json.dumps(json.loads(to_json(obj)[0]))


NEW_VALUES = {       # a different value for every saved field of WorkbenchState
    "session_id": "0123456789ab", "model_name": "other", "device": "cpu", "dtype": "float32",
    "trust_remote_code": True, "trace_prompt": "Bo plays the", "trace_subject": "Bo",
    "trace": None, "severed": {"mlp": [1.0]}, "trace_avg": [0.5], "suggestion": (1, 2),
    "edit_layers": [0], "draft_rows": [{"subject": "Bo"}], "draft_version": 4, "method": "rome",
    "runs": [], "comparison": {"S": 1.0}, "scaling": pd.DataFrame({"n": [1, 10]}), "learn_step": 2,
    "learn": {"fact": "x"},
}


def test_changing_any_saved_field_is_saved(tmp_path):
    saved = {f.name for f in dataclasses.fields(WorkbenchState) if f.metadata.get(SAVED, True)}
    assert saved == set(NEW_VALUES)                        # a new field needs a line above
    for name, value in NEW_VALUES.items():
        s = sample_state()
        mark = store.save(s, tmp_path)
        setattr(s, name, value)
        assert store.save(s, tmp_path, mark) is not mark, name
        back = store.load(tmp_path, WorkbenchState).obj
        got = getattr(back, name)
        if isinstance(value, pd.DataFrame):
            pd.testing.assert_frame_equal(got, value)
        else:
            assert got == value, name
        assert saved_text(tmp_path) == full_text(s), name   # reused texts spliced in the right places


def test_changes_inside_containers_and_numbers_of_another_type_are_saved(tmp_path):
    s = sample_state()
    s.learn["n"] = 1
    mark = store.save(s, tmp_path)
    changes = [
        lambda: s.draft_rows[0].update(subject="Bo"),         # a cell, in place
        lambda: s.edit_layers.__setitem__(0, 5),              # a list item, in place
        lambda: s.learn.__setitem__("n", 1.0),                # 1 → 1.0 (written differently)
        lambda: s.learn.__setitem__("n", True),               # 1.0 → True
        lambda: s.learn.__setitem__("n", -0.0),
        lambda: s.learn.__setitem__("n", 0.0),                # -0.0 → 0.0
        lambda: setattr(s.runs[0], "batch_id", 8),            # a field of a run
        lambda: setattr(s.runs[0], "metrics_post", per_edit_frame()),   # a new result replaces
        lambda: s.runs.append(RunRecord(method="ft", requests=[], result=None)),
        lambda: s.learn.__setitem__("run", s.runs[1]),        # another shared object
        lambda: s.runs[0].result.deltas[1].mul_(2.0),         # a tensor, in place
        lambda: s.trace.grids.pop("mlp"),
    ]
    for i, change in enumerate(changes):
        change()
        new = store.save(s, tmp_path, mark)
        assert new is not mark, i
        assert saved_text(tmp_path) == full_text(s), i
        mark = new
    back = store.load(tmp_path, WorkbenchState).obj
    assert back.learn["n"] == 0.0 and str(back.learn["n"]) == "0.0" and back.draft_rows[0]["subject"] == "Bo"
    assert back.learn["run"] is back.runs[1] and back.runs[0].batch_id == 8 and back.trace.grids == {}
    assert torch.equal(back.runs[0].result.deltas[1], s.runs[0].result.deltas[1])


def test_an_unchanged_state_is_not_encoded_and_unchanged_results_are_not_encoded_again(tmp_path, monkeypatch):
    s = sample_state()
    s.runs[0].requests = [EditRequest(prompt="{} is in", subject=f"S{i}", target_new="x",
                                      neighborhood_prompts=(f"T{i} is in",)) for i in range(50)]
    mark = store.save(s, tmp_path)
    calls = {"encode": 0, "frame": 0, "request": 0}
    real_encode, real_frame, real_fields = _Encoder.encode, _Encoder._frame, _Encoder._fields

    def count(name, real):
        def wrapped(self, x, *args):
            calls[name] += 1 if name != "request" or isinstance(x, EditRequest) else 0
            return real(self, x, *args)
        return wrapped
    monkeypatch.setattr(_Encoder, "encode", count("encode", real_encode))
    monkeypatch.setattr(_Encoder, "_frame", count("frame", real_frame))
    monkeypatch.setattr(_Encoder, "_fields", count("request", real_fields))
    written = count_writes(monkeypatch)
    assert store.save(s, tmp_path, mark) is mark                       # nothing changed: no encoding
    assert calls == {"encode": 0, "frame": 0, "request": 0} and written == []
    s.edit_layers = [2]                                                # a small change
    mark = store.save(s, tmp_path, mark)
    assert calls["encode"] > 0 and calls["frame"] == 0 and calls["request"] == 0
    assert saved_text(tmp_path) == full_text(s)
    s.runs[0].metrics_pre = per_edit_frame()                           # a new result: encoded once
    calls.update(frame=0)
    mark = store.save(s, tmp_path, mark)
    assert calls["frame"] == 1 and saved_text(tmp_path) == full_text(s)
    written.clear()
    s.runs[0].metrics_pre = per_edit_frame()                           # equal content, new object
    again = store.save(s, tmp_path, mark)
    assert again is not mark and again.skeleton == mark.skeleton
    assert written == []                                               # encoded, compared, not written


@dataclass(frozen=True)
class Holder:                            # frozen, but holding a list: not immutable
    items: list
    name: str = ""


def test_fingerprint_compares_by_type_value_and_identity():
    assert fingerprint([1, "a", None])[0] == fingerprint([1, "a", None])[0]
    for a, b in [(1, 1.0), (1, True), (0.0, -0.0), ((1,), [1]), ({"a": 1}, {"a": 2}), ({1: 1}, {"1": 1})]:
        assert fingerprint(a)[0] != fingerprint(b)[0], (a, b)
    assert fingerprint(float("nan"))[0] == fingerprint(float("nan"))[0]          # written alike
    df = per_edit_frame()
    assert fingerprint(df)[0] == fingerprint(df)[0] and fingerprint(df)[0] != fingerprint(per_edit_frame())[0]
    h = Holder([1])
    first, immutable = fingerprint(h)
    assert immutable == {}                                               # the list can change
    h.items.append(2)
    assert fingerprint(h, immutable)[0] != first
    req = EditRequest(prompt="{} is", subject="A", target_new="b")
    first, immutable = fingerprint([req])
    assert immutable[id(req)].obj is req                                # frozen, only immutable values
    assert fingerprint([req], immutable)[0] == first
    assert fingerprint([EditRequest(prompt="{} is", subject="A", target_new="b")], immutable)[0] != first


# ---- retention and the summary ------------------------------------------------------------------

DAY = 86400.0


def saved_aged(root, ages_days: list[float], now: float) -> list[str]:
    """One small saved session per age (days since its state was written); their ids."""
    ids = []
    for age in ages_days:
        s = WorkbenchState(edit_layers=[int(age)])
        store.save(s, root / s.session_id)
        when = now - age * DAY
        os.utime(root / s.session_id / store.STATE_FILE, (when, when))
        ids.append(s.session_id)
    return ids


def test_prune_keeps_the_most_recent_the_protected_and_the_recently_changed(tmp_path):
    now = 2_000_000_000.0
    fresh, two, three, four, forty, fifty = saved_aged(tmp_path, [0.1, 2, 3, 4, 40, 50], now)
    broken = tmp_path / "0123456789ab"                         # a folder whose first write failed
    broken.mkdir()
    os.utime(broken, (now - 60 * DAY, now - 60 * DAY))
    (tmp_path / ".deleting-feedfeedfeed-1234").mkdir()         # left by an interrupted delete
    (tmp_path / "notes").mkdir()                               # not a session: never touched
    gone = store.prune(tmp_path, keep=3, max_age_s=30 * DAY, protect={fifty}, grace_s=DAY, now=now)
    assert gone == [four, forty, broken.name]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([fresh, two, three, fifty, "notes"])
    # beyond the number kept, but changed within the grace period: kept
    assert store.prune(tmp_path, keep=1, max_age_s=None, protect={fifty}, grace_s=2.5 * DAY, now=now) == [three]
    assert [sid for sid, _, _ in store.list_sessions(tmp_path)] == [fresh, two, fifty]
    assert store.prune(tmp_path, keep=None, max_age_s=None, now=now) == []


def test_delete_takes_only_a_session_folder(tmp_path):
    (root := tmp_path / "sessions").mkdir()
    [sid] = saved_aged(root, [1], 2_000_000_000.0)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("x")
    (root / "abcdefabcdef").symlink_to(outside, target_is_directory=True)
    for bad in ["../outside", "ABCDEFABCDEF", "", None, "abc"]:
        assert store.delete(root, bad) is False
    assert store.delete(root, "abcdefabcdef") is True           # the link goes, not what it points to
    assert (outside / "keep.txt").read_text() == "x" and not (root / "abcdefabcdef").exists()
    assert store.delete(root, sid) is True and store.delete(root, sid) is False
    assert list(root.iterdir()) == []


def test_retention_settings(monkeypatch, caplog):
    monkeypatch.delenv(state.KEEP_SESSIONS_ENV, raising=False)
    monkeypatch.delenv(state.KEEP_SESSION_DAYS_ENV, raising=False)
    assert state.retention() == (state.KEEP_SESSIONS, state.KEEP_SESSION_DAYS * DAY) == (50, 90 * DAY)
    monkeypatch.setenv(state.KEEP_SESSIONS_ENV, "0")
    monkeypatch.setenv(state.KEEP_SESSION_DAYS_ENV, " 7 ")
    assert state.retention() == (None, 7 * DAY)
    assert "all but" not in state.retention_text() and "unchanged for 7 days" in state.retention_text()
    for bad in ["-1", "ten", "2.5"]:
        monkeypatch.setenv(state.KEEP_SESSIONS_ENV, bad)
        with caplog.at_level(logging.WARNING, logger="workbench.state"):
            assert state.retention()[0] == 50
        assert bad in caplog.text
    monkeypatch.setenv(state.KEEP_SESSIONS_ENV, "0")
    monkeypatch.setenv(state.KEEP_SESSION_DAYS_ENV, "0")
    assert state.retention() == (None, None) and "until you delete them" in state.retention_text()


def test_a_summary_change_alone_rewrites_only_the_summary_of_a_saved_session(tmp_path):
    s = WorkbenchState(edit_layers=[1])
    fresh = store.mark(s)                                      # a new session: not in its folder yet
    assert store.save(s, tmp_path, fresh, {"page": "trace"}) is fresh
    assert not tmp_path.joinpath(store.SUMMARY_FILE).exists()
    s.edit_layers = [2]
    first = store.save(s, tmp_path, fresh, {"page": "trace"})
    stamp = (tmp_path / store.STATE_FILE).stat().st_mtime_ns
    again = store.save(s, tmp_path, first, {"page": "edit"})
    assert store.read_summary(tmp_path) == {"page": "edit"} and again.summary == {"page": "edit"}
    assert (tmp_path / store.STATE_FILE).stat().st_mtime_ns == stamp
    back = store.load(tmp_path, WorkbenchState)
    assert back.mark.written and back.mark.summary == {"page": "edit"}
    assert store.save(back.obj, tmp_path, back.mark, {"page": "edit"}) is back.mark


def test_a_session_folder_removed_elsewhere_is_written_again_in_full(tmp_path, caplog):
    s = sample_state()
    mark = store.save(s, tmp_path / "a")
    shutil.rmtree(tmp_path / "a")                                       # (a hand, another server)
    with caplog.at_level(logging.WARNING, logger="workbench.session_store"):
        mark = store.save(s, tmp_path / "a", mark)                      # unchanged, but gone
    assert "is gone" in caplog.text
    back = store.load(tmp_path / "a", WorkbenchState)
    assert back.problems == [] and torch.equal(back.obj.runs[0].result.deltas[1], s.runs[0].result.deltas[1])
