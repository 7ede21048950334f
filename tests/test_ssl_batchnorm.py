import torch

from s4al.ssl.batchnorm import frozen_bn_statistics


def test_frozen_bn_statistics_normalises_with_the_batch_but_keeps_running_stats():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1), torch.nn.BatchNorm2d(2)).train()
    x = torch.randn(4, 1, 3, 3) * 5 + 3
    before = net[1].running_mean.clone(), net[1].running_var.clone()
    with frozen_bn_statistics(net):
        out = net(x)
    assert torch.equal(net[1].running_mean, before[0]) and torch.equal(net[1].running_var, before[1])
    assert out.mean(dim=(0, 2, 3)).abs().max() < 1e-5  # normalised with the batch's own statistics
    assert net[1].momentum == 0.1
    net(x)
    assert not torch.equal(net[1].running_mean, before[0])
