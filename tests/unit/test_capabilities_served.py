"""Capabilities promise only what Pier serves: an engine is never invited to call a missing verb."""

from __future__ import annotations

from pier.api.host import ENGINE_NEEDS, ENGINE_VERSIONS, served_features
from tests.unit.conftest import Stack


def test_cluster_levels_are_promised_now_that_every_engine_verb_is_served_and_live_snapshot_follows_its_verbs(stack: Stack) -> None:
    caps = stack.call("Host.getCapabilities")
    assert isinstance(caps, dict)
    missing = ENGINE_NEEDS - set(stack.registry.verbs)
    assert not missing  # every verb an engine needs is served now (migration and snapshots came last)
    assert caps["clusterLevels"] == ENGINE_VERSIONS == caps["supportedENGINEs"]
    served = set(stack.registry.verbs)  # live snapshot and merge are promised exactly when served
    assert caps["liveSnapshot"] == str("VM.snapshot" in served).lower() == "true"
    assert caps["liveMerge"] == str("VM.merge" in served).lower() == "true"
    assert caps["uuid"] == stack.host.uuid()  # the host's own facts are kept


def test_the_levels_and_features_appear_when_their_verbs_are_served() -> None:
    features = served_features(ENGINE_NEEDS)
    assert features["clusterLevels"] == ENGINE_VERSIONS == features["supportedENGINEs"]
    assert features["liveSnapshot"] == "true" and features["liveMerge"] == "true"
    one_short = served_features(ENGINE_NEEDS - {"Host.setupNetworks"})
    assert one_short["clusterLevels"] == [] and one_short["liveSnapshot"] == "true"
