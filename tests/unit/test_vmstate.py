"""The VM cache's record keeping that the dispatcher and verb threads share."""

from __future__ import annotations

from pier.host.vmstate import VmCache, VmRecord

A = "a0000000-0000-4000-8000-000000000000"


def test_a_definition_parsed_before_an_invalidation_is_not_kept() -> None:
    cache = VmCache()
    rec = cache.add(VmRecord(A, "vm-a"))
    version = rec.def_version
    cache.invalidate(rec)  # the dispatcher saw the XML change while a reader was parsing
    cache.keep_definition(rec, {"vmId": A, "memSize": 1}, version)
    assert rec.definition is None
    cache.keep_definition(rec, {"vmId": A, "memSize": 2}, rec.def_version)
    assert rec.definition == {"vmId": A, "memSize": 2}
