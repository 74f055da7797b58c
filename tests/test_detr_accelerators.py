"""DETR's training accelerators (scaledet/models/detr/accelerators.py): group queries and query
denoising change nothing at inference, the decoder mask isolates exactly what it should, the losses
train, and checkpoints keep or drop the training-only parameters cleanly."""

import pytest
import torch

import scaledet
from scaledet.models.detr.accelerators import (IGNORED_CLASS, TRAINING_ONLY_PREFIXES, DenoisingSettings,
                                               QueryDenoising, noised_boxes, self_attention_mask)
from scaledet.models.detr.convert import to_official
from scaledet.models.detr.preprocess import normalized_targets
from scaledet.weights import save_weights
from tests.test_contract import DETR_SMALL, run_contract

TINY = dict(num_classes=3, backbone="resnet18", hidden_dim=32, num_heads=2, ffn_dim=64, enc_layers=1,
            dec_layers=2, num_queries=5, min_size=64, max_size=96, dropout=0.0)
ACCELERATED = dict(query_groups=3, denoising_groups=2, denoising_contrastive=True)


def _tiny(seed=0, **options):
    torch.manual_seed(seed)
    return scaledet.create_model("detr_r50", **{**TINY, **options})


def _images():
    generator = torch.Generator().manual_seed(1)
    return [torch.rand(3, 50, 70, generator=generator), torch.rand(3, 64, 64, generator=generator)]


TARGETS = [{"boxes": torch.tensor([[1.0, 2.0, 30.0, 40.0], [10.0, 10.0, 20.0, 30.0]]), "labels": torch.tensor([0, 2])},
           {"boxes": torch.tensor([[5.0, 5.0, 60.0, 60.0]]), "labels": torch.tensor([1])}]


def _inference_state(model):
    return {key: value for key, value in model.state_dict().items() if not key.startswith(TRAINING_ONLY_PREFIXES)}


def test_accelerators_are_off_by_default_and_add_no_parameters():
    plain = _tiny()
    assert plain.query_groups == 1 and plain.denoising is None and plain.extra_query_groups is None
    assert not any(key.startswith(TRAINING_ONLY_PREFIXES) for key in plain.state_dict())


def test_inference_with_accelerators_equals_the_plain_model_with_the_same_weights():
    """Training-only parameters are created last, so the same seed gives the same inference weights;
    in eval mode only group 0 runs: detections and raw outputs are bit-identical."""
    plain, accelerated = _tiny().eval(), _tiny(**ACCELERATED).eval()
    plain_state, accelerated_state = plain.state_dict(), _inference_state(accelerated)
    assert plain_state.keys() == accelerated_state.keys()
    assert all(torch.equal(plain_state[key], accelerated_state[key]) for key in plain_state)
    assert accelerated.extra_query_groups.weight.shape == (2 * 5, 32)
    with torch.no_grad():
        expected, found = plain(_images()), accelerated(_images())
        batch = plain.preprocess(_images())
        raw_plain, raw_accelerated = plain.forward_features(*batch.inputs), accelerated.forward_features(*batch.inputs)
    assert all(torch.equal(a[key], b[key]) for a, b in zip(expected, found) for key in a)
    assert raw_accelerated[0].shape == (2, 5, 4) and torch.equal(raw_plain[0], raw_accelerated[0])
    assert torch.equal(raw_plain[1], raw_accelerated[1])


def test_self_attention_mask_layout():
    """2 matching groups of 2 queries, then 2 denoising groups of 2 slots; image 1 pads slot 1 of each."""
    real = torch.tensor([[True, True, True, True], [True, False, True, False]])
    queries = QueryDenoising(8, 3, DenoisingSettings(groups=2)).build(
        [{"boxes": torch.rand(2, 4), "labels": torch.tensor([0, 1])},
         {"boxes": torch.rand(1, 4), "labels": torch.tensor([2])}])
    assert torch.equal(queries.real, real) and queries.group_size == 2
    allowed = torch.tensor([  # rows attend to columns; M = matching, D = denoising
        # M0 M0 M1 M1 D0 D0 D1 D1
        [1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0],
        [0, 0, 1, 1, 0, 0, 0, 0],
        [0, 0, 1, 1, 0, 0, 0, 0],
        [1, 1, 0, 0, 1, 1, 0, 0],
        [1, 1, 0, 0, 1, 1, 0, 0],
        [1, 1, 0, 0, 0, 0, 1, 1],
        [1, 1, 0, 0, 0, 0, 1, 1]], dtype=torch.bool)
    mask = self_attention_mask(2, 2, queries, torch.device("cpu"))
    assert mask.shape == (2, 8, 8)
    assert torch.equal(~mask[0], allowed)
    padded = allowed.clone()
    padded[:, [5, 7]] = False  # image 1's padding slots are seen by no query
    assert torch.equal(~mask[1], padded)
    assert torch.equal(~self_attention_mask(2, 2, None, torch.device("cpu")), allowed[:4, :4])
    assert self_attention_mask(2, 1, None, torch.device("cpu")) is None


def _training_outputs(model, denoising):
    batch = model.preprocess(_images())
    with torch.no_grad():
        logits, boxes, aux = model.forward_features(*batch.inputs, denoising)
    return torch.cat([logits, boxes], dim=-1)


def test_decoder_mask_blocks_exactly_what_it_should():
    """Perturbing the denoising queries leaves every matching query unchanged; perturbing one
    denoising group (or its padding) leaves the others unchanged; perturbing matching group 2
    leaves groups 0 and 1 and the denoising queries unchanged; each perturbation does change
    what it may reach (the check can fail)."""
    model = _tiny(**ACCELERATED).train()
    batch = model.preprocess(_images())
    torch.manual_seed(0)
    queries = model.denoising.build(normalized_targets(batch.image_sizes, TARGETS))
    size = queries.group_size  # 2 positives + 2 negatives
    matching = 3 * 5
    reference = _training_outputs(model, queries)
    assert reference.shape == (2, matching + 2 * size, 3 + 1 + 4)

    def perturbed(**changes):
        fields = {name: getattr(queries, name).clone() for name in ("labels", "boxes")}
        for name, (slots, value) in changes.items():
            fields[name][:, slots] = value
        return _training_outputs(model, type(queries)(**{**queries.__dict__, **fields}))

    changed = perturbed(boxes=(slice(size, 2 * size), 0.9), labels=(slice(size, 2 * size), 1))  # denoising group 1
    assert torch.equal(changed[:, :matching + size], reference[:, :matching + size])  # matching + DN group 0
    assert not torch.allclose(changed[:, matching + size:], reference[:, matching + size:])
    padding = 1  # image 1 has one box: slot 1 (a positive's) of denoising group 0 is padding
    assert not queries.real[1, padding] and queries.real[0, padding]
    changed = perturbed(boxes=(slice(padding, padding + 1), 0.1), labels=(slice(padding, padding + 1), 1))
    real_slots = [i for i in range(changed.shape[1]) if i != matching + padding]
    assert torch.equal(changed[1, real_slots], reference[1, real_slots])
    assert not torch.allclose(changed[0, matching:], reference[0, matching:])  # in image 0 it is real

    with torch.no_grad():
        model.extra_query_groups.weight[5:] += 1.0  # group 2 (rows 5..9 of the extra groups)
    changed = _training_outputs(model, queries)
    group_2 = slice(10, 15)
    assert torch.equal(changed[:, :10], reference[:, :10]) and torch.equal(changed[:, 15:], reference[:, 15:])
    assert not torch.allclose(changed[:, group_2], reference[:, group_2])
    with torch.no_grad():
        model.query_embed.weight += 1.0  # group 0 is the denoising queries' context
    assert not torch.allclose(_training_outputs(model, queries)[:, matching:], reference[:, matching:])


def test_group_loss_is_the_sum_of_independent_groups():
    """With every group's queries equal to group 0's, the masked groups compute the same outputs:
    each group loss equals the plain model's loss, and the total is query_groups times it."""
    plain, grouped = _tiny().train(), _tiny(query_groups=3).train()
    with torch.no_grad():
        grouped.extra_query_groups.weight.copy_(plain.query_embed.weight.repeat(2, 1))
    torch.manual_seed(5)
    expected = plain(_images(), TARGETS)
    torch.manual_seed(5)
    found = grouped(_images(), TARGETS)
    assert found.keys() == expected.keys()
    for key, value in expected.items():
        assert found[key].item() == pytest.approx(3 * value.item(), rel=1e-5), key


def test_denoising_queries_are_noised_ground_truth():
    settings = DenoisingSettings(groups=3, label_noise=0.5, box_noise=0.4, contrastive=True)
    denoising = QueryDenoising(16, 4, settings)
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.4], [0.3, 0.6, 0.1, 0.1]])
    torch.manual_seed(0)
    queries = denoising.build([{"boxes": boxes, "labels": torch.tensor([1, 3])}] * 200)
    assert queries.num_queries == 3 * 4 and queries.labels.shape == (200, 12)
    positive, negative = queries.positive, queries.target_classes == 4
    assert positive.sum() == 200 * 3 * 2 and negative.sum() == 200 * 3 * 2 and queries.real.all()
    clean = queries.target_boxes[positive].view(-1, 2, 4)
    assert torch.equal(clean, boxes.expand_as(clean))
    for slots, low, high in ((positive, 0.0, 0.4), (negative, 0.4, 0.8)):
        noised = queries.boxes[slots].view(-1, 2, 4)
        shift = ((noised[..., :2] - boxes[:, :2]) / (boxes[:, 2:] / 2)).abs()
        scale = (noised[..., 2:] / boxes[:, 2:] - 1).abs()
        for relative in (shift, scale):
            assert relative.max() <= high + 1e-5 and relative.min() >= low - 1e-5
    flipped = (queries.labels[positive].view(-1, 2) != torch.tensor([1, 3])).float().mean()
    assert 0.3 < flipped < 0.45  # 0.5 flips to one of 4 classes: 3 / 8 change
    assert denoising.build([{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]) is None
    queries = QueryDenoising(16, 4, DenoisingSettings(groups=1)).build(
        [{"boxes": boxes, "labels": torch.tensor([1, 3])}, {"boxes": boxes[:1], "labels": torch.tensor([2])}])
    assert queries.target_classes[1].tolist() == [2, IGNORED_CLASS]
    assert torch.equal(noised_boxes(boxes, torch.zeros(2, 4)), boxes)


def test_training_step_trains_every_new_parameter():
    model = _tiny(**ACCELERATED).train()
    losses = model(_images(), TARGETS)
    expected = {f"{term}{suffix}" for term in ("loss_ce", "loss_bbox", "loss_giou")
                for suffix in ("", "_0", "_dn", "_dn_0")} | {"loss"}
    assert set(losses) == expected and all(torch.isfinite(value) for value in losses.values())
    losses["loss"].backward()
    new = {name: p for name, p in model.named_parameters() if name.startswith(TRAINING_ONLY_PREFIXES)}
    assert {"extra_query_groups.weight", "denoising.label_embed.weight", "denoising.box_embed.0.weight"} <= set(new)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in new.values())

    model.zero_grad(set_to_none=True)  # a batch without boxes: no denoising queries, still a (zero) gradient (DDP)
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}] * 2
    losses = model(_images(), empty)
    assert not any(key.endswith("_dn") for key in losses) and torch.isfinite(losses["loss"])
    losses["loss"].backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_contract_with_accelerators_on(tmp_path):
    """The generic contract (eval, a training step with a gradient on every parameter, save ->
    load bit-identical, optimize) for a DETR trained with both accelerators."""
    run_contract("detr_r50", tmp_path, {**DETR_SMALL, **ACCELERATED}, onnx=False)


def test_checkpoints_keep_or_drop_the_training_only_parameters(tmp_path):
    """An accelerated run's file rebuilds the accelerated model (training-only parameters kept: it
    resumes / fine-tunes with them); loaded with the accelerators off (inference) they are dropped;
    a plain file (like a published one) loads into an accelerated model with them fresh."""
    accelerated = _tiny(**ACCELERATED).eval()
    path = save_weights(accelerated.state_dict(), tmp_path / "accelerated.safetensors", accelerated.config)
    loaded = scaledet.load(path)
    assert loaded.config["overrides"]["query_groups"] == 3 and loaded.denoising.settings.contrastive
    assert all(torch.equal(value, loaded.state_dict()[key]) for key, value in accelerated.state_dict().items())

    plain = scaledet.load(path, query_groups=1, denoising_groups=0)
    assert plain.extra_query_groups is None and plain.denoising is None
    assert plain.state_dict().keys() == _inference_state(accelerated).keys()
    with torch.no_grad():
        assert all(torch.equal(a[key], b[key]) for a, b in zip(accelerated(_images()), plain(_images())) for key in a)

    plain_path = save_weights(plain.state_dict(), tmp_path / "plain.safetensors", plain.config)
    refitted = scaledet.load(plain_path, query_groups=2, denoising_groups=1)
    assert refitted.extra_query_groups.weight.shape == (5, 32) and refitted.denoising is not None
    state = refitted.state_dict()
    assert all(torch.equal(value, state[key]) for key, value in plain.state_dict().items())

    official = tmp_path / "official.pth"  # a published-layout file (no config) fine-tunes with the accelerators on
    torch.save({"model": to_official(plain.state_dict())}, official)
    architecture = {key: value for key, value in TINY.items() if key != "num_classes"}
    fine_tune = scaledet.create_model("detr_r50", pretrained=official, **architecture, **ACCELERATED)
    assert fine_tune.num_classes == 3 and fine_tune.denoising is not None
    state = fine_tune.state_dict()
    assert all(torch.equal(value, state[key]) for key, value in plain.state_dict().items())

    four_classes = scaledet.create_model("detr_r50", pretrained=path, num_classes=4)  # fresh label embedding
    assert four_classes.denoising.label_embed.weight.shape == (4, 32)


def test_denoising_loss_goes_down_on_a_tiny_overfit():
    """A few dozen steps of a tiny DETR on 2 images: every term, the denoising ones included, is
    finite, and the denoising reconstruction loss falls."""
    model = _tiny(**ACCELERATED, min_size=0, train_min_sizes=(), backbone_trainable_layers=0).train()
    optimizer = torch.optim.AdamW(model.param_groups(lr=3e-3, backbone_lr=1e-4, weight_decay=1e-4))
    images = [image[:, :32, :40] for image in _images()]  # small: the decoder does the learning here
    targets = [{"boxes": torch.tensor([[1.0, 2.0, 20.0, 30.0], [10.0, 10.0, 38.0, 20.0]]),
                "labels": torch.tensor([0, 2])},
               {"boxes": torch.tensor([[5.0, 5.0, 30.0, 25.0]]), "labels": torch.tensor([1])}]
    torch.manual_seed(0)
    history = []
    for _ in range(25):
        losses = model(images, targets)
        assert all(torch.isfinite(value) for value in losses.values())
        history.append({key: value.item() for key, value in losses.items()})
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()

    def early_late(key):
        return sum(h[key] for h in history[:5]) / 5, sum(h[key] for h in history[-5:]) / 5

    for key in ("loss_bbox_dn", "loss_giou_dn", "loss_ce_dn", "loss"):
        early, late = early_late(key)
        assert late < 0.8 * early, (key, early, late)  # measured: 0.66-0.70 for the box terms, 0.36 for CE


def test_bad_accelerator_settings_name_the_field():
    with pytest.raises(ValueError, match="query_groups"):
        _tiny(query_groups=0)
    with pytest.raises(ValueError, match="denoising_groups"):
        _tiny(denoising_groups=-1)
    with pytest.raises(ValueError, match="denoising_label_noise"):
        _tiny(denoising_groups=1, denoising_label_noise=1.5)
    with pytest.raises(ValueError, match="hidden_dim"):
        _tiny(denoising_groups=1, hidden_dim=36, num_heads=2)



def test_the_auto_recipe_switches_them_on_from_scratch_and_user_overrides_win():
    """From scratch (where they were measured: docs/detr.md) the auto recipe turns the accelerators on;
    with pretrained weights, under --recipe paper and for Deformable DETR they stay off; the user's
    overrides win."""
    from scaledet.engine import TrainConfig
    from scaledet.models.detr.recipes import ACCELERATORS, RECIPES

    scratch = {"backbone_norm": "batch", "backbone_trainable_layers": 5}  # no pretrained weights: see from_scratch
    assert all("model_overrides" not in row for row in RECIPES.values())
    assert TrainConfig.for_model("detr_r50", max_steps=1).model_overrides == {**scratch, **ACCELERATORS}
    assert TrainConfig.for_model("detr_r50", max_steps=1, pretrained="w.safetensors").model_overrides == {}
    assert TrainConfig.for_model("detr_r50", max_steps=1, recipe="paper").model_overrides == {}
    assert TrainConfig.for_model("deformable_detr_r50", max_steps=1).model_overrides == scratch
    plain = {"query_groups": 1, "denoising_groups": 0}
    assert TrainConfig.for_model("detr_r50", max_steps=1, model_overrides=plain).model_overrides == {**scratch, **plain}


def test_training_engine_trains_and_saves_an_accelerated_detr(tmp_path):
    """train_from_config (the CLI's path: EMA copy, checkpoints, evaluation) with the accelerators
    as model overrides; the saved weights rebuild the accelerated model."""
    from scaledet.data import shapes_split
    from scaledet.engine import TrainConfig
    from scaledet.engine.run import train_from_config

    overrides = {"backbone": "resnet18", "hidden_dim": 32, "num_heads": 2, "ffn_dim": 64, "enc_layers": 1,
                 "dec_layers": 1, "num_queries": 10, **ACCELERATED}
    config = TrainConfig.for_model("detr_r50", max_steps=2, batch_size=2, image_size=64, out=str(tmp_path),
                                   progress=False, eval_every=0, threads=1, model_overrides=overrides)
    metrics = train_from_config(config, shapes_split("train", num_images=4, image_size=64),
                                shapes_split("val", num_images=2, image_size=64))
    assert metrics["steps"] == 2 and metrics["bad_batches"] == 0
    model = scaledet.load(tmp_path / "weights.safetensors")
    assert model.query_groups == 3 and model.denoising.settings == DenoisingSettings(2, contrastive=True)
