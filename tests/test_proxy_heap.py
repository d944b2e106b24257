"""difyproxy freezes its startup heap out of the cycle collector's scans, and gives it back."""

from __future__ import annotations

import gc

from difytw.proxyservices import ProxyServices


def test_startup_objects_are_frozen_while_the_service_runs() -> None:
    assert gc.get_freeze_count() == 0
    service = ProxyServices()
    service.startService()
    try:
        assert gc.get_freeze_count() > 0
        assert service.running
    finally:
        service.stopService()
    assert gc.get_freeze_count() == 0


def test_young_collections_are_batched_while_running_and_restored_after() -> None:
    from difytw.proxyservices import GC_THRESHOLDS

    before = gc.get_threshold()
    service = ProxyServices()
    service.startService()
    try:
        assert gc.get_threshold() == GC_THRESHOLDS
    finally:
        service.stopService()
    assert gc.get_threshold() == before
