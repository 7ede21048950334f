"""The training step's tensor functions (batch views, SSL) on CUDA tensors, checked without a GPU: FakeTensorMode gives
tensors a device but no values, so reading a value on the host (.item(), nonzero, a Python `if`
on a tensor: a wait for the GPU) raises, and a dispatch mode sees every host tensor an operation
takes with a device one."""

from types import SimpleNamespace

import numpy as np
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from s4al.data.device_augment import LABELLED, UNLABELLED
from s4al.data.augment import Augment
from s4al.ssl.alignment import ArgmaxAlignment, ProbabilityAlignment
from s4al.ssl.classmix import balanced_classmix_batch, classmix_batch
from s4al.ssl.losses import apply_annotations, confidence_ratio, supervised_loss, unsupervised_loss
from s4al.ssl.mean_teacher import pseudo_labels_from_probs

# index_put copies its values to the device, a host scalar too (the GPU's queue waits for that copy);
# elementwise operations read a 0-dim host tensor as a scalar argument, and copies are meant as such
INDEX_PUTS = (torch.ops.aten.index_put_.default, torch.ops.aten.index_put.default,
              torch.ops.aten._index_put_impl_.default)
COPIES = (torch.ops.aten._to_copy.default, torch.ops.aten.copy_.default)


class HostValues(TorchDispatchMode):
    """Records the operations that take a host tensor to the device, and the copies to the device
    from pageable memory (which may wait for the GPU's queue to drain); pinning is noted, not done."""

    def __init__(self):
        super().__init__()
        self.taken, self.pinned = [], set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._pin_memory.default:
            self.pinned.add(id(args[0]))
            return args[0]
        if func is torch.ops.aten.is_pinned.default:
            return id(args[0]) in self.pinned
        flat = [a for arg in (*args, *kwargs.values()) for a in (arg if isinstance(arg, (list, tuple)) else [arg])]
        tensors = [a for a in flat if isinstance(a, torch.Tensor)]
        host = [a for a in tensors if a.device.type == "cpu"]
        if host and len(host) < len(tensors) and func not in COPIES:
            if func in INDEX_PUTS or any(a.dim() > 0 for a in host):
                self.taken.append(str(func))
        to_device = func is torch.ops.aten._to_copy.default and torch.device(kwargs.get("device", "cpu")).type == "cuda"
        if to_device and args[0].device.type == "cpu" and id(args[0]) not in self.pinned:
            self.taken.append(f"{func} from pageable memory")
        return func(*args, **kwargs)


def test_the_batch_views_never_wait_for_a_gpu_nor_take_host_values():
    aug = Augment(crop_size=(6, 8))
    with FakeTensorMode(allow_non_fake_inputs=True):
        cache = SimpleNamespace(  # a DeviceCache: 3 images of 8x10, 2 labels, 2 answer slots
            device=torch.device("cuda"), size=(8, 10), rows=np.array, label_rows=np.array, slots=np.array,
            images=torch.zeros(3, 3, 8, 10, dtype=torch.uint8, device="cuda"),
            labels=torch.zeros(2, 8, 10, dtype=torch.uint8, device="cuda"),
            known_label=torch.zeros(2, 8, 10, dtype=torch.uint8, device="cuda"),
            known=torch.zeros(2, 8, 10, dtype=torch.bool, device="cuda"))
        with HostValues() as seen:
            for views in (LABELLED, UNLABELLED):  # the host's part, then the device's
                views.build(cache, [(0, 1), (2, 2)], aug)
    assert seen.taken == []


def test_the_ssl_step_never_waits_for_a_gpu_nor_sends_it_host_values():
    seeded = lambda: torch.Generator().manual_seed(0)  # noqa: E731 the step's CPU generators
    shares = torch.tensor([1.0, 2, 3, 4, 5])
    aligners = [ArgmaxAlignment(shares, estimate_steps=2), ProbabilityAlignment(shares)]  # made on the host
    n, c, h, w = 2, 5, 8, 8
    with FakeTensorMode(allow_non_fake_inputs=True):
        images = torch.rand(n, 3, h, w, device="cuda")
        labels = torch.randint(0, c, (n, h, w), device="cuda")
        confidence = torch.rand(n, h, w, device="cuda")
        logits = torch.randn(n, c, h, w, device="cuda")
        valid = torch.ones(n, h, w, dtype=torch.bool, device="cuda")
        head, tail = torch.tensor([0, 1], device="cuda"), torch.tensor([2, 3, 4], device="cuda")
        probs = logits.softmax(1)
        for aligner in aligners:  # the first update takes the state to the device, once a cycle
            aligner.update(probs, valid)
        with HostValues() as seen:
            for aligner in aligners:  # the estimate's last update fixes the target
                aligner.update(probs, valid)
                aligner.update(probs, valid)
                aligner(probs)
            pseudo, conf = apply_annotations(*pseudo_labels_from_probs(probs), valid, labels.to(torch.uint8))
            classmix_batch(images, pseudo, conf, seeded())
            balanced_classmix_batch(images, pseudo, conf, images, labels, confidence, head, tail, 1, 1, seeded())
            eta = confidence_ratio(conf, valid)
            for normalised in (False, True):
                unsupervised_loss(logits, pseudo, conf, eta, True, class_normalised=normalised)
            supervised_loss(logits, labels)
    assert seen.taken == []  # Balanced ClassMix's `table[ids] = True` sent True from the host every step
