"""The shared local training loop: FedProx's proximal term and seeded data order."""

import torch
from torch.utils.data import TensorDataset

from fedalign.models import build_model
from fedalign.training import TrainConfig, evaluate, seeded_loader, train


def _data(n=256):
    gen = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 1, 8, 8, generator=gen), torch.randint(0, 10, (n,), generator=gen))


def _distance(a, b):
    return sum(float((x - y).pow(2).sum()) for x, y in zip(a.parameters(), b.parameters())) ** 0.5


def test_proximal_term_keeps_the_model_near_its_start():
    data = _data()
    start = build_model("mlp", (1, 8, 8), 10, seed=0)
    drift = {}
    for mu in (0.0, 10.0):
        model = build_model("mlp", (1, 8, 8), 10, seed=0)
        train(model, seeded_loader(data, 32, seed=1), TrainConfig(lr=0.1, epochs=3, proximal_mu=mu))
        drift[mu] = _distance(model, start)
    assert drift[10.0] < 0.5 * drift[0.0]


def test_same_seed_same_model_different_seed_different_model():
    data = _data()
    models = []
    for seed in (1, 1, 2):
        model = build_model("mlp", (1, 8, 8), 10, seed=0)
        train(model, seeded_loader(data, 32, seed=seed), TrainConfig(epochs=1))
        models.append(model)
    assert _distance(models[0], models[1]) == 0.0
    assert _distance(models[0], models[2]) > 0.0


def test_evaluate_reports_loss_and_accuracy():
    data = _data(64)
    model = build_model("mlp", (1, 8, 8), 10, seed=0)
    loss, accuracy = evaluate(model, seeded_loader(data, 16, seed=0, shuffle=False))
    assert 1.5 < loss < 3.5 and 0.0 <= accuracy <= 1.0
