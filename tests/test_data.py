import torch

from signvote.data import load


def test_logistic_data_follows_the_paper_recipe():
    data = load("logreg", 8005)
    assert data.train_x.shape == (8000, 20) and data.test_x.shape == (2000, 20)
    assert set(data.train_y.unique().tolist()) == {0, 1}
    assert data.train_y.dtype == torch.int64
    # standardised with the training statistics
    assert torch.allclose(data.train_x.mean(0), torch.zeros(20), atol=1e-5)
    assert torch.allclose(data.train_x.std(0, correction=0), torch.ones(20), atol=1e-4)
    # Toeplitz correlation 0.3 between neighbouring features, 0.09 two apart
    corr = torch.corrcoef(data.train_x.T.double())
    assert abs(float(corr.diagonal(1).mean()) - 0.3) < 0.02
    assert abs(float(corr.diagonal(2).mean()) - 0.09) < 0.02


def test_linear_data_is_standardised_and_seeded():
    a, b = load("linreg", 1), load("linreg", 1)
    assert a.task == "regression" and a.train_y.dtype == torch.float32
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert abs(float(a.train_y.mean())) < 1e-5
    assert not torch.equal(a.train_x, load("linreg", 2).train_x)
