"""A benchmark store shared by the tests of this folder (synthetic data is written once)."""

from __future__ import annotations

import pytest

from pipeline.bench.points import Point
from pipeline.bench.workload import Workload, make_workload
from pipeline.data import Store


@pytest.fixture(scope="session")
def bench_store(tmp_path_factory) -> Store:
    return Store(tmp_path_factory.mktemp("bench-store"))


@pytest.fixture(scope="session")
def workload_for(bench_store):
    def make(point: Point) -> Workload:
        return make_workload(point, bench_store)

    return make
