"""Two runs never corrupt one folder, a bad records file is refused before any work, a full disk leaves no torn line
(issue #25, items 2, 3 and 7).

Runs are real ``run_benchmark.py`` processes (``--quick --methods flat``: a few seconds each) or ``cli.main``
in-process where a fault is injected; ``VQBENCH_DATA_DIR`` is a private folder.
"""
from __future__ import annotations

import collections
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from benchmark import cli, records
from benchmark._io import write_bytes
from benchmark.lock import LOCK_NAME, LockError, check_unlocked, folder_lock
from benchmark.records import (REJECTED_NAME, RecordWriteError, append_records, read_records, repair_records)

REPO = Path(__file__).resolve().parent.parent
FLAT = ["--quick", "--methods", "flat"]
TWO = ["--quick", "--methods", "flat,faiss-pq"]
PAUSING = """
import os, sys, time
from pathlib import Path
import benchmark.runner as runner
real = runner.evaluate
def evaluate(*args, **kwargs):
    Path(os.environ["MARKER"]).write_text("in a fit")
    time.sleep(300)
runner.evaluate = evaluate
from benchmark.cli import main
sys.exit(main(sys.argv[1:]))
"""


def env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "VQBENCH_DATA_DIR": str(tmp_path / "cache"), **extra}


def cli_run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "run_benchmark.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env=env(tmp_path))


def run_ids(results: Path) -> list[str]:
    return [json.loads(line)["run_id"] for line in results.read_text().splitlines() if line.strip()]


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error: ")]


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    """A folder holding a real quick run of flat and faiss-pq (2 fits, 2 records); copy it before changing it."""
    tmp = tmp_path_factory.mktemp("recorded")
    done = cli_run(tmp, *TWO, "--out", str(tmp / "out"))
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp / "out"


def copy_of(recorded: Path, tmp_path: Path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(recorded, out)
    return out


# --- one writer per folder ---------------------------------------------------------------------------------------

def test_a_second_run_on_a_locked_folder_exits_2_before_any_work_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    with folder_lock(out, command="the first run") as lock:
        info = json.loads(lock.read_text())
        assert info["pid"] == os.getpid() and info["host"] == socket.gethostname()
        second = cli_run(tmp_path, *FLAT, "--out", str(out))
        assert second.returncode == 2, second.stderr[-3000:]
        assert error_lines(second.stderr) == [
            f"error: --out: {out} is being written by another run: pid {os.getpid()} on host "
            f"{socket.gethostname()}, started {info['started']} (the first run); wait for it to end (or stop it); "
            f"only one run may write a folder at a time"]
        assert "loading dataset" not in second.stdout + second.stderr      # refused before any data
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]       # no record, no report
        assert json.loads(lock.read_text()) == info                        # the holder's lock left as it was
    assert not out.exists()  # released: the lock file is gone (and the folder the lock created, still empty)
    again = cli_run(tmp_path, *FLAT, "--out", str(out))
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(run_ids(out / "results.jsonl")) == 1 and not (out / LOCK_NAME).exists()


def test_a_stale_lock_left_by_a_dead_process_is_taken_over(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    pid = dead_pid()
    (out / LOCK_NAME).write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "started": "yesterday",
                                             "command": "run_benchmark.py --quick"}))
    done = cli_run(tmp_path, *FLAT, "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert (f"note: took over the stale lock {out / LOCK_NAME} of pid {pid} on host {socket.gethostname()}, "
            f"started yesterday (run_benchmark.py --quick): pid {pid} is gone") in done.stderr
    assert len(run_ids(out / "results.jsonl")) == 1
    assert not (out / LOCK_NAME).exists()


def test_a_lock_from_another_host_is_refused_with_how_to_remove_it(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).write_text(json.dumps({"pid": 4242, "host": "node-17.cluster", "started": "t0",
                                             "command": "run_benchmark.py --config big.toml"}))
    with pytest.raises(LockError) as exc:
        with folder_lock(out):
            pytest.fail("the lock was taken")
    assert str(exc.value) == (f"--out: {out} is locked by pid 4242 on host node-17.cluster, started t0 "
                              f"(run_benchmark.py --config big.toml); from host {socket.gethostname()} it cannot "
                              f"be checked whether that run is still going; if it has ended, remove the lock: "
                              f"rm {out / LOCK_NAME}")
    assert (out / LOCK_NAME).is_file()                                    # refused, not removed
    assert check_unlocked(out, "--merge")[0].startswith(f"--merge: {out} is locked by pid 4242 on host node-17")


def test_the_lock_is_released_on_an_exception_and_by_the_kernel_when_the_holder_dies(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(RuntimeError):
        with folder_lock(out, command="x"):
            raise RuntimeError("a bug")
    assert not (out / LOCK_NAME).exists()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time
        from benchmark.lock import folder_lock
        with folder_lock({str(out)!r}, command="holder"):
            print("held", flush=True)
            time.sleep(300)""")], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        assert check_unlocked(out, "--merge") == [
            f"--merge: {out} is being written by pid {holder.pid} on host {socket.gethostname()}, started "
            f"{json.loads((out / LOCK_NAME).read_text())['started']} (holder); wait until it ends"]
        with pytest.raises(LockError, match=f"pid {holder.pid} on host"):
            with folder_lock(out):
                pass
    finally:
        holder.kill()
        holder.wait()
    assert (out / LOCK_NAME).is_file() and check_unlocked(out, "--merge") == []   # SIGKILL: file left, lock free
    notes: list[str] = []
    with folder_lock(out, command="next", log=notes.append):
        assert json.loads((out / LOCK_NAME).read_text())["command"] == "next"
    assert len(notes) == 1, notes
    assert notes[0].startswith(f"note: took over the stale lock {out / LOCK_NAME} of pid {holder.pid} on host "
                               f"{socket.gethostname()}, started ")
    assert notes[0].endswith(f" (holder): pid {holder.pid} is gone")
    assert not (out / LOCK_NAME).exists()


def test_the_lock_is_released_after_an_error_exit_a_failed_check_and_sigterm(tmp_path):
    out = tmp_path / "out"
    refused = cli_run(tmp_path, "--quick", "--methods", "faiss-opq", "--param", "M=5", "--out", str(out))
    assert refused.returncode == 2 and "M=5 must be a positive divisor" in refused.stderr  # after the lock, data
    assert not out.exists()
    marker = tmp_path / "marker"
    proc = subprocess.Popen([sys.executable, "-c", PAUSING, *FLAT, "--out", str(out)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env(tmp_path, MARKER=str(marker)))
    deadline = time.time() + 300
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline
        time.sleep(0.1)
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == proc.pid     # the driver holds it
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    assert "interrupted: 0 fit(s) completed" in stderr
    assert not (out / LOCK_NAME).exists()


def test_two_runs_started_together_on_one_folder_never_duplicate_a_record(tmp_path):
    out = tmp_path / "out"
    procs = [subprocess.Popen([sys.executable, "run_benchmark.py", *TWO, "--out", str(out)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(tmp_path))
             for _ in range(2)]
    ends = [(p.wait(timeout=600), p.communicate()[1]) for p in procs]
    codes = sorted(code for code, _ in ends)
    assert codes in ([0, 0], [0, 2]), [err[-2000:] for _, err in ends]
    for code, err in ends:
        if code == 2:  # refused while the other one ran
            assert f"error: --out: {out} is being written by another run: pid " in err
    ids = collections.Counter(run_ids(out / "results.jsonl"))
    assert len(ids) == 2 and set(ids.values()) == {1}
    assert not (out / LOCK_NAME).exists()


def test_merge_refuses_a_shard_being_written_and_a_locked_target(tmp_path, recorded, capsys):
    shard = copy_of(recorded, tmp_path)
    with folder_lock(shard, command="shard run"):
        code = cli.main(["--merge", str(shard), "--out", str(tmp_path / "merged")])
        err = capsys.readouterr().err
        assert code == 2 and error_lines(err)[0].startswith(f"error: --merge: {shard} is being written by pid "
                                                            f"{os.getpid()}")
        assert not (tmp_path / "merged").exists()
        # reading a folder being written is allowed, with a note
        assert cli.main(["--report-only", str(shard)]) == 0
        assert f"note: {shard} is being written by pid {os.getpid()}" in capsys.readouterr().err
    target = tmp_path / "target"
    with folder_lock(target, command="another merge"):
        assert cli.main(["--merge", str(shard), "--out", str(target)]) == 2
        assert f"error: --out: {target} is being written by another run" in capsys.readouterr().err
    assert cli.main(["--merge", str(shard), "--out", str(target)]) == 0
    assert sorted(run_ids(target / "results.jsonl")) == sorted(run_ids(shard / "results.jsonl"))


# --- records integrity ---------------------------------------------------------------------------------------------

def test_a_torn_middle_line_is_refused_before_any_work_and_repair_moves_it_aside(tmp_path, recorded):
    out = copy_of(recorded, tmp_path)
    results = out / "results.jsonl"
    good = results.read_bytes().splitlines(keepends=True)
    torn = good[0][:80] + b"\n"  # what a killed writer leaves once a later append starts on a new line
    results.write_bytes(good[0] + torn + good[1])
    before = results.read_bytes()
    refused = cli_run(tmp_path, *TWO, "--out", str(out))
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert error_lines(refused.stderr) == [
        f"error: {results}:2: unreadable record (incomplete JSON: the line ends after 80 bytes (a write cut short))",
        f"error: --out: {results} has 1 unreadable line(s) (above); nothing was done. Move them to {REJECTED_NAME} "
        f"with: run_benchmark.py --repair --out {out}"]
    assert "loading dataset" not in refused.stdout + refused.stderr
    assert results.read_bytes() == before
    for argv in (["--report-only", str(out)], ["--merge", str(recorded), "--out", str(out)]):
        assert cli_run(tmp_path, *argv).returncode == 2          # every command that reads the folder refuses
    assert results.read_bytes() == before

    repaired = cli_run(tmp_path, "--repair", "--out", str(out))
    assert repaired.returncode == 0, repaired.stderr[-3000:]
    assert repaired.stdout.splitlines()[:2] == [
        f"repair: moved 1 unreadable line(s) from {results} to {out / REJECTED_NAME}:",
        f"  {results}:2: incomplete JSON: the line ends after 80 bytes (a write cut short)"]
    assert "loading dataset" not in repaired.stdout + repaired.stderr  # --repair alone runs nothing
    assert results.read_bytes() == good[0] + good[1]
    [moved] = [json.loads(line) for line in (out / REJECTED_NAME).read_text().splitlines()]
    assert (moved["file"], moved["line"], moved["raw"]) == ("results.jsonl", 2, torn.decode().rstrip("\n"))
    assert "incomplete JSON" in moved["reason"]

    again = cli_run(tmp_path, "--repair", "--out", str(out))
    assert again.returncode == 0 and f"repair: nothing to repair, every line of {results} is readable" in again.stdout
    done = cli_run(tmp_path, *TWO, "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 already recorded" in done.stdout and results.read_bytes() == good[0] + good[1]


def test_a_torn_tail_is_the_same_case_and_repair_then_runs(tmp_path, recorded):
    out = copy_of(recorded, tmp_path)
    results = out / "results.jsonl"
    good = results.read_bytes().splitlines(keepends=True)
    results.write_bytes(good[0] + good[1][:57])  # a writer killed mid-write: faiss-pq's record cut short
    refused = cli_run(tmp_path, *TWO, "--out", str(out))
    assert refused.returncode == 2
    assert error_lines(refused.stderr)[0] == (f"error: {results}:2: unreadable record (torn last line: 57 bytes "
                                              f"without the newline that ends every record)")
    done = cli_run(tmp_path, "--repair", *TWO, "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"  {results}:2: torn last line: 57 bytes without the newline" in done.stdout
    assert "1 run, 1 already recorded" in done.stdout                  # faiss-pq re-run, flat kept
    assert collections.Counter(run_ids(results)) == collections.Counter(run_ids(recorded / "results.jsonl"))
    assert results.read_bytes().startswith(good[0])


def test_repair_moves_every_kind_of_bad_line_and_keeps_the_good_ones_byte_for_byte(tmp_path, recorded):
    results = tmp_path / "results.jsonl"
    good = (recorded / "results.jsonl").read_bytes().splitlines(keepends=True)
    schema = json.dumps({**json.loads(good[0]), "status": "done"}).encode() + b"\n"
    bad = {2: b"[1, 2]\n", 4: b"null\n", 5: schema, 6: b"\xff\xfe{}\n", 7: b"\x00\x00\x00\n", 9: b'{"run_id": "x",'}
    lines = [good[0], bad[2], b"\n", bad[4], bad[5], bad[6], bad[7], good[1], bad[9]]
    results.write_bytes(b"".join(lines))
    kept, problems = read_records(results)
    assert len(kept) == 2 and [p.split(": ", 1)[0] for p in problems] == [f"{results}:{n}" for n in bad]
    moved = repair_records(results)
    assert [m.split(": ", 1)[0] for m in moved] == [f"{results}:{n}" for n in bad]
    assert "status must be 'ok' or 'failed'" in moved[2] and "not UTF-8" in moved[3] and "torn last line" in moved[5]
    assert results.read_bytes() == good[0] + good[1]
    side = [json.loads(line) for line in (tmp_path / REJECTED_NAME).read_text().splitlines()]
    assert [s["line"] for s in side] == list(bad)
    assert side[0]["raw"] == "[1, 2]" and side[3]["raw"] == "\\xff\\xfe{}" and side[5]["raw"] == '{"run_id": "x",'
    assert repair_records(results) == [] and read_records(results) == (kept, [])


def test_a_duplicated_run_id_is_one_record_and_one_row_in_the_report(tmp_path, recorded):
    from benchmark.report import build_report
    from benchmark.report.tables import load_frame
    out = copy_of(recorded, tmp_path)
    results = out / "results.jsonl"
    first = json.loads(results.read_text().splitlines()[0])
    rerun = {**first, "metrics": {**first["metrics"], "nDCG@10": 0.123}}
    append_records(results, [rerun])                            # the same run_id, recorded again
    assert collections.Counter(run_ids(results))[first["run_id"]] == 2
    kept, problems = read_records(results)
    assert problems == [] and len(kept) == 2
    frame = load_frame(kept, out)
    assert len(frame) == 2 and frame.loc[frame["method"] == first["method"], "nDCG@10"].tolist() == [0.123]
    build_report(out)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["records"] == 2 and summary["problems"] == []
    assert "0.123" in (out / "leaderboard.md").read_text()


# --- disk full ---------------------------------------------------------------------------------------------------

def fail_writes_to(monkeypatch, target: Path, err: int = errno.ENOSPC, after: int = 100) -> None:
    """``os.write`` to ``target`` writes its first ``after`` bytes, then raises OSError(err) (other files: real)."""
    real = os.write

    def write(fd, data):
        if os.fstat(fd).st_ino == target.stat().st_ino:
            real(fd, bytes(data[:after]))
            raise OSError(err, os.strerror(err))
        return real(fd, data)

    monkeypatch.setattr(records.os, "write", write)


def test_enospc_mid_append_leaves_the_file_byte_identical(tmp_path, recorded, monkeypatch):
    results = tmp_path / "results.jsonl"
    good = (recorded / "results.jsonl").read_bytes().splitlines(keepends=True)
    recs = [json.loads(line) for line in good]
    for existing in (good[0], good[0] + good[1][:40]):        # a clean file, and one ending in a torn tail
        results.write_bytes(existing)
        fail_writes_to(monkeypatch, results)
        with pytest.raises(RecordWriteError) as exc:
            append_records(results, recs)
        assert exc.value.errno == errno.ENOSPC
        assert str(exc.value).endswith(f"appending 2 line(s) to {results} failed: No space left on device; the file "
                                       f"was truncated back to its {len(existing)} bytes (nothing of these lines was "
                                       f"kept)")
        assert results.read_bytes() == existing
        monkeypatch.undo()
    results.write_bytes(good[0])
    monkeypatch.setattr(records.os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    with pytest.raises(RecordWriteError, match="I/O error"):
        append_records(results, recs[1:])
    monkeypatch.undo()
    assert results.read_bytes() == good[0]                    # written, fsync failed: taken back too


def test_enospc_during_a_run_is_one_line_exit_3_and_resumes(tmp_path, recorded, monkeypatch, capsys):
    monkeypatch.setenv("VQBENCH_DATA_DIR", str(tmp_path / "cache"))
    out = copy_of(recorded, tmp_path)
    results = out / "results.jsonl"
    first = results.read_bytes().splitlines(keepends=True)[0]
    results.write_bytes(first)                                # flat recorded; faiss-pq is to be written
    fail_writes_to(monkeypatch, results)
    code = cli.main([*TWO, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 3
    assert error_lines(err) == [f"error: appending 1 line(s) to {results} failed: No space left on "
                                f"device; the file was truncated back to its {len(first)} bytes (nothing of these "
                                f"lines was kept) [ENOSPC]"]
    assert f"resume with: python run_benchmark.py {' '.join(TWO)} --out {out}" in err
    assert results.read_bytes() == first and not (out / LOCK_NAME).exists()
    monkeypatch.undo()


def test_a_failed_atomic_write_leaves_no_temp_file_and_the_target_as_it_was(tmp_path, monkeypatch):
    target = tmp_path / "per_query" / "x.json"
    write_bytes(target, b"old")
    target.chmod(0o640)
    monkeypatch.setattr("benchmark._io.os.fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    with pytest.raises(OSError) as exc:
        write_bytes(target, b"new" * 1000)
    monkeypatch.undo()
    assert exc.value.errno == errno.ENOSPC and exc.value.filename == str(target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["x.json"] and target.read_bytes() == b"old"
    write_bytes(target, b"new")
    assert target.read_bytes() == b"new" and target.stat().st_mode & 0o777 == 0o640   # permissions kept


def _can_mount_tmpfs(where: Path) -> bool:
    if shutil.which("unshare") is None:
        return False
    where.mkdir(exist_ok=True)
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {where}"],
                           capture_output=True, timeout=60)
    return probe.returncode == 0


FILL = """
import json, os, sys
from pathlib import Path
from benchmark._io import write_bytes
from benchmark.records import RecordWriteError, append_records
rec = json.loads(sys.argv[2])
results, n = Path(sys.argv[1]) / "results.jsonl", 0
while True:
    before = results.read_bytes() if results.exists() else b""
    try:
        append_records(results, [{**rec, "run_id": f"{n}-{i}", "pad": "x" * 3000} for i in range(3)])
    except RecordWriteError as exc:
        failed = exc.errno
        break
    n += 1
try:
    write_bytes(Path(sys.argv[1]) / "sidecar.json", b"y" * 100000)
    sidecar = None
except OSError as err:
    sidecar = err.errno
print(json.dumps({"errno": failed, "identical": results.read_bytes() == before, "appends": n,
                  "torn": results.read_bytes()[-1:] != b"\\n", "sidecar": sidecar,
                  "files": sorted(os.listdir(sys.argv[1]))}))
"""


def test_a_real_full_tmpfs_leaves_no_torn_line_and_no_temp_file(tmp_path, recorded):
    """A 64 KiB tmpfs mounted in a private user+mount namespace (``unshare -rm``); skipped where that is not
    permitted (no unshare, user namespaces disabled)."""
    where = tmp_path / "small"
    if not _can_mount_tmpfs(where):
        pytest.skip("cannot mount a tmpfs here (unshare -rm not permitted)")
    rec = (recorded / "results.jsonl").read_text().splitlines()[0]
    script = f"mount -t tmpfs -o size=64k tmpfs {where} && exec {sys.executable} -c \"$0\" {where} \"$1\""
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script, FILL, rec], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["errno"] == errno.ENOSPC and result["appends"] >= 1
    assert result["identical"] and not result["torn"]
    assert result["sidecar"] == errno.ENOSPC and result["files"] == ["results.jsonl"]   # no temp file left
