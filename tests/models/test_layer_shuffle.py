"""ShuffleMamba stochastic layer-wise shuffle: schedule, the shuffled call, and its use in the plain models."""
import copy

import pytest
import timm
import torch

from vmamba.layers.layer_shuffle import layer_shuffle_probs, token_shuffled_call


def test_probability_schedule_is_linear_from_zero():
    assert layer_shuffle_probs(0.3, 4) == pytest.approx([0., 0.1, 0.2, 0.3])
    assert layer_shuffle_probs(0.5, 1) == [0.]
    with pytest.raises(ValueError, match='layer_shuffle_prob'):
        layer_shuffle_probs(1.5, 4)
    model = timm.create_model('test_vim', depth=3, layer_shuffle_prob=0.4)
    assert [b.shuffle_prob for b in model.blocks] == pytest.approx([0., 0.2, 0.4])


def test_shuffled_call_permutes_and_restores_with_one_permutation_per_batch():
    x = torch.randn(3, 10, 4)
    seen = []

    def layer(t):  # order-dependent: the result depends on the order the tokens arrive in
        seen.append(t)
        return t.cumsum(1)

    torch.manual_seed(0)
    out = token_shuffled_call(layer, x, prob=1.0)
    torch.manual_seed(0)
    torch.rand(())  # the Bernoulli draw
    perm = torch.randperm(10)
    assert not torch.equal(perm, torch.arange(10))
    torch.testing.assert_close(seen[0], x[:, perm], rtol=0, atol=0)  # the same permutation for every sample
    torch.testing.assert_close(out, x[:, perm].cumsum(1)[:, torch.argsort(perm)], rtol=0, atol=0)

    state = torch.get_rng_state()
    torch.testing.assert_close(token_shuffled_call(layer, x, prob=0.), x.cumsum(1), rtol=0, atol=0)
    assert torch.equal(state, torch.get_rng_state())  # prob 0 draws nothing


def test_shuffle_frequency_follows_probability():
    torch.manual_seed(0)
    x = torch.arange(6.).view(1, 6, 1)
    hits = sum(not torch.equal(token_shuffled_call(lambda t: t.cumsum(1), x, prob=0.3), x.cumsum(1))
               for _ in range(2000))
    # a random permutation of 6 is the identity with probability 1/720
    assert 0.26 < hits / 2000 < 0.34


@pytest.mark.parametrize('name', ['test_vim', 'test_lbvim'])
def test_eval_output_bit_identical_with_and_without_shuffle(name):
    torch.manual_seed(0)
    plain = timm.create_model(name, embed_dim=32, d_state=8, depth=3).eval()
    shuffled = timm.create_model(name, embed_dim=32, d_state=8, depth=3, layer_shuffle_prob=1.0).eval()
    shuffled.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(plain(x), shuffled(x))
        assert torch.equal(plain.forward_features(x), shuffled.forward_features(x))


def test_training_shuffle_matches_manual_permutation_and_keeps_class_token_slot():
    torch.manual_seed(0)
    model = timm.create_model('test_vim', embed_dim=32, d_state=8, depth=2, layer_shuffle_prob=1.0)
    model.train()  # probabilities [0, 1]: block 1 always shuffles, block 0 never; no dropout / drop path
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.manual_seed(7)
        out = model.forward_features(x)

        torch.manual_seed(7)
        torch.rand(())
        perm = torch.randperm(17)
        stream, _ = model._embed(x)
        stream = model.blocks[0](stream)
        block = model.blocks[1]
        shuffled = block.mixer(block.norm(stream[:, perm]))
        expected = model.norm(stream + shuffled[:, torch.argsort(perm)])
        torch.testing.assert_close(out, expected, rtol=0, atol=0)

        model.eval()
        unshuffled = model.forward_features(x)
    # The class token (index 8) is shuffled like every token (here it moves) and returns to its slot afterwards, as
    # the expected value above encodes; the shuffle changes what the mixer computes.
    assert (perm == 8).nonzero().item() != 8
    assert not torch.allclose(out, unshuffled, atol=1e-4)


def test_shuffle_with_grad_checkpointing_replays_the_same_permutation():
    torch.manual_seed(0)
    model = timm.create_model('test_lbvim', embed_dim=32, d_state=8, depth=3, layer_shuffle_prob=1.0).train()
    x = torch.randn(2, 3, 64, 64)
    grads = []
    for checkpointing in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(checkpointing)
        torch.manual_seed(3)
        model(x).square().sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, msg=name)
    # the permutation is a real (non-identity) perturbation of training
    unshuffled = copy.deepcopy(model)
    for block in unshuffled.blocks:
        block.shuffle_prob = 0.
    torch.manual_seed(3)
    with torch.no_grad():
        assert not torch.allclose(model(x), unshuffled(x), atol=1e-5)
