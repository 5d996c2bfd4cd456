"""Photo search: the SQLite index (incremental, resumable, one writer), exact and approximate search, filters,
bundle identity, retrieval recall, the bench rows and the CLI — on the tiny bundle and real files."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edgeclip.cli import cli
from edgeclip.data.shapes import ShapesDataset
from edgeclip.metrics.retrieval import image_to_text_ranks, recall_at_k, retrieval_recall, text_to_image_ranks
from edgeclip.runtimes import load_bundle
from edgeclip.runtimes.search import SearchIndexError, evaluate_retrieval, index_folder, open_index
from edgeclip.runtimes.search.ann import exact_topk
from edgeclip.runtimes.search.store import WriterLock, decode_vectors, encode_vectors

REPO = Path(__file__).resolve().parents[1]


def write_photos(folder: Path, start: int, count: int, size: int = 32, seed: int = 0) -> list[Path]:
    """`count` distinct shapes images as PNG files named by index."""
    folder.mkdir(parents=True, exist_ok=True)
    data = ShapesDataset("eval", size=size, length=start + count, seed=seed)
    paths = []
    for i in range(start, start + count):
        path = folder / f"{i:04d}.png"
        Image.fromarray(data[i].image).save(path)
        paths.append(path)
    return paths


def committed(db: Path) -> int:
    """Photos committed so far (0 before the schema exists), read while a writer may be at work."""
    try:
        con = sqlite3.connect(db)
        try:
            return con.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]
        finally:
            con.close()
    except sqlite3.OperationalError:
        return 0


def rows(db: Path) -> dict[str, tuple[float, bytes]]:
    """path -> (indexed_at, vector) straight from the SQLite file, as an app would read it."""
    con = sqlite3.connect(db)
    try:
        query = "SELECT p.path, p.indexed_at, e.vector FROM photos p JOIN embeddings e ON e.photo_id = p.id"
        return {path: (at, vec) for path, at, vec in con.execute(query)}
    finally:
        con.close()


@pytest.fixture(scope="module")
def bundle(tiny_bundle: Path):
    return load_bundle(tiny_bundle, threads=1)


# --- index ----------------------------------------------------------------------------------------------------


def test_reindex_embeds_exactly_the_added_and_changed_and_removes_the_deleted(bundle, tmp_path: Path) -> None:
    photos, db = tmp_path / "photos", tmp_path / "photos.sqlite"
    paths = write_photos(photos, 0, 30)
    first = index_folder(bundle, photos, db, batch_size=8)
    assert (first.added, first.changed, first.removed, first.total) == (30, 0, 0, 30)
    before = rows(db)
    assert len(before) == 30 and all(len(vec) == bundle.embed_dim * 2 for _, vec in before.values())  # fp16

    write_photos(photos, 100, 10)  # 10 new
    changed = paths[:5]
    for path, replacement in zip(changed, write_photos(tmp_path / "other", 200, 5), strict=True):
        path.write_bytes(replacement.read_bytes())  # 5 changed in content
    for path in paths[5:10]:
        path.unlink()  # 5 deleted
    os.utime(paths[10], ns=(time.time_ns(), time.time_ns() + 10**9))  # touched, same content
    second = index_folder(bundle, photos, db, batch_size=8)

    assert second.embedded == 15 and (second.added, second.changed) == (10, 5)
    assert second.removed == 5 and second.touched == 1 and second.unchanged == 19 and second.total == 35
    after = rows(db)
    kept = [str(p.resolve()) for p in paths[10:]]
    assert all(after[p] == before[p] for p in kept if p != str(paths[10].resolve()))  # not re-embedded
    assert all(after[str(p.resolve())][1] != before[str(p.resolve())][1] for p in changed)
    assert not any(str(p.resolve()) in after for p in paths[5:10])

    third = index_folder(bundle, photos, db)
    assert (third.embedded, third.removed, third.unchanged) == (0, 0, 35)


def test_identical_content_is_copied_not_embedded_again(bundle, tmp_path: Path) -> None:
    photos, db = tmp_path / "photos", tmp_path / "p.sqlite"
    paths = write_photos(photos, 0, 6)
    index_folder(bundle, photos, db)
    moved = photos / "sub" / "moved.png"
    moved.parent.mkdir()
    paths[0].rename(moved)  # a move: new path, same bytes
    report = index_folder(bundle, photos, db)
    assert (report.embedded, report.reused, report.removed, report.total) == (0, 1, 1, 6)
    with open_index(db, bundle) as index:
        hit = index.search_image(moved, 1).hits[0]
    assert hit.path == str(moved.resolve()) and hit.score > 0.999


def test_unreadable_and_vanished_files_are_skipped_and_listed(bundle, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    write_photos(photos, 0, 4)
    (photos / "empty.jpg").write_bytes(b"")
    (photos / "text.png").write_text("not an image")
    report = index_folder(bundle, photos, tmp_path / "p.sqlite")
    assert report.total == 4 and report.added == 4
    skipped = {Path(s["path"]).name: s["error"] for s in report.skipped}
    assert set(skipped) == {"empty.jpg", "text.png"}
    assert "empty file" in skipped["empty.jpg"] and "not an image" in skipped["text.png"]


def test_int8_storage_round_trips_within_its_step_and_searches(bundle, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    stored = encode_vectors(x, "int8")
    back = decode_vectors([b for b, _ in stored], [s for _, s in stored], "int8", 64)
    assert np.abs(back - x).max() <= max(s for _, s in stored) / 2 + 1e-7
    assert all(len(b) == 64 for b, _ in stored)

    photos, db = tmp_path / "photos", tmp_path / "p.sqlite"
    paths = write_photos(photos, 0, 8)
    index_folder(bundle, photos, db, storage="int8")
    with open_index(db, bundle) as index:
        assert index.storage == "int8"
        assert index.search_image(paths[3], 1).hits[0].path == str(paths[3].resolve())
    with pytest.raises(Exception, match="stores int8 vectors, not fp16"):
        index_folder(bundle, photos, db, storage="fp16")


def test_killed_indexer_resumes_without_embedding_anything_twice(tiny_bundle: Path, bundle, tmp_path: Path) -> None:
    photos, db = tmp_path / "photos", tmp_path / "p.sqlite"
    write_photos(photos, 0, 48)
    script = textwrap.dedent(
        f"""
        import time
        from edgeclip.runtimes import load_bundle
        from edgeclip.runtimes.search import index_folder
        index_folder(load_bundle({str(tiny_bundle)!r}, threads=1), {str(photos)!r}, {str(db)!r}, batch_size=4,
                     on_batch=lambda n: time.sleep(0.3))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for sig in (signal.SIGKILL, signal.SIGTERM):
        proc = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and committed(db) < 8 * (1 + (sig == signal.SIGTERM)):
            time.sleep(0.05)
        proc.send_signal(sig)
        proc.wait(timeout=60)
        assert proc.returncode == -sig, proc.stderr.read().decode()[-2000:]
    before = rows(db)
    assert 16 <= len(before) < 48  # killed part way, twice
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert con.execute("SELECT COUNT(*) FROM photos").fetchone()[0] == len(before)  # no photo without a vector
    con.close()

    report = index_folder(bundle, photos, db, batch_size=4)
    assert report.embedded == 48 - len(before) and report.unchanged == len(before)
    assert report.total == 48
    after = rows(db)
    assert all(after[p] == before[p] for p in before)  # committed vectors kept, not embedded again


def test_one_writer_at_a_time(bundle, tmp_path: Path) -> None:
    photos, db = tmp_path / "photos", tmp_path / "p.sqlite"
    write_photos(photos, 0, 3)
    index_folder(bundle, photos, db)
    with WriterLock(db) as lock:
        lock.acquire(wait=False)
        with pytest.raises(SearchIndexError, match="being written by pid .*one indexer at a time"):
            index_folder(bundle, photos, db)
        with open_index(db, bundle) as index:  # readers are not blocked by the writer
            assert len(index) == 3


# --- search ---------------------------------------------------------------------------------------------------


def test_exact_topk_is_the_full_sort_across_blocks() -> None:
    rng = np.random.default_rng(1)
    m = rng.standard_normal((1000, 16)).astype(np.float32)
    q = rng.standard_normal(16).astype(np.float32)
    rows_, scores = exact_topk(m, q, 7, block=64)
    assert rows_.tolist() == np.argsort(-(m @ q), kind="stable")[:7].tolist()
    assert np.allclose(scores, np.sort(m @ q)[::-1][:7])
    assert len(exact_topk(m[:3], q, 10)[0]) == 3


def test_search_by_image_text_and_filters(bundle, tmp_path: Path) -> None:
    photos, db = tmp_path / "photos", tmp_path / "p.sqlite"
    paths = write_photos(photos / "a", 0, 6) + write_photos(photos / "b", 6, 6)
    old = time.time() - 400 * 86400
    for p in paths[:3]:
        os.utime(p, (old, old))
    index_folder(bundle, photos, db)
    with open_index(db) as index:  # the bundle comes from the path the index recorded
        result = index.search_image(paths[8], 3)
        assert result.method == "exact" and result.searched == 12
        assert result.hits[0].path == str(paths[8].resolve()) and result.hits[0].score > 0.999
        assert [h.score for h in result.hits] == sorted((h.score for h in result.hits), reverse=True)
        text = index.search_text("a red circle", 5, templates="simple")
        assert len(text.hits) == 5 and all(-1 <= h.score <= 1 for h in text.hits)
        only_b = index.search_image(paths[0], 12, glob="*/b/*")
        assert only_b.searched == 6 and all("/b/" in h.path for h in only_b.hits)
        recent = index.search_image(paths[0], 12, since=time.strftime("%Y-%m-%d", time.localtime(old + 86400)))
        assert recent.searched == 9 and str(paths[0].resolve()) not in {h.path for h in recent.hits}
        none = index.search_image(paths[0], 5, glob="*/nothing/*")
        assert none.hits == () and none.notes == ("no photo matches the filters",)


def test_empty_index_gives_an_empty_result_with_a_note(bundle, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    index_folder(bundle, tmp_path / "empty", tmp_path / "p.sqlite")
    with open_index(tmp_path / "p.sqlite", bundle) as index:
        result = index.search_text("anything", 10)
    assert result.hits == () and result.notes == ("the index is empty",)


def test_an_index_refuses_another_bundle_naming_both(bundle, tiny_bundle_copy: Path, tmp_path: Path) -> None:
    photos, db = tmp_path / "photos", tmp_path / "p.sqlite"
    write_photos(photos, 0, 2)
    index_folder(bundle, photos, db)
    manifest = tiny_bundle_copy / "manifest.json"
    data = json.loads(manifest.read_text())
    data["created"] = "2020-01-01T00:00:00+00:00"  # same weights and spec, another bundle
    manifest.write_text(json.dumps(data))
    other = load_bundle(tiny_bundle_copy)
    with pytest.raises(SearchIndexError) as err:
        open_index(db, other)
    message = str(err.value)
    assert str(Path(bundle.path).resolve()) in message and str(tiny_bundle_copy.resolve()) in message
    with pytest.raises(SearchIndexError, match="was built with bundle"):
        index_folder(other, photos, db)


def test_not_an_index_or_a_newer_schema_is_a_clear_error(bundle, tmp_path: Path) -> None:
    text = tmp_path / "notes.sqlite"
    text.write_text("hello " * 400)
    with pytest.raises(SearchIndexError, match="is not an edgeclip index"):
        open_index(text)
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(SearchIndexError, match="is not an edgeclip index"):
        open_index(other)
    with pytest.raises(SearchIndexError, match="does not exist"):
        open_index(tmp_path / "missing.sqlite")
    (tmp_path / "photos").mkdir()
    with pytest.raises(SearchIndexError, match="is not an edgeclip index"):
        index_folder(bundle, tmp_path / "photos", other)  # another program's database is never written to
    assert sqlite3.connect(other).execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    db = tmp_path / "p.sqlite"
    index_folder(bundle, tmp_path / "photos", db)
    con = sqlite3.connect(db)
    con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    with pytest.raises(SearchIndexError, match="schema version 99, newer than this edgeclip reads"):
        open_index(db)


def test_approximate_index_is_built_from_the_table_and_agrees_with_exact(bundle, tmp_path: Path) -> None:
    pytest.importorskip("usearch")
    photos, db = tmp_path / "photos", tmp_path / "p.sqlite"
    paths = write_photos(photos, 0, 40)
    report = index_folder(bundle, photos, db, ann="on")
    assert report.ann["kind"] == "usearch" and report.ann["count"] == 40 and report.ann["built"]
    assert report.ann["recall_at_10"] >= 0.9
    with open_index(db, bundle) as index:
        approx = index.search_image(paths[5], 5)
        exact = index.search_image(paths[5], 5, method="exact")
        assert approx.method == "usearch" and exact.method == "exact"
        assert approx.hits[0].path == exact.hits[0].path == str(paths[5].resolve())
        assert index.search_image(paths[5], 5, glob="*").method == "exact"  # filters search exactly
    paths[0].unlink()
    changed = index_folder(bundle, photos, db, ann="off")  # the stored approximate index is dropped
    assert changed.ann is None
    with open_index(db, bundle) as index:
        assert index.search_image(paths[5], 5).method == "exact"
        with pytest.raises(Exception, match="approximate search is not possible"):
            index.search_image(paths[5], 5, method="approximate")


# --- retrieval metrics and evaluation -------------------------------------------------------------------------


def test_recall_both_directions_by_hand() -> None:
    # 3 images; captions 0,1 -> image 0, caption 2 -> image 1, caption 3 -> image 2
    sim = np.array(
        [
            [0.9, 0.1, 0.0],  # rank 0
            [0.2, 0.8, 0.1],  # own image 0 ranks 1
            [0.1, 0.3, 0.5],  # own image 1 ranks 1
            [0.0, 0.1, 0.7],  # rank 0
        ]
    )
    owner = [0, 0, 1, 2]
    assert text_to_image_ranks(sim, owner).tolist() == [0, 1, 1, 0]
    # image 0: captions 0 (0.9, best) and 1; image 1: caption 2 scores 0.3 < 0.8 of caption 1; image 2: 0.7 best
    assert image_to_text_ranks(sim, owner).tolist() == [0, 1, 0]
    assert recall_at_k(np.array([0, 1, 1, 0]), (1, 2)) == {1: 0.5, 2: 1.0}
    both = retrieval_recall(sim, owner, (1,))
    assert both == {"text_to_image": {1: 0.5}, "image_to_text": {1: 2 / 3}}


def test_eval_retrieval_on_shapes_and_a_jsonl_file(bundle, tmp_path: Path) -> None:
    report = evaluate_retrieval(bundle, "shapes:eval:16:32")
    assert (report["images"], report["captions"]) == (16, 16)
    for direction in ("text_to_image", "image_to_text"):
        values = [report[direction][k] for k in ("R@1", "R@5", "R@10")]
        assert values == sorted(values) and all(0 <= v <= 1 for v in values)
    assert set(report["stored"]) == {"fp16", "int8"}
    paths = write_photos(tmp_path / "img", 0, 3)
    captions = tmp_path / "captions.jsonl"
    records = [{"image": f"img/{p.name}", "caption": f"photo {i}"} for i, p in enumerate(paths)]
    records.append({"image": "img/missing.png", "captions": ["gone"]})
    captions.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    report = evaluate_retrieval(bundle, captions)
    assert (report["images"], report["captions"]) == (3, 3)
    assert len(report["skipped"]) == 1 and "no such file" in report["skipped"][0]["error"]


# --- CLI ------------------------------------------------------------------------------------------------------


def test_cli_index_search_and_eval(tiny_bundle: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    photos, db = tmp_path / "photos", tmp_path / "p.sqlite"
    paths = write_photos(photos, 0, 5)
    (photos / "bad.jpg").write_text("junk")
    out = runner.invoke(cli, ["index", str(tiny_bundle), str(photos), "--db", str(db), "--json", "--threads", "1"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["embedded"] == 5 and [Path(s["path"]).name for s in data["skipped"]] == ["bad.jpg"]

    out = runner.invoke(cli, ["index", str(tiny_bundle), str(photos), "--db", str(db), "--quiet"])
    assert out.exit_code == 0 and "0 embedded" in out.output and "5 unchanged" in out.output

    out = runner.invoke(cli, ["search", str(db), "a blue star", "-k", "3", "--json"])
    assert out.exit_code == 0, out.output
    assert len(json.loads(out.output)["hits"]) == 3
    out = runner.invoke(cli, ["search", str(db), "--image", str(paths[2]), "-k", "2"])
    assert out.exit_code == 0 and out.output.splitlines()[0].endswith(str(paths[2].resolve()))

    for bad in (["search", str(db)], ["search", str(db), "text", "--image", str(paths[0])]):
        out = runner.invoke(cli, bad)
        assert out.exit_code == 2 and "give a TEXT query or --image PATH" in out.output
    out = runner.invoke(cli, ["search", str(tmp_path / "nope.sqlite"), "x"])
    assert out.exit_code == 1 and "does not exist" in out.output and "Traceback" not in out.output

    (tmp_path / "none").mkdir()
    empty = tmp_path / "empty.sqlite"
    assert runner.invoke(cli, ["index", str(tiny_bundle), str(tmp_path / "none"), "--db", str(empty)]).exit_code == 0
    out = runner.invoke(cli, ["search", str(empty), "anything"])
    assert out.exit_code == 0 and "note: the index is empty" in out.output

    out = runner.invoke(cli, ["eval", "retrieval", str(tiny_bundle), "shapes:eval:12:32", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["images"] == 12
    out = runner.invoke(cli, ["eval", "retrieval", str(tiny_bundle), str(tmp_path / "missing.jsonl")])
    assert out.exit_code == 1 and "does not exist" in out.output


def test_bench_search_rows_go_into_the_results_file_and_report(tiny_bundle: Path, tmp_path: Path) -> None:
    from edgeclip.bench import BenchResult, load_report, load_results
    from edgeclip.bench.report import to_markdown

    results = tmp_path / "search.json"
    out = CliRunner().invoke(
        cli,
        ["bench", "search", str(tiny_bundle), "--entries", "300", "--images", "8", "--image-size", "32",
         "--runs", "5", "--warmup", "1", "--threads", "1", "--json", str(results), "--quiet"],
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    result = load_results(results)
    assert BenchResult.from_json(result.to_json()) == result  # search figures round-trip (schema 1.1)
    names = [e.name for e in result.entries]
    assert names[0] == "search:index (tiny.edgeclip)" and "search:exact@300" in names
    index_row = result.entries[0].search
    assert index_row.task == "index" and index_row.images_per_s > 0 and index_row.encoder_images_per_s > 0
    exact = result.entry("search:exact@300").search
    assert exact.latency.count == 5 and exact.recall_at_10 == 1.0
    if "search:usearch@300" in names:
        assert 0.5 <= result.entry("search:usearch@300").search.recall_at_10 <= 1.0
    assert "recall@10" in out.output and "encoder img/s" in out.output
    report = to_markdown(load_report([results]))
    assert "search:exact@300" in report


def test_search_runs_with_torch_blocked(tiny_bundle: Path, tmp_path: Path) -> None:
    write_photos(tmp_path / "photos", 0, 3)
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules["torch"] = None
        from edgeclip.runtimes import load_bundle
        from edgeclip.runtimes.search import evaluate_retrieval, index_folder, open_index
        b = load_bundle({str(tiny_bundle)!r}, threads=1)
        index_folder(b, {str(tmp_path / "photos")!r}, {str(tmp_path / "p.sqlite")!r})
        with open_index({str(tmp_path / "p.sqlite")!r}) as ix:
            assert len(ix.search_text("a circle", 2).hits) == 2
        evaluate_retrieval(b, "shapes:eval:4:32")
        print([m for m in ("torch", "open_clip", "timm") if sys.modules.get(m) is not None])
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
