import pytest
import torch
import torch.nn.functional as F

from gradcourse.grads import flat_grad, hidden_state_gradients, mlp_gradient_norms
from gradcourse.models import MLP, RNN


def test_mlp_weight_norms_match_autograd():
    torch.manual_seed(0)
    model = MLP(4, 8, 3, 2, activation="tanh").double()
    inputs, targets = (
        torch.randn(5, 3, dtype=torch.float64),
        torch.randn(5, 2, dtype=torch.float64),
    )
    norms = mlp_gradient_norms(model, inputs, targets, F.mse_loss)
    expected = torch.stack([layer.weight.grad.norm() for layer in model.linears])
    torch.testing.assert_close(norms["weights"], expected)


def test_weight_normalised_layers_get_their_weights_gradient_not_zeros():
    torch.manual_seed(0)
    model = MLP(4, 8, 3, 2, activation="tanh", normalization="weight").double()
    inputs = torch.randn(5, 3, dtype=torch.float64)
    targets = torch.randn(5, 2, dtype=torch.float64)
    norms = mlp_gradient_norms(model, inputs, targets, F.mse_loss)["weights"]
    # the same gradient through autograd: within cached(), each layer computes its weight once
    with torch.nn.utils.parametrize.cached():
        weights = [layer.weight for layer in model.linears]
        for weight in weights:
            weight.retain_grad()
        F.mse_loss(model(inputs), targets).backward()
    expected = torch.stack([w.grad.norm() for w in weights])
    assert (norms > 0).all()
    torch.testing.assert_close(norms, expected, rtol=1e-12, atol=0)


def test_per_example_weight_norms_of_one_example_are_the_weight_norms():
    torch.manual_seed(0)
    model = MLP(4, 8, 3, 2, activation="tanh").double()
    inputs = torch.randn(1, 3, dtype=torch.float64)
    targets = torch.randn(1, 2, dtype=torch.float64)
    norms = mlp_gradient_norms(model, inputs, targets, F.mse_loss)
    torch.testing.assert_close(norms["per_example_weights"], norms["weights"])


def test_mlp_activation_gradient_of_the_last_layer_is_dloss_doutput():
    torch.manual_seed(0)
    model = MLP(3, 8, 3, 2).double()
    inputs, targets = (
        torch.randn(5, 3, dtype=torch.float64),
        torch.randn(5, 2, dtype=torch.float64),
    )
    norms = mlp_gradient_norms(model, inputs, targets, F.mse_loss)
    with torch.no_grad():
        outputs = model(inputs)
    expected = (2 * (outputs - targets) / outputs.numel()).norm()  # d mean((y - t)^2) / dy
    torch.testing.assert_close(norms["activations"][-1], expected)


def test_mlp_weight_gradient_is_activation_gradient_times_layer_input():
    torch.manual_seed(0)
    model = MLP(3, 6, 4, 1, activation="relu").double()
    inputs, targets = (
        torch.randn(7, 4, dtype=torch.float64),
        torch.randn(7, 1, dtype=torch.float64),
    )
    mlp_gradient_norms(model, inputs, targets, F.mse_loss)
    _, pre = model(inputs, return_pre_activations=True)
    for s in pre:
        s.retain_grad()
    model.zero_grad()
    F.mse_loss(pre[-1], targets).backward()
    # dL/dW = G^T X
    torch.testing.assert_close(model.linears[0].weight.grad, pre[0].grad.T @ inputs)


def test_rnn_hidden_gradients_follow_powers_of_the_recurrent_matrix():
    torch.manual_seed(0)
    rnn = RNN(2, 4, activation="linear").double()
    inputs = torch.randn(3, 6, 2, dtype=torch.float64)
    norms = hidden_state_gradients(rnn, inputs, lambda outputs: outputs[:, -1].sum())
    recurrent = rnn.recurrent_weight.detach()
    # dL/dh_T for a sum over the last state
    last = torch.ones(3, 4, dtype=torch.float64)
    expected = [(last @ torch.linalg.matrix_power(recurrent, 5 - k)).norm() for k in range(6)]
    torch.testing.assert_close(norms, torch.stack(expected))


def test_rnn_hidden_gradients_after_the_loss_step_are_zero():
    rnn = RNN(2, 4)
    norms = hidden_state_gradients(rnn, torch.randn(1, 5, 2), lambda outputs: outputs[:, 2].sum())
    assert torch.count_nonzero(norms[3:]) == 0 and bool((norms[:3] > 0).all())


def test_grads_refuse_other_models():
    with pytest.raises(TypeError, match="gradcourse.models.MLP, got Linear"):
        mlp_gradient_norms(torch.nn.Linear(2, 2), torch.randn(1, 2), torch.randn(1, 2), F.mse_loss)
    with pytest.raises(TypeError, match="gradcourse.models.RNN, got Linear"):
        hidden_state_gradients(torch.nn.Linear(2, 2), torch.randn(1, 2, 2), lambda o: o.sum())


def test_flat_grad_concatenates_every_trainable_gradient_in_order():
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    model[1].bias.requires_grad_(False)
    model(torch.ones(4, 2)).sum().backward()
    expected = torch.cat(
        [model[0].weight.grad.reshape(-1), model[0].bias.grad, model[1].weight.grad.reshape(-1)]
    )
    assert torch.equal(flat_grad(model), expected)


def test_flat_grad_names_a_parameter_without_gradient():
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    model[1](torch.ones(4, 3)).sum().backward()  # model[0] never used
    with pytest.raises(ValueError, match="parameter '0.weight' has no gradient"):
        flat_grad(model)


def test_scaled_orthogonal_gives_every_singular_value_the_scale():
    from gradcourse.models import scaled_orthogonal_

    weight = torch.empty(6, 6, dtype=torch.float64)
    scaled_orthogonal_(weight, 1.5)
    torch.testing.assert_close(
        torch.linalg.svdvals(weight), torch.full((6,), 1.5, dtype=torch.float64)
    )
    with pytest.raises(ValueError, match="square matrix"):
        scaled_orthogonal_(torch.empty(2, 3), 1.0)
