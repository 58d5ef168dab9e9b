"""The Ray backend on a real local Ray cluster that these tests start and stop themselves:
a search through ``--address`` with 2 concurrent trials and early stopping, a worker killed
during a trial, a driver killed mid-search then resumed, a targeted search screened in
batches and retrained on the cluster, recorded as a local run records it, then resumed, and
a targeted search of a tiny language model."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import yaml
from conftest import (
    new_run_with_prepared,
    screening_trials,
    search_study,
    tiny_lm_study,
    tiny_study,
)

from autoprune import cli
from autoprune.reports.compare import outputs_of, split_of
from autoprune.reports.results import load_run
from autoprune.run.ledger import count_spent
from autoprune.run.propose import Proposer
from autoprune.run.rundir import RunDir
from autoprune.search.spec import load_study
from autoprune.workflow import run_search

RAY = str(Path(sys.executable).parent / "ray")
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Cluster:
    address: str
    temp_dir: str

    def processes(self) -> list[psutil.Process]:
        """The cluster's processes (those naming its temporary directory, and their
        children): what this test started, and nothing else."""
        found: set[psutil.Process] = set()
        for process in psutil.process_iter(["cmdline"]):
            try:
                if any(self.temp_dir in part for part in process.info["cmdline"] or []):
                    found.add(process)
                    found.update(process.children(recursive=True))
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return list(found)

    def trial_workers(self) -> list[psutil.Process]:
        """Worker processes running a Tune trial (titled ``ray::ImplicitFunc...``)."""
        workers = []
        for process in self.processes():
            try:
                if "ImplicitFunc" in " ".join(process.cmdline()):
                    workers.append(process)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return workers


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """``ray start --head`` on 127.0.0.1 with its own port and temporary directory."""
    temp_dir = tempfile.mkdtemp(prefix="apray", dir="/tmp")
    port = _free_port()
    subprocess.run(
        [
            RAY,
            "start",
            "--head",
            f"--port={port}",
            "--node-ip-address=127.0.0.1",
            "--num-cpus=2",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={temp_dir}",
        ],
        env=ENV,
        check=True,
        timeout=180,
        capture_output=True,
    )
    started = Cluster(f"127.0.0.1:{port}", temp_dir)
    try:
        yield started
    finally:
        processes = started.processes()
        for process in processes:
            process.terminate()
        _, alive = psutil.wait_procs(processes, timeout=5)
        for process in alive:
            process.kill()


def ray_study(study_file: Path, tmp_path: Path, **sections: dict) -> Path:
    data = yaml.safe_load(study_file.read_text())
    data["baseline"] = {"ratios": []}
    data["objectives"] = {"size": "prunable"}
    data["backend"] = {"name": "ray", "concurrent_trials": 2, "cpus_per_trial": 1, "max_retries": 1}
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    path = tmp_path / "ray_study.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def search(study: Path, out: Path, address: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "autoprune",
            "search",
            str(study),
            "--out",
            str(out),
            "--backend",
            "ray",
            "--address",
            address,
        ],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def start_one_at_a_time(
    cluster: Cluster, study_file: Path, run_dir: Path, tmp_path: Path, trials: int, steps: int
) -> tuple[Path, Path, subprocess.Popen]:
    """A search driver started on the cluster: ``trials`` trials of ``steps`` retraining
    steps, one at a time; returns the study file, the run directory and the driver."""
    study = ray_study(
        study_file,
        tmp_path,
        budget={"trials": trials},
        retrain={"steps": steps},
        backend={"concurrent_trials": 1},
    )
    out = new_run_with_prepared(run_dir, tmp_path)
    return study, out, search(study, out, cluster.address)


def finish(process: subprocess.Popen, timeout: float = 900) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-4000:]
    return output


def test_search_on_a_cluster_with_two_concurrent_trials_and_early_stopping(
    cluster: Cluster, study_file: Path, run_dir: Path, tmp_path: Path
) -> None:
    study = ray_study(
        study_file,
        tmp_path,
        budget={"trials": 4},
        retrain={"steps": 3},
        # keep 0.25: a trial reaching the rung after others continues only if it comes first
        # among them, so one is stopped whatever order the concurrent trials arrive in (at
        # 0.5, a run whose later arrivals each dominated or flanked the earlier ones stopped
        # none)
        early_stopping={"rungs": [1], "keep": 0.25, "min_trials": 2},
    )
    out = new_run_with_prepared(run_dir, tmp_path)
    output = finish(search(study, out, cluster.address))
    assert "2 at a time" in output
    optuna_study = search_study(out)
    assert count_spent(optuna_study) == 4
    trials = optuna_study.trials
    statuses = {t.user_attrs.get("status") for t in trials}
    assert statuses <= {"complete", "stopped", "outside_band"}
    stopped = [t for t in trials if t.user_attrs.get("status") == "stopped"]
    assert stopped, "early stopping stopped no trial"
    for trial in stopped:  # recorded as the local backend records a stopped trial
        attrs = trial.user_attrs
        assert trial.state.name == "PRUNED" and attrs["metric_test"] is None
        assert "1" in attrs["rung_points"] and attrs["stopped_at"] == 1
        assert attrs["size"]["prunable"] > 0 and 0 < attrs["ratio_prunable"] < 1
        assert 0 <= attrs["metric_search_before"] <= 1 and attrs["stage"] == "retrain"
    spans = sorted((t.datetime_start, t.datetime_complete) for t in trials)
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:], strict=False))
    run = load_run(out)
    front = run.front("search")
    assert not front.empty and set(front["status"]) == {"complete"}
    kept = {int(p.name.rsplit("_", 1)[1]) for p in (out / "checkpoints").iterdir()}
    assert kept == set(front["trial"])


def test_a_worker_killed_during_a_trial_is_retried(
    cluster: Cluster, study_file: Path, run_dir: Path, tmp_path: Path
) -> None:
    study, out, driver = start_one_at_a_time(cluster, study_file, run_dir, tmp_path, 2, 24)
    deadline = time.time() + 240
    killed = None
    while killed is None and time.time() < deadline and driver.poll() is None:
        workers = cluster.trial_workers()
        if workers:
            time.sleep(3)  # let it get into retraining
            workers[0].send_signal(signal.SIGKILL)
            killed = workers[0].pid
        time.sleep(0.5)
    assert killed is not None, "no trial worker appeared"
    finish(driver)
    optuna_study = search_study(out)
    assert count_spent(optuna_study) == 2
    hit = [t for t in optuna_study.trials if t.user_attrs.get("worker_failures")]
    assert hit, "the killed worker's trial was not seen failing"
    assert hit[0].user_attrs["status"] == "complete"  # retried (backend.max_retries: 1)


def test_a_killed_driver_resumes_without_losing_or_repeating_trials(
    cluster: Cluster, study_file: Path, run_dir: Path, tmp_path: Path
) -> None:
    study, out, driver = start_one_at_a_time(cluster, study_file, run_dir, tmp_path, 4, 6)
    deadline = time.time() + 240
    while time.time() < deadline and driver.poll() is None:
        log = out / "logs" / "search.log"  # read the log, not the storage it is creating
        if log.is_file() and re.search(r"search trial \d+ \(", log.read_text()):
            break
        time.sleep(1)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    before = {t.number: t.values for t in search_study(out).trials if t.state.name == "COMPLETE"}
    assert before, "the driver was killed before any trial finished"
    finish(search(study, out, cluster.address))
    optuna_study = search_study(out)
    assert count_spent(optuna_study) == 4
    numbers = [t.number for t in optuna_study.trials]
    assert len(numbers) == len(set(numbers))
    after = {t.number: t.values for t in optuna_study.trials if t.state.name == "COMPLETE"}
    assert all(after[n] == values for n, values in before.items())


def test_a_trial_that_raises_on_a_worker_reports_a_failure(
    monkeypatch, study_file: Path, run_dir: Path, tmp_path: Path
) -> None:
    """The trainable's failure report carries the searcher's metrics (as NaN), which Tune
    requires of every result, and the reason; the searcher records it as failed."""
    from autoprune.backends import ray as backend
    from autoprune.run.session import open_session

    reports: list[dict] = []
    monkeypatch.setattr(backend.tune, "report", lambda metrics, **_: reports.append(metrics))

    def broken(*args, **kwargs):
        raise RuntimeError("injected failure")

    monkeypatch.setattr(backend, "run_trial", broken)
    out = new_run_with_prepared(run_dir, tmp_path)
    spec = load_study(study_file, {"baseline.ratios": []})
    session = open_session(spec, RunDir(out))
    config = {"prune": session.space.extremes()[1].to_dict(), "number": 0}
    backend.run_trial_on_worker(config, session.prepared, session.settings, threads=1)
    (report,) = reports
    assert report["status"] == "failed" and "injected failure" in report["failure"]
    assert {backend.METRIC, backend.SIZE} <= set(report)
    proposer = Proposer(
        session.search, session.space, session.sizes, spec.objectives, session.settings
    )
    searcher = backend.StudySearcher(session.search, proposer.propose)
    suggested = searcher.suggest("tune-trial-1")
    searcher.on_trial_complete("tune-trial-1", result=report)
    searcher.on_trial_complete("tune-trial-1", result=report)  # Tune may repeat it: no effect
    recorded = session.search.study.trials[suggested["number"]]
    assert recorded.state.name == "FAIL" and recorded.user_attrs["status"] == "failed"
    assert "injected failure" in recorded.user_attrs["failure"]


TARGET = 0.5
SCREENING = {
    "fitness": "metric",  # coarse (accuracy on a few examples): ties, never float noise
    "candidates": 10,  # the 2 starts, then a generation of 8
    "offspring": 8,
    "schedule": [[4, 2], [8, 1]],
    "finalists": 1,
}


def screened(run: Path) -> list[tuple]:
    """Each screened candidate: its parameters, state, fitness (if it survived), fidelity
    and attribute names."""
    return [
        (t.params, t.state.name, t.values, t.user_attrs["fidelity"], set(t.user_attrs))
        for t in screening_trials(run, TARGET)
    ]


def retrained(run: Path) -> list[dict]:
    """The attributes of the search study's retrained trials, in order."""
    return [t.user_attrs for t in search_study(run).trials]


def test_a_targeted_search_screens_in_batches_and_retrains_on_a_cluster(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    """In this process (a driver connected to the cluster), to keep the test short."""
    import ray

    study = tiny_study(
        tmp_path / "study",
        controller={"name": "evo", "seed": 0, "options": {"swaps": 1}},
        objectives={"size": "prunable", "targets": [TARGET]},
        screening=SCREENING,
        backend={"name": "ray", "concurrent_trials": 2, "cpus_per_trial": 1, "max_retries": 1},
    )
    local, out = tmp_path / "local", tmp_path / "ray"
    assert cli.main(["-q", "search", str(study), "--out", str(local), "--backend", "local"]) == 0
    caplog.set_level(logging.INFO, logger="autoprune")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
    try:
        run_search(study, out)
        first = caplog.text
        caplog.clear()
        before = screening_trials(out, TARGET)
        ray_trials, local_trials = retrained(out), retrained(local)
        text = RunDir(out).study_file.read_text()  # resumed with one more generation
        RunDir(out).study_file.write_text(text.replace("candidates: 10", "candidates: 18"))
        run_search(out)
        second = caplog.text
    finally:
        ray.shutdown()

    # Screening: every candidate recorded as the local backend records it, and the same
    # candidates survive with the same fitnesses.
    assert screened(out)[: len(before)] == screened(local)
    assert {t.user_attrs["stage"] for t in before} == {"screen"}
    assert {t.user_attrs["fidelity"] for t in before} == {4.0, 8.0}  # where last scored
    batches = re.search(r"ray: (\d+) screening\(s\) in (\d+) remote call\(s\)", first)
    assert batches, first[-3000:]
    assert int(batches[2]) < SCREENING["candidates"] <= int(batches[1])

    # Retraining: the finalists and the baselines' allocations, as Tune trials, recorded as
    # the local backend records them.
    assert "2 at a time" in first
    assert [a["config"] for a in ray_trials] == [a["config"] for a in local_trials]
    for attrs, expected in zip(ray_trials, local_trials, strict=True):
        assert attrs["status"] == "complete" and attrs["target"] == TARGET
        assert attrs["stage"] == "retrain" and attrs["fidelity"] == expected["fidelity"]
        assert set(attrs) == set(expected)

    # Resumed: nothing recorded is screened or retrained again.
    after = screening_trials(out, TARGET)
    assert len(after) == 18
    assert [(t.params, t.values) for t in after[: len(before)]] == [
        (t.params, t.values) for t in before
    ]
    configs = [json.dumps(a["config"]) for a in retrained(out)]
    assert len(configs) == len(set(configs))
    assert configs[: len(ray_trials)] == [json.dumps(a["config"]) for a in ray_trials]
    assert f"{len(ray_trials)} already retrained" in second


def test_a_language_model_is_searched_on_a_cluster(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A decoder's targeted search, screened by KL on Ray workers and retrained as Tune
    trials, reads back as a local run does: every candidate at the target size, the
    finalists with their perplexities and origins, and the search's choice among them."""
    import ray

    study = tiny_lm_study(
        tmp_path / "study",
        controller={"name": "evo", "seed": 0, "options": {"swaps": 1}},
        objectives={"size": "prunable", "reference": 1000.0, "targets": [TARGET]},
        screening={**SCREENING, "fitness": "kl", "candidates": 6, "offspring": 4},
        backend={"name": "ray", "concurrent_trials": 2, "cpus_per_trial": 1, "max_retries": 1},
    )
    out = tmp_path / "ray"
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
    try:
        run_search(study, out)
    finally:
        ray.shutdown()
    candidates = screening_trials(out, TARGET)
    assert len(candidates) == 6
    assert {t.user_attrs["stage"] for t in candidates} == {"screen"}
    assert all(abs(t.user_attrs["ratio_prunable"] - TARGET) < 0.15 for t in candidates)
    run = load_run(out)
    finalists = run.complete("search")
    assert set(finalists["stage"]) == {"retrain"} and set(finalists["target"]) == {TARGET}
    assert (finalists["metric_test"] > 1).all() and (finalists["metric_search"] > 1).all()
    assert {"uniform", "global"} <= {o for origins in finalists["origins"] for o in origins}
    task, search = split_of(run, "search")
    for _, finalist in finalists.iterrows():  # what the choice reads came back from the workers
        outputs = outputs_of(run, finalist, "search")
        assert task.metric_of(outputs, search) == pytest.approx(finalist["metric_search"])
