"""ShapesWorld training machinery: worker batch streams and the robust reward's adversary and ranking loss."""

import torch

from leapalign.shapes.batches import WORKER_SEED_STRIDE, batch_stream, flow_batch, reward_batch
from leapalign.shapes.model import TextEncoderConfig
from leapalign.shapes.reward_model import RewardModelConfig, ShapesRewardModel
from leapalign.shapes.reward_train import (RewardTrainConfig, adversarial, high_frequency, reward_hackability,
                                           train_reward)

TEXT = TextEncoderConfig(dim=32, depth=1, heads=2)
SMALL_REWARD = RewardModelConfig(image_size=16, width=8, embed_dim=32, text=TEXT)


def _flow(g):
    return flow_batch(g, batch_size=4, size=16, mix=(1.0,) * 6, caption_dropout=0.2)


def test_worker_stream_takes_each_workers_own_seeded_sequence_in_turn():
    seed = 3
    got = [next(s) for s in [batch_stream(_flow, seed, workers=2)] for _ in range(4)]
    own = [torch.Generator().manual_seed(seed + WORKER_SEED_STRIDE * w) for w in (0, 1)]
    want = [_flow(own[i % 2]) for i in range(4)]  # batch i comes from worker i % 2, its (i // 2)-th draw
    for (x, t), (xw, tw) in zip(got, want):
        assert torch.equal(x, xw) and t == tw
    single = batch_stream(_flow, seed, workers=0)
    assert torch.equal(next(single)[0], want[0][0]) and not torch.equal(next(single)[0], want[1][0])


def test_reward_batch_negatives_are_false_and_masks_are_consistent():
    from leapalign.shapes.evaluator import check, detect, satisfiable

    b = reward_batch(torch.Generator().manual_seed(0), batch_size=16, size=32, hard_negatives=4)
    objs = detect(b["images"])  # clean renders: the evaluator reads them exactly
    for i in range(16):
        assert check(b["texts"][i], objs[i])
        for j in range(4):
            if b["neg_ok"][i, j]:
                assert not satisfiable(b["negatives"][i * 4 + j], objs[i])  # false for any confidence order
        for j in range(16):
            assert bool(b["same_truth"][i, j]) == (j != i and satisfiable(b["texts"][j], objs[i]))
            if j != i and check(b["texts"][j], objs[i]):  # a caption the evaluator accepts is never a negative
                assert b["same_truth"][i, j]


def test_adversary_stays_in_its_ball_and_beats_random_noise():
    torch.manual_seed(0)
    model = ShapesRewardModel(SMALL_REWARD).eval()
    images = reward_batch(torch.Generator().manual_seed(1), batch_size=8, size=16, hard_negatives=0)["images"]
    txt = model.embed_texts(["a photo of a red circle"] * 8)
    eps = torch.linspace(0.01, 0.2, 8)
    adv = adversarial(model, images, txt, eps, 5, torch.Generator().manual_seed(2))
    assert ((adv - images).abs().amax((1, 2, 3)) <= eps + 1e-6).all() and adv.min() >= 0 and adv.max() <= 1
    assert all(p.grad is None for p in model.parameters())
    with torch.no_grad():
        score = lambda x: (model.embed_images(x) * txt).sum(-1)  # noqa: E731
        noisy = high_frequency(images, eps, torch.Generator().manual_seed(3))
        assert (score(adv) > score(noisy)).all() and (score(adv) > score(images)).float().mean() > 0.8
    assert ((noisy - images).abs().amax((1, 2, 3)) <= eps + 1e-6).all()


def test_ranking_loss_makes_the_reward_harder_to_hack():
    gains = {}
    for weight in (0.0, 1.0):
        cfg = RewardTrainConfig(steps=120, batch_size=32, lr=3e-3, warmup=5, robust_weight=weight,
                                robust_eps=(0.02, 0.1), model=SMALL_REWARD)
        model = train_reward(cfg)
        gains[weight] = reward_hackability(model, eps=0.05, n=96)["adversarial_gain"]
    assert gains[1.0] < 0.7 * gains[0.0], gains


def test_adversarial_training_descends_the_own_caption_score_and_init_continues():
    torch.manual_seed(0)
    model = ShapesRewardModel(SMALL_REWARD).eval()
    images = reward_batch(torch.Generator().manual_seed(1), batch_size=8, size=16, hard_negatives=0)["images"]
    txt = model.embed_texts(["a photo of a red circle"] * 8)
    eps = torch.full((8,), 0.1)
    down = adversarial(model, images, txt, eps, 5, torch.Generator().manual_seed(2), sign=-1.0)
    with torch.no_grad():
        score = lambda x: (model.embed_images(x) * txt).sum(-1)  # noqa: E731
        assert (score(down) < score(images)).all()
    cfg = RewardTrainConfig(steps=1, batch_size=8, lr=1e-9, warmup=1, adversarial_train=0.05, model=SMALL_REWARD)
    again = train_reward(cfg, init=model)  # lr ~0: continuing must start from (and stay at) the given weights
    for a, b in zip(again.state_dict().values(), model.state_dict().values()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
