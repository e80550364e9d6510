"""schema/cache.py: a spec file the schema accepted is read back, not parsed again, and gives the
same specs and errors; the cache follows the schema and ignores what it cannot use. Also the test
guest's digest, which model.py hashes again only when its sources change."""

from __future__ import annotations

import io
import os
import pathlib

import pytest

from volt_spec.schema import HostLimits, cache, files, load_specs, loader, validate_command

LIMITS = HostLimits(max_vcpus=4, mem_mib=1024)
SPEC = ("apiVersion: volt/v1\nkind: VirtualMachine\nmetadata: {name: web, labels: {team: web}}\n"
        "spec:\n  kernel: {path: builtin:testguest, cmdline: \"volt.ticks=0\"}\n  vcpus: 2\n  memory: 64Mi\n"
        "---\napiVersion: volt/v1\nkind: VirtualMachine\nmetadata:\n  name: db\nspec:\n"
        "  kernel:\n    path: kernel.bin\n  vcpus: 8\n")


@pytest.fixture(autouse=True)
def cache_home(tmp_path, monkeypatch) -> pathlib.Path:
    monkeypatch.setenv("VOLT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "specs"


@pytest.fixture
def parses(monkeypatch) -> list[str]:
    """The files the loader parses (not read back from the cache)."""
    seen: list[str] = []
    real = loader.load_documents

    def counting(file, text):
        seen.append(file)
        return real(file, text)
    monkeypatch.setattr(loader, "load_documents", counting)
    return seen


def spec_file(tmp_path: pathlib.Path, text: str = SPEC) -> str:
    (tmp_path / "kernel.bin").write_bytes(b"\0" * 64)
    path = tmp_path / "vms.yaml"
    path.write_text(text)
    return str(path)


def test_a_file_that_passed_is_read_back_with_the_same_specs_and_errors(tmp_path, parses, cache_home) -> None:
    path = spec_file(tmp_path)
    first = load_specs([path], LIMITS)             # db: 8 vCPUs > 4, a stage-2 error at its position
    assert parses == [path] and len(list(cache_home.iterdir())) == 1
    second = load_specs([path], LIMITS)
    assert parses == [path]                        # not parsed again
    assert second == first and [s.name for s in first[0]] == ["web"] and len(first[1]) == 1
    assert load_specs([path], HostLimits(max_vcpus=8, mem_mib=1024))[1] == []   # stage 2 is checked anew


def test_a_file_the_schema_refuses_is_not_kept(tmp_path, parses, cache_home) -> None:
    path = spec_file(tmp_path, SPEC.replace("vcpus: 2", "vcpus: two"))
    out1, out2 = io.StringIO(), io.StringIO()
    load_specs([path], LIMITS)
    load_specs([path], LIMITS)
    assert parses == [path, path] and not cache_home.exists()
    assert validate_command([path], out1, LIMITS) == validate_command([path], out2, LIMITS) == 1
    assert out1.getvalue() == out2.getvalue() and ':6:10: spec.vcpus: expected an integer, got "two"' in out1.getvalue()


def test_a_change_of_schema_is_a_new_key(tmp_path, monkeypatch, parses) -> None:
    path = spec_file(tmp_path)
    load_specs([path], LIMITS)
    before = cache.fingerprint()
    monkeypatch.setattr(files, "schema_text", lambda: files.SCHEMA_FILE.read_text() + " ")
    cache.fingerprint.cache_clear()
    try:
        assert cache.fingerprint() != before
        load_specs([path], LIMITS)
        assert parses == [path, path]
    finally:
        cache.fingerprint.cache_clear()


def test_a_corrupt_or_foreign_entry_is_ignored_and_replaced(tmp_path, parses, cache_home) -> None:
    path = spec_file(tmp_path)
    first = load_specs([path], LIMITS)
    (entry,) = cache_home.iterdir()
    for junk in (b"{not json", b'{"documents": [{"data": [1]}]}', b'{"documents": []}', b"\xff\xfe"):
        entry.write_bytes(junk)
        assert load_specs([path], LIMITS) == first
    assert len(parses) == 5 and cache.lookup(path, pathlib.Path(path).read_text()) is not None



def test_only_this_users_own_entry_for_this_text_is_read(tmp_path, parses, cache_home) -> None:
    """An entry planted by someone else (under sudo $HOME may be another user's), one that names
    another text's key (a renamed or hardlinked entry), or a symlink is not read."""
    path = spec_file(tmp_path)
    first = load_specs([path], LIMITS)
    (entry,) = cache_home.iterdir()
    other = tmp_path / "other.yaml"
    other.write_text(SPEC.replace("name: web", "name: evil"))
    load_specs([str(other)], LIMITS)
    (planted,) = [e for e in cache_home.iterdir() if e != entry]
    entry.unlink()
    os.link(planted, entry)                                      # the other text's documents under this key
    assert load_specs([path], LIMITS) == first and len(parses) == 3
    entry.unlink()
    entry.symlink_to(planted)
    assert load_specs([path], LIMITS) == first and len(parses) == 4
    if os.geteuid() == 0:
        entry.unlink()
        load_specs([path], LIMITS)
        os.chown(entry, 4242, 4242)
        assert load_specs([path], LIMITS) == first and len(parses) == 6

def test_an_unwritable_cache_changes_nothing(tmp_path, monkeypatch, parses) -> None:
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("VOLT_CACHE", str(tmp_path / "file"))       # a file where the folder would be
    path = spec_file(tmp_path)
    assert load_specs([path], LIMITS) == load_specs([path], LIMITS)
    assert len(parses) == 2


def test_only_the_newest_entries_are_kept(tmp_path, monkeypatch, cache_home) -> None:
    monkeypatch.setattr(cache, "MAX_ENTRIES", 3)
    for i in range(5):
        load_specs([spec_file(tmp_path, SPEC.replace("name: web", f"name: web{i}"))], LIMITS)
    assert len(list(cache_home.iterdir())) == 3



def test_at_most_max_bytes_are_kept(tmp_path, monkeypatch, cache_home) -> None:
    load_specs([spec_file(tmp_path)], LIMITS)
    size = next(cache_home.iterdir()).stat().st_size
    monkeypatch.setattr(cache, "MAX_BYTES", 2 * size + size // 2)
    for i in range(3):
        load_specs([spec_file(tmp_path, SPEC.replace("name: web", f"name: web{i}"))], LIMITS)
    assert len(list(cache_home.iterdir())) == 2
    monkeypatch.setattr(cache, "MAX_BYTES", size - 1)            # larger than all of the cache: not kept
    load_specs([spec_file(tmp_path, SPEC.replace("name: web", "name: big"))], LIMITS)
    assert len(list(cache_home.iterdir())) == 2


def test_the_test_guests_digest_follows_its_sources(tmp_path, monkeypatch) -> None:
    import shutil
    from volt_spec.guest import build
    from volt_spec.schema.model import content_hash
    src = tmp_path / "src"
    shutil.copytree(build.SRC_DIR, src)
    monkeypatch.setattr(build, "SRC_DIR", src)
    first = content_hash("builtin:testguest")
    assert first == f"testguest-src:{build.source_digest()}" == content_hash("builtin:testguest")
    with open(src / "guest.ld", "a") as f:
        f.write("\n/* changed */\n")
    assert content_hash("builtin:testguest") == f"testguest-src:{build.source_digest()}" != first
