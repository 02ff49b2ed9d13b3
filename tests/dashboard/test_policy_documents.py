"""Reading the kept policy documents and diffing two."""

from __future__ import annotations

import json
from pathlib import Path

from callward.collector.schema import POLICIES_DIR
from callward.dashboard import policy_documents
from callward.enforcer.policy import policy_version

DOC = {"version": "1", "default": "allow"}


def test_versions_come_from_content_and_must_be_the_file_name(tmp_path: Path) -> None:
    folder = tmp_path / POLICIES_DIR
    folder.mkdir()
    (folder / f"{policy_version(DOC)}.json").write_text(json.dumps(DOC))
    inner = {**DOC, "default": "deny"}
    wrapped = {"version": "x", "document": inner}
    (folder / f"{policy_version(inner).replace(':', '-')}.json").write_text(json.dumps(wrapped))
    (folder / ".tmp-partial.json").write_text("{")
    docs = policy_documents.load_all(tmp_path)
    assert all(d.document is not None and not d.problem for d in docs)
    assert sorted(d.version for d in docs) == sorted([policy_version(DOC), policy_version(inner)])


def test_a_document_whose_hash_is_not_its_name_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / POLICIES_DIR
    folder.mkdir()
    edited = {**DOC, "default": "deny"}  # edited in place, under the old document's name
    (folder / f"{policy_version(DOC)}.json").write_text(json.dumps(edited))
    (folder / "misnamed.json").write_text(json.dumps(DOC))
    docs = {d.path.name: d for d in policy_documents.load_all(tmp_path)}
    assert all(d.document is None for d in docs.values())
    problem = docs[f"{policy_version(DOC)}.json"].problem
    assert problem.startswith(f"content hashes to {policy_version(edited)}, not to the file name")
    assert "refused" in docs["misnamed.json"].problem


def test_bad_files_are_listed_with_their_problem(tmp_path: Path) -> None:
    folder = tmp_path / POLICIES_DIR
    folder.mkdir()
    (folder / "broken.json").write_text("{not json")
    (folder / "list.json").write_text("[1, 2]")
    (folder / "binary.json").write_bytes(b"\xff\xfe\x00")
    docs = {d.path.name: d for d in policy_documents.load_all(tmp_path)}
    assert all(d.document is None and d.problem for d in docs.values())
    assert docs["list.json"].problem == "not a JSON object"


def test_a_missing_folder_is_no_documents(tmp_path: Path) -> None:
    assert policy_documents.load_all(tmp_path) == []


def test_the_diff_shows_the_change_and_names_both_versions(tmp_path: Path) -> None:
    old = policy_documents.PolicyDocument("v-old", tmp_path / "a.json", DOC)
    new = policy_documents.PolicyDocument("v-new", tmp_path / "b.json", {**DOC, "default": "deny"})
    text = policy_documents.diff(old, new)
    assert '-  "default": "allow",' in text and '+  "default": "deny",' in text
    assert "--- v-old" in text and "+++ v-new" in text
    assert policy_documents.diff(old, old) == ""
