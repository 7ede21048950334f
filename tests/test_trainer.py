import copy
import gc
import math
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
import warnings
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import Counted, MixedSizes, needs_cuda, ssl_data, tiny_config
from s4al.data import build_dataset
from s4al.data.base import stops_left_to_the_main_process
from s4al.errors import S4alError, S4alWarning
from s4al.evaluate import evaluate
from s4al.seeding import derive_seed
from s4al.train import trainer as trainer_module
from s4al.train.batches import labelled_draws
from s4al.train.checkpoint import load_checkpoint, save_checkpoint
from s4al.data.device_cache import training_on_device
from s4al.train.trainer import Trainer, TrainingStopped
from s4al.train.data import TrainData


class Stop(Exception):
    pass


def recorder(steps: dict, stop_at: int | None = None, keys: tuple[str, ...] = ("loss/",)):
    def progress(record):
        if record["event"] == "step":
            steps[record["step"]] = {k: v for k, v in record.items() if k.startswith(keys)}
            if record["step"] == stop_at:
                raise Stop
    return progress


@pytest.mark.parametrize("learner", [
    {},
    {"distribution_alignment": "argmax", "class_normalised_confidence": True},
    {"distribution_alignment": "argmax", "alignment_target": "labelled_x_predicted"},
])
@pytest.mark.parametrize("fast", ["off", "on"])
def test_ssl_iteration_uses_every_loss_reads_them_when_due_and_resumes_bit_identically(tmp_path, fast, learner):
    cfg = tiny_config(ssl={"confidence_threshold": 0.0, **learner},  # eta = 1: every unsupervised loss is non-zero
                      train={"fast": fast, "device": "cpu"})
    data, val = ssl_data(cfg)
    read_at: dict = {}
    full: dict = {}
    record = recorder(full)

    def progress(info):
        if info["event"] == "step":
            read_at[info["step"]] = trainer.step  # the step the trainer had reached when it read the losses
        record(info)

    trainer = Trainer(cfg, data, val, tmp_path / "a", progress=progress)
    assert trainer.fast is (fast == "on") and not trainer.amp
    result = trainer.fit()
    # the fast path keeps the losses on the device until the epoch's end; the loader path reads each step
    assert read_at == ({1: 2, 2: 2, 3: 4, 4: 4} if fast == "on" else {1: 1, 2: 2, 3: 3, 4: 4})
    assert set(full[1]) == {"loss/sup"}  # cold start: supervised only
    assert set(full[3]) == {"loss/sup", "loss/unsup"}  # first SSL step: the replay buffer is empty
    assert set(full[4]) == {"loss/sup", "loss/unsup", "loss/replay"}  # then Balanced ClassMix replay
    assert all(math.isfinite(v) and v > 0 for losses in full.values() for v in losses.values())
    assert len(result.history) == 2

    interrupted: dict = {}
    # killed during step 3 (read after step 4 on the fast path), after the epoch-1 checkpoint
    with pytest.raises(Stop):
        Trainer(cfg, data, val, tmp_path / "b", progress=recorder(interrupted, stop_at=3)).fit()
    resumed: dict = {}
    result_b = Trainer(cfg, data, val, tmp_path / "b", progress=recorder(resumed)).fit()
    assert sorted(resumed) == [3, 4]
    assert resumed[3] == full[3] and resumed[4] == full[4]  # bit-identical losses
    for (name, a), b in zip(result.student.state_dict().items(), result_b.student.state_dict().values()):
        assert torch.equal(a, b), name


def stop_of(trainer: Trainer) -> KeyboardInterrupt | None:
    """What ends trainer.fit(): the interrupt, or None. Any KeyboardInterrupt is caught here, since
    one escaping a test would end the whole test session."""
    try:
        trainer.fit()
    except KeyboardInterrupt as err:
        return err
    return None


def interrupted_after(trainer: Trainer, step: int, signum: signal.Signals = signal.SIGINT) -> Trainer:
    """`trainer`, sending itself `signum` (SIGINT: as Ctrl-C would) as its step number `step` (from 1) ends."""
    train_step = trainer.train_step

    def step_then_interrupt(k, *batches):
        logs = train_step(k, *batches)
        if k + 1 == step:
            os.kill(os.getpid(), signum)
        return logs

    trainer.train_step = step_then_interrupt
    return trainer


@pytest.mark.parametrize("fast, signum", [("off", signal.SIGINT), ("on", signal.SIGTERM)])
def test_ctrl_c_or_sigterm_finishes_the_step_checkpoints_it_and_the_resumed_run_is_bit_identical(tmp_path, fast,
                                                                                                 signum):
    cfg = tiny_config(ssl={"confidence_threshold": 0.0}, train={"device": "cpu", "fast": fast})
    data, val = ssl_data(cfg)
    full: dict = {}
    result = Trainer(cfg, data, val, tmp_path / "a", progress=recorder(full)).fit()
    before: dict = {}

    def not_taken(*_):  # in place of SIGTERM's default, which would end the test session
        raise AssertionError("the stop was not taken by the trainer")

    found = signal.signal(signal.SIGTERM, not_taken)
    try:
        stopped = stop_of(interrupted_after(Trainer(cfg, data, val, tmp_path / "b", progress=recorder(before)), 3,
                                            signum))
        assert signal.getsignal(signal.SIGTERM) is not_taken  # both put back
    finally:
        signal.signal(signal.SIGTERM, found)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert isinstance(stopped, TrainingStopped) and stopped.signum == signum
    assert re.fullmatch(rf".*, cycle 0: stopped \({signum.name}\) after step 3 of 4, saved in .*cycle_0\.pt", str(stopped))
    assert load_checkpoint(tmp_path / "b" / "checkpoints" / "cycle_0.pt")["step"] == 3  # mid-epoch, not the epoch's 2
    after: dict = {}
    before_resume = load_checkpoint(tmp_path / "b" / "checkpoints" / "cycle_0.pt")["seconds"]
    started = time.perf_counter()
    result_b = Trainer(cfg, data, val, tmp_path / "b", progress=recorder(after)).fit()
    # the cycle's training time counts the stretch before the Ctrl-C too
    assert 0 < before_resume < result_b.seconds <= before_resume + time.perf_counter() - started
    assert before_resume < load_checkpoint(tmp_path / "b" / "checkpoints" / "cycle_0.pt")["seconds"] <= result_b.seconds
    assert sorted(before) == [1, 2, 3] and sorted(after) == [4] and after[4] == full[4]
    for (name, a), b in zip(result.teacher.state_dict().items(), result_b.teacher.state_dict().values()):
        assert torch.equal(a, b), name


def test_ctrl_c_after_the_last_step_still_stops_once_the_final_checkpoint_is_saved(tmp_path):
    cfg = tiny_config(train={"device": "cpu"})
    data, val = ssl_data(cfg)
    trainer = Trainer(cfg, data, val, tmp_path)
    batches = trainer.batches

    def batches_then_interrupt():  # Ctrl-C as the batches run out, after the last step's check
        yield from batches()
        os.kill(os.getpid(), signal.SIGINT)

    trainer.batches = batches_then_interrupt
    stopped = stop_of(trainer)
    assert isinstance(stopped, TrainingStopped) and "stopped (SIGINT) after step 4 of 4" in str(stopped)
    assert load_checkpoint(tmp_path / "checkpoints" / "cycle_0.pt")["step"] == 4


# A script, as the workers of a forkserver or spawn start method (Python 3.14's default) import the
# main module: the dataset's class is defined at its top, the run under its main guard.
STOPPED_BY_A_SIGNAL_TO_THE_GROUP = """
import os, signal, sys, time
sys.path.insert(0, {tests!r})
import torch.utils.data
from conftest import ssl_data, tiny_config
from s4al.data.synthetic import SyntheticStreets
from s4al.train.trainer import Trainer, TrainingStopped

FLAG = {flag!r}
STOP = signal.Signals({signum})


class StopOnARead(SyntheticStreets):
    def load_image(self, index):  # the first unlabelled image a worker reads after step 4: STOP once
        if torch.utils.data.get_worker_info() is not None and os.path.exists(FLAG + ".armed"):
            try:  # the main process has trained the batches ready, waits for this one
                os.rename(FLAG + ".armed", FLAG)
            except FileNotFoundError:  # the other worker took it first
                return super().load_image(index)
            with open(FLAG, "w") as f:  # under fork a worker would inherit the trainer's handler, else Python's
                f.write("ignored" if signal.getsignal(signal.SIGINT) is signal.SIG_IGN else "handled")
            time.sleep(3)
            os.killpg(0, STOP)
            time.sleep(0.5)
        return super().load_image(index)


def progress(info):
    if info["event"] == "step" and info["step"] == 4:
        open(FLAG + ".armed", "w").close()


if __name__ == "__main__":
    cfg = tiny_config(train={{"num_workers": 2, "fast": "off", "epochs": 10}})
    data, _ = ssl_data(cfg)
    data.dataset.__class__ = StopOnARead
    try:
        Trainer(cfg, data, None, {run!r}, progress=progress).fit()
    except TrainingStopped as stopped:
        print(stopped)
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["a terminal's Ctrl-C", "a scheduler's SIGTERM"])
def test_a_stop_reaching_the_loader_workers_too_still_checkpoints_the_step(tmp_path, signum):
    script = tmp_path / "stopped.py"
    script.write_text(STOPPED_BY_A_SIGNAL_TO_THE_GROUP.format(
        tests=os.path.dirname(__file__), run=str(tmp_path / "run"), flag=str(tmp_path / "interrupted"), signum=int(signum)))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                          start_new_session=True)  # its own process group: the signal reaches it and its workers
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "interrupted").read_text() == "ignored"
    stopped = re.search(rf"cycle 0: stopped \({signum.name}\) after step (\d+) of 20", done.stdout)
    assert stopped, done.stdout + done.stderr
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "cycle_0.pt")["step"] == int(stopped.group(1))


def started_worker(start, ready) -> None:  # a loader worker's life: started, then waiting for its main process
    start(0)
    ready.set()
    time.sleep(60)


@pytest.mark.skipif(not hasattr(signal, "sigwaitinfo"), reason="a signal's sender is learnt with sigwaitinfo")
def test_a_loader_worker_outlives_a_stop_sent_by_others_and_ends_at_its_main_processs_sigterm():
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, lambda *_: None)  # as a forked worker inherits them from training
    signal.signal(signal.SIGTERM, lambda *_: None)
    # started as under fork or forkserver: the worker's one thread, with the trainer's handlers of this process
    context = multiprocessing.get_context("fork")
    ready = context.Event()
    worker = context.Process(target=started_worker, args=(stops_left_to_the_main_process(), ready), daemon=True)
    worker.start()
    try:
        assert ready.wait(60)
        os.kill(worker.pid, signal.SIGINT)  # Ctrl-C's, from this process too
        subprocess.run([sys.executable, "-c", f"import os; os.kill({worker.pid}, {int(signal.SIGTERM)})"],
                       check=True)  # a scheduler's, from another process
        worker.join(1)
        assert worker.is_alive()
        worker.terminate()  # SIGTERM from this process, as the loader sends it to a worker that does not end
        worker.join(10)
        assert worker.exitcode == 0  # as torch's own handler ends a worker at its parent's SIGTERM
    finally:
        worker.kill()
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


# A main process that starts a loader worker and ends without a word, as a SIGKILL would end it.
ENDED_UNDER_ITS_WORKER = """
import multiprocessing, os, time
from s4al.data.base import stops_left_to_the_main_process


def life(start, ready):
    start(0)
    ready.set()
    time.sleep(60)


if __name__ == "__main__":
    context = multiprocessing.get_context("fork")
    ready = context.Event()
    worker = context.Process(target=life, args=(stops_left_to_the_main_process(), ready), daemon=True)
    worker.start()
    ready.wait(60)
    print(worker.pid, flush=True)
    os._exit(0)
"""


def ended(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not hasattr(signal, "sigwaitinfo") or not Path("/proc/self/status").exists(),
                    reason="a signal's sender is learnt with sigwaitinfo; processes are looked up in /proc")
def test_a_loader_worker_ends_soon_after_its_main_process_however_that_ended(tmp_path):
    script = tmp_path / "main.py"
    script.write_text(ENDED_UNDER_ITS_WORKER)
    with subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True) as main:
        worker = int(main.stdout.readline())  # not read to its end: the worker holds it open
        assert main.wait(60) == 0
    deadline = time.monotonic() + 5  # a second after the main process's end, at most
    while not ended(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ended(worker)


def test_a_cycle_checkpointed_on_other_processes_is_not_resumed_on_these(tmp_path):
    """train.batch_size is per process: the rest of a cycle trained on 2 processes must not go on
    with half its batches."""
    cfg = tiny_config()
    data, val = ssl_data(cfg)
    with pytest.raises(Stop):  # killed after the epoch-1 checkpoint
        Trainer(cfg, data, val, tmp_path, progress=recorder({}, stop_at=3)).fit()
    path = tmp_path / "checkpoints" / "cycle_0.pt"
    state = load_checkpoint(path)
    assert state["processes"] == 1 and state["step"] < state["total_steps"]
    save_checkpoint({**state, "processes": 8}, path)  # as 2 nodes of 4 torchrun processes would have saved it
    # the count in all, not per node: torchrun's --nproc_per_node 8 would be wrong on 2 nodes
    with pytest.raises(S4alError, match=f"{path}: trained on 8 processes, this run has 1; resume it on 8 processes "
                                        r"\(torchrun: --nnodes times --nproc_per_node\): .* To train the cycle anew on "
                                        r"1 process \(its 2 steps lost\), remove that file first"):
        Trainer(cfg, data, val, tmp_path).fit()
    path.unlink()
    assert Trainer(cfg, data, val, tmp_path).fit().history  # the cycle from its first step


def test_supervised_when_no_pool(tmp_path):
    cfg = tiny_config()
    train = build_dataset(cfg.dataset, "train", cfg.seed)
    steps: dict = {}
    Trainer(cfg, TrainData(train, labelled=list(range(len(train)))), None, tmp_path, progress=recorder(steps)).fit()
    assert sorted(steps) == [1, 2, 3, 4]  # 2 epochs of 2 steps
    assert all(set(losses) == {"loss/sup"} for losses in steps.values())


def test_each_step_trains_with_the_poly_rate_of_the_steps_before_it_and_the_configured_sgd(tmp_path):
    cfg = tiny_config(ssl={"enabled": False}, train={"lr": 0.02, "poly_power": 0.5, "epochs": 2, "iters_per_epoch": 2})
    train = build_dataset(cfg.dataset, "train", cfg.seed)
    rates: dict = {}
    trainer = Trainer(cfg, TrainData(train, labelled=list(range(len(train)))), None, tmp_path,
                      progress=lambda r: rates.update({r["step"]: r["lr"]}) if r["event"] == "step" else None)
    group = trainer.optimizer.param_groups[0]
    assert (group["momentum"], group["nesterov"], group["weight_decay"]) == (0.9, True, 0.0005)
    trainer.fit()
    # lr (1 - k / 4) ** 0.5 for the step after k of 4: 0.02, 0.02 * sqrt(3 / 4), 0.02 * sqrt(1 / 2), 0.02 / 2
    assert rates == pytest.approx({1: 0.02, 2: 0.017320508, 3: 0.014142136, 4: 0.01})


def teacher_sure_of_class_0(confidence_of):
    """A stand-in for the teacher's pass: class 0 at every pixel with probability
    confidence_of(n, h, w) (an (N, H, W) map), the other 8 classes sharing the rest alike."""
    def teacher_pass(images: torch.Tensor) -> torch.Tensor:
        n, _, h, w = images.shape
        sure = torch.as_tensor(confidence_of(n, h, w), dtype=torch.float32).expand(n, h, w)
        return torch.cat([sure[:, None], ((1 - sure) / 8)[:, None].expand(n, 8, h, w)], dim=1)
    return teacher_pass


@pytest.mark.parametrize("weighting", [True, False])
def test_ablation_switches_change_the_losses(tmp_path, weighting):
    """Without replay no replay loss. Weighted or not, eta (Eq. 4) is the share of pixels the teacher
    is more than 0.97 sure of: here the left half of each image (0.99; 0.6 on the right)."""
    cfg = tiny_config(ssl={"replay": False, "confidence_weighting": weighting, "confidence_threshold": 0.97,
                           "distribution_alignment": "off"},
                      train={"scale_range": [1.0, 1.0]})  # the crop is the image: no padding
    data, _ = ssl_data(cfg)
    steps: dict = {}
    trainer = Trainer(cfg, data, None, tmp_path, progress=recorder(steps, keys=("loss/", "eta/")))
    trainer.teacher_pass = teacher_sure_of_class_0(lambda n, h, w: torch.where(torch.arange(w) < w // 2, 0.99, 0.6))
    trainer.fit()
    assert sorted(steps) == [1, 2, 3, 4] and set(steps[4]) == {"loss/sup", "loss/unsup", "eta/unsup"}
    assert steps[3]["eta/unsup"] == steps[4]["eta/unsup"] == 0.5


def first_step_losses(tmp_path, teacher=None, **ssl) -> dict[str, float]:
    """The losses of step 0 of a fresh trainer of tiny_config with these ssl settings, its teacher's
    pass replaced by `teacher` if given."""
    cfg = tiny_config(ssl=ssl)
    trainer = Trainer(cfg, ssl_data(cfg)[0], None, tmp_path)
    if teacher is not None:
        trainer.teacher_pass = teacher
    return {k: v.item() for k, v in trainer.train_step(0, *next(trainer.batches())).items()}


@pytest.mark.parametrize("class_normalised, factor", [(False, 0.6), (True, 1.0)])
def test_confidence_weighting_weighs_each_pixels_loss_by_its_confidence_or_by_its_class_s_mean_share(
    tmp_path, class_normalised, factor
):
    """A teacher 0.6 sure of class 0 everywhere: each pixel's loss weighs 0.6, or, normalised by
    its class's mean confidence (0.6), 1. The supervised loss and eta stay as they were."""
    same = {"cold_start_epochs": 0, "confidence_threshold": 0.0, "distribution_alignment": "off"}
    teacher = teacher_sure_of_class_0(lambda n, h, w: 0.6)
    weighted = first_step_losses(tmp_path / "on", teacher, confidence_weighting=True,
                                 class_normalised_confidence=class_normalised, **same)
    plain = first_step_losses(tmp_path / "off", teacher, confidence_weighting=False, **same)
    assert weighted["loss/sup"] == plain["loss/sup"] and weighted["eta/unsup"] == plain["eta/unsup"] == 1.0
    # rel 1e-4: the class's mean confidence is a float32 sum of ~6000 pixels' (0.60003 here)
    assert weighted["loss/unsup"] == pytest.approx(factor * plain["loss/unsup"], rel=1e-4)


@pytest.mark.parametrize("cold_start_epochs, weight", [(1, 1.5), (0, 1.0)])
def test_the_supervised_loss_weighs_one_and_a_half_while_it_trains_alone(tmp_path, cold_start_epochs, weight):
    cfg = tiny_config(ssl={"cold_start_epochs": cold_start_epochs})
    trainer = Trainer(cfg, ssl_data(cfg)[0], None, tmp_path)
    labelled, unlabelled, replay = next(trainer.batches())
    assert (unlabelled is None) is (cold_start_epochs > 0)
    alone = copy.deepcopy(trainer.student).train()
    torch.manual_seed(derive_seed(cfg.seed, "step", trainer.cycle, 0))  # the step's dropout draws
    with torch.no_grad():
        cross_entropy = torch.nn.functional.cross_entropy(
            alone(labelled["image"]), labelled["label"].long(), ignore_index=255).item()
    logs = trainer.train_step(0, labelled, unlabelled, replay)
    assert logs["loss/sup"].item() == pytest.approx(weight * cross_entropy, rel=1e-5)


def test_pseudo_labels_are_the_teachers_argmax_the_annotations_where_known_and_void_outside_the_image(tmp_path):
    cfg = tiny_config(ssl={"distribution_alignment": "off"})
    trainer = Trainer(cfg, ssl_data(cfg)[0], None, tmp_path)
    probabilities = torch.tensor([[0.8, 0.3, 0.6], [0.2, 0.7, 0.4]]).view(1, 2, 1, 3)  # 2 classes, 1 x 3 pixels
    trainer.teacher_pass = lambda images: probabilities
    batch = {"weak": torch.zeros(1, 3, 1, 3),
             "known": torch.tensor([[[True, False, False]]]),  # pixel 0 annotated as class 1
             "known_label": torch.tensor([[[1, 255, 255]]], dtype=torch.uint8),
             "valid": torch.tensor([[[True, True, False]]])}  # pixel 2: padding beyond the image
    pseudo, confidence = trainer._pseudo_labels(batch)
    assert pseudo.tolist() == [[[1, 1, 255]]]
    assert confidence.flatten().tolist() == pytest.approx([1.0, 0.7, 0.6])


def test_evaluation_is_independent_of_batch_size():
    cfg = tiny_config()
    from s4al.model import build_model

    model = build_model(cfg.model, 9)
    val = build_dataset(cfg.dataset, "val", cfg.seed)
    one = evaluate(model, val, 1, torch.device("cpu"), fast="auto")
    four = evaluate(model, val, 4, torch.device("cpu"), fast="auto")
    assert one == four


@pytest.mark.parametrize("balanced, n_head, eta", [(False, 3, 0.0), (True, 0, 1.0), (True, 3, 0.0)])
def test_replay_pastes_half_the_replay_images_classes_or_with_balanced_classmix_n_head_head_classes(
    tmp_path, balanced, n_head, eta
):
    """The teacher says class 0 (a head class) everywhere, 0.99 sure on the unlabelled images and 0.5
    on the replayed ones, which it pseudo-labels in the same pass. eta of the replay mix is 0 where
    the replay image's class 0 covers the unlabelled one (plain ClassMix: half its 1 class, rounded
    up; Balanced ClassMix with 3 head classes), 1 where nothing is pasted (no head class asked)."""
    cfg = tiny_config(ssl={"balanced_classmix": balanced, "n_head": n_head, "cold_start_epochs": 0,
                           "balanced_from_epoch": 0, "distribution_alignment": "off"},
                      train={"scale_range": [1.0, 1.0]})
    trainer = Trainer(cfg, ssl_data(cfg)[0], None, tmp_path)
    assert trainer.head.tolist() == [1, 2, 0]
    trainer.teacher_pass = teacher_sure_of_class_0(lambda n, h, w: torch.tensor([0.99, 0.99, 0.5, 0.5])[:n, None, None])
    batches = trainer.batches()
    assert next(batches).replay is None  # step 0: the replay buffer is still empty
    logs = trainer.train_step(1, *next(batches))
    assert logs["eta/unsup"].item() == 1.0 and logs["eta/replay"].item() == eta


def teacher_painting(paint):
    """A stand-in for the teacher's pass: at each pixel the class `paint(n, h, w)` gives ((N, H, W)
    class ids and probabilities), the other 8 classes sharing the rest alike."""
    def teacher_pass(images: torch.Tensor) -> torch.Tensor:
        n, _, h, w = images.shape
        classes, sure = paint(n, h, w)
        probabilities = ((1 - sure) / 8)[:, None].expand(n, 9, h, w).clone()
        return probabilities.scatter_(1, classes[:, None], sure[:, None])
    return teacher_pass


def halves(n, h, w, left, right, left_sure, right_sure):
    """(N, H, W) classes `left` and `right` in an image's left and right halves, with their probabilities."""
    is_left = torch.arange(w).expand(n, h, w) < w // 2
    return (torch.where(is_left, left, right), torch.where(is_left, left_sure, right_sure).float())


def spied_student(trainer) -> list[torch.Tensor]:
    """The images of each student pass of `trainer` from now on, in order."""
    seen, passes = [], trainer.student_pass

    class Spy:
        def __call__(self, images, frozen=False):
            seen.append(images.clone())
            return passes(images, frozen)

        def backward(self, loss):
            passes.backward(loss)

    trainer.student_pass = Spy()
    return seen


NO_PADDING = {"scale_range": [1.0, 1.0]}  # the crop is the image


@pytest.mark.parametrize("classmix, eta", [(True, 0.75), (False, 0.5)])
def test_classmix_mixes_the_unlabelled_images_the_student_learns(tmp_path, classmix, eta):
    """Image 0 all class 0, 0.99 sure; image 1 half class 2, half class 3, 0.5 sure (below the 0.97 of eta).
    ClassMix pastes half of each image's classes, rounded up, onto the one before it: image 0 gets one
    of image 1's two halves (eta 1/2), image 1 the whole of image 0 (eta 1): 0.75; unmixed, 0.5."""
    cfg = tiny_config(ssl={"classmix": classmix, "replay": False, "cold_start_epochs": 0,
                           "distribution_alignment": "off"}, train=NO_PADDING)
    trainer = Trainer(cfg, ssl_data(cfg)[0], None, tmp_path)
    trainer.teacher_pass = teacher_painting(lambda n, h, w: (
        torch.cat([torch.zeros(1, h, w, dtype=torch.long), halves(1, h, w, 2, 3, 0.5, 0.5)[0]]),
        torch.tensor([0.99, 0.5])[:, None, None].expand(n, h, w)))
    assert trainer.train_step(0, *next(trainer.batches()))["eta/unsup"].item() == eta


def test_the_student_learns_the_strong_view_of_the_unlabelled_images(tmp_path):
    cfg = tiny_config(ssl={"classmix": False, "replay": False, "cold_start_epochs": 0},
                      train={**NO_PADDING, "color_jitter_p": 1.0})
    trainer = Trainer(cfg, ssl_data(cfg)[0], None, tmp_path)
    labelled, unlabelled, replay = next(trainer.batches())
    seen = spied_student(trainer)
    trainer.train_step(0, labelled, unlabelled, replay)
    assert len(seen) == 2 and torch.equal(seen[0], labelled["image"]) and torch.equal(seen[1], unlabelled["strong"])
    assert not torch.equal(unlabelled["strong"], unlabelled["weak"])  # the colour jitter tells them apart


def test_eta_counts_the_pixels_of_the_images_not_their_padding(tmp_path):
    """Scaled by half into a crop of their size, the images fill a quarter of it: a teacher 0.99 sure of
    their pixels (and 0.5 of the padding around them) is sure of all of the images (eta 1), not of a
    quarter of the crops."""
    cfg = tiny_config(ssl={"replay": False, "classmix": False, "cold_start_epochs": 0},
                      train={"scale_range": [0.5, 0.5]})
    with pytest.warns(S4alWarning, match="every crop is part padding"):
        trainer = Trainer(cfg, ssl_data(cfg)[0], None, tmp_path)
    labelled, unlabelled, replay = next(trainer.batches())
    assert unlabelled["valid"].float().mean().item() == 0.25
    trainer.teacher_pass = teacher_sure_of_class_0(lambda n, h, w: torch.where(unlabelled["valid"], 0.99, 0.5))
    assert trainer.train_step(0, labelled, unlabelled, replay)["eta/unsup"].item() == 1.0


def test_plain_classmix_pastes_half_of_each_replay_images_own_classes(tmp_path):
    """The unlabelled images all class 2, 0.99 sure; the replayed ones half class 0, half class 1, 0.5
    sure. Plain ClassMix onto them pastes one of a replay image's two classes: half of each image is
    below the 0.97 of eta, 0.5."""
    cfg = tiny_config(ssl={"balanced_classmix": False, "cold_start_epochs": 0, "balanced_from_epoch": 0,
                           "distribution_alignment": "off"}, train=NO_PADDING)
    trainer = Trainer(cfg, ssl_data(cfg)[0], None, tmp_path)

    def paint(n, h, w):  # the unlabelled images, then (from step 1) the replayed ones
        unlabelled = (torch.full((2, h, w), 2), torch.full((2, h, w), 0.99))
        replayed = halves(n - 2, h, w, 0, 1, 0.5, 0.5)
        return torch.cat([unlabelled[0], replayed[0]]), torch.cat([unlabelled[1], replayed[1]])

    trainer.teacher_pass = teacher_painting(paint)
    batches = trainer.batches()
    assert next(batches).replay is None  # step 0: the replay buffer is still empty
    logs = trainer.train_step(1, *next(batches))
    assert logs["eta/unsup"].item() == 1.0 and logs["eta/replay"].item() == 0.5


def test_the_teacher_follows_the_student_by_its_ramped_ema_after_each_step(tmp_path):
    """m_t = min(1 - 1 / (t + 1), momentum): the teacher is the student after step 0, halfway from its
    last weights to the student's after step 1."""
    cfg = tiny_config(ssl={"cold_start_epochs": 0})
    trainer = Trainer(cfg, ssl_data(cfg)[0], None, tmp_path)
    batches = trainer.batches()
    trainer.train_step(0, *next(batches))
    for teacher, student in zip(trainer.teacher.model.parameters(), trainer.student.parameters(), strict=True):
        assert torch.equal(teacher, student)
    before = [p.detach().clone() for p in trainer.teacher.model.parameters()]
    trainer.train_step(1, *next(batches))
    for old, teacher, student in zip(before, trainer.teacher.model.parameters(), trainer.student.parameters()):
        assert not torch.equal(old, student)
        torch.testing.assert_close(teacher, 0.5 * old + 0.5 * student)


def test_validation_scores_the_teacher(tmp_path):
    cfg = tiny_config()
    data, val = ssl_data(cfg)
    result = Trainer(cfg, data, val, tmp_path).fit()
    scores = {name: evaluate(model, val, 4, torch.device("cpu"), fast="off").as_dict(val.classes.names)["miou"]
              for name, model in (("teacher", result.teacher), ("student", result.student))}
    assert result.history[-1]["miou"] == scores["teacher"] != scores["student"]


def test_a_crop_larger_than_every_scaled_training_image_is_warned_about(tmp_path, recwarn):
    cfg = tiny_config(train={"crop_size": [48, 64], "scale_range": [0.5, 1.0]})  # 48x64 images: crops fit
    Trainer(cfg, ssl_data(cfg)[0], None, tmp_path / "fits")
    assert not [w for w in recwarn if issubclass(w.category, S4alWarning)]
    cfg = tiny_config(train={"crop_size": [40, 96], "scale_range": [0.5, 1.25]})  # 64 x 1.25 = 80 < 96
    with pytest.warns(S4alWarning, match=r"^train.crop_size 40x96 is larger than the training images scaled by 1.25 "
                                         r"\(train.scale_range\): every crop is part padding, which trains nothing; "
                                         r"set train.crop_size to at most 60x80, or null for whole images$"):
        Trainer(cfg, ssl_data(cfg)[0], None, tmp_path / "padded")


def test_the_teachers_ema_momentum_leaves_distribution_alignment_alone(tmp_path):
    """An ablation of the teacher's EMA changes nothing else: the aligner's running class shares
    keep their own momentum (0.99)."""
    for ema in (0.5, 0.999):
        cfg = tiny_config(ssl={"ema_momentum": ema, "distribution_alignment": "argmax"})
        trainer = Trainer(cfg, ssl_data(cfg)[0], None, tmp_path / str(ema))
        assert trainer.teacher.momentum == ema and trainer.alignment.momentum == 0.99


def test_alignment_target_counts_whole_images_and_head_tail_counts_regions_too(tmp_path):
    cfg = tiny_config()
    data, _ = ssl_data(cfg)
    pole = data.dataset.classes.names.index("pole")
    assert pole == 6
    whole = np.zeros(data.dataset.classes.num_classes)
    for i in data.labelled:
        whole += np.bincount(data.dataset.load(i).label.ravel(), minlength=256)[: len(whole)]
    # building 4746, road 3358, sky 2503 hold 10607 >= 80% of the 12168 pixels; then sidewalk 714,
    # car 295, tree 284, pole 143, pedestrian 84, sign 41
    assert whole.tolist() == [2503, 4746, 3358, 714, 284, 295, 143, 41, 84]
    assert Trainer(cfg, data, None, tmp_path / "whole").tail.tolist() == [3, 5, 4, 6, 8, 7]
    data.annotations = {5: [((0, 0, 20, 40), np.full((20, 40), pole, np.uint8))]}  # a bought region: pole only
    trainer = Trainer(cfg, data, None, tmp_path / "region")
    assert trainer.alignment.target.numpy() == pytest.approx(whole / whole.sum())
    # pole 143 + 800 = 943 overtakes sidewalk; 10607 is still >= 80% of the 12968 pixels
    assert trainer.head.tolist() == [1, 2, 0] and trainer.tail.tolist() == [6, 3, 5, 4, 8, 7]


def batchnorm_statistics(model: torch.nn.Module) -> list[torch.Tensor]:
    return [b.clone() for name, b in model.named_buffers() if name.endswith(("running_mean", "running_var"))]


@pytest.mark.parametrize("freeze", [True, False])
def test_running_statistics_come_from_the_labelled_pass_alone_when_frozen(tmp_path, freeze):
    cfg = tiny_config(ssl={"freeze_bn_on_unlabelled": freeze, "cold_start_epochs": 0})
    trainer = Trainer(cfg, ssl_data(cfg)[0], None, tmp_path)
    labelled, unlabelled, replay = next(trainer.batches())
    assert unlabelled is not None
    alone = copy.deepcopy(trainer.student).train()
    torch.manual_seed(derive_seed(cfg.seed, "step", trainer.cycle, 0))  # the step's dropout draws
    with torch.no_grad():
        alone(labelled["image"])  # the supervised pass of step 0, nothing else
    trainer.train_step(0, labelled, unlabelled, replay)
    after_step, after_labelled = batchnorm_statistics(trainer.student), batchnorm_statistics(alone)
    assert all(torch.equal(a, b) for a, b in zip(after_step, after_labelled)) is freeze


@pytest.mark.parametrize("device", [
    "cpu",
    pytest.param("cuda", marks=needs_cuda),
])
def test_loader_batches_are_page_locked_exactly_when_training_on_a_gpu(tmp_path, device):
    cfg = tiny_config(train={"device": device, "fast": "off"})
    trainer = Trainer(cfg, ssl_data(cfg)[0], None, tmp_path)
    with warnings.catch_warnings():
        # on a machine without a GPU, asking a loader to pin warns (and pins nothing): an error here
        warnings.filterwarnings("error", message=".*pin_memory.*")
        labelled, unlabelled = trainer.source.loaders(trainer.step)
        tensors = [*next(labelled)["labelled"].values(), *next(unlabelled)["unlabelled"].values()]
    assert len(tensors) == 7  # image, label; weak, strong, known_label, known, valid
    assert [t.is_pinned() for t in tensors] == [device == "cuda"] * len(tensors)


def test_partially_labelled_images_are_drawn_in_proportion_to_their_labelled_share(tmp_path):
    steps = 110
    identity = {"scale_range": [1.0, 1.0], "hflip_p": 0.0, "color_jitter_p": 0.0}  # crop = the image: no change
    cfg = tiny_config(ssl={"enabled": False}, train={"epochs": 1, "iters_per_epoch": steps, **identity})
    train = build_dataset(cfg.dataset, "train", cfg.seed)
    h, w = train.image_size(0)
    quarter = ((0, 0, h // 2, w // 2), np.zeros((h // 2, w // 2), np.uint8))
    eighth = ((0, 0, h // 4, w // 2), np.zeros((h // 4, w // 2), np.uint8))
    data = TrainData(train, labelled=[0], pool=[1, 2, 3], annotations={1: [quarter], 2: [eighth]})
    inputs = {i: torch.from_numpy(train.load(i).image).permute(2, 0, 1).float().div(255) for i in range(len(train))}
    drawn = []
    for batch in Trainer(cfg, data, None, tmp_path).batches():
        drawn += [next(i for i, x in inputs.items() if torch.equal(x, image)) for image in batch.labelled["image"]]
    # labelled shares 1, 1/4 and 1/8: image 0 is drawn 8 times as often as image 2, image 1 twice as often
    n, expected = len(drawn), {0: 8 / 11, 1: 2 / 11, 2: 1 / 11}
    assert n == steps * cfg.train.batch_size and set(drawn) == set(expected)  # image 3, unanswered, never
    for image, p in expected.items():
        assert abs(drawn.count(image) - n * p) <= 4 * math.sqrt(n * p * (1 - p)), (image, drawn.count(image))
    assert labelled_draws(train, [0, 1, 2], {1: [quarter], 2: [eighth]}, max_copies=4) == [0] * 4 + [1] + [2]
    regions_in_the_pool = TrainData(train, labelled=[0, 3], pool=[1, 2], annotations=data.annotations)  # SSL
    assert labelled_draws(train, *regions_in_the_pool.streams(ssl=True)[:2]) == [0, 3]


# ---- the fast path (train.fast), here on the CPU ----------------------------------------------------
def test_a_finished_training_resumed_builds_no_device_cache_and_returns_its_result(tmp_path):
    cfg = tiny_config(train={"fast": "on"})
    data, val = ssl_data(cfg)
    first = Trainer(cfg, data, val, tmp_path).fit()
    again = Trainer(cfg, data, val, tmp_path)
    assert load_checkpoint(again.checkpoint_path)["optimizer"] is None  # a finished cycle keeps no momentum

    def refuse(index):
        raise AssertionError(f"image {index} read by a training that has nothing left to do")

    for split in (data.dataset, val):
        split.load = split.load_image = refuse
    result = again.fit()
    assert again.step == again.total_steps and result.history == first.history


def test_fast_switch_auto_means_the_loader_path_on_a_cpu_and_the_fast_path_on_a_gpu(tmp_path):
    data, _ = ssl_data(tiny_config())
    auto = Trainer(tiny_config(train={"device": "cpu"}), data, None, tmp_path / "auto")
    assert not auto.fast and auto.read_every == 1 and auto.sgd_flags == {}
    # decided before anything touches the device: no GPU needed here
    assert training_on_device("auto", torch.device("cuda"), data.dataset, data.labelled, data.pool)
    assert not Trainer(tiny_config(train={"fast": "off"}), data, None, tmp_path / "off").fast
    on = Trainer(tiny_config(train={"fast": "on", "device": "cpu"}), data, None, tmp_path / "on")
    assert on.fast and not on.amp and on.sgd_flags == {}  # bf16 and fused SGD: CUDA only


def test_mixed_image_sizes_fall_back_to_the_loader_path_unless_fast_is_on(tmp_path):
    cfg = tiny_config(train={"fast": "on"})
    train = MixedSizes(build_dataset(cfg.dataset, "train", cfg.seed))
    data = TrainData(train, labelled=[0, 1, 2, 3], pool=list(range(4, len(train))))
    with pytest.raises(ValueError, match=r"train.fast is on: .*19 is 49x64 but .*0 is 48x64.*dataset.resize"):
        Trainer(cfg, data, None, tmp_path)
    with pytest.warns(UserWarning, match=r"train.fast is auto: training reads from loader workers: .*19 is 49x64"):
        assert not training_on_device("auto", torch.device("cuda"), train, data.labelled, data.pool)
    huge = Counted(train.base, size=(2049, 2048))  # one pixel row over WINDOWED_AUGMENT_PIXELS
    with pytest.warns(UserWarning, match=r"train.fast is auto: training reads from loader workers: images of "
                                         r"2049x2048 are over 4,194,304 pixels: the device path scales each "
                                         r"whole image for its sample, loader workers read only the window its crop "
                                         r"needs"):
        assert not training_on_device("auto", torch.device("cuda"), huge, data.labelled, data.pool)
    # without a crop each image trains at its own size: a batch of two sizes could not be stacked
    with pytest.raises(S4alError, match=r"19 is 49x64 but .*0 is 48x64: with train.crop_size null each image trains "
                                        r"at its own size, .* set train.crop_size .* or dataset.resize"):
        Trainer(tiny_config(train={"fast": "off", "crop_size": None}), data, None, tmp_path / "uncropped")


# ---- divergence ----------------------------------------------------------------------------------------
def finite_checkpoint(path) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=False)
    for network in ("student", "teacher"):
        for name, tensor in state[network].items():
            assert torch.isfinite(tensor.float()).all(), f"{network}.{name}"
    return state


@pytest.mark.parametrize("fast", ["off", "on"])
def test_divergence_stops_and_keeps_the_last_finite_checkpoint_unchanged(tmp_path, fast):
    # lr 1e6 with an epoch (and a checkpoint) after every step: step 1 is finite, the steps after explode
    cfg = tiny_config(ssl={"enabled": False}, train={"lr": 1e6, "epochs": 8, "iters_per_epoch": 1, "fast": fast})
    train = build_dataset(cfg.dataset, "train", cfg.seed)
    path = tmp_path / "checkpoints" / "cycle_0.pt"
    with pytest.raises(trainer_module.TrainingDiverged) as raised:
        Trainer(cfg, TrainData(train, labelled=list(range(8))), None, tmp_path).fit()
    kept = finite_checkpoint(path)
    message = str(raised.value)
    assert f"{tmp_path}, cycle 0: training diverged at step " in message
    diverged_at = int(message.split("diverged at step ")[1].split()[0])
    assert 1 <= kept["step"] == diverged_at - 1  # the step before: the last state that was finite
    assert f"the checkpoint {path} (step {kept['step']}) is the last finite state and was kept" in message
    assert "Try a lower train.lr (now 1e+06)" in message


@pytest.mark.parametrize("fast", ["off", "on"])
def test_a_non_finite_loss_in_the_first_epoch_writes_no_checkpoint_and_names_the_first_bad_step(tmp_path, fast):
    cfg = tiny_config(ssl={"enabled": False}, train={"lr": 1e6, "epochs": 2, "iters_per_epoch": 8, "fast": fast})
    train = build_dataset(cfg.dataset, "train", cfg.seed)
    steps: dict = {}
    with pytest.raises(trainer_module.TrainingDiverged, match="no checkpoint was written yet") as raised:
        Trainer(cfg, TrainData(train, labelled=list(range(8))), None, tmp_path, progress=recorder(steps)).fit()
    assert not (tmp_path / "checkpoints").exists()
    # every step before the reported one was finite and reported; the reported one was not
    assert all(math.isfinite(v) for losses in steps.values() for v in losses.values())
    assert f"diverged at step {max(steps) + 1} of 16: loss/sup is " in str(raised.value)


@pytest.mark.parametrize("fast", ["off", "on"])
def test_a_batchnorm_statistic_gone_infinite_is_divergence_though_every_loss_is_finite(tmp_path, fast):
    # training normalises by each batch's statistics, so the losses stay finite; evaluation and the
    # teacher read the running ones, which a checkpoint must not keep infinite
    cfg = tiny_config(ssl={"enabled": False}, train={"epochs": 2, "iters_per_epoch": 2, "fast": fast})
    train = build_dataset(cfg.dataset, "train", cfg.seed)
    steps: dict = {}
    trainer = Trainer(cfg, TrainData(train, labelled=list(range(8))), None, tmp_path, progress=recorder(steps))
    batchnorm = next(m for m in trainer.student.modules() if isinstance(m, torch.nn.BatchNorm2d))
    batchnorm.running_var[0] = float("inf")
    with pytest.raises(trainer_module.TrainingDiverged) as raised:
        trainer.fit()
    assert sorted(steps) == [1, 2] and all(math.isfinite(v) for losses in steps.values() for v in losses.values())
    assert str(raised.value).startswith(f"{tmp_path}, cycle 0: training diverged at step 2 of 4: the parameters or "
                                        "BatchNorm statistics are no longer finite; no checkpoint was written yet")
    assert not (tmp_path / "checkpoints").exists()


@needs_cuda
def test_fast_path_steps_on_a_gpu_never_wait_for_it(tmp_path):
    """Batches built on the device and whole SSL steps with replay under sync debug mode 'error':
    any operation that makes the host wait for the GPU inside a step raises."""
    cfg = tiny_config(ssl={"confidence_threshold": 0.0}, train={"device": "cuda", "epochs": 4})
    data, _ = ssl_data(cfg)
    trainer = Trainer(cfg, data, None, tmp_path)
    assert trainer.fast and trainer.amp and trainer.optimizer.param_groups[0]["fused"]
    trainer.step = cfg.train.iters_per_epoch  # SSL on; the replay buffer fills from here
    batches = trainer.batches()
    for k in range(2):  # warm-up: lazy initialisation, the aligner's state moved to the device once
        trainer.train_step(trainer.step + k, *next(batches))
    logs = []
    torch.cuda.set_sync_debug_mode("error")
    try:
        for k in range(2, 4):
            batch = next(batches)
            assert batch.replay is not None
            logs.append(trainer.train_step(trainer.step + k, *batch))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(math.isfinite(v.item()) for step in logs for v in step.values())
    assert batch.labelled["image"].is_cuda and batch.labelled["image"].dtype == torch.float32


@needs_cuda
def test_training_on_a_gpu_tunes_cudnn_for_itself_only(tmp_path, monkeypatch):
    cfg = tiny_config(train={"device": "cuda", "epochs": 1, "iters_per_epoch": 2})
    trainer = Trainer(cfg, ssl_data(cfg)[0], None, tmp_path)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    seen = []
    trainer.progress = lambda record: seen.append(torch.backends.cudnn.benchmark)
    trainer.fit()
    assert seen and all(seen) and torch.backends.cudnn.benchmark is False


def test_a_checkpoint_trained_on_other_labels_than_given_now_is_refused_saying_how_to_go_on(tmp_path):
    """Answers never change under a cycle that has begun training, so other labels mean a ledger put back
    from a backup: its checkpoint must not pass for a training on the labels given now."""
    cfg = tiny_config(train={"checkpoint_every": 1})
    data, val = ssl_data(cfg)
    box = (0, 0, 4, 4)
    answered = TrainData(data.dataset, data.labelled, data.pool, {5: [(box, np.full((4, 4), 1, np.uint8))]})
    Trainer(cfg, answered, val, tmp_path).fit()
    Trainer(cfg, answered, val, tmp_path).fit()  # the same labels: resumed, nothing to train
    otherwise = TrainData(data.dataset, data.labelled, data.pool, {5: [(box, np.full((4, 4), 2, np.uint8))]})
    fewer = TrainData(data.dataset, data.labelled[:3], [data.labelled[3], *data.pool])
    for labels, counts in ((otherwise, "as many now, answered otherwise"),
                           (fewer, "3 images labelled whole and 0 answered regions now")):
        with pytest.raises(S4alError, match=r"cycle_0.pt: trained on other labels than it is given now "
                                            rf"\(4 images labelled whole and 1 answered region then, {counts}\): .*"
                                            r"delete the checkpoint \(rm .*cycle_0.pt\) and resume"):
            Trainer(cfg, labels, val, tmp_path).fit()


def test_a_trainer_is_freed_as_soon_as_nothing_holds_it(tmp_path):
    """No reference cycle keeps a trainer for the cyclic collector: under torchrun its DDP wrapper must go
    before the command leaves the process group (one freed after it aborted a rank at exit)."""
    cfg = tiny_config(train={"device": "cpu", "epochs": 1})
    data, val = ssl_data(cfg)
    gc.collect()
    gc.disable()
    try:
        trainer = Trainer(cfg, data, val, tmp_path)
        trainer.fit()
        freed = weakref.ref(trainer)
        del trainer
        assert freed() is None
    finally:
        gc.enable()
