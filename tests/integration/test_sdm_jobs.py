"""VDSM's storage jobs (SDM.*) through a real pierd, on real volumes, with the real qemu-img and qemu-io.

Each job is a task whose id is the caller's job_id, listed by Host.getJobs as a storage job; data
is checked with qemu-io patterns and qemu-img, metadata in the `.meta` files VDSM reads.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.clients import HttpRpcClient, JsonRpcError
from tests.integration.conftest import Pierd
from tests.integration.test_volumes import GiB, Site, new, start_site

MiB = 1 << 20


@pytest.fixture
def site(tmp_path: Path, test_uri: str) -> Iterator[Site]:
    made = start_site(tmp_path, test_uri)
    yield made
    made.daemon.stop()


def path_of(site: Site, sd: str, img: str, vol: str) -> Path:
    return site.domain_dir(sd) / "images" / img / vol


def meta(site: Site, sd: str, img: str, vol: str) -> dict[str, str]:
    text = (path_of(site, sd, img, vol).parent / f"{vol}.meta").read_text()
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def qemu_io(path: Path, command: str, fmt: str = "qcow2") -> str:
    return subprocess.run(["qemu-io", "-f", fmt, "-c", command, str(path)], capture_output=True, text=True,
                          check=True).stdout


def pattern_is(path: Path, offset: int, length: int, byte: int, fmt: str = "qcow2") -> bool:
    out = qemu_io(path, f"read -P {byte} {offset} {length}", fmt)
    return "Pattern verification failed" not in out


def info(path: Path) -> dict[str, Any]:
    out = subprocess.run(["qemu-img", "info", "--output", "json", "-U", str(path)], capture_output=True,
                         text=True, check=True).stdout
    loaded: dict[str, Any] = json.loads(out)
    return loaded


def bitmaps(path: Path) -> list[str]:
    return [b["name"] for b in info(path).get("format-specific", {}).get("data", {}).get("bitmaps", [])]


def div(sd: str, img: str, vol: str, **extra: Any) -> dict[str, Any]:
    return {"sd_id": sd, "img_id": img, "vol_id": vol, **extra}


def job(site: Site, verb: str, **params: Any) -> dict[str, Any]:
    """Run an SDM job to its end; the task, whose id is the job id."""
    job_id = new()
    task = site.rpc.call(verb, job_id=job_id, **params)
    assert task["taskID"] == job_id
    return site.wait(task)


def test_copy_data_across_domains_raw_to_qcow2_with_bitmaps_and_a_job_listed(site: Site) -> None:
    img, src, dst_img, dst = new(), new(), new(), new()
    site.create(img, src, size=64 * MiB, fmt="COW")
    source = path_of(site, site.sd, img, src)
    qemu_io(source, "write -P 0xab 0 1M")
    qemu_io(source, "write -P 0xcd 32M 2M")
    subprocess.run(["qemu-img", "bitmap", "--add", str(source), "b1"], check=True)
    site.create(dst_img, dst, size=64 * MiB, fmt="COW", sd=site.sd2)
    before = meta(site, site.sd2, dst_img, dst)

    ended = job(site, "SDM.copy_data", source={"endpoint_type": "div", **div(site.sd, img, src)},
                destination={"endpoint_type": "div", **div(site.sd2, dst_img, dst, generation=0)},
                copy_bitmaps=True)
    assert ended["state"] == "succeeded", ended
    target = path_of(site, site.sd2, dst_img, dst)
    subprocess.run(["qemu-img", "compare", "-f", "qcow2", "-F", "qcow2", str(source), str(target)], check=True)
    assert bitmaps(target) == ["b1"]
    after = meta(site, site.sd2, dst_img, dst)
    assert after["LEGALITY"] == "LEGAL" and int(after["GEN"]) == int(before["GEN"]) + 1
    jobs = site.rpc.call("Host.getJobs", job_ids=[ended["taskID"]])
    assert jobs[ended["taskID"]]["job_type"] == "storage" and jobs[ended["taskID"]]["status"] == "done"

    raw_img, raw = new(), new()
    site.create(raw_img, raw, size=64 * MiB, fmt="RAW", sd=site.sd2)
    ended = job(site, "SDM.copy_data", source={"endpoint_type": "div", **div(site.sd, img, src)},
                destination={"endpoint_type": "div", **div(site.sd2, raw_img, raw)})
    assert ended["state"] == "succeeded", ended
    assert pattern_is(path_of(site, site.sd2, raw_img, raw), 32 * MiB, 2 * MiB, 0xCD, fmt="raw")


def test_copy_data_refuses_bad_input_and_changes_nothing(site: Site) -> None:
    img, src, raw_img, raw = new(), new(), new(), new()
    site.create(img, src, size=64 * MiB, fmt="COW")
    site.create(raw_img, raw, size=64 * MiB, fmt="RAW", sd=site.sd2)
    tree, raw_meta = site.tree(), meta(site, site.sd2, raw_img, raw)
    source = {"endpoint_type": "div", **div(site.sd, img, src)}
    cases: list[tuple[dict[str, Any], int]] = [
        (dict(destination={"endpoint_type": "div", **div(site.sd2, raw_img, raw)}, copy_bitmaps=True), 2009),
        (dict(destination={"endpoint_type": "div", **div(site.sd2, raw_img, new())}), 201),
        (dict(destination={"endpoint_type": "div", **div(site.sd2, raw_img, raw, generation=7)}), 911),
    ]
    for params, code in cases:
        with pytest.raises(JsonRpcError) as caught:
            site.rpc.call("SDM.copy_data", job_id=new(), source=source, **params)
        assert caught.value.code == code, params
    assert site.tree() == tree and meta(site, site.sd2, raw_img, raw) == raw_meta


def test_abort_mid_copy_leaves_the_destination_illegal_and_the_source_intact(site: Site) -> None:
    img, src, dst_img, dst = new(), new(), new(), new()
    site.create(img, src, size=GiB, fmt="RAW", prealloc="PREALLOCATED")
    source = path_of(site, site.sd, img, src)
    subprocess.run(["qemu-io", "-f", "raw", "-c", f"write -P 0x5a 0 {GiB}", str(source)], check=True,
                   capture_output=True)
    before = subprocess.run(["sha256sum", str(source)], capture_output=True, text=True, check=True).stdout.split()[0]
    site.create(dst_img, dst, size=GiB, fmt="COW", sd=site.sd2)
    task = site.rpc.call("SDM.copy_data", job_id=new(), source={"endpoint_type": "div", **div(site.sd, img, src)},
                         destination={"endpoint_type": "div", **div(site.sd2, dst_img, dst)})
    deadline = time.monotonic() + 60
    while site.rpc.call("Task.getInfo", taskID=task["taskID"])["state"] == "pending" and time.monotonic() < deadline:
        time.sleep(0.02)
    site.rpc.call("Task.stop", taskID=task["taskID"])
    ended = site.wait(task)
    assert ended["state"] == "cancelled", ended
    assert site.rpc.call("Host.getJobs", job_ids=[task["taskID"]])[task["taskID"]]["status"] == "aborted"
    assert meta(site, site.sd2, dst_img, dst)["LEGALITY"] == "ILLEGAL"
    assert meta(site, site.sd, img, src)["LEGALITY"] == "LEGAL"
    after = subprocess.run(["sha256sum", str(source)], capture_output=True, text=True, check=True).stdout.split()[0]
    assert after == before


def test_merge_of_a_three_layer_chain_commits_the_middle_into_the_base(site: Site) -> None:
    img, base, mid, top = new(), new(), new(), new()
    site.create(img, base, size=64 * MiB)
    qemu_io(path_of(site, site.sd, img, base), "write -P 1 0 4M")
    site.create(img, mid, size=64 * MiB, parent=base)
    qemu_io(path_of(site, site.sd, img, mid), "write -P 2 1M 2M")
    site.create(img, top, size=64 * MiB, parent=mid)
    qemu_io(path_of(site, site.sd, img, top), "write -P 3 3M 1M")
    base_meta = meta(site, site.sd, img, base)
    subchain = {"sd_id": site.sd, "img_id": img, "base_id": base, "top_id": mid, "base_generation": 0}

    for wrong, code in (({"base_id": top, "top_id": mid}, 921), ({"base_id": new()}, 920),
                        ({"base_generation": 5}, 911)):
        with pytest.raises(JsonRpcError) as caught:
            site.rpc.call("SDM.merge", job_id=new(), subchain_info={**subchain, **wrong})
        assert caught.value.code == code, wrong
    assert meta(site, site.sd, img, base) == base_meta

    ended = job(site, "SDM.merge", subchain_info=subchain)
    assert ended["state"] == "succeeded", ended
    base_path = path_of(site, site.sd, img, base)
    # the base alone now holds the middle layer's data over its own
    assert pattern_is(base_path, 0, 1 * MiB, 1) and pattern_is(base_path, 1 * MiB, 2 * MiB, 2)
    assert pattern_is(base_path, 3 * MiB, 1 * MiB, 1)
    # the whole chain still reads as before
    leaf = path_of(site, site.sd, img, top)
    assert pattern_is(leaf, 1 * MiB, 2 * MiB, 2) and pattern_is(leaf, 3 * MiB, 1 * MiB, 3)
    after = meta(site, site.sd, img, base)
    assert after["GEN"] == "1" and after["LEGALITY"] == base_meta["LEGALITY"]


def test_update_amend_and_sparsify(site: Site) -> None:
    img, vol = new(), new()
    site.create(img, vol, size=64 * MiB)
    vol_info = div(site.sd, img, vol)
    ended = job(site, "SDM.update_volume", vol_info={**vol_info, "generation": 0},
                vol_attr={"description": "renamed", "legality": "ILLEGAL"})
    assert ended["state"] == "succeeded", ended
    now = meta(site, site.sd, img, vol)
    assert now["DESCRIPTION"] == "renamed" and now["LEGALITY"] == "ILLEGAL" and now["GEN"] == "1"
    assert job(site, "SDM.update_volume", vol_info=vol_info, vol_attr={"legality": "LEGAL"})["state"] == "succeeded"

    path = path_of(site, site.sd, img, vol)
    assert info(path)["format-specific"]["data"]["compat"] == "1.1"
    assert job(site, "SDM.amend_volume", vol_info=vol_info, qcow2_attr={"compat": "0.10"})["state"] == "succeeded"
    assert info(path)["format-specific"]["data"]["compat"] == "0.10"
    assert job(site, "SDM.amend_volume", vol_info=vol_info, qcow2_attr={"compat": "1.1"})["state"] == "succeeded"

    qemu_io(path, "write -P 0x11 0 1M")
    qemu_io(path, "write -P 0 1M 16M")  # data clusters that hold only zeros
    allocated = info(path)["actual-size"]
    assert job(site, "SDM.sparsify_volume", vol_info=vol_info)["state"] == "succeeded"
    assert info(path)["actual-size"] < allocated - 8 * MiB
    assert pattern_is(path, 0, 1 * MiB, 0x11) and pattern_is(path, 1 * MiB, 16 * MiB, 0)
    assert meta(site, site.sd, img, vol)["GEN"] == "5"  # two updates, two amends, a sparsify


def test_bitmaps_are_added_removed_and_cleared(site: Site) -> None:
    img, vol, raw_img, raw = new(), new(), new(), new()
    site.create(img, vol, size=64 * MiB)
    site.create(raw_img, raw, size=64 * MiB, fmt="RAW")
    vol_info, path = div(site.sd, img, vol), path_of(site, site.sd, img, vol)
    for name in ("b1", "b2", "b3"):
        assert job(site, "SDM.add_bitmap", vol_info=vol_info, bitmap=name)["state"] == "succeeded"
    assert sorted(bitmaps(path)) == ["b1", "b2", "b3"]
    assert job(site, "SDM.remove_bitmap", vol_info=vol_info, bitmap="b2")["state"] == "succeeded"
    assert sorted(bitmaps(path)) == ["b1", "b3"]
    for params, code in ((dict(vol_info=vol_info, bitmap="b1"), 1000),  # already there
                         (dict(vol_info=vol_info, bitmap="-bad name"), -32602),
                         (dict(vol_info=vol_info, bitmap=""), -32602),
                         (dict(vol_info=div(site.sd, raw_img, raw), bitmap="b9"), 2009)):
        with pytest.raises(JsonRpcError) as caught:
            site.rpc.call("SDM.add_bitmap", job_id=new(), **params)
        assert caught.value.code == code, params
    with pytest.raises(JsonRpcError) as caught:
        site.rpc.call("SDM.remove_bitmap", job_id=new(), vol_info=vol_info, bitmap="b2")
    assert caught.value.code == 1000
    assert job(site, "SDM.clear_bitmaps", vol_info=vol_info)["state"] == "succeeded"
    assert bitmaps(path) == []


def test_a_job_id_in_use_is_refused(site: Site) -> None:
    img, vol = new(), new()
    site.create(img, vol, size=64 * MiB)
    job_id = new()
    task = site.rpc.call("SDM.add_bitmap", job_id=job_id, vol_info=div(site.sd, img, vol), bitmap="a")
    site.wait(task)
    with pytest.raises(JsonRpcError) as caught:
        site.rpc.call("SDM.add_bitmap", job_id=job_id, vol_info=div(site.sd, img, vol), bitmap="b")
    assert caught.value.code == 69
    assert bitmaps(path_of(site, site.sd, img, vol)) == ["a"]


def test_a_copy_interrupted_by_a_restart_is_reconciled_and_its_destination_left_illegal(
        tmp_path: Path, test_uri: str) -> None:
    site = start_site(tmp_path, test_uri)
    img, src, dst_img, dst = new(), new(), new(), new()
    try:
        site.create(img, src, size=GiB, fmt="RAW", prealloc="PREALLOCATED")
        subprocess.run(["qemu-io", "-f", "raw", "-c", f"write -P 0x5a 0 {GiB}",
                        str(path_of(site, site.sd, img, src))], check=True, capture_output=True)
        site.create(dst_img, dst, size=GiB, fmt="RAW", sd=site.sd2)
        task = site.rpc.call("SDM.copy_data", job_id=new(),
                             source={"endpoint_type": "div", **div(site.sd, img, src)},
                             destination={"endpoint_type": "div", **div(site.sd2, dst_img, dst)})
        deadline = time.monotonic() + 60
        while meta(site, site.sd2, dst_img, dst)["LEGALITY"] != "ILLEGAL":
            assert time.monotonic() < deadline, "the copy did not start"
            time.sleep(0.01)
    finally:
        site.daemon.kill()
    again = Pierd(site.daemon.state_dir, site.daemon.uri, "--data-center", str(site.dc))
    try:
        ended = HttpRpcClient(again.http).call("Task.getInfo", taskID=task["taskID"])
        assert ended["state"] == "failed" and "ILLEGAL" in ended["error"]["message"], ended
        assert meta(site, site.sd2, dst_img, dst)["LEGALITY"] == "ILLEGAL"
        assert meta(site, site.sd2, dst_img, dst)["GEN"] == "0"
        assert meta(site, site.sd, img, src)["LEGALITY"] == "LEGAL"
    finally:
        again.stop()
