"""The provisioner's decisions, `plan(Snapshot) -> Plan`, without I/O (DESIGN.md 3.4).

Each test states a behaviour an admin or a user would notice: where jobs run, which VMs are
created where and why, which nodes go away, and what a waiting job's statusReason says.
"""
from datetime import UTC, datetime

import pytest

from provisioner.planner import (
    DRAINED,
    PENALTY_WINDOW,
    CloudState,
    Deletion,
    Demand,
    Flavour,
    NodeView,
    Placement,
    Shape,
    Snapshot,
    health,
    penalty_until,
    plan,
)
from schema.enums import NodeState, StatusReason

NOW = 1_700_000_000.0

SMALL = Flavour("small", 1, 2048, 20, 0.10)
MEDIUM = Flavour("medium", 2, 4096, 40, 0.18)
LARGE = Flavour("large", 4, 8192, 80, 0.30)
XL = Flavour("xl", 8, 16384, 160, 0.80)


def cloud(name: str = "c", flavours=(SMALL, MEDIUM, LARGE), **options) -> CloudState:
    return CloudState(name, tuple(flavours), **options)


def shape(cpus: int = 1, memory_mb: int = 1000, disk_gb: int = 10, **options) -> Shape:
    return Shape(cpus, memory_mb, disk_gb, **options)


def jobs(first_id: int, count: int, of: Shape) -> list[Demand]:
    return [Demand(first_id + i, of) for i in range(count)]


def node(node_id: int, on: str = "c", state: NodeState = NodeState.READY, cpus: int = 4, memory_mb: int = 8192,
         disk_gb: int = 80, total_cpus: int | None = None, total_memory_mb: int | None = None, busy: bool = False,
         created_at: float = NOW - 3600, idle_since: float | None = None, last_heartbeat: float | None = NOW) -> NodeView:
    """A node with `cpus` etc. free; a ready node heard from just now, and marked idle if not busy."""
    if state == NodeState.READY and not busy and idle_since is None:
        idle_since = NOW - 1
    if state != NodeState.READY and last_heartbeat == NOW:
        last_heartbeat = None
    return NodeView(node_id, on, state, cpus, memory_mb, disk_gb, cpus if total_cpus is None else total_cpus,
                    memory_mb if total_memory_mb is None else total_memory_mb, busy, created_at, idle_since,
                    last_heartbeat)


def booting(node_id: int, on: str = "c", cpus: int = 4, memory_mb: int = 8192, disk_gb: int = 80,
            **options) -> NodeView:
    return node(node_id, on, NodeState.CREATING, cpus, memory_mb, disk_gb, created_at=NOW - 10, **options)


def snapshot(waiting=(), nodes=(), clouds=(), now: float = NOW, **options) -> Snapshot:
    return Snapshot(now, list(waiting), list(nodes), list(clouds), **options)


def clock(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def launched(result) -> list[tuple[str, str, tuple[int, ...]]]:
    return [(launch.cloud, launch.flavour.name, launch.job_ids) for launch in result.launches]


def sick(count: int = 3, now: float = NOW) -> tuple[float, ...]:
    """Failure times that put a cloud in the penalty box (more than 2 in the last 800 s)."""
    return tuple(now - 10 * (i + 1) for i in range(count))


# -- ready nodes take waiting jobs ----------------------------------------------------------------

def test_jobs_go_to_the_ready_node_they_fit_most_tightly_so_big_holes_stay_open():
    # The first job would fit both nodes: first-fit would put it on the big one and leave the
    # 4-cpu job nowhere to go.
    small_job, big_job = Demand(1, shape(2)), Demand(2, shape(4))
    result = plan(snapshot([small_job, big_job], [node(10, cpus=4), node(11, cpus=2)], [cloud()]))
    assert result.assignments == {1: 11, 2: 10}
    assert result.launches == [] and 1 not in result.reasons and 2 not in result.reasons


def test_higher_priority_jobs_get_the_room_first():
    # Callers pass jobs highest priority first: the node takes the first two, the third waits.
    result = plan(snapshot(jobs(1, 3, shape(2)), [node(10, cpus=4)], [cloud(max_instances=1)]))
    assert result.assignments == {1: 10, 2: 10}
    assert 3 in result.reasons and 3 not in result.assignments


def test_small_jobs_pass_a_big_one_that_does_not_fit_backfill():
    waiting = [Demand(1, shape(8)), Demand(2, shape(1)), Demand(3, shape(1)), Demand(4, shape(1))]
    result = plan(snapshot(waiting, [node(10, cpus=2)], [cloud(flavours=[XL], max_instances=2)]))
    assert result.assignments == {2: 10, 3: 10}
    # The big job still gets the cloud's one VM; job 4 waits for room.
    assert launched(result) == [("c", "xl", (1,))]
    assert result.reasons[4].per_cloud == {"c": "quota used"}


def test_a_node_that_missed_two_heartbeats_gets_no_jobs():
    interval = 2.0
    stale = node(10, cpus=8, last_heartbeat=NOW - 2 * interval - 0.5)
    fresh = node(11, cpus=1, last_heartbeat=NOW - interval)
    result = plan(snapshot(jobs(1, 2, shape(1)), [stale, fresh], [cloud(max_instances=2)],
                           heartbeat_interval=interval, heartbeat_timeout=60))
    assert result.assignments == {1: 11}
    assert not result.deletions  # not lost yet: it only gets no new work


def test_placement_requirements_keep_jobs_off_nodes_of_other_sites_and_regions():
    clouds = [cloud("east", site="dc-east", region="eu"), cloud("west", site="dc-west", region="us")]
    nodes = [node(10, "east", cpus=2), node(11, "west", cpus=8)]
    to_west = shape(1, placement=Placement(sites=frozenset({"dc-west"})))
    to_us = shape(2, placement=Placement(regions=frozenset({"us"})))
    to_asia = shape(1, placement=Placement(regions=frozenset({"asia"})))
    result = plan(snapshot([Demand(1, to_west), Demand(2, to_us), Demand(3, to_asia)], nodes, clouds))
    # Job 1 fits east's node more tightly but must not run there.
    assert result.assignments == {1: 11, 2: 11}
    assert 3 in result.unsatisfiable


# -- which cloud, which flavour -------------------------------------------------------------------

def test_clouds_outside_the_required_sites_or_regions_are_not_used():
    clouds = [cloud("cheap", flavours=[Flavour("a", 2, 4096, 40, 0.01)], site="s1", region="r1"),
              cloud("dear", flavours=[Flavour("b", 2, 4096, 40, 1.00)], site="s2", region="r2")]
    by_site = shape(placement=Placement(sites=frozenset({"s2"})))
    by_region = shape(2, placement=Placement(regions=frozenset({"r2"})))
    result = plan(snapshot([Demand(1, by_site), Demand(2, by_region)], clouds=clouds))
    assert {launch.cloud for launch in result.launches} == {"dear"}
    assert all(launch.candidates == (("dear", launch.flavour),) for launch in result.launches)


def test_a_job_goes_to_a_cloud_with_a_flavour_big_enough():
    clouds = [cloud("tiny", flavours=[Flavour("t", 2, 4096, 40, 0.01)]), cloud("big", flavours=[XL])]
    result = plan(snapshot([Demand(1, shape(6))], clouds=clouds))
    assert launched(result) == [("big", "xl", (1,))]
    assert [c for c, _ in result.launches[0].candidates] == ["big"]


@pytest.mark.parametrize("quota", [{"max_instances": 1}, {"max_cpus": 5}, {"max_memory_mb": 10000}])
def test_a_cloud_without_quota_left_is_skipped(quota):
    # cheap already runs one 4-cpu 8 GB node: one more 4-cpu 8 GB VM would exceed its quota.
    clouds = [cloud("cheap", flavours=[Flavour("c4", 4, 8192, 80, 0.1)], **quota),
              cloud("dear", flavours=[Flavour("d4", 4, 8192, 80, 0.5)])]
    busy = node(10, "cheap", cpus=0, memory_mb=0, total_cpus=4, total_memory_mb=8192, busy=True)
    result = plan(snapshot([Demand(1, shape(4))], [busy], clouds))
    assert launched(result) == [("dear", "d4", (1,))]


def test_quota_limits_the_flavours_a_cloud_may_still_start():
    # 6 of 8 cpus used: the 2-cpu flavour is still allowed, the cheaper 4-cpu one is not.
    flavours = [Flavour("two", 2, 4096, 40, 0.5), Flavour("four", 4, 8192, 80, 0.3)]
    used = node(10, cpus=0, total_cpus=6, busy=True)
    result = plan(snapshot([Demand(1, shape(2))], [used], [cloud(flavours=flavours, max_cpus=8)]))
    assert launched(result) == [("c", "two", (1,))]


def test_a_cloud_in_the_penalty_box_is_skipped():
    clouds = [cloud("cheap", flavours=[Flavour("a", 2, 4096, 40, 0.01)], failures=sick()),
              cloud("dear", flavours=[Flavour("b", 2, 4096, 40, 1.00)])]
    result = plan(snapshot([Demand(1, shape())], clouds=clouds))
    assert launched(result) == [("dear", "b", (1,))]


def test_clouds_are_ranked_by_price_when_nothing_else_differs():
    clouds = [cloud("dear", flavours=[Flavour("b", 2, 4096, 40, 0.50)]),
              cloud("cheap", flavours=[Flavour("a", 2, 4096, 40, 0.20), Flavour("z", 1, 2048, 20, 0.01)])]
    # cheap's cheapest flavour is too small for the job: its price for this job is 0.20.
    result = plan(snapshot([Demand(1, shape(2))], clouds=clouds))
    assert launched(result) == [("cheap", "a", (1,))]


def test_a_healthier_cloud_beats_a_cheaper_one():
    # One failure 100 s ago: not in the penalty box, but less healthy.
    clouds = [cloud("cheap", flavours=[Flavour("a", 2, 4096, 40, 0.01)], failures=(NOW - 100,)),
              cloud("dear", flavours=[Flavour("b", 2, 4096, 40, 1.00)])]
    result = plan(snapshot([Demand(1, shape())], clouds=clouds))
    assert launched(result) == [("dear", "b", (1,))]
    # Long after the failure, the cloud is as healthy as the other again: price decides.
    result = plan(snapshot([Demand(1, shape())], clouds=clouds, now=NOW + 20_000))
    assert launched(result) == [("cheap", "a", (1,))]


def test_placement_preferences_beat_health_and_price():
    clouds = [cloud("cheap", flavours=[Flavour("a", 2, 4096, 40, 0.01)], site="s1", region="r1"),
              cloud("preferred", flavours=[Flavour("b", 2, 4096, 40, 1.00)], site="s2", region="r2",
                    failures=(NOW - 100,))]
    prefers = shape(placement=Placement(preferred_sites=frozenset({"s2"})))
    result = plan(snapshot([Demand(1, prefers)], clouds=clouds))
    assert launched(result) == [("preferred", "b", (1,))]
    assert [c for c, _ in result.launches[0].candidates] == ["preferred", "cheap"]
    # Preferring both the site and the region of a cloud ranks it above one matching only the site.
    clouds.append(cloud("both", flavours=[Flavour("d", 2, 4096, 40, 2.00)], site="s2", region="r3"))
    both = shape(placement=Placement(preferred_sites=frozenset({"s2"}), preferred_regions=frozenset({"r3"})))
    result = plan(snapshot([Demand(1, both)], clouds=clouds))
    assert launched(result) == [("both", "d", (1,))]


def test_the_cheapest_flavour_that_fits_is_chosen():
    flavours = [Flavour("roomy-but-cheap", 8, 16384, 160, 0.05), Flavour("exact", 2, 4096, 40, 0.20),
                Flavour("too-small", 1, 2048, 20, 0.01), Flavour("dear", 4, 8192, 80, 0.90)]
    result = plan(snapshot([Demand(1, shape(2, 3000))], clouds=[cloud(flavours=flavours)]))
    assert [launch.flavour.name for launch in result.launches] == ["roomy-but-cheap"]
    # At equal prices, the smallest one.
    flavours = [Flavour("eight", 8, 16384, 160, 0), Flavour("two", 2, 4096, 40, 0), Flavour("four", 4, 8192, 80, 0)]
    result = plan(snapshot([Demand(1, shape(2))], clouds=[cloud(flavours=flavours)]))
    assert launched(result) == [("c", "two", (1,))]


def test_waiting_jobs_are_packed_onto_one_larger_flavour_when_that_is_cheaper():
    flavours = [Flavour("one", 1, 2048, 20, 1.0), Flavour("four", 4, 8192, 80, 3.0)]
    result = plan(snapshot(jobs(1, 4, shape(1)), clouds=[cloud(flavours=flavours)]))
    assert launched(result) == [("c", "four", (1, 2, 3, 4))]


def test_jobs_get_one_vm_each_when_a_larger_flavour_is_dearer_than_that():
    flavours = [Flavour("one", 1, 2048, 20, 1.0), Flavour("four", 4, 8192, 80, 5.0)]
    result = plan(snapshot(jobs(1, 4, shape(1)), clouds=[cloud(flavours=flavours)]))
    assert launched(result) == [("c", "one", (i,)) for i in (1, 2, 3, 4)]


def test_jobs_of_different_shapes_pack_together():
    flavours = [Flavour("one", 1, 2048, 20, 0.5), Flavour("two", 2, 4096, 40, 0.8),
                Flavour("four", 4, 8192, 80, 1.0)]
    waiting = [Demand(1, shape(2, 3000)), Demand(2, shape(1, 1000)), Demand(3, shape(1, 1500))]
    result = plan(snapshot(waiting, clouds=[cloud(flavours=flavours)]))
    assert launched(result) == [("c", "four", (1, 2, 3))]
    assert all(result.reasons[j].status_reason == "Creating infrastructure to run job on cloud c" for j in (1, 2, 3))


def test_packing_stops_at_the_flavour_size():
    # Ten 1-cpu jobs, 4-cpu flavour cheaper per job: three VMs (4 + 4 + 2 jobs).
    flavours = [Flavour("one", 1, 2048, 20, 1.0), Flavour("four", 4, 8192, 80, 2.0)]
    result = plan(snapshot(jobs(1, 10, shape(1)), clouds=[cloud(flavours=flavours)]))
    assert launched(result) == [("c", "four", (1, 2, 3, 4)), ("c", "four", (5, 6, 7, 8)), ("c", "four", (9, 10))]


def test_max_booting_bounds_launches_per_cloud_per_cycle():
    only = [Flavour("four", 4, 8192, 80, 0.3)]
    result = plan(snapshot(jobs(1, 10, shape(4)), clouds=[cloud(flavours=only, max_booting=3)]))
    assert len(result.launches) == 3
    assert sorted(j for launch in result.launches for j in launch.job_ids) == [1, 2, 3]
    assert "as many VMs as it may boot at once are booting" in result.reasons[4].status_reason
    # Nodes already booting (full: their jobs are assigned) count against it.
    full = [booting(20, cpus=0, memory_mb=0, disk_gb=0, total_cpus=4), booting(21, cpus=0, memory_mb=0, disk_gb=0)]
    result = plan(snapshot(jobs(1, 10, shape(4)), full, [cloud(flavours=only, max_booting=3)]))
    assert len(result.launches) == 1
    # ... per cloud: another cloud still launches its own.
    clouds = [cloud(flavours=only, max_booting=3), cloud("d", flavours=[Flavour("f", 4, 8192, 80, 0.9)],
                                                         max_booting=2)]
    result = plan(snapshot(jobs(1, 10, shape(4)), full, clouds))
    assert sorted(launch.cloud for launch in result.launches) == ["c", "d", "d"]


def test_booting_nodes_count_against_quotas():
    only = [Flavour("four", 4, 8192, 80, 0.3)]
    existing = [booting(20, cpus=0, total_cpus=4), node(21, cpus=0, total_cpus=4, busy=True)]
    result = plan(snapshot(jobs(1, 10, shape(4)), existing, [cloud(flavours=only, max_instances=4)]))
    assert len(result.launches) == 2
    result = plan(snapshot(jobs(1, 10, shape(4)), existing, [cloud(flavours=only, max_cpus=12)]))
    assert len(result.launches) == 1


def test_jobs_that_fit_a_booting_node_wait_for_it_instead_of_launching_another():
    only = [Flavour("four", 4, 8192, 80, 0.3)]
    result = plan(snapshot(jobs(1, 3, shape(2)), [booting(20, "c", cpus=4)], [cloud(flavours=only)]))
    # Jobs 1 and 2 fill the booting node; job 3 gets a VM of its own.
    assert launched(result) == [("c", "four", (3,))]
    for job_id in (1, 2):
        assert result.reasons[job_id].status_reason == "Creating infrastructure to run job on cloud c"
    assert result.assignments == {}


def test_lost_and_stuck_nodes_do_not_count_against_quotas():
    only = [Flavour("four", 4, 8192, 80, 0.3)]
    lost = node(20, cpus=0, total_cpus=4, busy=True, last_heartbeat=NOW - 600)
    result = plan(snapshot([Demand(1, shape(4))], [lost], [cloud(flavours=only, max_instances=1)],
                           heartbeat_timeout=60))
    assert [d.node_id for d in result.deletions] == [20]
    assert launched(result) == [("c", "four", (1,))]


# -- fallbacks ------------------------------------------------------------------------------------

def test_launch_candidates_are_the_planned_flavour_then_other_flavours_then_other_clouds():
    a = cloud("a", flavours=[Flavour("a-tiny", 1, 1024, 10, 0.01), Flavour("a-4", 4, 8192, 80, 0.40),
                             Flavour("a-2", 2, 4096, 40, 0.20), Flavour("a-8", 8, 16384, 160, 0.70)])
    b = cloud("b", flavours=[Flavour("b-8", 8, 16384, 160, 0.90), Flavour("b-2", 2, 4096, 40, 0.25)])
    c = cloud("c", flavours=[Flavour("c-2", 2, 4096, 40, 0.30)])
    elsewhere = cloud("elsewhere", flavours=[Flavour("e-2", 2, 4096, 40, 0.0)], site="far")
    sick_cloud = cloud("sick", flavours=[Flavour("s-2", 2, 4096, 40, 0.0)], failures=sick())
    too_small = cloud("too-small", flavours=[Flavour("t-1", 1, 2048, 20, 0.0)])
    disabled = cloud("off", flavours=[Flavour("o-2", 2, 4096, 40, 0.0)], enabled=False)
    job = shape(2, placement=Placement(sites=frozenset({""})))
    result = plan(snapshot([Demand(1, job)], clouds=[c, elsewhere, b, sick_cloud, a, too_small, disabled]))
    [launch] = result.launches
    assert [(name, f.name) for name, f in launch.candidates] == [
        ("a", "a-2"), ("a", "a-4"), ("a", "a-8"), ("b", "b-2"), ("c", "c-2")]
    assert launch.cloud == "a" and launch.flavour.name == "a-2" and launch.job_ids == (1,)


def test_fallback_flavours_take_all_the_jobs_of_the_launch():
    flavours = [Flavour("one", 1, 2048, 20, 1.0), Flavour("four", 4, 8192, 80, 2.0),
                Flavour("eight", 8, 16384, 160, 3.0), Flavour("two", 2, 4096, 40, 1.5)]
    result = plan(snapshot(jobs(1, 4, shape(1)), clouds=[cloud(flavours=flavours)]))
    [launch] = result.launches
    assert launch.job_ids == (1, 2, 3, 4)
    assert [f.name for _, f in launch.candidates] == ["four", "eight"]


def test_fallback_flavours_are_judged_against_the_quota_without_the_planned_vm():
    # The planned VM replaces nothing yet: if it fails, the fallback takes its place, so the
    # quota left for the fallback is the quota before the planned VM.
    flavours = [Flavour("two", 2, 4096, 40, 0.2), Flavour("four", 4, 8192, 80, 0.4)]
    result = plan(snapshot([Demand(1, shape(2))], clouds=[cloud(flavours=flavours, max_instances=1)]))
    [launch] = result.launches
    assert [f.name for _, f in launch.candidates] == ["two", "four"]
    result = plan(snapshot([Demand(1, shape(2))], clouds=[cloud(flavours=flavours, max_cpus=4)]))
    assert [f.name for _, f in result.launches[0].candidates] == ["two", "four"]


# -- why jobs wait --------------------------------------------------------------------------------

def test_every_waiting_job_gets_a_reason_with_one_per_cloud():
    big = Flavour("big", 4, 8192, 80, 0.1)
    clouds = [
        cloud("tiny", flavours=[Flavour("t", 1, 2048, 20, 0.01)]),
        cloud("full", flavours=[big], max_instances=1),
        cloud("sick", flavours=[big], failures=sick()),
        cloud("far", flavours=[big], site="elsewhere"),
        cloud("off", flavours=[big], enabled=False),
    ]
    used = node(10, "full", cpus=0, total_cpus=4, busy=True)
    job = shape(3, placement=Placement(sites=frozenset({""})))
    result = plan(snapshot([Demand(1, job), Demand(2, job)], [used], clouds))
    assert result.launches == [] and result.unsatisfiable == []
    until = clock(sick()[2] + PENALTY_WINDOW)
    per_cloud = {"tiny": "no flavour big enough", "full": "quota used",
                 "sick": f"in the penalty box until {until}", "far": "not in the required sites or regions"}
    for job_id in (1, 2):
        reason = result.reasons[job_id]
        assert reason.per_cloud == per_cloud
        assert reason.status_reason == (
            f"Waiting for resources: far: not in the required sites or regions; full: quota used; "
            f"sick: in the penalty box until {until}; tiny: no flavour big enough")


def test_a_job_a_vm_is_created_for_says_so():
    result = plan(snapshot([Demand(1, shape())], clouds=[cloud("cloud-x")]))
    reason = result.reasons[1]
    assert reason.status_reason == "Creating infrastructure to run job on cloud cloud-x"
    assert reason.per_cloud == {"cloud-x": "creating a VM"}


def test_jobs_left_over_after_the_launches_say_why_they_wait():
    only = [Flavour("four", 4, 8192, 80, 0.3)]
    result = plan(snapshot(jobs(1, 3, shape(4)), clouds=[cloud(flavours=only, max_booting=1)]))
    assert launched(result) == [("c", "four", (1,))]
    assert result.reasons[2] == result.reasons[3]
    assert result.reasons[2].status_reason.startswith(StatusReason.WAITING)
    assert result.reasons[2].per_cloud == {"c": "as many VMs as it may boot at once are booting"}


def test_jobs_no_enabled_cloud_can_ever_run_are_unsatisfiable():
    clouds = [cloud("small", flavours=[SMALL, MEDIUM]),
              cloud("huge-but-disabled", flavours=[Flavour("h", 64, 262144, 1000, 5.0)], enabled=False),
              cloud("capped", flavours=[XL], max_cpus=4),  # its only big enough flavour is over its quota
              cloud("no-room", flavours=[XL], max_memory_mb=8192)]
    waiting = [Demand(1, shape(6)), Demand(2, shape(1, placement=Placement(regions=frozenset({"mars"})))),
               Demand(3, shape(1, memory_mb=1_000_000)), Demand(4, shape(1, disk_gb=5000)), Demand(5, shape(1))]
    result = plan(snapshot(waiting, clouds=clouds))
    assert result.unsatisfiable == [1, 2, 3, 4]
    assert [launch.job_ids for launch in result.launches] == [(5,)]
    assert not set(result.unsatisfiable) & set(result.reasons)


def test_a_cloud_whose_quota_is_used_now_is_not_never():
    only = [Flavour("four", 4, 8192, 80, 0.3)]
    used = node(10, cpus=0, total_cpus=4, busy=True)
    result = plan(snapshot([Demand(1, shape(4))], [used], [cloud(flavours=only, max_cpus=4)]))
    assert result.unsatisfiable == [] and result.launches == []
    assert result.reasons[1].per_cloud == {"c": "quota used"}


def test_autoscaling_type_none_jobs_never_cause_launches():
    fixed = shape(2, autoscale=False)
    result = plan(snapshot(jobs(1, 3, fixed), clouds=[cloud("a"), cloud("b")]))
    assert result.launches == []
    for job_id in (1, 2, 3):
        assert result.reasons[job_id].status_reason == StatusReason.EXISTING_ONLY
        assert result.reasons[job_id].per_cloud == {"a": "only existing resources allowed",
                                                    "b": "only existing resources allowed"}
    # ... but run on existing nodes that have room.
    result = plan(snapshot(jobs(1, 3, fixed), [node(10, "a", cpus=4)], [cloud("a"), cloud("b")]))
    assert result.assignments == {1: 10, 2: 10} and result.launches == []
    assert result.reasons[3].status_reason == StatusReason.EXISTING_ONLY
    # ... and are not packed into VMs started for other jobs.
    flavours = [Flavour("one", 1, 2048, 20, 1.0), Flavour("four", 4, 8192, 80, 1.0)]
    result = plan(snapshot([Demand(1, shape(1)), *jobs(2, 3, shape(1, autoscale=False))],
                           clouds=[cloud(flavours=flavours)]))
    assert [launch.job_ids for launch in result.launches] == [(1,)]


def test_multi_node_jobs_wait_with_a_reason_and_launch_nothing():
    result = plan(snapshot([Demand(1, shape(1, nodes=2))], [node(10, cpus=8)], [cloud()]))
    assert result.launches == [] and result.assignments == {}
    assert result.reasons[1].status_reason == StatusReason.MULTI_NODE


# -- health and the penalty box -------------------------------------------------------------------

def test_health_is_full_without_failures_lower_after_them_and_recovers():
    assert health((), NOW) == 1.0
    one = health((NOW,), NOW)
    three = health((NOW - 20, NOW - 10, NOW), NOW)
    assert three < one < 1.0
    later = [health((NOW,), NOW + dt) for dt in (100, 400, 1600, 10_000)]
    assert one < later[0] < later[1] < later[2] < later[3] <= 1.0
    assert later[-1] > 0.99


def test_penalty_box_after_more_than_two_failures_in_800_seconds():
    assert penalty_until((), NOW) is None
    assert penalty_until((NOW - 50, NOW - 10), NOW) is None
    # Older failures do not count.
    assert penalty_until((NOW - 900, NOW - 850, NOW - 50, NOW - 10), NOW) is None
    assert penalty_until((NOW - 300, NOW - 200, NOW - 100), NOW) == NOW - 300 + PENALTY_WINDOW
    # The box opens when the third-most-recent failure leaves the window, not the oldest.
    failures = (NOW - 700, NOW - 500, NOW - 300, NOW - 100)
    until = penalty_until(failures, NOW)
    assert until == NOW - 500 + PENALTY_WINDOW
    assert penalty_until(failures, until - 1) is not None
    assert penalty_until(failures, until) is None


# -- deletions and idle marks ---------------------------------------------------------------------

def test_a_node_that_stops_heartbeating_is_lost():
    nodes = [node(10, last_heartbeat=NOW - 61, busy=True), node(11, last_heartbeat=NOW - 30, busy=True),
             node(12, state=NodeState.DRAINING, last_heartbeat=NOW - 100, busy=True)]
    result = plan(snapshot([], nodes, [cloud()], heartbeat_timeout=60))
    assert result.deletions == [Deletion(10, NodeState.LOST, StatusReason.NODE_LOST),
                                Deletion(12, NodeState.LOST, StatusReason.NODE_LOST)]


def test_a_node_stuck_booting_past_its_clouds_boot_timeout_fails():
    clouds = [cloud("quick", boot_timeout=300), cloud("slow", boot_timeout=3000)]
    nodes = [node(10, "quick", NodeState.CREATING, created_at=NOW - 301),
             node(11, "quick", NodeState.CONFIGURING, created_at=NOW - 200),
             node(12, "slow", NodeState.CONFIGURING, created_at=NOW - 301)]
    result = plan(snapshot([], nodes, clouds))
    assert result.deletions == [Deletion(10, NodeState.FAILED, "Infrastructure took too long to be deployed")]


def test_idle_nodes_are_deleted_after_their_own_clouds_idle_timeout():
    clouds = [cloud("short", idle_timeout=100), cloud("long", idle_timeout=1000)]
    nodes = [node(10, "short", idle_since=NOW - 200), node(11, "long", idle_since=NOW - 200),
             node(12, "short", idle_since=NOW - 50), node(13, "short", busy=True, idle_since=None)]
    result = plan(snapshot([], nodes, clouds))
    assert result.deletions == [Deletion(10, NodeState.DELETED, "idle")]


def test_a_drained_node_takes_no_new_jobs_and_is_deleted_once_its_jobs_are_done():
    busy = node(10, state=NodeState.DRAINING, cpus=3, busy=True, last_heartbeat=NOW - 1)
    done = node(11, state=NodeState.DRAINING, last_heartbeat=NOW - 1)
    result = plan(snapshot(jobs(1, 1, shape()), [busy, done], [cloud()]))
    # The job fits both, yet a VM is created for it: a draining node gets no new jobs.
    assert result.assignments == {} and launched(result) == [("c", "small", (1,))]
    assert result.deletions == [Deletion(11, NodeState.DELETED, DRAINED)]
    assert result.idle_marks == {}  # nor is it idle: it goes as soon as it has nothing to do



def test_a_node_past_its_idle_timeout_that_a_waiting_job_fits_takes_it_instead_of_going():
    result = plan(snapshot(jobs(1, 1, shape()), [node(10, idle_since=NOW - 700)], [cloud(idle_timeout=600)]))
    assert result.assignments == {1: 10}
    assert result.deletions == [] and result.launches == []
    assert result.idle_marks == {10: None}

def test_idle_deletions_never_go_below_the_clouds_min_nodes():
    nodes = [node(10, idle_since=NOW - 900), node(11, idle_since=NOW - 5000), node(12, idle_since=NOW - 700),
             node(13, busy=True, idle_since=None)]
    result = plan(snapshot([], nodes, [cloud(idle_timeout=600, min_nodes=3)]))
    # The longest idle goes first.
    assert [d.node_id for d in result.deletions] == [11]
    assert result.launches == []
    # A disabled cloud keeps nothing.
    result = plan(snapshot([], nodes, [cloud(idle_timeout=600, min_nodes=3, enabled=False)]))
    assert sorted(d.node_id for d in result.deletions) == [10, 11, 12]


def test_idle_marks_are_set_when_a_node_has_no_work_and_cleared_when_it_has():
    nodes = [
        NodeView(10, "c", NodeState.READY, 4, 8192, 80, 4, 8192, False, NOW - 100, None, NOW),  # just idle
        NodeView(11, "c", NodeState.READY, 2, 4096, 40, 4, 8192, True, NOW - 100, NOW - 50, NOW),  # busy again
        NodeView(12, "c", NodeState.READY, 4, 8192, 80, 4, 8192, False, NOW - 100, NOW - 50, NOW),  # still idle
        NodeView(13, "c", NodeState.READY, 2, 4096, 40, 4, 8192, True, NOW - 100, None, NOW),  # still busy
    ]
    result = plan(snapshot([], nodes, [cloud()]))
    assert result.idle_marks == {10: NOW, 11: None}
    assert result.deletions == []


def test_min_nodes_launches_a_static_pool_without_demand():
    pool = cloud("pool", flavours=[Flavour("host-a", 8, 16384, 100), Flavour("host-b", 8, 16384, 100)],
                 min_nodes=3, max_booting=4)
    result = plan(snapshot([], [], [pool]))
    assert [(launch.cloud, launch.flavour.name, launch.job_ids) for launch in result.launches] == [
        ("pool", "host-a", ()), ("pool", "host-b", ()), ("pool", "host-a", ())]
    # Live nodes count: only the missing ones are started.
    result = plan(snapshot([], [node(10, "pool", cpus=8), booting(11, "pool", cpus=8)], [pool]))
    assert len(result.launches) == 1
    # Not on a disabled cloud, one in the penalty box, or beyond max_booting.
    assert plan(snapshot([], [], [CloudState("pool", pool.flavours, min_nodes=3, enabled=False)])).launches == []
    assert plan(snapshot([], [], [CloudState("pool", pool.flavours, min_nodes=3, failures=sick())])).launches == []
    assert len(plan(snapshot([], [], [CloudState("pool", pool.flavours, min_nodes=3, max_booting=2)])).launches) == 2


def test_nodes_of_a_cloud_without_a_record_take_no_new_jobs():
    """A node whose cloud is not in the snapshot (its record gone): no placement can be judged."""
    result = plan(snapshot(jobs(1, 1, shape()), [node(10, "gone")], [cloud()]))
    assert result.assignments == {}
