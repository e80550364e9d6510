"""`volt validate` over the spec corpus: every bad spec fails where its `# expect:` lines say."""

from __future__ import annotations

import io
import pathlib
import re

import pytest

from volt_spec.schema import HostLimits, validate_command

SPECS = pathlib.Path(__file__).parent / "specs"
BAD = sorted((SPECS / "bad").glob("*.yaml"))
GOOD = sorted((SPECS / "good").glob("*.yaml"))
LIMITS = HostLimits(max_vcpus=254, mem_mib=64 * 1024)      # fixed, so results do not depend on the host
EXPECT = re.compile(r"^# expect: (\d+):(\d+): (.+)$", re.M)
EMPTY_FILE_EXPECT = [("1", "1", "file is empty")]          # a 0-byte file has no room for a comment


def run(paths: list[pathlib.Path | str]) -> tuple[int, str]:
    out = io.StringIO()
    rc = validate_command([str(p) for p in paths], out, LIMITS)
    return rc, out.getvalue()


def test_corpus_is_big_enough() -> None:
    assert len(BAD) >= 35 and len(GOOD) >= 3


@pytest.mark.parametrize("spec", BAD, ids=[p.stem for p in BAD])
def test_bad_spec_reports_expected_errors(spec: pathlib.Path) -> None:
    text = spec.read_text()
    expected = EXPECT.findall(text) or (EMPTY_FILE_EXPECT if not text else [])
    assert expected, f"{spec.name} has no '# expect: line:col: text' comment"
    rc, out = run([spec])
    assert rc == 1
    assert "Traceback" not in out
    lines = out.splitlines()
    for line, col, substring in expected:
        prefix = f"{spec}:{line}:{col}: "
        assert any(l.startswith(prefix) and substring in l for l in lines), \
            f"expected {prefix}...{substring!r} in:\n{out}"
    assert lines[-1].endswith("error" if len(lines) == 2 else "errors")


@pytest.mark.parametrize("spec", GOOD, ids=[p.stem for p in GOOD])
def test_good_spec_validates(spec: pathlib.Path) -> None:
    rc, out = run([spec])
    assert (rc, out.count("\n")) == (0, 1), out
    assert "valid in 1 file" in out


def test_good_directory_summary_counts_vms_and_files() -> None:
    rc, out = run([SPECS / "good"])
    assert rc == 0
    assert out == f"5 VMs valid in {len(GOOD)} files\n"


@pytest.mark.parametrize("example", ["hello.yaml", "pair.yaml"])
def test_examples_validate(example: str) -> None:
    rc, out = run([SPECS.parent.parent / "examples" / "vms" / example])
    assert rc == 0, out


def test_duplicate_name_across_files_names_the_first(tmp_path: pathlib.Path) -> None:
    body = ("apiVersion: volt/v1\nkind: VirtualMachine\nmetadata:\n  name: twin\n"
            "spec:\n  kernel: {path: builtin:testguest}\n")
    (tmp_path / "a.yaml").write_text(body)
    (tmp_path / "b.yml").write_text("# second\n" + body)
    (tmp_path / "notes.txt").write_text("ignored: not yaml")
    rc, out = run([tmp_path])
    assert rc == 1
    assert f'{tmp_path}/b.yml:5:9: metadata.name: duplicate VM name "twin" (first defined at ' \
           f"{tmp_path}/a.yaml:4:9)" in out
    assert out.count("\n") == 2


def test_errors_from_several_files_are_sorted_by_file_then_line(tmp_path: pathlib.Path) -> None:
    (tmp_path / "b.yaml").write_text("kind: Pod\n")
    (tmp_path / "a.yaml").write_text("x: 1\n---\n- 1\n")
    rc, out = run([tmp_path / "b.yaml", tmp_path / "a.yaml"])
    positions = [l.split(": ")[0] for l in out.splitlines()[:-1]]
    assert rc == 1 and positions == sorted(positions) and len(positions) >= 5


def test_missing_path_and_empty_directory_are_errors(tmp_path: pathlib.Path) -> None:
    rc, out = run([tmp_path / "nope.yaml", tmp_path])
    assert rc == 1
    assert f"{tmp_path}/nope.yaml: no such file or directory" in out
    assert f"{tmp_path}: directory has no *.yaml or *.yml files" in out


def test_shared_writable_disk_and_tap_across_vms(tmp_path: pathlib.Path) -> None:
    (tmp_path / "d.img").write_bytes(bytes(512))
    (tmp_path / "odd.img").write_bytes(bytes(513))
    doc = ("apiVersion: volt/v1\nkind: VirtualMachine\nmetadata: {{name: {name}}}\nspec:\n"
           "  kernel: {{path: builtin:testguest}}\n"
           "  devices:\n    disks: [{{name: d, path: {disk}, readOnly: {ro}}}]\n"
           "    network: [{{name: n, tap: tap0}}]\n")
    (tmp_path / "vms.yaml").write_text(
        doc.format(name="a", disk="d.img", ro="false") + "---\n"
        + doc.format(name="b", disk="./d.img", ro="true") + "---\n"
        + doc.format(name="c", disk="odd.img", ro="true"))
    rc, out = run([tmp_path])
    assert rc == 1
    assert ':16:29: spec.devices.disks[0].path: disk "./d.img" is written by VM "a"' in out
    assert ':17:30: spec.devices.network[0].tap: tap "tap0" is already used by VM "a"' in out
    assert ':25:29: spec.devices.disks[0].path: disk "odd.img" is 513 bytes, not a multiple of 512' in out


def test_host_vcpu_limit_is_checked(tmp_path: pathlib.Path) -> None:
    spec = tmp_path / "big.yaml"
    spec.write_text("apiVersion: volt/v1\nkind: VirtualMachine\nmetadata: {name: big}\n"
                    "spec: {kernel: {path: builtin:testguest}, vcpus: 8}\n")
    out = io.StringIO()
    assert validate_command([str(spec)], out, HostLimits(max_vcpus=4, mem_mib=1024)) == 1
    assert "4:50: spec.vcpus: 8 exceeds this host's limit of 4 vCPUs" in out.getvalue()
