"""Reformation: exact least squares and ADMM agree, lower the output error, and fold into slicing."""
import pytest
import torch

from amoeba_plugin.anatomy import anatomy_of
from amoeba_plugin.errors import AmoebaError
from amoeba_plugin.plan import LayerPlan, Plan, source_info
from amoeba_plugin.pruning.reformation import output_error, reform_columns, reformation_patch
from amoeba_plugin.surgery import apply_soft, slice_model
from amoeba_plugin.testing import assert_soft_equals_sliced, make_tiny


def _problem(seed=0, n=512, d=64, out=32):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g, dtype=torch.float64)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) @ mix  # correlated inputs
    w = torch.randn(out, d, generator=g, dtype=torch.float64)
    kept = sorted(torch.randperm(d, generator=g)[:40].tolist())
    return w, x, x.T @ x, kept


def test_exact_solution_is_the_least_squares_fit_on_the_kept_columns():
    w, x, gram, kept = _problem()
    reformed = reform_columns(w, gram, kept, damping=0.0)
    want = torch.linalg.lstsq(x[:, kept], x @ w.T).solution.T  # min ||X_K Ŵ_Kᵀ - X Wᵀ||
    assert torch.allclose(reformed, want, atol=1e-6)
    assert output_error(w, gram, kept, reformed) < output_error(w, gram, kept)


def test_admm_converges_to_the_exact_solution():
    w, _, gram, kept = _problem(1)
    exact = reform_columns(w, gram, kept, damping=1e-8)
    admm = reform_columns(w, gram, kept, solver="admm", damping=1e-8, rho=1.0, iterations=2000)
    assert torch.allclose(admm, exact, atol=1e-4, rtol=1e-4)
    paper = reform_columns(w, gram, kept, solver="admm", rho=1.0, iterations=30)  # the paper's setting
    dropped, best = output_error(w, gram, kept), output_error(w, gram, kept, exact)
    assert best <= output_error(w, gram, kept, paper) < dropped


def test_damping_pulls_towards_the_original_weights():
    """The damped objective ||(Ŵ - W) X||² + δ||Ŵ - W||²: no damping is the least-squares fit, heavy
    damping keeps the kept columns as they were (plain dropping), and both solvers agree on it."""
    w, _, gram, kept = _problem(2)
    fits = [reform_columns(w, gram, kept, damping=d) for d in (0.0, 0.1, 10.0, 1e6)]
    distances = [float((f - w[:, kept]).norm()) for f in fits]
    assert distances == sorted(distances, reverse=True) and distances[-1] < 1e-3 * distances[0]
    errors = [output_error(w, gram, kept, f) for f in fits]
    assert errors == sorted(errors) and errors[-1] == pytest.approx(output_error(w, gram, kept), rel=1e-4)
    exact = reform_columns(w, gram, kept, damping=0.1)
    admm = reform_columns(w, gram, kept, solver="admm", damping=0.1, iterations=3000)
    assert output_error(w, gram, kept, admm) == pytest.approx(output_error(w, gram, kept, exact), rel=0.05)


def test_bad_input_is_refused():
    w, _, gram, kept = _problem()
    with pytest.raises(AmoebaError, match="solver"):
        reform_columns(w, gram, kept, solver="sgd")
    with pytest.raises(AmoebaError, match="Gram"):
        reform_columns(w, gram[:10, :10], kept)
    with pytest.raises(AmoebaError, match="kept columns"):
        reform_columns(w, gram, [])


@pytest.mark.parametrize("inputs", ["sequential", "dense"])
def test_reformation_patch_folds_into_the_sliced_model_and_helps(inputs):
    model = make_tiny("llama")
    anatomy = anatomy_of(model)
    windows = torch.randint(0, 128, (8, 32), generator=torch.Generator().manual_seed(0))
    layers = [LayerPlan(l.index, kv_groups=[0], query_heads=[[0, 2]], mlp_channels=list(range(0, 96, 2)))
              for l in anatomy.layers]
    plan = Plan(layers, source=source_info(anatomy))
    report = {}
    patch = reformation_patch(model, anatomy, plan, windows, report=report, inputs=inputs)
    assert set(patch) == {f"{anatomy.layer(i).modules[r]}.weight" for i in range(4) for r in ("o", "down")}
    assert all(r["reformed"] < r["dropped"] for r in report.values())
    ids = windows[:2]
    sliced = slice_model(model, anatomy, plan, patch=patch)
    with torch.no_grad(), apply_soft(model, anatomy, plan, patch=patch):
        masked = model(input_ids=ids).logits
    with torch.no_grad():
        assert torch.allclose(sliced(input_ids=ids).logits, masked, atol=1e-5)
        dense = model(input_ids=windows).logits
        plain = slice_model(model, anatomy, plan)(input_ids=windows).logits
        reformed = sliced(input_ids=windows).logits
    assert (reformed - dense).norm() < (plain - dense).norm()


def test_sequential_inputs_follow_the_subnet():
    """Sequential reformation fits each block on what the pruned, reformed blocks before it give it:
    with nothing pruned upstream it equals the dense-input fit; with an upstream block pruned (and a
    layer dropped, and per-group head channels) it differs, and still folds into slicing exactly."""
    model = make_tiny("llama")
    anatomy = anatomy_of(model)
    windows = torch.randint(0, 128, (8, 32), generator=torch.Generator().manual_seed(2))
    mlp = list(range(0, 96, 3))
    only_last = Plan([LayerPlan(0), LayerPlan(1), LayerPlan(2), LayerPlan(3, mlp_channels=mlp)],
                     source=source_info(anatomy))
    a = reformation_patch(model, anatomy, only_last, windows, inputs="sequential")
    b = reformation_patch(model, anatomy, only_last, windows, inputs="dense")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)

    plan = Plan([LayerPlan(0, head_channels=[[0, 4], [1, 2, 5, 6]], mlp_channels=mlp), LayerPlan(2),
                 LayerPlan(3, mlp_channels=mlp)], source=source_info(anatomy))
    seq = reformation_patch(model, anatomy, plan, windows, inputs="sequential")
    dense = reformation_patch(model, anatomy, plan, windows, inputs="dense")
    last = f"{anatomy.layer(3).modules['down']}.weight"
    assert not torch.allclose(seq[last], dense[last], atol=1e-4)  # layer 3 saw the pruned subnet's states
    assert_soft_equals_sliced(model, anatomy, plan, windows[:2], patch=seq)
    with pytest.raises(AmoebaError, match="inputs"):
        reformation_patch(model, anatomy, plan, windows, inputs="random")
