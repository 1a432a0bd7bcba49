"""Nodes of a cloud that boot together are configured by one ansible run (provisioner/launcher.py
ConfigureBatches). The batches are tested with a recording stand-in for the ansible run and a
counter of nodes being created: what is tested is which nodes go together and when, not ansible
(tests/test_local_cloud.py runs it) nor the database."""
import threading
import time
from collections import Counter

from provisioner.configure import ConfigureResult, Target
from provisioner.launcher import ConfigureBatches


class Cloud:
    """Boots as the launcher does them: each node counts as being created from the tick that
    records it until it reaches configuration (or fails)."""

    def __init__(self, window: float):
        self.runs: list[list[str]] = []
        self.creating: Counter[str] = Counter()
        self.results: dict[str, ConfigureResult] = {}
        self.batches = ConfigureBatches(self._configure, lambda cloud: self.creating[cloud], window)

    def _configure(self, targets: list[Target], timeout: int) -> list[ConfigureResult]:
        self.runs.append(sorted(t.host for t in targets))
        return [ConfigureResult("successful", 0, None, 0.0) for _ in targets]

    def boot(self, cloud: str, host: str, create_seconds: float, fail: bool = False) -> threading.Thread:
        self.creating[cloud] += 1  # recorded by the tick

        def run():
            time.sleep(create_seconds)
            self.creating[cloud] -= 1
            if not fail:
                self.results[host] = self.batches.configure(cloud, Target(host, {}), 60)

        thread = threading.Thread(target=run)
        thread.start()
        return thread


def test_nodes_created_together_on_a_cloud_are_configured_by_one_run():
    cloud = Cloud(window=5)
    threads = [cloud.boot("c", f"n{i}", 0.1 * i) for i in range(4)] + [cloud.boot("other", "x", 0.0)]
    for thread in threads:
        thread.join(10)
    assert sorted(cloud.runs) == [["n0", "n1", "n2", "n3"], ["x"]]
    assert len(cloud.results) == 5 and all(result.ok for result in cloud.results.values())


def test_a_lone_node_and_one_that_failed_before_configuring_hold_nothing_up():
    cloud = Cloud(window=5)
    started = time.monotonic()
    threads = [cloud.boot("c", "broken", 0.3, fail=True), cloud.boot("c", "n0", 0.0)]
    for thread in threads:
        thread.join(10)
    # n0 waited while the other was being created (0.3 s), not the 5 s window
    assert time.monotonic() - started < 2
    assert cloud.runs == [["n0"]] and list(cloud.results) == ["n0"]


def test_a_node_still_creating_after_the_window_is_configured_in_a_run_of_its_own():
    cloud = Cloud(window=0.3)
    threads = [cloud.boot("c", "early", 0.0), cloud.boot("c", "late", 1.0)]
    for thread in threads:
        thread.join(10)
    assert cloud.runs == [["early"], ["late"]]
