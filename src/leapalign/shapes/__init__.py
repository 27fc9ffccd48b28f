"""ShapesWorld: an offline text-to-image world where GenEval's six categories are checkable exactly.

    prompts.py       vocabulary, GenEval caption templates, parse_prompt, train/held-out splits (disjoint
                     compositions), hard-negative edits
    render.py        sample_scenes(prompts, generator) -> SceneBatch; render(scenes) -> (B, 3, S, S) in [0, 1]
    detect.py        colour segmentation, connected components, shape by template fitting -> DetectedObject
    evaluator.py     GenEval's rules over detected objects: check / evaluate / geneval_scores / layout_changed
                     (never a training signal)
    model.py         word-level text encoder + DiT-style rectified-flow transformer (pixel space, [-1, 1])
    reward_model.py  contrastive image-text reward model (differentiable w.r.t. pixels)
    batches.py       caption sampling and training batches made in worker processes (seeded per worker)
    pretrain.py      pretrain_flow: the base model's rectified-flow loop (`leapalign shapes pretrain`)
    reward_train.py  train_reward (contrastive + hard negatives + adversarial/noise ranking), reward_accuracy,
                     reward_hackability (`leapalign shapes reward`)
    parser.py        scene parser (soft colour x shape maps and object-centre densities) and compose_score, GenEval's
                     rules made soft: the composition reward `shapes-compose`
    parser_train.py  train_parser: augmented renders + adversarial half-batches (`leapalign shapes parser`)
    parser_eval.py   compose_accuracy, compose_hackability, auc (the judge's side; may use the evaluator)
    checkpoint.py    save_model, load_flow_model, load_reward_model, load_parser; shipped files in assets/shapes/

Typical use (the shipped models; adapter and reward follow the library's protocols):

    from leapalign.adapters.shapes import ShapesAdapter
    from leapalign.rewards.shapes import ShapesReward
    from leapalign.shapes.prompts import heldout_prompts, train_prompts
    from leapalign.shapes.evaluator import evaluate, geneval_scores

    adapter = ShapesAdapter.from_pretrained(guidance_scale=3.0)   # the demo's guidance; 1.0 = none
    reward = ShapesReward.from_pretrained()
    prompts = heldout_prompts()
    images = adapter.generate(prompts, 20, adapter.noise(len(prompts), torch.Generator().manual_seed(0)))
    scores = geneval_scores(prompts, evaluate(images, prompts))   # {"overall": ..., "position": ..., ...}
"""
