"""The scheduler's decisions, as pure functions over snapshots (no I/O)."""
from provisioner.matcher import (
    Capacity, CloudRoom, Demand, NodeSnapshot, find_lost, find_stuck, match, plan_scale_down, plan_scale_up,
)


def demand(job_id, cpus=1, memory_mb=1024, disk_gb=10, autoscale=True):
    return Demand(job_id, cpus, memory_mb, disk_gb, autoscale)


def test_jobs_are_packed_while_cpus_memory_and_disk_fit():
    placed = match([demand(1, 2), demand(2, 1), demand(3, 1)], [Capacity(10, 4, 8192, 100)])
    assert placed == {1: 10, 2: 10, 3: 10}
    placed = match([demand(1, 2), demand(2, 2), demand(3, 1)], [Capacity(10, 4, 8192, 100)])
    assert placed == {1: 10, 2: 10}
    assert match([demand(1, 1, memory_mb=4096)], [Capacity(10, 4, 2048, 100)]) == {}
    assert match([demand(1, 1, disk_gb=50)], [Capacity(10, 4, 8192, 20)]) == {}


def test_priority_order_is_kept_and_small_jobs_backfill():
    # The first (highest priority) job takes the room; the big one that no longer fits does not
    # stop the small one behind it.
    placed = match([demand(1, 3), demand(2, 2), demand(3, 1)], [Capacity(10, 4, 8192, 100)])
    assert placed == {1: 10, 3: 10}


def test_best_fit_keeps_big_holes_for_big_jobs():
    placed = match([demand(1, 1), demand(2, 4)], [Capacity(10, 4, 8192, 100), Capacity(11, 1, 8192, 100)])
    assert placed == {1: 11, 2: 10}


def cloud(cpus=2, memory_mb=8192, can_boot=1):
    return CloudRoom("local", cpus, memory_mb, 100, Capacity(0, cpus, memory_mb, 100), can_boot)


def test_scale_up_creates_a_node_sized_for_the_waiting_work():
    plan = plan_scale_up([demand(1), demand(2)], [], [cloud(cpus=4)])
    assert [(r.cloud, r.cpus, r.memory_mb, r.job_ids) for r in plan.requests] == [("local", 2, 2048, (1, 2))]
    assert plan.creating == {1: "local", 2: "local"}


def test_scale_up_stays_within_the_clouds_room_and_boot_limit():
    plan = plan_scale_up([demand(1, 2), demand(2, 2), demand(3, 2)], [], [cloud(cpus=2)])
    assert [r.job_ids for r in plan.requests] == [(1,)]
    plan = plan_scale_up([demand(1), demand(2)], [], [cloud(cpus=4, can_boot=0)])
    assert plan.requests == []


def test_jobs_wait_for_nodes_already_booting():
    plan = plan_scale_up([demand(1), demand(2)], [Capacity(7, 1, 4096, 100)], [cloud(cpus=4)])
    assert plan.waiting_for_boot == {1: 7}
    assert [r.job_ids for r in plan.requests] == [(2,)]


def test_no_autoscale_impossible_and_multi_node_jobs_never_cause_a_node():
    multi_node = Demand(3, 1, 1024, 10, nodes=2)
    plan = plan_scale_up([demand(1, autoscale=False), demand(2, cpus=64), multi_node], [], [cloud(cpus=4)])
    assert plan.requests == []
    assert (plan.no_autoscale, plan.never_fits, plan.multi_node) == ([1], [2], [3])
    assert match([multi_node], [Capacity(10, 4, 8192, 100)]) == {}


def node(node_id, state="ready", busy=False, idle_since=None, heartbeat=None, created=0.0):
    return NodeSnapshot(node_id, state, busy, idle_since, heartbeat, created)


def test_idle_ready_nodes_are_removed_after_the_timeout():
    nodes = [node(1, idle_since=0), node(2, idle_since=50), node(3, busy=True, idle_since=None),
             node(4, state="configuring", idle_since=0)]
    assert plan_scale_down(nodes, now=100, idle_timeout=60) == [1]


def test_silent_nodes_are_lost_and_slow_boots_are_stuck():
    nodes = [node(1, heartbeat=10), node(2, heartbeat=95), node(3, state="configuring", created=0)]
    assert find_lost(nodes, now=100, heartbeat_timeout=30) == [1]
    assert find_stuck(nodes, now=100, boot_timeout=60) == [3]
