"""llama.cpp's settings precedence and slot planning, without a model (llamacpp_plan.py is pure)."""

from __future__ import annotations

import pytest

from rlm_local.engines.llamacpp_plan import (
    DEFAULT_SLOT_CONTEXT,
    DEFAULT_SLOTS,
    SlotPlanner,
    prompt_batch,
    resolve_settings,
)
from rlm_local.models import find_card

NONE = dict(n_parallel=None, context_length=None, threads=None, batch_threads=None, cache_ram_mib=None)
QUALITY = find_card("quality").extra["llamacpp"]  # n_parallel = 4, context_length = 10240


def settings(card=None, params=None, size=250_000_000, **explicit):
    return resolve_settings({**NONE, **explicit}, card, params or {}, size)


# ---- settings: an explicit argument always beats the card ----------------------------------------------------
def test_the_card_fills_what_is_not_given():
    s = settings(QUALITY)
    assert (s.n_parallel, s.context_length) == (4, 10240)
    assert "n_parallel" not in s.params and "context_length" not in s.params  # engine arguments, not llama.cpp's


def test_explicit_n_parallel_beats_the_card():
    assert settings(QUALITY, n_parallel=1).n_parallel == 1


def test_explicit_context_length_beats_the_card_and_is_no_llamacpp_parameter():
    s = settings(QUALITY, context_length=32768)
    assert s.context_length == 32768 and set(s.params) == {"n_batch", "n_ubatch"}


def test_params_beat_the_card_section_and_defaults_fill_the_rest():
    s = settings({"n_batch": 64, "swa_full": True}, params={"swa_full": False})
    assert s.params == {"n_batch": 64, "n_ubatch": 64, "swa_full": False}
    plain = settings()
    assert (plain.n_parallel, plain.context_length, plain.cache_ram_mib) == (DEFAULT_SLOTS, DEFAULT_SLOT_CONTEXT, 1024)
    assert plain.threads >= 1 and plain.batch_threads >= 1


@pytest.mark.parametrize(
    "bad", [dict(n_parallel=0), dict(context_length=8), dict(threads=0), dict(cache_ram_mib=-1)], ids=str
)
def test_bad_values_are_refused(bad):
    with pytest.raises(ValueError):
        settings(**bad)
    with pytest.raises(ValueError, match="n_ubatch"):
        settings(params={"n_batch": 32, "n_ubatch": 64})


def test_prompt_batches_shrink_with_the_model():
    # a fraction of a second of one core per batch: a stop is seen between batches
    assert prompt_batch(253_113_024) == 128  # the embedded model
    assert prompt_batch(1_117_320_768) == 32  # the quality model
    assert prompt_batch(20_000_000_000) == 16 and prompt_batch(10_000_000) == 512 and prompt_batch(0) == 512
    assert settings(size=1_117_320_768).params == {"n_batch": 32, "n_ubatch": 32}


# ---- slot planning ----------------------------------------------------------------------------------------------
DOC = list(range(1000, 1200))  # a 200-token shared chunk


def sib(i: int) -> list[int]:
    return DOC + [i, i + 1, i + 2]


def run_all(planner: SlotPlanner, ok: bool = True) -> list[tuple[int, object]]:
    """Dispatch and finish until nothing is left; returns (slot, task) in the order they ran."""
    order = []
    while not planner.idle:
        batch = planner.dispatch()
        assert batch, "work queued but nothing dispatched"
        for s, t in batch:
            if t.restore:
                planner.restored(s, t)
            order.append((s, t))
            planner.finished(s, t, ok)
    return order


def test_siblings_get_one_warm_task_and_run_on_slots_holding_the_prefix():
    p = SlotPlanner(4, min_prefix=64)
    tasks, warms = p.add([sib(i) for i in range(6)], list(range(6)))
    assert len(warms) == 1 and warms[0].ids == DOC
    assert all(t.group == warms[0].group and not t.ready for t in tasks)
    first = p.dispatch()
    assert [t.warm for _, t in first] == [True]  # the siblings wait for their prefix
    s0, warm = first[0]
    p.finished(s0, warm, True)
    second = p.dispatch()
    assert len(second) == 4 and all(not t.warm for _, t in second)
    # the slot that computed the prefix needs no restore; the others load the saved prefix
    assert sorted(t.restore for _, t in second) == [False, True, True, True]
    assert next(t for s, t in second if s == s0).restore is False


def test_the_prefix_file_is_released_after_the_last_sibling():
    p = SlotPlanner(2, min_prefix=64)
    p.add([sib(i) for i in range(3)], [0, 1, 2])
    released = []
    while not p.idle:
        for s, t in p.dispatch():
            if t.restore:
                p.restored(s, t)
            released.append(p.finished(s, t, True))
    assert [g for g in released if g is not None] == [0]  # once, at the end
    assert released[-1] == 0


def test_a_failed_warm_up_lets_the_siblings_run_on_their_own():
    p = SlotPlanner(4, min_prefix=64)
    tasks, warms = p.add([sib(i) for i in range(3)], [0, 1, 2])
    (s, warm), *_ = p.dispatch()
    assert p.finished(s, warm, False) is None  # nothing was saved
    batch = p.dispatch()
    assert len(batch) == 3 and all(t.group is None and not t.restore for _, t in batch)


def test_a_conversation_returns_to_its_slot():
    p = SlotPlanner(4, min_prefix=64)
    convs = [list(range(r * 10_000, r * 10_000 + 300)) for r in range(2)]
    p.add(convs, ["a", "b"])
    slots = {t.payload: s for s, t in run_all(p)}
    nxt = [c + [7, 8, 9] for c in convs]
    tasks, _ = p.add(nxt, ["a2", "b2"])
    assert [t.prefer for t in tasks] == [slots["a"], slots["b"]]
    again = {t.payload: s for s, t in run_all(p)}
    assert again == {"a2": slots["a"], "b2": slots["b"]}


def test_concurrent_conversations_sharing_a_system_prompt_stay_out_of_a_group():
    # root turns of two runs share the system prompt, but each slot holds its run's whole conversation
    system = list(range(500))
    convs = [system + list(range(10_000 * (r + 1), 10_000 * (r + 1) + 150)) for r in range(2)]
    p = SlotPlanner(4, min_prefix=64)
    p.add(convs, [0, 1])
    run_all(p)
    tasks, warms = p.add([c + [1, 2] for c in convs], [2, 3])
    assert warms == [] and all(t.group is None and t.prefer is not None for t in tasks)


def test_more_requests_than_slots_wait_and_use_every_slot():
    p = SlotPlanner(3, min_prefix=64)
    p.add([[i] * 10 for i in range(7)], list(range(7)))
    first = p.dispatch()
    assert len(first) == 3 and len(p.pending) == 4 and p.dispatch() == []
    p.finished(first[0][0], first[0][1], True)
    assert [s for s, _ in p.dispatch()] == [first[0][0]]


def test_a_task_whose_preferred_slot_is_busy_runs_elsewhere():
    p = SlotPlanner(2, min_prefix=8)
    doc = list(range(50))
    p.add([doc], ["held"])
    ((s, t),) = p.dispatch()
    p.finished(s, t, True)  # slot s holds doc
    tasks, warms = p.add([doc + [1]] + [doc + [2]], ["x", "y"])
    # both prefer s and share the prefix: grouped, the warm-up prefers slot s
    assert warms and warms[0].prefer == s
    order = run_all(p)
    assert {slot for slot, _ in order} == {0, 1}  # the idle slot is used


def test_free_slots_go_least_recently_used_first():
    p = SlotPlanner(3, min_prefix=64)
    p.add([[1] * 5, [2] * 5, [3] * 5], ["a", "b", "c"])
    run_all(p)
    p.add([[9] * 5], ["new"])
    ((s, _),) = p.dispatch()
    assert s == 0  # slot 0 ran first, longest ago


def test_a_dropped_sibling_and_an_abandoned_group():
    p = SlotPlanner(2, min_prefix=64)
    tasks, warms = p.add([sib(i) for i in range(2)], [0, 1])
    assert p.drop(tasks[0]) is None and tasks[0] not in p.pending
    assert p.drop(tasks[1]) is None  # the last sibling left before the prefix was computed
    assert p.idle and not p.groups  # the warm task went with them


def test_without_prefix_sharing_nothing_is_grouped():
    p = SlotPlanner(4, min_prefix=64, share_prefix=False)
    tasks, warms = p.add([sib(i) for i in range(4)], list(range(4)))
    assert warms == [] and all(t.group is None for t in tasks) and len(p.dispatch()) == 4


def test_bad_planner_arguments():
    with pytest.raises(ValueError):
        SlotPlanner(0, 64)


# ---- sharing across calls: the runs of a sweep start with the same system prompt -----------------------------
SYSTEM = list(range(5000, 5400))  # a 400-token system prompt


def first_turn(run: int) -> list[int]:
    return SYSTEM + [90_000 + run] * 20  # each run's own question


def test_a_call_sharing_a_running_call_prefix_waits_for_one_warm_task_and_later_calls_join_it():
    p = SlotPlanner(8, min_prefix=64)
    p.add([first_turn(0)], ["run0"])
    ((s0, r0),) = p.dispatch()  # run 0's first turn is being computed
    (t1,), warms = p.add([first_turn(1)], ["run1"])
    assert len(warms) == 1 and warms[0].ids == SYSTEM and not t1.ready
    (t2,), later = p.add([first_turn(2)], ["run2"])
    assert later == [] and t2.group == t1.group and p.members(t1.group) == [t1, t2]
    batch = p.dispatch()
    assert [t.warm for _, t in batch] == [True]  # the runs wait for the prefix, not compute it each
    sw, warm = batch[0]
    assert p.finished(sw, warm, True) is None
    batch = p.dispatch()
    assert sorted(t.payload for _, t in batch) == ["run1", "run2"]
    assert sorted(t.restore for _, t in batch) == [False, True]  # one runs where the prefix was computed
    for s, t in batch:
        if t.restore:
            p.restored(s, t)
    released = [p.finished(s, t, True) for s, t in batch]
    assert released == [None, warm.group]  # the prefix file goes with the last member
    p.finished(s0, r0, True)
    assert p.idle and not p.groups


def test_a_queued_request_of_another_call_joins_the_group():
    p = SlotPlanner(1, min_prefix=64)
    p.add([[7] * 10], ["busy"])  # the only slot is taken
    p.dispatch()
    (a,), _ = p.add([first_turn(0)], ["a"])
    (b,), warms = p.add([first_turn(1)], ["b"])
    assert len(warms) == 1 and a.group == b.group == warms[0].group and not a.ready and not b.ready


def test_no_cross_call_group_when_a_free_slot_already_holds_the_prefix_or_little_is_shared():
    p = SlotPlanner(4, min_prefix=64)
    p.add([first_turn(0)], ["run0"])
    p.add([first_turn(1)], ["run1"])
    run_all(p)  # two free slots hold the system prompt, each with its run's question
    p.add([first_turn(0) + [1] * 30], ["run0 turn 2"])
    ((busy, _),) = p.dispatch()
    (t,), warms = p.add([first_turn(2)], ["run2"])
    # run 2 takes the system prompt from the free slot (run 1's), not from the busy one, and needs no group
    assert warms == [] and t.group is None and t.held == len(SYSTEM) and t.prefer != busy
    (u,), warms = p.add([SYSTEM[:40] + [3] * 100], ["short share"])
    assert warms == [] and u.group is None


def test_a_prefix_only_a_busy_slot_holds_is_shared_through_a_warm_task():
    p = SlotPlanner(4, min_prefix=64)
    p.add([first_turn(0)], ["run0"])
    run_all(p)
    p.add([first_turn(0) + [1] * 30], ["run0 turn 2"])
    p.dispatch()  # the one slot holding the system prompt is busy with run 0's next turn
    (t,), warms = p.add([first_turn(1)], ["run1"])
    assert len(warms) == 1 and t.group == warms[0].group and warms[0].ids == SYSTEM


def test_a_failed_cross_call_warm_up_lets_the_waiting_runs_compute_their_own():
    p = SlotPlanner(4, min_prefix=64)
    p.add([first_turn(0)], ["run0"])
    p.dispatch()
    (t1,), (warm,) = p.add([first_turn(1)], ["run1"])
    ((s, w),) = p.dispatch()
    assert w is warm and p.finished(s, w, False) is None
    ((_, again),) = p.dispatch()
    assert again is t1 and t1.group is None and not t1.restore


def test_a_call_of_siblings_joins_the_open_group_computing_their_prefix():
    # The scheduler hands the engine several runs' first turns as one call: those siblings must join the group
    # a concurrent call opened for the same system prompt, not compute it once more in another slot.
    p = SlotPlanner(8, min_prefix=64)
    p.add([first_turn(0)], ["run0"])
    p.dispatch()
    _, warms = p.add([first_turn(1), first_turn(2)], ["run1", "run2"])
    assert len(warms) == 1
    tasks, later = p.add([first_turn(3), first_turn(4)], ["run3", "run4"])
    assert later == [] and {t.group for t in tasks} == {warms[0].group}
    assert [t.warm for _, t in p.dispatch()] == [True]


def test_siblings_sharing_much_more_than_an_open_group_get_their_own():
    p = SlotPlanner(8, min_prefix=64)
    p.add([first_turn(0)], ["run0"])
    p.dispatch()
    _, warms = p.add([first_turn(1)], ["run1"])
    chunk = SYSTEM + list(range(7000, 7300))  # two sub-calls over one 300-token chunk
    tasks, own = p.add([chunk + [1], chunk + [2]], ["sub1", "sub2"])
    assert len(own) == 1 and own[0].ids == chunk and {t.group for t in tasks} == {own[0].group}


def test_min_parallel_raises_the_card_slots_but_not_an_explicit_count():
    assert settings(QUALITY, min_parallel=8).n_parallel == 8
    assert settings(QUALITY, min_parallel=2).n_parallel == QUALITY["n_parallel"]
    assert settings(QUALITY, n_parallel=2, min_parallel=8).n_parallel == 2
    assert settings(None, min_parallel=8).n_parallel == DEFAULT_SLOTS


def test_the_quality_card_sets_its_prompt_batch():
    assert settings(QUALITY, size=1_117_320_768).params["n_batch"] == 64
