"""Two CPU processes with gloo, as torchrun would start them on one node or two, against one process."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import yaml

from conftest import ssl_data, tiny_config
from s4al import distributed, errors, rank_checks
from s4al.acquisition.pool import CappedConfigWarning, choose_regions, score_cells
from s4al.active.cycle import ActiveLearningRun
from s4al.config import load_run_config, save_config
from s4al.train.checkpoint import load_trained_model
from s4al.seeding import derive_seed
from s4al.data import build_dataset, device_cache
from s4al.evaluate import evaluate
from s4al.metrics import Confusion
from s4al.model import build_model
from s4al.run_folder import RunFolder, RunFolderError
from s4al.train import trainer as trainer_module
from s4al.train.trainer import Trainer, TrainResult
from s4al.train.data import TrainData

WORLD = 2
REPO = Path(__file__).resolve().parents[1]
ACTIVE = {"cycles": 1, "region_size": 56}  # cells higher than the 48-pixel images: cut to them, with a warning


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join(rank: int, port: int, world: int = WORLD) -> torch.device:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    return distributed.setup_device("cpu")


def fixed_model(cfg):
    torch.manual_seed(0)
    return build_model(cfg.model, 9).eval()


def flat_state(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([t.detach().float().flatten() for t in module.state_dict().values()])


# Each rank's (predictions, labels): rank 0 counts (0, 0), (1, 1), (1, 2) and an ignored pixel; rank 1
# counts (2, 2), (2, 0), (0, 0). Rows are the truth, columns the prediction.
RANK_PIXELS = [(torch.tensor([[0, 1, 2, 2]]), torch.tensor([[0, 1, 255, 1]])),
               (torch.tensor([[2, 0, 0]]), torch.tensor([[2, 2, 0]]))]
SUMMED = [[2, 0, 0], [0, 1, 1], [1, 0, 1]]


def confusion_over_ranks(rank: int, port: int, out: str) -> None:
    join(rank, port)
    confusion = Confusion(3)
    confusion.update(*RANK_PIXELS[rank])
    first, second = confusion.matrix(), confusion.matrix()  # asking twice counts nothing twice
    torch.save({"first": first, "second": second}, os.path.join(out, f"confusion{rank}.pt"))
    torch.distributed.destroy_process_group()


def test_the_confusion_matrix_is_the_sum_of_the_ranks_counts(tmp_path):
    mp.start_processes(confusion_over_ranks, args=(free_port(), str(tmp_path)), nprocs=WORLD, start_method="spawn")
    results = [torch.load(tmp_path / f"confusion{r}.pt") for r in range(WORLD)]
    for result in results:
        assert result["first"].tolist() == result["second"].tolist() == SUMMED


def collectives(rank: int, port: int, out: str) -> None:
    device = join(rank, port)
    norm = torch.nn.BatchNorm2d(3)  # float statistics and an int64 step count
    norm.running_mean.fill_(rank + 1.0)
    norm.num_batches_tracked.fill_(10 * (rank + 1))
    distributed.broadcast_buffers(norm)
    device_cache.free_memory = lambda device: [10**12, 10**6][rank]  # rank 1's device is nearly full
    try:
        device_cache.check_fits(10**9, device, "the cache")
        fits = True
    except device_cache.DeviceMemoryShort:
        fits = False
    seen = {"mean": norm.running_mean.tolist(), "steps": norm.num_batches_tracked.item(),
            "least": distributed.all_min([7, 3][rank], device), "fits": fits,
            "problems": rank_checks.agreed([["a.png: bad", "c.png: bad"], ["a.png: bad", "b.png: bad"]][rank])}
    # one node's view of the run folder is a stale copy: its checkpoint holds other bytes, or none yet
    shared, copied = Path(out) / "shared.pt", Path(out) / f"view{rank}" / "cycle_0.pt"
    copied.parent.mkdir()
    copied.write_bytes(b"weights of step 9" if rank == 0 else b"weights of step 8")
    refusals = []
    for path in (shared, copied, Path(out) / ("shared.pt" if rank == 0 else "missing.pt")):
        try:
            rank_checks.read_the_same_checkpoint(path)
            refusals.append(None)
        except errors.S4alError as err:
            refusals.append(str(err).replace(str(path), "PATH"))
    seen["checkpoints"] = refusals
    try:  # a resume's --set given on one node alone
        rank_checks.given_the_same(None, [{}, {"active": {"cycles": 3}}][rank])
    except errors.S4alError as err:
        seen["settings"] = str(err).split(": every process")[0]
    torch.save(seen, os.path.join(out, f"collectives{rank}.pt"))
    torch.distributed.destroy_process_group()


def test_ranks_take_rank_0s_buffers_and_agree_a_cache_fits_only_where_it_fits_every_rank(tmp_path):
    (tmp_path / "shared.pt").write_bytes(b"weights of step 9")
    mp.start_processes(collectives, args=(free_port(), str(tmp_path)), nprocs=WORLD, start_method="spawn")
    stale = ("PATH: rank 1 {} (its node's view of the run folder is stale, or a copy): every node must see rank 0's "
             "run folder itself, on a shared file system")
    for rank in range(WORLD):
        seen = torch.load(tmp_path / f"collectives{rank}.pt")
        assert seen == {"mean": [1.0, 1.0, 1.0], "steps": 10, "least": 3, "fits": False,  # and a refusal everywhere
                        "problems": ["a.png: bad", "c.png: bad", "rank 1: b.png: bad"],
                        "checkpoints": [None, stale.format("reads other bytes there than rank 0"),
                                        stale.format("finds no file there")],
                        "settings": "rank 1 was given other settings than rank 0, active.cycles: 3 (rank 0: not given)"}


def mixing_seeds(run_dir) -> tuple[TrainResult, list[int]]:
    """Trains the tests' tiny config on 4 labelled images and the rest as the pool, recording the
    seed of the generator each ClassMix draws its classes with."""
    cfg = tiny_config(train={"device": "cpu"})
    train = build_dataset(cfg.dataset, "train", cfg.seed)
    data = TrainData(train, labelled=[0, 1, 2, 3], pool=list(range(4, len(train))))
    seeds, mix = [], trainer_module.classmix_batch

    def recorded(*args):
        seeds.append(args[-1].initial_seed())
        return mix(*args)

    trainer_module.classmix_batch = recorded
    try:
        return Trainer(cfg, data, None, run_dir, progress=lambda r: None).fit(), seeds
    finally:
        trainer_module.classmix_batch = mix


def train_and_evaluate(rank: int, port: int, out: str) -> None:
    device = join(rank, port)
    cfg = tiny_config(train={"device": "cpu"})
    val = build_dataset(cfg.dataset, "val", cfg.seed)
    scores = evaluate(fixed_model(cfg), val, 1, device, fast="auto")
    result, seeds = mixing_seeds(os.path.join(out, "run"))
    teachers = distributed.gather_objects(flat_state(result.teacher))
    # student BatchNorm statistics are per rank until DDP's next broadcast: compare parameters
    students = distributed.gather_objects(torch.cat([p.detach().flatten() for p in result.student.parameters()]))
    torch.save({"scores": scores, "teachers": teachers, "students": students, "mixing_seeds": seeds},
               os.path.join(out, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_agree_with_one_process(tmp_path):
    mp.start_processes(train_and_evaluate, args=(free_port(), str(tmp_path)), nprocs=WORLD, start_method="spawn")
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    cfg = tiny_config(train={"device": "cpu"})
    single = evaluate(fixed_model(cfg), build_dataset(cfg.dataset, "val", cfg.seed), 1, torch.device("cpu"), fast="auto")
    assert results[0]["scores"] == results[1]["scores"] == single  # confusion matrices summed, not averaged
    teachers, students = results[0]["teachers"], results[0]["students"]
    assert torch.equal(teachers[0], teachers[1]), "EMA teacher diverged across ranks"
    assert torch.equal(students[0], students[1]), "student parameters diverged across ranks"
    assert (tmp_path / "run" / "checkpoints" / "cycle_0.pt").exists()
    # each rank mixes with draws of its own, rank 0 with those of one process
    ranks = [r["mixing_seeds"] for r in results]
    assert len(ranks[0]) == len(ranks[1]) > 0 and not set(ranks[0]) & set(ranks[1])
    assert ranks[0] == mixing_seeds(tmp_path / "single")[1]


def three_ranks_train(rank: int, port: int, run_dir: str, stop_at: int | None) -> None:
    """Three epochs of two steps, a checkpoint after each; with `stop_at`, every rank ends right
    after the checkpoint of that step, as a job killed there."""
    join(rank, port, world=3)
    cfg = tiny_config(train={"device": "cpu", "epochs": 3, "checkpoint_every": 1})
    trainer = Trainer(cfg, *ssl_data(cfg), run_dir, progress=lambda r: None)
    save = trainer._save

    def saved_then_stopped():
        save()
        if trainer.step == stop_at:
            distributed.barrier()
            os._exit(0)

    trainer._save = saved_then_stopped
    trainer.fit()
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_a_cycle_resumed_on_three_ranks_trains_as_if_never_stopped(tmp_path):
    """Over three ranks a sum's rounding depends on the order DDP's buckets sum it in, which a
    wrapper's first step takes from its default layout: the resumed step, and so every later one,
    must be summed as in a run that went on."""
    for run, stop_at in (("straight", None), ("stopped", 2), ("stopped", None)):
        mp.start_processes(three_ranks_train, args=(free_port(), str(tmp_path / run), stop_at), nprocs=3,
                           start_method="spawn")
        if stop_at:
            assert torch.load(tmp_path / run / "checkpoints" / "cycle_0.pt", weights_only=True)["step"] == stop_at
    straight, resumed = (torch.load(tmp_path / run / "checkpoints" / "cycle_0.pt", weights_only=True)
                         for run in ("straight", "stopped"))
    for net in ("student", "teacher"):
        assert [key for key, value in straight[net].items() if not torch.equal(value, resumed[net][key])] == []
    assert straight["history"] == resumed["history"]


def active_learning(rank: int, port: int, out: str) -> None:
    join(rank, port)
    cfg = tiny_config(train={"device": "cpu"}, active=ACTIVE)
    run = ActiveLearningRun(os.path.join(out, "run"), cfg)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run.run()  # rank 1 holds rank 0's copy of the ledger, which has no writes
    capped = [str(w.message) for w in caught if issubclass(w.category, CappedConfigWarning)]
    asked = [(r.image_id, r.box, r.score) for r in run.ledger.regions(0)]
    seen = distributed.gather_objects({"ledger": type(run.ledger).__name__, "asked": asked, "capped": capped})
    if rank == 0:
        regions = [(r.image_id, r.box, r.score) for r in run.ledger.regions(0)]
        torch.save({"regions": regions, "ranks": seen}, os.path.join(out, "ranks.pt"))
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_ask_the_single_process_questions(tmp_path):
    mp.start_processes(active_learning, args=(free_port(), str(tmp_path)), nprocs=WORLD, start_method="spawn")
    result = torch.load(tmp_path / "ranks.pt", weights_only=False)
    assert [r["ledger"] for r in result["ranks"]] == ["Ledger", "LedgerCopy"]  # rank 0 alone opens the file
    assert result["ranks"][0]["asked"] == result["ranks"][1]["asked"] == result["regions"]
    # the same cells on every rank: the warning that they are cut to the 48-pixel-high images, once (by rank 0,
    # before cycle 0 trains; not again as it asks)
    assert [len(r["capped"]) for r in result["ranks"]] == [1, 0]
    assert "active.region_size 56 is larger than a side of" in result["ranks"][0]["capped"][0]
    single = ActiveLearningRun(tmp_path / "run")  # one process scores the pool with the same checkpoint
    model, cfg = load_trained_model(single.folder.checkpoint_path(0), "teacher")
    pool = [single.index_of[i] for i in (tmp_path / "run" / "splits" / "pool.txt").read_text().split()]
    cells = score_cells(model, single.train_set, pool, {}, cfg.active, torch.device("cpu"),
                        derive_seed(cfg.seed, "acquire", 0), fast="auto")
    sizes = {i: single.train_set.image_size(i) for i in pool}
    expected = [(single.ids[q.index], q.box, q.score) for q in choose_regions(cells, sizes, cfg.active)]
    assert [(i, b) for i, b, _ in result["regions"]] == [(i, b) for i, b, _ in expected]
    assert [s for *_, s in result["regions"]] == pytest.approx([s for *_, s in expected])
    assert len(single.summaries()) == 2


ERRORS_SEEN = """
import json, sys, time
import torch.distributed as dist
from s4al import distributed, errors
from datetime import timedelta
dist.init_process_group("gloo")
seen = {}
if distributed.rank() == 1:  # rank 0 is healthy, waiting at the barrier: rank 1's error is its own
    started = time.monotonic()
    seen["alone"] = errors.reports_error("rank 1 cannot read x.png", wait=timedelta(seconds=1))
    seen["waited"] = time.monotonic() - started
dist.barrier()
if distributed.rank() == 0:
    seen["refused"] = errors.reports_error("config.yaml: changed since the run was made")
dist.barrier()
if distributed.rank() == 1:
    seen["refused"] = errors.reports_error("config.yaml: changed since the run was made")
    seen["other"] = errors.reports_error("rank 1 cannot read y.png")
print(json.dumps({distributed.rank(): seen}), flush=True)
"""


def test_an_error_every_rank_meets_is_reported_by_rank_0_alone(tmp_path):
    script = tmp_path / "errors_seen.py"
    script.write_text(ERRORS_SEEN)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD),
                           "--standalone", str(script)], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-2000:]
    seen = {k: v for line in done.stdout.splitlines() if line.startswith("{") for k, v in json.loads(line).items()}
    assert seen["0"] == {"refused": True}
    assert seen["1"]["alone"] is True and seen["1"]["waited"] >= 1
    assert seen["1"]["refused"] is False  # the same message: rank 0 printed it
    assert seen["1"]["other"] is True


def test_one_process_reports_every_error():
    assert errors.reports_error("config.yaml: changed since the run was made")


def more_cycles(rank: int, port: int, out: str) -> None:
    """Resumes a finished run with one cycle more; rank 1 is the slower one, as a loaded node is."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    # a collective that waits longer than this fails the test instead of hanging it
    torch.distributed.init_process_group("gloo", timeout=timedelta(seconds=20))
    with ActiveLearningRun(os.path.join(out, "run"), overrides={"active": {"cycles": 1}}) as run:
        if rank == 1:
            time.sleep(1)  # rank 0 meanwhile reads the phases and reopens cycle 0, if nothing holds it back
        run.run()
    torch.distributed.destroy_process_group()


def test_a_run_given_more_cycles_resumes_on_two_ranks_when_one_lags(tmp_path):
    """Every rank must decide from the same ledger: a rank that read it after rank 0 reopened the
    last cycle skipped the barrier rank 0 waited at, and the ranks hung in different collectives."""
    cfg = tiny_config(train={"device": "cpu", "epochs": 1}, active={"cycles": 0, "final_cycle_epoch_multiplier": 1})
    with ActiveLearningRun(tmp_path / "run", cfg) as run:
        run.run()
        run.folder.unlock()  # the lock is this process's until it ends: the ranks below take it
    mp.start_processes(more_cycles, args=(free_port(), str(tmp_path)), nprocs=WORLD, start_method="spawn")
    with ActiveLearningRun(tmp_path / "run") as run:
        assert [run.phases.phase(c) for c in (0, 1)] == ["done", "done"]
        assert len(run.ledger.answered(0)) > 0
        assert [s["cycle"] for s in run.summaries()] == [0, 1]


def torchrun(*args: str, restart_count: int | None = None, **options) -> subprocess.CompletedProcess:
    """`torchrun --nproc_per_node 2 -m s4al.cli ARGS` (or one process, as torchrun restarts it)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD), "--standalone"]
    if restart_count is not None:
        launcher, env["TORCHELASTIC_RESTART_COUNT"] = [sys.executable], str(restart_count)
    return subprocess.run([*launcher, "-m", "s4al.cli", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120, **options)


def test_a_refusal_every_rank_meets_is_printed_once(tmp_path):
    missing = torchrun("run", "--resume", str(tmp_path / "nothing"))
    assert missing.returncode != 0
    assert (missing.stdout + missing.stderr).count(f"error: {tmp_path / 'nothing'}: no such run folder") == 1
    bad = torchrun("run", "--out", str(tmp_path / "run"), "--set", "train.epochs=many")
    assert bad.returncode != 0
    assert (bad.stdout + bad.stderr).count("train.epochs: Input should be a valid integer") == 1


def test_torchrun_restarting_a_run_goes_on_with_it(tmp_path):
    """torchrun --max-restarts runs the same command line again after a failure: `run --out` then
    continues the run it began, as `--resume` would; launched by hand it is still refused."""
    config = tmp_path / "tiny.yaml"
    save_config(tiny_config(train={"device": "cpu", "epochs": 1}, active={"cycles": 0}), config)
    run_dir = tmp_path / "run"
    with ActiveLearningRun(run_dir, load_run_config(config)) as run:  # the first attempt, ended after cycle 0
        run.run()
        run.folder.unlock()
    by_hand = torchrun("run", "--out", str(run_dir), "--config", str(config), restart_count=0)
    assert by_hand.returncode == 2 and "already holds a run; continue it with --resume" in by_hand.stderr
    again = torchrun("run", "--out", str(run_dir), "--config", str(config), "--quiet", restart_count=1)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "The run has finished its last cycle (0)" in again.stdout


def test_ranks_end_when_their_torchrun_is_killed(tmp_path):
    """torchrun starts its ranks in a session of their own: SIGKILL of the launcher reaches none of
    them, yet they end, and leave the run folder to its resume."""
    config = tmp_path / "long.yaml"
    save_config(tiny_config(train={"device": "cpu", "epochs": 1, "iters_per_epoch": 100_000}, active={"cycles": 0}),
                config)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    launcher = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD),
                                 "--standalone", "-m", "s4al.cli", "run", "--out", str(tmp_path / "run"), "--config",
                                 str(config), "--quiet"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    lock = tmp_path / "run" / ".lock"
    deadline = time.monotonic() + 90
    while not (lock.exists() and lock.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.2)
    launcher.kill()
    launcher.wait()
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            try:
                with RunFolder(tmp_path / "run").locked():  # rank 0 held it: ended, it leaves it to the resume
                    return
            except RunFolderError:
                time.sleep(0.2)
        pytest.fail(f"the run folder is still held after its torchrun was killed: {lock.read_text()}")
    finally:
        for rank in processes_running(str(tmp_path / "run")):  # left running, they would train for hours
            os.kill(rank, signal.SIGKILL)


def processes_running(argument: str) -> list[int]:
    """The processes whose command line holds `argument`."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and argument in (entry / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(entry.name))
        except OSError:  # ended meanwhile
            continue
    return found


def node(rank: int, endpoint: str, *args: str) -> subprocess.Popen:
    """One node of `torchrun --nnodes 2 --nproc_per_node 1` with the README's c10d rendezvous."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(rank),
                "--nproc_per_node", "1", "--rdzv_backend", "c10d", "--rdzv_endpoint", endpoint]
    return subprocess.Popen([*launcher, "-m", "s4al.cli", *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_a_refusal_every_rank_meets_is_printed_once_over_two_nodes(tmp_path):
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [node(k, endpoint, "run", "--resume", str(tmp_path / "nothing")) for k in (0, 1)]
    printed = "".join(n.communicate(timeout=120)[0] for n in nodes)
    assert [n.returncode for n in nodes] == [1, 1]
    assert printed.count(f"error: {tmp_path / 'nothing'}: no such run folder") == 1


def test_nodes_given_other_settings_or_reading_other_images_are_refused_before_anything_is_asked(tmp_path):
    """Each node may give its own dataset.root, but the images there must be the same, and every other
    setting too: pool scores are gathered by dataset position, and a rank given other cycles would
    wait in a collective the others never reach."""
    from test_own_data import add_images, make_dataset, own_config

    config = tmp_path / "own.yaml"
    save_config(own_config(make_dataset(tmp_path / "data")), config)
    shutil.copytree(tmp_path / "data", tmp_path / "copy")
    add_images(tmp_path / "copy", unmasked=["n1"])  # the copy on one node has an image more

    def on_two_nodes(out: str, *per_node: list[str]) -> str:
        endpoint = f"127.0.0.1:{free_port()}"
        nodes = [node(k, endpoint, "run", *per_node[k], *(("--out", str(tmp_path / out), "--config", str(config))
                                                          if out else ())) for k in (0, 1)]
        printed = "".join(n.communicate(timeout=120)[0] for n in nodes)
        assert all(n.returncode != 0 for n in nodes), printed[-2000:]
        return " ".join(printed.split())

    printed = on_two_nodes("cycles", ["--set", "active.cycles=1"], ["--set", "active.cycles=2"])
    assert len(re.findall(r"rank 1 was given other settings than rank 0, active\.cycles: [12] \(rank 0: [12]\): "
                          r"every process of a job runs the same command \(each node may set only dataset\.root, "
                          r"model\.weights, train\.device, train\.num_workers\)", printed)) == 1, printed[-2000:]
    assert not (tmp_path / "cycles").exists()

    printed = on_two_nodes("images", ["--set", f"dataset.root={tmp_path / 'data'}"],
                           ["--set", f"dataset.root={tmp_path / 'copy'}"])
    assert len(re.findall(r"split 'train': rank 1 reads other images than rank 0 \((9 against 8: n1 only on rank 1|8 "
                          r"against 9: n1 only on rank 0)\); every process of a job must read the same dataset", printed)) == 1
    assert not (tmp_path / "images" / "ledger.sqlite").exists()

    shutil.rmtree(tmp_path / "copy")
    shutil.copytree(tmp_path / "data", tmp_path / "copy")  # the same images, classes coloured otherwise
    road, car, sky = (dict(c) for c in yaml.safe_load((tmp_path / "data" / "classes.yaml").read_text())["classes"])
    road["color"], car["color"] = car["color"], road["color"]
    (tmp_path / "copy" / "classes.yaml").write_text(yaml.safe_dump({"classes": [road, car, sky]}))
    printed = on_two_nodes("classes", ["--set", f"dataset.root={tmp_path / 'data'}"],
                           ["--set", f"dataset.root={tmp_path / 'copy'}"])
    assert len(re.findall(r"rank 1 reads masks otherwise than rank 0, colours \[\[\d+, \d+, \d+\], .*\]\] \(rank 0: "
                          r"\[\[.*\]\]\): every node's dataset.root must hold the same class list", printed)) == 1, printed[-2000:]
    assert not (tmp_path / "classes" / "ledger.sqlite").exists()

    with ActiveLearningRun(tmp_path / "done", tiny_config(train={"device": "cpu", "epochs": 1},
                                                           active={"cycles": 0})) as run:
        run.run()
        run.folder.unlock()
    resume = ["--resume", str(tmp_path / "done"), "--set"]
    printed = on_two_nodes("", [*resume, "active.cycles=1"], [*resume, "active.cycles=2"])  # they waited without end
    assert len(re.findall(r"rank 1 was given other settings than rank 0, active\.cycles: [12] \(rank 0: [12]\)",
                          printed)) == 1, printed[-2000:]


def test_nodes_of_a_supervised_training_reading_other_labelled_images_are_refused_before_it_trains(tmp_path):
    from test_own_data import MASKED, make_dataset, own_config

    config = tmp_path / "own.yaml"
    save_config(own_config(make_dataset(tmp_path / "data")), config)
    shutil.copytree(tmp_path / "data", tmp_path / "copy")
    (tmp_path / "copy" / "masks" / f"{MASKED[0]}.png").unlink()  # the copy on one node lacks a mask
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [node(k, endpoint, "train", "--out", str(tmp_path / "full"), "--config", str(config), "--set",
                  f"dataset.root={tmp_path / root}") for k, root in enumerate(("data", "copy"))]
    printed = " ".join("".join(n.communicate(timeout=120)[0] for n in nodes).split())
    assert [n.returncode for n in nodes] == [1, 1], printed[-2000:]
    count = len(MASKED)
    assert len(re.findall(rf"train images with a label: rank 1 reads other images than rank 0 \({count - 1} against "
                          rf"{count}: {MASKED[0]} only on rank 0\)", printed)) == 1, printed[-2000:]
    assert not (tmp_path / "full" / "checkpoints").exists()


def test_nodes_scoring_a_checkpoint_with_other_options_are_refused(tmp_path):
    """Ranks share a split's images by batch position: with batches of 4 on one node and 2 on the
    other, some images would be scored twice and others not at all."""
    with ActiveLearningRun(tmp_path / "run", tiny_config(train={"device": "cpu", "epochs": 1},
                                                         active={"cycles": 0})) as run:
        run.run()
        checkpoint = str(run.folder.checkpoint_path(0))
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [node(k, endpoint, "evaluate", checkpoint, "--device", "cpu", "--batch-size", size)
             for k, size in enumerate(("4", "2"))]
    printed = " ".join("".join(n.communicate(timeout=120)[0] for n in nodes).split())
    assert [n.returncode for n in nodes] == [1, 1], printed[-2000:]
    assert printed.count("error: rank 1 was given other options than rank 0, --batch-size: 2 (rank 0: 4): every "
                         "process of a job runs the same command") == 1, printed[-2000:]


def finished_run(run_dir: Path) -> tuple[list, list, dict]:
    """What a run asked, what it measured per cycle, and its final teacher's weights."""
    with ActiveLearningRun(run_dir) as run:
        asked = [(r.image_id, r.box, r.score) for r in run.ledger.regions()]
        measured = [(s["cycle"], s["labelled_pixels"], s["val"]["miou"]) for s in run.summaries()]
        model, _ = load_trained_model(run.folder.checkpoint_path(run.final_cycle), "teacher")
    return asked, measured, model.state_dict()


@pytest.mark.slow
def test_two_nodes_of_one_process_run_what_one_node_of_two_runs(tmp_path):
    """The README's multi-node command line, as two nodes on this host: each node's only process
    has LOCAL_RANK 0, rank 0 is on whichever node the rendezvous makes first, the run folder is
    shared. The run asks, measures and trains the same as on one node of two processes, bit for bit."""
    config = tmp_path / "tiny.yaml"
    save_config(tiny_config(train={"device": "cpu", "epochs": 1}, active=ACTIVE), config)
    one_node = torchrun("run", "--out", str(tmp_path / "one_node"), "--config", str(config), "--quiet")
    assert one_node.returncode == 0, one_node.stderr[-2000:]
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [node(k, endpoint, "run", "--out", str(tmp_path / "two_nodes"), "--config", str(config), "--quiet")
             for k in (0, 1)]
    outputs = [n.communicate(timeout=180)[0] for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    (asked, measured, weights), (asked_2, measured_2, weights_2) = map(
        finished_run, (tmp_path / "one_node", tmp_path / "two_nodes"))
    assert asked and asked_2 == asked
    assert len(measured) == 2 and measured_2 == measured
    assert weights_2.keys() == weights.keys()
    assert all(torch.equal(weights_2[k], weights[k]) for k in weights)


def test_one_process_takes_the_gpu_its_device_names_and_a_torchrun_rank_its_local_ranks(monkeypatch):
    chosen = []  # as on a machine with 2 GPUs: the device is chosen, not used
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert distributed.setup_device("cuda:1") == torch.device("cuda", 1)
    assert distributed.setup_device("cuda") == torch.device("cuda", 0)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(distributed, "is_initialized", lambda: True)  # as once the process group is joined
    assert distributed.setup_device("cuda:0") == torch.device("cuda", 1)  # torchrun gives each rank its GPU
    assert chosen == [1, 0, 1]


@pytest.mark.parametrize("device, gpus, problem", [
    ("gpu7", 2, "device 'gpu7': not one of auto, cpu, cuda, cuda:N"),
    ("cuda", 0, "device 'cuda': this machine has no CUDA GPU that torch can use; use cpu or auto"),
    ("cuda:2", 2, "device 'cuda:2': GPU 2 asked for, this machine has 2 (cuda:0 to cuda:1)"),
])
def test_a_device_that_is_not_there_is_refused_naming_it(monkeypatch, device, gpus, problem):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(errors.S4alError, match=f"^{re.escape(problem)}$"):
        distributed.setup_device(device)
