"""Hessian spectrum against the exact Hessian of a small model; SLQ and Hutchinson consistency."""

import numpy as np
import pytest
import torch
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from tinydot.analysis.hessian import HessianOperator, HessianSpectrum, outlier_count, sample_batch
from tinydot.config import ModelConfig
from tinydot.errors import ConfigError, TinydotError
from tinydot.pruning import full_mask, prune
from tinydot.training import init_model

SMALL = ModelConfig(n_layers=1, d_model=4, d_mlp=8, max_len=40)  # 1,925 parameters


@pytest.fixture(scope="module")
def setup(train):
    model = init_model(SMALL, seed=0)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # move away from the near-symmetric initialisation
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=generator))
    short = train.subset(np.flatnonzero(train.lengths < 25)[:200])
    batch = sample_batch(short, SMALL, 6, seed=0)
    return model, batch


class MeanNLL(torch.nn.Module):
    """The training loss as a module, so functional_call can swap its parameters."""

    def __init__(self, model, batch):
        super().__init__()
        self.model, self.batch = model, batch

    def forward(self):
        return self.model.nll(*self.batch).sum() / int((self.batch[2][..., 2] >= 0).sum())


def exact_hessian(model, batch, mask=None):
    """torch.autograd.functional.hessian of the loss as a function of the (free) flat parameters."""
    import copy

    model = copy.deepcopy(model).double()
    names = [n for n, _ in model.named_parameters()]
    params = {n: p.detach() for n, p in model.named_parameters()}
    free = {n: (mask[n] if mask and n in mask else torch.ones_like(p, dtype=torch.bool)) for n, p in params.items()}
    loss = MeanNLL(model, batch)
    flat = torch.cat([params[n][free[n]] for n in names])

    def f(x):
        out, offset = {}, 0
        for n in names:
            k = int(free[n].sum())
            full = torch.zeros_like(params[n]).masked_scatter(free[n], x[offset: offset + k])
            out[f"model.{n}"] = full
            offset += k
        return functional_call(loss, out, ())

    with sdpa_kernel(SDPBackend.MATH):
        return torch.autograd.functional.hessian(f, flat, vectorize=True).numpy()


@pytest.fixture(scope="module")
def exact(setup):
    model, batch = setup
    return exact_hessian(model, batch)


def test_lanczos_top_eigenvalues_match_the_exact_hessian(setup, exact):
    model, batch = setup
    operator = HessianOperator(model, batch)
    assert operator.dim == sum(p.numel() for p in model.parameters()) <= 3000
    spectrum = HessianSpectrum(top_k=5, lanczos_steps=80, trace_samples=2, density_runs=1).fit(operator, density=False)
    reference = np.sort(np.linalg.eigvalsh(exact))[::-1][:5]
    assert np.allclose(spectrum.eigenvalues_, reference, rtol=1e-3)


def test_hessian_vector_product_matches_the_exact_hessian(setup, exact):
    model, batch = setup
    operator = HessianOperator(model, batch)
    v = np.random.default_rng(1).standard_normal(operator.dim)
    assert np.allclose(operator.matvec(v).numpy(), exact @ v, rtol=1e-8, atol=1e-10)


def test_slq_density_and_traces_agree(setup, exact):
    model, batch = setup
    operator = HessianOperator(model, batch)
    spectrum = HessianSpectrum(top_k=3, lanczos_steps=30, trace_samples=80, density_runs=8,
                               density_steps=30, seed=3).fit(operator)
    assert np.allclose(spectrum.density_weights_.sum(axis=1), 1.0)  # each run is a probability measure
    grid = np.linspace(spectrum.density_nodes_.min() - 1, spectrum.density_nodes_.max() + 1, 20001)
    from scipy.integrate import trapezoid

    assert trapezoid(spectrum.density(grid, sigma=0.05), grid) == pytest.approx(1.0, abs=1e-3)
    true_trace = np.trace(exact)
    slq, slq_se = spectrum.density_trace()
    combined = np.hypot(spectrum.trace_stderr_, slq_se)
    assert abs(slq - spectrum.trace_) < 3 * combined  # first moment vs Hutchinson, within error bars
    assert abs(spectrum.trace_ - true_trace) < 3 * spectrum.trace_stderr_


def test_slq_bulk_shape_matches_the_exact_spectrum(setup, exact):
    model, batch = setup
    spectrum = HessianSpectrum(top_k=3, lanczos_steps=30, density_runs=8, density_steps=30, seed=5).fit(
        HessianOperator(model, batch))
    eigenvalues = np.linalg.eigvalsh(exact)
    assert spectrum.density_mass(-np.inf, np.inf) == pytest.approx(1.0)
    # the second moment is a quadratic form z^T H^2 z / z^T z, exact in 30 Lanczos steps up to the
    # probe's randomness (relative sd ~ sqrt(2 / 1925) per run): the spread is within a few percent
    assert spectrum.density_spread() == pytest.approx(eigenvalues.std(), rel=0.05)
    # most of this Hessian's eigenvalues lie near zero; SLQ sees that share (coarsely: few nodes)
    near = 0.01 * eigenvalues.max()
    assert spectrum.density_mass(-near, near) == pytest.approx(np.mean(np.abs(eigenvalues) <= near), abs=0.1)


def test_pruned_model_spectrum_is_over_surviving_weights_only(setup):
    model, batch = setup
    mask = prune(model, full_mask(model), 0.5)
    operator = HessianOperator(model, batch, mask)
    kept = sum(int(m.sum()) for m in mask.values())
    others = sum(p.numel() for n, p in model.named_parameters() if n not in mask)
    assert operator.dim == kept + others
    restricted = exact_hessian(model, batch, mask)
    spectrum = HessianSpectrum(top_k=4, lanczos_steps=60, trace_samples=2, density_runs=1).fit(operator, density=False)
    reference = np.sort(np.linalg.eigvalsh(restricted))[::-1][:4]
    assert np.allclose(spectrum.eigenvalues_, reference, rtol=1e-3)


def test_a_lottery_level_is_analysed_under_its_mask_given_as_folder_or_file(data_dir, tmp_path):
    # the level's model.safetensors given alone once dropped the mask beside it: every coordinate free
    from tinydot.checkpoint import save_model
    from tinydot.pruning.mask import save_mask
    from tinydot.runs import write_hessian

    model = init_model(ModelConfig(n_layers=1, d_model=16, d_mlp=32), 0)
    mask = prune(model, full_mask(model), 0.5)
    level = tmp_path / "level_1"
    save_model(level / "model.safetensors", model)
    save_mask(level / "mask.safetensors", mask)
    kept = sum(int(m.sum()) for m in mask.values()) + sum(
        p.numel() for n, p in model.named_parameters() if n not in mask)
    settings = dict(top_k=2, density=False, sequences=4, lanczos_steps=6, trace_samples=2, data_dir=data_dir,
                    progress=False)
    by_folder = write_hessian(level, tmp_path / "h_folder", **settings)
    by_file = write_hessian(level / "model.safetensors", tmp_path / "h_file", **settings)
    assert by_folder["coordinates"] == by_file["coordinates"] == kept < model.num_params()
    assert by_folder["pruned"] and by_file["pruned"]
    assert by_folder["top_eigenvalues"] == by_file["top_eigenvalues"]
    # `tinydot report` redraws a hessian folder, and names one that lost its summary as unfinished
    from tinydot.report.pages import write_report

    assert [p.name for p in write_report(tmp_path / "h_file")] == ["spectrum.png"]  # density=False
    (tmp_path / "h_file" / "summary.json").unlink()
    with pytest.raises(TinydotError, match="h_file holds an unfinished hessian run: run the command that made it"):
        write_report(tmp_path / "h_file")


def test_outlier_rule():
    assert outlier_count([50.0, 40.0, 30.0, 3.0, 2.5, 2.0]) == 3
    assert outlier_count([5.0, 4.0, 3.0, 2.5]) == 0  # no gap of 2x
    assert outlier_count([-1.0, -2.0]) == 0


def test_bad_arguments(setup):
    model, batch = setup
    operator = HessianOperator(model, batch)
    with pytest.raises(ConfigError, match="lanczos_steps"):
        HessianSpectrum(top_k=10, lanczos_steps=5).fit(operator)
    with pytest.raises(ConfigError, match="^top_k must be between 1 and 500, got 0$"):
        HessianSpectrum(top_k=0).fit(operator)
    with pytest.raises(ConfigError, match="^top_k must be between 1 and 500, got 600$"):  # not "raise lanczos_steps"
        HessianSpectrum(top_k=600, lanczos_steps=60).check()
    with pytest.raises(ConfigError, match=f"^top_k must be at most the {operator.dim} coordinates"):
        HessianSpectrum(top_k=operator.dim + 1, lanczos_steps=operator.dim + 1).fit(operator)
    for settings, message in (({"trace_samples": 1}, "^trace_samples must be >= 2, got 1$"),  # which one, alone
                              ({"density_runs": 0}, "^density_runs must be >= 1, got 0$"),
                              ({"density_steps": 1}, "^density_steps must be >= 2, got 1$"),
                              ({"density_steps": 501}, r"^density_steps must be at most 500 \(each step keeps a "
                                                       r"vector of every weight in memory\), got 501$"),
                              ({"lanczos_steps": 10**9}, "^lanczos_steps must be at most 500 .*, got 1000000000$")):
        with pytest.raises(ConfigError, match=message):
            HessianSpectrum(**{"top_k": 2, "lanczos_steps": 4, **settings}).check()


def test_the_hessian_of_a_text_model_matches_its_exact_hessian():
    """The operator is domain-agnostic: on a tiny TextDOT (tied softmax over 12 words) and a batch
    from `sample_batch` of toy sentences, H v equals the exact Hessian (autograd) times v, where the
    loss is the mean NLL over every word and sentence end (counted here from the lengths)."""
    from tinydot.data.text import Sentences

    rng = np.random.default_rng(4)
    lengths = rng.integers(1, 7, size=20).astype(np.int32)
    vocabulary = np.array(["<eos>", *"abcdefghijk"])
    data = Sentences(rng.integers(1, 12, size=int(lengths.sum())).astype(np.int32), lengths, vocabulary, "toy")
    cfg = ModelConfig(domain="text", vocab_size=12, n_layers=1, d_model=4, d_mlp=8, max_len=8)
    model = init_model(cfg, seed=0)
    batch = sample_batch(data, cfg, 5, seed=1)
    chosen = np.sort(np.random.default_rng(1).choice(20, size=5, replace=False))
    scored = int(lengths[chosen].sum()) + 5  # words + sentence ends

    class MeanTextNLL(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self):
            return self.model.nll(*batch).sum() / scored

    import copy

    double = copy.deepcopy(model).double()
    names = [n for n, _ in double.named_parameters()]
    shapes = {n: p.shape for n, p in double.named_parameters()}
    flat = torch.cat([p.detach().reshape(-1) for p in double.parameters()])
    loss = MeanTextNLL()
    loss.model = double

    def f(x):
        out, offset = {}, 0
        for n in names:
            k = int(np.prod(shapes[n]))
            out[f"model.{n}"] = x[offset: offset + k].reshape(shapes[n])
            offset += k
        return functional_call(loss, out, ())

    with sdpa_kernel(SDPBackend.MATH):
        exact = torch.autograd.functional.hessian(f, flat, vectorize=True).numpy()
    operator = HessianOperator(model, batch)
    assert operator.dim == flat.numel() and operator.loss_value() == pytest.approx(float(f(flat)), rel=1e-12)
    v = np.random.default_rng(2).standard_normal(operator.dim)
    assert np.allclose(operator.matvec(v).numpy(), exact @ v, rtol=1e-8, atol=1e-10)
