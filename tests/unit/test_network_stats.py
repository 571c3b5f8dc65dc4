"""Network statistics (pier.host.network.stats): VDSM's shapes, rates, and no scan per call."""

from __future__ import annotations

from pier.host.network.kernel import STAT_KEYS, Link
from pier.host.network.stats import NetworkSampler, network_statistics, state_of


def dev(name: str, rx: int = 0, tx: int = 0, up: bool = True, operstate: str = "UP", kind: str | None = None,
        rx_dropped: int = 0) -> Link:
    stats = dict.fromkeys(STAT_KEYS, 0)
    stats.update(rx_bytes=rx, tx_bytes=tx, rx_dropped=rx_dropped, tx_dropped=1, rx_errors=2, tx_errors=3)
    return Link(index=hash(name) % 1000, name=name, kind=kind, mtu=1500, max_mtu=65535, min_mtu=68, mac="",
                up=up, operstate=operstate, stats=stats)


def test_rates_come_from_two_samples_and_counters_are_strings() -> None:
    before = (100.0, {"eth0": dev("eth0", 1000, 500), "lo": dev("lo")})
    after = (102.0, {"eth0": dev("eth0", 5000, 900, rx_dropped=4), "lo": dev("lo"),
                     "br0": dev("br0", 10, kind="bridge", rx_dropped=1)})
    stats = network_statistics(before, after, {"eth0": 1000}, 1700000000.0)
    assert set(stats["network"]) == {"eth0", "br0"}  # loopback left out
    eth0 = stats["network"]["eth0"]
    assert eth0 == {"name": "eth0", "state": "up", "speed": "1000", "sampleTime": 1700000000.0,
                    "rx": "5000", "tx": "900", "rxErrors": "2", "txErrors": "3", "rxDropped": "4", "txDropped": "1",
                    "rxBytesPerSec": "2000", "txBytesPerSec": "200"}
    assert stats["network"]["br0"]["rxBytesPerSec"] == "0"  # new device: no rate yet
    assert stats["rxDropped"] == "5" and stats["txDropped"] == "2"
    first = network_statistics(None, before, {}, 1.0)
    assert first["network"]["eth0"]["rxBytesPerSec"] == "0" and first["network"]["eth0"]["speed"] == "0"


def test_states() -> None:
    assert state_of(dev("a")) == "up"
    assert state_of(dev("a", up=False, operstate="DOWN")) == "down"
    assert state_of(dev("a", operstate="LOWERLAYERDOWN")) == "down"
    assert state_of(dev("a", operstate="UNKNOWN")) == "unknown"


def test_readers_get_the_latest_sample_without_reading_the_kernel() -> None:
    reads: list[int] = []
    counter = {"rx": 0}

    def read_links() -> list[Link]:
        reads.append(1)
        counter["rx"] += 100
        return [dev("eth0", counter["rx"]), dev("br0", kind="bridge")]

    sampler = NetworkSampler(read_links, interval=3600, speed=lambda name: 10000)
    sampler.start()  # samples once before returning
    try:
        assert len(reads) == 1
        for _ in range(50):
            stats = sampler.statistics()
        assert len(reads) == 1 and stats["network"]["eth0"]["rx"] == "100"
        assert stats["network"]["eth0"]["speed"] == "10000" and stats["network"]["br0"]["speed"] == "0"
        assert sampler.speeds() == {"eth0": 10000}
        sampler.sample()
        assert sampler.statistics()["network"]["eth0"]["rx"] == "200" and len(reads) == 2
    finally:
        sampler.stop()


def test_a_failing_read_keeps_the_thread_and_the_last_answer() -> None:
    calls = {"n": 0}

    def read_links() -> list[Link]:
        calls["n"] += 1
        if calls["n"] > 1:
            raise OSError("netlink went away")
        return [dev("eth0", 7)]

    sampler = NetworkSampler(read_links, interval=0.01, speed=lambda name: 0)
    sampler.start()
    try:
        import time
        deadline = time.monotonic() + 2
        while calls["n"] < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert calls["n"] >= 3 and sampler.statistics()["network"]["eth0"]["rx"] == "7"
    finally:
        sampler.stop()
