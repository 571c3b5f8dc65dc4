"""The storage tree's paths: VDSM's mount-point names, the domain tree, find_domain, pool links."""

from __future__ import annotations

from pathlib import Path

import pytest

from pier.host.storage import layout
from pier.rpc.errors import StorageDomainDoesNotExist, StoragePoolUnknown

SD = "11111111-2222-3333-4444-555555555555"
SP = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"
IMG = "12345678-1234-1234-1234-123456789abc"
VOL = "87654321-4321-4321-4321-cba987654321"


@pytest.mark.parametrize(
    ("remote", "name"),
    [
        ("/data/sd1", "_data_sd1"),
        ("server:/export", "server:_export"),
        ("server:/export/data", "server:_export_data"),
        ("/a_b", "_a__b"),
        ("/a__b/_c", "_a____b___c"),
        ("nfs.example.com:/x_y/z", "nfs.example.com:_x__y_z"),
    ],
)
def test_mount_name_is_vdsms(remote: str, name: str) -> None:
    assert layout.mount_name(remote) == name


def test_mount_point_is_under_data_center_mnt(tmp_path: Path) -> None:
    assert layout.mount_point(tmp_path, "server:/export") == tmp_path / "mnt" / "server:_export"


def test_domain_tree_paths() -> None:
    dom = layout.domain_dir(Path("/rhev/data-center/mnt/server:_export"), SD)
    assert str(dom) == f"/rhev/data-center/mnt/server:_export/{SD}"
    assert str(layout.metadata_path(dom)) == f"{dom}/dom_md/metadata"
    assert str(layout.dom_md_file(dom, "xleases")) == f"{dom}/dom_md/xleases"
    assert str(layout.image_dir(dom, IMG)) == f"{dom}/images/{IMG}"
    assert str(layout.volume_path(dom, IMG, VOL)) == f"{dom}/images/{IMG}/{VOL}"
    assert str(layout.volume_meta_path(dom, IMG, VOL)) == f"{dom}/images/{IMG}/{VOL}.meta"
    assert str(layout.volume_lease_path(dom, IMG, VOL)) == f"{dom}/images/{IMG}/{VOL}.lease"
    assert str(layout.master_dir(dom)) == f"{dom}/master"


def _make_domain(mount: Path, sd_uuid: str) -> Path:
    dom = mount / sd_uuid
    (dom / "dom_md").mkdir(parents=True)
    (dom / "dom_md" / "metadata").write_text("SDUUID=" + sd_uuid + "\n")
    return dom


def test_find_domain_searches_every_mount(tmp_path: Path) -> None:
    (tmp_path / "mnt" / "_empty").mkdir(parents=True)
    dom = _make_domain(tmp_path / "mnt" / "server:_export", SD)
    assert layout.find_domain(tmp_path, SD) == dom


def test_find_domain_through_a_localfs_symlink(tmp_path: Path) -> None:
    local = tmp_path / "local"
    dom = _make_domain(local, SD)
    (tmp_path / "dc" / "mnt").mkdir(parents=True)
    (tmp_path / "dc" / "mnt" / layout.mount_name(str(local))).symlink_to(local)
    found = layout.find_domain(tmp_path / "dc", SD)
    assert found.resolve() == dom.resolve()


def test_find_domain_needs_metadata(tmp_path: Path) -> None:
    (tmp_path / "mnt" / "m" / SD / "dom_md").mkdir(parents=True)
    with pytest.raises(StorageDomainDoesNotExist) as err:
        layout.find_domain(tmp_path, SD)
    assert SD in err.value.message
    assert err.value.code == 358


def test_find_domain_without_mounts_or_with_a_bad_id(tmp_path: Path) -> None:
    with pytest.raises(StorageDomainDoesNotExist):
        layout.find_domain(tmp_path / "nothing", SD)
    _make_domain(tmp_path / "mnt" / "m", SD)
    with pytest.raises(StorageDomainDoesNotExist, match="not a UUID"):
        layout.find_domain(tmp_path, "../m/" + SD)


def test_iter_domains_lists_each_domain_once(tmp_path: Path) -> None:
    other = "99999999-2222-3333-4444-555555555555"
    _make_domain(tmp_path / "mnt" / "a", SD)
    _make_domain(tmp_path / "mnt" / "b", other)
    (tmp_path / "mnt" / "b" / "not-a-domain").mkdir()
    assert sorted(sd for sd, _ in layout.iter_domains(tmp_path)) == sorted([SD, other])


def test_pool_links(tmp_path: Path) -> None:
    dom = _make_domain(tmp_path / "mnt" / "m", SD)
    link = layout.link_pool_domain(tmp_path, SP, SD, dom)
    master = layout.link_pool_master(tmp_path, SP, dom)
    assert link == tmp_path / SP / SD and link.resolve() == dom.resolve()
    assert master == tmp_path / SP / "mastersd" and master.resolve() == dom.resolve()
    assert layout.pool_domain_links(tmp_path, SP) == {SD: dom}
    layout.link_pool_domain(tmp_path, SP, SD, dom)  # replacing a link is fine
    layout.unlink_pool_domain(tmp_path, SP, SD)
    assert not link.is_symlink()
    layout.remove_pool_links(tmp_path, SP)
    assert not (tmp_path / SP).exists()
    assert dom.is_dir()


def test_pool_dir_refuses_a_non_uuid(tmp_path: Path) -> None:
    with pytest.raises(StoragePoolUnknown):
        layout.pool_dir(tmp_path, "..")
